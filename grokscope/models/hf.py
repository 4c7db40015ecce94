"""``--model hf``: a Hugging Face ``transformers`` model rebuilt from its ``config.json``, never with
remote code.

The config (the dict of a ``config.json``, kept in run.json as ``kwargs.config``) names a
``model_type`` known to the installed transformers and an ``architectures`` class that transformers
itself defines; a config with ``auto_map`` (a model whose code lives in the checkpoint's repository
and that transformers only runs with ``trust_remote_code=True``) is refused. The model is wrapped so
that ``model(x)`` returns logits ``(n, n_classes)`` (the last position's for sequence outputs), as the
probes expect.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from torch import nn

from grokscope.models import ModelError

CONFIG_FILE = "config.json"


class HFError(ModelError):
    """A Hugging Face config cannot be used (needs remote code, unknown type, unreadable)."""


def read_config(path: str | Path) -> dict[str, Any]:
    """The dict of a ``config.json``, refused (:class:`HFError`, naming the file) if it needs remote code."""
    from grokscope.runs import read_json_object

    cfg = read_json_object(Path(path), HFError)
    check_config(cfg, str(path))
    return cfg


def check_config(cfg: dict[str, Any], where: str) -> None:
    """Raise :class:`HFError` if ``cfg`` needs code from outside the installed transformers."""
    if "auto_map" in cfg:
        names = ", ".join(f"{k} -> {v}" for k, v in (cfg["auto_map"] or {}).items()) if isinstance(
            cfg["auto_map"], dict) else repr(cfg["auto_map"])
        raise HFError(f"{where}: refused: this model needs remote code (auto_map: {names}); grokscope "
                      "never passes trust_remote_code=True. Use a model type built into transformers, or "
                      "write a factory and vouch for it (--model pkg.module:factory)")


def find_config(folder: Path) -> Path | None:
    """``config.json`` in ``folder`` or, failing that, in its first ``checkpoint-*`` sub-folder."""
    if (folder / CONFIG_FILE).is_file():
        return folder / CONFIG_FILE
    for sub in sorted(folder.glob("checkpoint-*")):
        if (sub / CONFIG_FILE).is_file():
            return sub / CONFIG_FILE
    return None


class HFLogits(nn.Module):
    """``model(x).logits`` of a transformers model (its last position for ``(n, seq, vocab)`` outputs)."""

    def __init__(self, model: nn.Module):
        super().__init__()
        self.model = model

    def forward(self, x):
        out = self.model(x)
        logits = out.logits if hasattr(out, "logits") else out[0]
        return logits[:, -1] if logits.dim() == 3 else logits


def hf(config: dict[str, Any] | str, architecture: str | None = None) -> nn.Module:
    """The transformers model ``config`` describes (a config dict or a ``config.json`` path), freshly
    initialised and wrapped in :class:`HFLogits`; ``architecture`` overrides ``architectures[0]``."""
    cfg = read_config(config) if isinstance(config, str) else dict(config)
    check_config(cfg, "the hf model config")
    import transformers
    from transformers import AutoConfig, AutoModel, PreTrainedModel
    from transformers.models.auto.configuration_auto import CONFIG_MAPPING

    model_type = cfg.get("model_type")
    if model_type not in CONFIG_MAPPING:
        raise HFError(f"the hf model config has model_type {model_type!r}, which the installed "
                      f"transformers {transformers.__version__} does not define (no remote code is run)")
    rest = {k: v for k, v in cfg.items() if k not in ("model_type", "transformers_version")}
    conf = AutoConfig.for_model(model_type, **rest)
    arch = architecture or (cfg.get("architectures") or [None])[0]
    if arch is None:
        return HFLogits(AutoModel.from_config(conf))
    cls = getattr(transformers, str(arch), None)
    if not (isinstance(cls, type) and issubclass(cls, PreTrainedModel)
            and cls.__module__.startswith("transformers.")):
        raise HFError(f"the hf model config names architecture {arch!r}, which is not a model class of "
                      "transformers (no remote code is run)")
    return HFLogits(cls(conf))
