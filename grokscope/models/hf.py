"""``--model hf``: a Hugging Face ``transformers`` model rebuilt from its ``config.json``, never with
remote code.

The config (the dict of a ``config.json``, kept in run.json as ``kwargs.config``) names a
``model_type`` known to the installed transformers and an ``architectures`` class that transformers
itself defines; a config with ``auto_map`` (a model whose code lives in the checkpoint's repository
and that transformers only runs with ``trust_remote_code=True``) is refused.

The model is wrapped in :class:`HFLogits` so that it looks like every other grokscope model:

* ``model(x)`` returns logits ``(n, n_classes)``: the ``head`` field of the ``ModelOutput``
  (``logits`` by default; e.g. ``start_logits`` for a question-answering head), and for outputs with a
  sequence dim ``(n, seq, C)`` (language-model or token-classification heads) the position chosen by
  ``position`` (``"last"`` by default, ``"first"``, ``"mean"`` or an index). Sequence-classification
  models (``...ForSequenceClassification``) pool internally and already return ``(n, C)``.
* on a causal-LM dataset (token sequences, ``task == "causal_lm"``) probes read
  ``sequence_logits(ids, mask)``: the ``head`` at every position ``(n, T, V)`` (a ``…ForCausalLM``'s
  next-token logits; ``position`` plays no part; :func:`grokscope.models.adapters.sequence_logits`).
* token models get ``embed(tokens)`` (the model's input embeddings) and ``forward_embedded(h)``
  (``inputs_embeds=h``), so probes work in embedding space (:mod:`grokscope.models.adapters`).
  Position, token-type embeddings and layer norms are part of the forward. A GPT-2 style classifier
  pools the last non-pad token from ids but the last position from embeddings, so data with padding
  is not supported in embedding space.

transformers is an optional extra: without it, building the model raises one line saying
``pip install grokscope[hf]``.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch
from torch import nn

from grokscope.models.errors import ModelError

CONFIG_FILE = "config.json"
POSITIONS = ("last", "first", "mean")
INSTALL_HINT = "--model hf needs the transformers package: pip install grokscope[hf]"


class HFError(ModelError):
    """A Hugging Face config cannot be used (needs remote code, unknown type, unreadable)."""


def require_transformers():
    """The ``transformers`` module, or :class:`HFError` saying how to install it."""
    try:
        import transformers
    except ImportError:
        raise HFError(INSTALL_HINT) from None
    return transformers


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
    """``config.json`` in ``folder``, in its first ``checkpoint-*`` sub-folder, or in the first snapshot
    of a hub cache (``models--org--name/snapshots/*``, also one level down). One that is a link leading
    outside ``folder`` is refused (:class:`HFError` naming the link and its target; it is not opened)."""
    from grokscope.engine.checkpoints import link_escape

    folder = Path(folder)
    for found in [folder / CONFIG_FILE, *(sub / CONFIG_FILE for pattern in (
            "checkpoint-*", "checkpoints/checkpoint-*", "snapshots/*", "models--*/snapshots/*")
            for sub in sorted(folder.glob(pattern)))]:
        if found.is_file():
            why = link_escape(found, folder)
            if why is not None:
                raise HFError(f"{found}: {why}")
            return found
    return None


def check_position(position: Any) -> str | int:
    """``position`` if it is one of :data:`POSITIONS` or an int, else :class:`HFError`."""
    if isinstance(position, bool) or not (isinstance(position, int) or position in POSITIONS):
        raise HFError(f"hf: position must be one of {', '.join(POSITIONS)} or an integer index, "
                      f"got {position!r}")
    return position


class HFLogits(nn.Module):
    """A transformers model whose forward returns a logits tensor ``(n, C)``; see the module docstring
    for ``head`` (the ``ModelOutput`` field) and ``position`` (for ``(n, seq, C)`` outputs)."""

    def __init__(self, model: nn.Module, head: str = "logits", position: str | int = "last"):
        super().__init__()
        self.model = model
        self.head = str(head)
        self.position = check_position(position)

    def logits(self, out: Any) -> torch.Tensor:
        """The ``(n, C)`` logits in a model's output (a ``ModelOutput``, a tuple or a tensor)."""
        t = self.field(out)
        if t.dim() == 3:
            p = self.position
            t = t.mean(dim=1) if p == "mean" else t[:, 0] if p == "first" else t[:, -1] if p == "last" else t[:, p]
        return t

    def field(self, out: Any) -> torch.Tensor:
        """The ``head`` tensor of a model's output (a ``ModelOutput``, a tuple or a tensor), as it is."""
        if isinstance(out, torch.Tensor):
            t = out
        elif hasattr(out, "keys") and self.head in out.keys():
            t = out[self.head]
        elif isinstance(out, tuple) and self.head == "logits":
            t = out[0]
        else:
            fields = ", ".join(out.keys()) if hasattr(out, "keys") else type(out).__name__
            raise HFError(f"hf: the model's output has no {self.head!r} (it has {fields}); choose one with "
                          "--model-kwargs '{\"head\": NAME}'")
        if not isinstance(t, torch.Tensor):
            raise HFError(f"hf: the model's {self.head!r} is a {type(t).__name__}, not a tensor")
        return t

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if x.is_floating_point():  # continuous inputs (an image model): the model's own argument
            return self.logits(self.model(x))
        return self.logits(self.model(input_ids=x))

    def sequence_logits(self, ids: torch.Tensor, mask: torch.Tensor | None = None) -> torch.Tensor:
        """The ``head`` output at every position, ``(n, T, V)``, for token ids ``(n, T)`` (``mask``, True
        where the token is real, is passed as ``attention_mask``)."""
        kw = {} if mask is None else {"attention_mask": mask.long()}
        t = self.field(self.model(input_ids=ids, **kw))
        if t.dim() != 3:
            raise HFError(f"hf: the model's {self.head!r} is not a (n, T, vocab) tensor of logits at every "
                          f"position; a causal-LM dataset needs a …ForCausalLM model")
        return t

    def embed(self, tokens: torch.Tensor) -> torch.Tensor:
        """The input embeddings ``(n, seq, d)`` of token ids ``(n, seq)``."""
        return self.model.get_input_embeddings()(tokens)

    def forward_embedded(self, h: torch.Tensor) -> torch.Tensor:
        """Logits ``(n, C)`` for input embeddings ``h`` ``(n, seq, d)``."""
        return self.logits(self.model(inputs_embeds=h))


def hf(config: dict[str, Any] | str, architecture: str | None = None, head: str = "logits",
       position: str | int = "last") -> nn.Module:
    """The transformers model ``config`` describes (a config dict or a ``config.json`` path), freshly
    initialised and wrapped in :class:`HFLogits`; ``architecture`` overrides ``architectures[0]``."""
    cfg = read_config(config) if isinstance(config, str) else dict(config)
    check_config(cfg, "the hf model config")
    check_position(position)
    transformers = require_transformers()
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
        return HFLogits(AutoModel.from_config(conf), head, position)
    cls = getattr(transformers, str(arch), None)
    if not (isinstance(cls, type) and issubclass(cls, PreTrainedModel)
            and cls.__module__.startswith("transformers.")):
        raise HFError(f"the hf model config names architecture {arch!r}, which is not a model class of "
                      "transformers (no remote code is run)")
    return HFLogits(cls(conf), head, position)
