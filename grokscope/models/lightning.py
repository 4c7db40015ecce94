"""``--model pkg.module:LitModule``: a Lightning ``LightningModule`` class rebuilt from the
``hyper_parameters`` its checkpoints saved.

A LightningModule that calls ``self.save_hyperparameters()`` stores its constructor's arguments in
every ``.ckpt`` (``hyper_parameters``; ``hparams_name`` when they were one dict argument). grokscope
reads them from the first checkpoint with ``torch.load(weights_only=True)`` (a checkpoint that needs
code to load is refused with one line) and keeps them in the run's model spec as the factory's
``kwargs``, as Lightning's own ``load_from_checkpoint`` would pass them: arguments the constructor
does not take are dropped unless it has ``**kwargs``, and ``--model-kwargs`` given by the user win.
They must be plain JSON (run.json is data). The module's ``state_dict`` keys are the checkpoint's
``state_dict`` keys as saved. No Lightning import is needed to recognise the class: a base class
named ``LightningModule`` from ``lightning`` or ``pytorch_lightning`` is enough.
"""

from __future__ import annotations

import inspect
from pathlib import Path
from typing import Any

from grokscope.models.errors import ModelError
from grokscope.trust import check_plain_json

HPARAMS_KEYS = ("hparams", "module_arguments", "hyper_parameters")  # Lightning's past and present keys
DROPPED = ("_instantiator", "_class_path")  # LightningCLI's: the instantiator is never run


def is_lightning_module(obj: Any) -> bool:
    """Whether ``obj`` is a ``LightningModule`` subclass (by its bases' names; imports nothing)."""
    return isinstance(obj, type) and any(
        c.__name__ == "LightningModule" and c.__module__.split(".")[0] in ("lightning", "pytorch_lightning")
        for c in obj.__mro__)


def saved_hyper_parameters(path: str | Path, cls: type) -> dict[str, Any]:
    """The constructor arguments of ``cls`` saved in the Lightning checkpoint ``path``, as Lightning's
    ``load_from_checkpoint`` would pass them; {} when it saved none. Raises ``CheckpointError`` for a
    file that cannot be read weights-only, :class:`ModelError` for values that are not plain JSON."""
    from grokscope.engine.loading import _torch_load

    ck = _torch_load(Path(path))
    if not isinstance(ck, dict):
        raise ModelError(f"{path}: not a Lightning checkpoint (a {type(ck).__name__}, not a dict)")
    loaded: dict[str, Any] = {}
    for key in HPARAMS_KEYS:
        if isinstance(ck.get(key), dict):
            loaded.update(ck[key])
    loaded = {str(k): v for k, v in loaded.items() if k not in DROPPED}
    params = inspect.signature(cls.__init__).parameters
    names = [n for n, p in params.items() if n != "self" and p.kind not in (p.VAR_POSITIONAL, p.VAR_KEYWORD)]
    if ck.get("hparams_name") in names:
        loaded = {ck["hparams_name"]: loaded}
    if not any(p.kind == p.VAR_KEYWORD for p in params.values()):
        loaded = {k: v for k, v in loaded.items() if k in names}
    check_plain_json(loaded, f"{path}: hyper_parameters", ModelError)
    return loaded


def lightning_spec(spec: dict[str, Any], first: str | Path | None, trust: Any, where: str) -> dict[str, Any]:
    """``spec`` with the saved hyper-parameters of ``first`` (a checkpoint of the run) under its
    kwargs when its factory is a LightningModule class (the user's own kwargs win); ``spec``
    unchanged otherwise. Imports the factory (after the trust check)."""
    from grokscope.models import factory_for

    if not spec.get("factory"):
        return spec
    cls, label = factory_for(spec, trust, where)
    if not is_lightning_module(cls):
        return spec
    if first is None:
        raise ModelError(f"{where}: {label} is a LightningModule; its hyper_parameters come from a "
                         "checkpoint, and none was found")
    saved = saved_hyper_parameters(first, cls)
    return {**spec, "kwargs": {**saved, **(spec.get("kwargs") or {})}}
