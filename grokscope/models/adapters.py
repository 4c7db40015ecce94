"""Views of a model that probes need: the continuous input a probe differentiates or perturbs.

For continuous-input models the view is the model itself. Token models (``Data.input_kind ==
"tokens"``) must provide ``embed(tokens)`` and ``forward_embedded(h)``; probes then work on the
embedding output ``h`` (GrokAlign's transformer experiment; Humayun et al.'s token-space PGD).

Causal language models (a dataset with ``task == "causal_lm"``) are read through
:func:`sequence_logits`: next-token logits at every position, ``(n, T, V)``.

Also here: the scale of radii in embedding space (:func:`radius_scale`) and
:func:`differentiable_attention` (eager attention for probes that need second derivatives or vmap).
"""

from __future__ import annotations

from contextlib import contextmanager
from typing import Any, Callable, Iterator

import torch
from torch import nn


def continuous_view(model: nn.Module, x: torch.Tensor, input_kind: str
                    ) -> tuple[Callable[[torch.Tensor], torch.Tensor], torch.Tensor]:
    """``(f, z)`` such that ``f(z)`` are the model's logits for inputs ``x`` and ``z`` is continuous.

    For token inputs ``z = model.embed(x)`` (detached) and ``f = model.forward_embedded``.
    """
    if input_kind != "tokens":
        return model, x
    if not (hasattr(model, "embed") and hasattr(model, "forward_embedded")):
        raise TypeError(f"{type(model).__name__} takes token inputs but has no embed()/forward_embedded() "
                        "adapter: probes that need a continuous input cannot run on it")
    with torch.no_grad():
        z = model.embed(x)
    return model.forward_embedded, z.detach()


def sequence_logits(model: nn.Module, ids: torch.Tensor, mask: torch.Tensor | None = None) -> torch.Tensor:
    """Next-token logits ``(n, T, V)`` of a causal language model for token ids ``(n, T)``: the model's
    own ``sequence_logits(ids, mask)`` where it has one (``--model hf``:
    :meth:`grokscope.models.hf.HFLogits.sequence_logits`, the ``…ForCausalLM`` logits at every
    position, whatever its ``position`` option), else ``model(ids)``, which must then be 3-D.
    ``mask`` ``(n, T)`` (True where the token is real) goes to models that take one; others see
    every token (right padding does not change a causal model's logits at real tokens)."""
    own = getattr(model, "sequence_logits", None)
    out = own(ids, mask) if callable(own) else model(ids)
    if not (isinstance(out, torch.Tensor) and out.dim() == 3 and tuple(out.shape[:2]) == tuple(ids.shape)):
        shape = tuple(out.shape) if isinstance(out, torch.Tensor) else type(out).__name__
        raise TypeError(f"{type(model).__name__} returns {shape} for token ids of shape {tuple(ids.shape)}; a "
                        "causal language model must return next-token logits (n, T, vocab) at every position")
    return out


class SequenceLogitsModule(nn.Module):
    """``model`` as a module whose forward is :func:`sequence_logits` (ids ``(n, T)`` → ``(n, T, V)``),
    for code that calls a module's forward with substituted parameters (``torch.func.functional_call``):
    its parameters and buffers are the model's, named ``inner.<name>``."""

    def __init__(self, model: nn.Module):
        super().__init__()
        self.inner = model

    def forward(self, ids: torch.Tensor) -> torch.Tensor:
        return sequence_logits(self.inner, ids)


#: how a probe's radius is measured: ``absolute`` (input units), ``embedding_rms`` (multiples of the RMS
#: of the embedded training inputs), ``auto`` (``embedding_rms`` for token models, else ``absolute``)
RADIUS_UNITS = ("auto", "absolute", "embedding_rms")


def radius_unit(unit: str, input_kind: str) -> str:
    """The unit ``auto`` stands for with inputs of ``input_kind`` (see :data:`RADIUS_UNITS`)."""
    if unit not in RADIUS_UNITS:
        raise ValueError(f"radius unit must be one of {', '.join(RADIUS_UNITS)}, got {unit!r}")
    if unit == "auto":
        return "embedding_rms" if input_kind == "tokens" else "absolute"
    return unit


@torch.no_grad()
def radius_scale(model: nn.Module, x_train: torch.Tensor, input_kind: str, unit: str) -> float:
    """The factor a radius in ``unit`` is multiplied by to get input (embedding) units: 1 for
    ``absolute``; for ``embedding_rms`` the root mean square of the continuous view of ``x_train``
    (``sqrt(mean(z²))`` over every entry of the embedded training inputs, at this checkpoint), so that
    radius 0.1 means a tenth of the typical embedding coordinate whatever the model's scale."""
    if radius_unit(unit, input_kind) == "absolute":
        return 1.0
    _, z = continuous_view(model, x_train, input_kind)
    return float(z.double().pow(2).mean().sqrt())


@contextmanager
def differentiable_attention(model: nn.Module) -> Iterator[list[str]]:
    """Inside, every Hugging Face model in ``model`` computes attention the eager way (plain matmul and
    softmax), so its second derivatives and forward-mode derivatives exist, and ``torch.func.vmap``
    batches it: torch's fused ``scaled_dot_product_attention`` kernels implement neither on CPU
    (under vmap they fall back to a loop). The same function, numerically
    equal up to rounding; the run's model spec is not changed. Yields the names of the switched
    modules (empty for other models); restores their implementation afterwards."""
    switched: list[tuple[str, nn.Module, Any]] = []
    for name, m in model.named_modules():
        config = getattr(m, "config", None)
        impl = getattr(config, "_attn_implementation", None)
        if impl not in (None, "eager") and callable(getattr(m, "set_attn_implementation", None)):
            if any(name.startswith(n + ".") or n == "" for n, _, _ in switched):
                continue  # a sub-model of one already switched
            m.set_attn_implementation("eager")
            switched.append((name, m, impl))
    try:
        yield [n or type(m).__name__ for n, m, _ in switched]
    finally:
        for _, m, impl in switched:
            m.set_attn_implementation(impl)
