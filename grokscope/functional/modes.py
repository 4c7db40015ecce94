"""Train/eval mode handling shared by the probes."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

from torch import nn


@contextmanager
def eval_mode(model: Any, freeze: bool = False) -> Iterator[Any]:
    """``with eval_mode(model):`` — ``model`` (an ``nn.Module``, or the module a bound method belongs
    to; anything else is left alone) in eval mode inside, so samples do not interact (no train-mode
    BatchNorm); with ``freeze``, its parameters' ``requires_grad`` off too (only input gradients are
    wanted). Both restored afterwards, also when the body raises."""
    module = model if isinstance(model, nn.Module) else getattr(model, "__self__", None)
    if not isinstance(module, nn.Module):
        yield model
        return
    was_training = module.training
    frozen = [p for p in module.parameters() if p.requires_grad] if freeze else []
    module.eval()
    for p in frozen:
        p.requires_grad_(False)
    try:
        yield model
    finally:
        module.train(was_training)
        for p in frozen:
            p.requires_grad_(True)
