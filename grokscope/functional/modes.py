"""Train/eval mode handling shared by the probes."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager

from torch import nn


@contextmanager
def eval_mode(model: nn.Module) -> Iterator[nn.Module]:
    """``with eval_mode(model):`` — the model in eval mode inside, its own mode (train or eval) restored
    afterwards, also when the body raises. Usable as a decorator of a function of a fixed model too."""
    was_training = model.training
    model.eval()
    try:
        yield model
    finally:
        model.train(was_training)
