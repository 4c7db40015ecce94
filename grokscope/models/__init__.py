"""Model builders by name. ``build_model({"arch": NAME, "kwargs": {...}})`` or
``build_model({"factory": "pkg.module:function", "kwargs": {...}})``.

To add a built-in model, write a builder function in a module of this package and list it in
``MODELS``; an installed package registers its own under the entry point ``grokscope.models``
(``name = "pkg.module:function"``). A factory named by import path in a run folder's ``run.json`` is
imported only when the user vouched for it (:mod:`grokscope.trust`).

Token models (inputs are int64 token ids) also provide ``embed(tokens)`` and ``forward_embedded(h)``
so probes can work in embedding space (see :mod:`grokscope.models.adapters`).
"""

from __future__ import annotations

from typing import Any

from torch import nn

from grokscope.errors import GrokscopeError
from grokscope.registry import Registry, import_target
from grokscope.trust import Trust, check_plain_json

from .errors import ModelError
from .hf import check_config
from grokscope import codepath
from grokscope.errors import user_code_failure

MODELS = {
    "mlp": "grokscope.models.mlp:mlp",
    "modular_mlp": "grokscope.models.modular:modular_mlp",
    "transformer": "grokscope.models.transformer:transformer",
    "attn_only": "grokscope.models.transformer:attn_only",
    "cnn": "grokscope.models.cnn:cnn",
    "grokalign_cnn": "grokscope.models.cnn:grokalign_cnn",
    "preact_resnet18": "grokscope.models.resnet:preact_resnet18",
}


ENTRY_POINT_GROUP = "grokscope.models"
# names that need no vouching: the zoo above and ``hf`` (a transformers model from its config.json,
# never with remote code: :mod:`grokscope.models.hf`)
BUILTIN = {**MODELS, "hf": "grokscope.models.hf:hf"}
REGISTRY = Registry("model", BUILTIN, ENTRY_POINT_GROUP, error=ModelError)


def resolve_factory(path: str):
    """Import ``"pkg.module:function"`` and return the callable, with a clear error if it fails.

    For code grokscope itself names (built-ins); a path read from a run folder goes through
    :func:`factory_for`, which checks that the user vouched for it first.
    """
    obj = import_target(path, ModelError)
    if not callable(obj):
        raise ModelError(f"model factory {path!r} is not callable")
    return obj


def spec_target(spec: dict[str, Any]) -> str:
    """The name or import path a model spec refers to (``factory`` if given, else ``arch``)."""
    ref = spec.get("factory") or spec.get("arch")
    if not isinstance(ref, str) or not ref:
        raise ModelError(f"model spec {spec!r} needs 'arch' (a built-in name) or 'factory' ('pkg.module:fn')")
    return ref


def check_model_spec(spec: dict[str, Any], trust: Trust | None = None, where: str = "the model spec") -> str:
    """The import path of ``spec``'s factory once it is allowed (built-in, entry point, or vouched for
    by ``trust``; None: the user's allow-list), and its kwargs checked to be plain JSON. Imports nothing."""
    check_plain_json(spec.get("kwargs") or {}, f"{where}: model kwargs", ModelError)
    target = REGISTRY.check(spec_target(spec), trust, where)
    _code_folder(spec, trust, where, use=False)
    if target == BUILTIN["hf"] and isinstance((spec.get("kwargs") or {}).get("config"), dict):
        check_config(spec["kwargs"]["config"], where)
    return target


def _code_folder(spec: dict[str, Any], trust: Trust | None, where: str, use: bool) -> None:
    """Check (and with ``use`` put on the import path) the folder the spec's factory is imported from
    (:mod:`grokscope.codepath`)."""

    try:
        (codepath.use if use else codepath.check)(spec, spec_target(spec), trust, "model", where)
    except ValueError as e:
        if isinstance(e, GrokscopeError):
            raise
        raise ModelError(str(e)) from None


def factory_for(spec: dict[str, Any], trust: Trust | None = None, where: str = "the model spec"):
    """``(callable, label)`` of a model spec: its ``factory`` import path or its built-in ``arch``.

    A ``factory`` read from a run folder is imported only if ``trust`` allows it (see
    :mod:`grokscope.trust`); the check comes before the import.
    """
    label = spec_target(spec)
    check_model_spec(spec, trust, where)
    _code_folder(spec, trust, where, use=True)
    obj = REGISTRY.load(label, trust, where)
    if not callable(obj):
        raise ModelError(f"model factory {label!r} is not callable")
    return obj, label


def build_model(spec: dict[str, Any], trust: Trust | None = None, where: str = "the model spec") -> nn.Module:
    """Build an ``nn.Module`` from a run's model spec (``{"arch"|"factory", "kwargs"}``).

    ``trust`` decides which factories named by import path may be imported (None: the user's own
    allow-list, :meth:`grokscope.trust.Trust.from_user`); ``where`` names the spec's file in errors.
    """
    kwargs = dict(spec.get("kwargs") or {})
    factory, label = factory_for(spec, trust, where)
    try:
        model = factory(**kwargs)
    except ModelError:  # the factory's own message (a refused hf config, a missing extra)
        raise
    except (TypeError, ValueError) as e:
        raise ModelError(f"bad arguments for model {label!r}: {e}") from e
    except Exception as e:  # noqa: BLE001 - a factory is the user's code: one line, naming it
        if not spec.get("factory"):
            raise  # a built-in's failure is a bug: keep its traceback

        raise ModelError(user_code_failure(f"model factory {label!r}", e)) from None
    if not isinstance(model, nn.Module):
        raise ModelError(f"model factory {label!r} returned {type(model).__name__}, not an nn.Module")
    return model
