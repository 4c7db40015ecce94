"""Task losses shared by the trainer and the probes (one definition of each)."""

from __future__ import annotations

import torch
import torch.nn.functional as F

LOSSES = ("ce", "mse")


def task_loss(logits: torch.Tensor, y: torch.Tensor, kind: str = "ce", reduction: str = "mean") -> torch.Tensor:
    """Cross-entropy on logits, or MSE between logits and one-hot targets.

    ``logits (n, C)``, ``y (n,)`` int64. MSE is averaged over samples *and* classes (PyTorch's
    ``mse_loss``); with ``reduction="none"`` both return one value per sample ``(n,)``.
    """
    if kind == "ce":
        return F.cross_entropy(logits, y, reduction=reduction)
    if kind == "mse":
        target = F.one_hot(y, logits.shape[-1]).to(logits.dtype)
        per = ((logits - target) ** 2).mean(dim=-1)
        return per.mean() if reduction == "mean" else per if reduction == "none" else per.sum()
    raise ValueError(f"unknown loss {kind!r}; valid: {', '.join(LOSSES)}")
