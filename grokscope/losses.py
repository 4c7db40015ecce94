"""Task losses shared by the trainer and the probes (one definition of each)."""

from __future__ import annotations

from typing import Callable

import torch
import torch.nn.functional as F

LOSSES = ("ce", "mse", "stablemax")


def stablemax_s(x: torch.Tensor) -> torch.Tensor:
    """Prieto et al.'s ``s(x) = x + 1`` for ``x ≥ 0`` and ``1 / (1 − x)`` for ``x < 0`` (elementwise).

    Both branches are evaluated on clamped inputs so that neither the value nor the gradient of the
    branch ``torch.where`` discards can be infinite (which would turn the kept gradient into NaN).
    """
    return torch.where(x >= 0, x.clamp_min(0) + 1, 1 / (1 - x.clamp_max(0)))


def log_stablemax(logits: torch.Tensor, dim: int = -1) -> torch.Tensor:
    """``log(s(z_k) / Σ_j s(z_j))`` along ``dim``, in the dtype of ``logits``."""
    s = stablemax_s(logits)
    return torch.log(s) - torch.log(s.sum(dim=dim, keepdim=True))


def stablemax_cross_entropy(logits: torch.Tensor, y: torch.Tensor, reduction: str = "mean",
                            dtype: torch.dtype | None = torch.float64) -> torch.Tensor:
    """StableMax cross-entropy ``−log(s(z_y) / Σ_j s(z_j))`` of ``logits (n, C)`` and ``y (n,)``.

    Computed in ``dtype`` (default float64, as in the authors' code; None: the logits' dtype) and
    returned in the logits' dtype; ``reduction`` is ``mean``, ``sum`` or ``none`` (``(n,)``).
    """
    z = logits if dtype is None else logits.to(dtype)
    per = -log_stablemax(z).gather(1, y[:, None]).squeeze(1)
    out = per.mean() if reduction == "mean" else per.sum() if reduction == "sum" else per
    return out.to(logits.dtype)


def task_loss(logits: torch.Tensor, y: torch.Tensor, kind: str = "ce", reduction: str = "mean") -> torch.Tensor:
    """Cross-entropy on logits, MSE between logits and one-hot targets, or StableMax cross-entropy.

    ``logits (n, C)``, ``y (n,)`` int64. MSE is averaged over samples *and* classes (PyTorch's
    ``mse_loss``); ``stablemax`` is :func:`stablemax_cross_entropy` (computed in float64); with
    ``reduction="none"`` each returns one value per sample ``(n,)``.
    """
    if kind == "ce":
        return F.cross_entropy(logits, y, reduction=reduction)
    if kind == "mse":
        # a comparison, not F.one_hot: one_hot checks y's range with a data-dependent .item(), which
        # torch.func.vmap cannot run (the llc probe's chains draw their own mini-batches)
        target = (y.unsqueeze(-1) == torch.arange(logits.shape[-1], device=y.device)).to(logits.dtype)
        per = ((logits - target) ** 2).mean(dim=-1)
        return per.mean() if reduction == "mean" else per if reduction == "none" else per.sum()
    if kind == "stablemax":
        return stablemax_cross_entropy(logits, y, reduction)
    raise ValueError(f"unknown loss {kind!r}; valid: {', '.join(LOSSES)}")


def next_token_loss(logits: torch.Tensor, ids: torch.Tensor, mask: torch.Tensor | None = None,
                    reduction: str = "mean") -> torch.Tensor:
    """Causal language-model loss: cross-entropy of ``logits[:, t]`` against ``ids[:, t + 1]``.

    ``logits (n, T, V)``, ``ids (n, T)`` int64, ``mask (n, T)`` (1/True where the token is real;
    None: every token). A prediction counts where both the token it reads and the token it predicts
    are real. ``reduction``: ``mean`` (over the counted predictions), ``sum``, or ``none``, which
    gives ``(n, T - 1)`` per-prediction losses with 0 where not counted (``none`` and the mask
    together give loss by position: sum over rows / count over rows).
    """
    pred = logits[:, :-1].reshape(-1, logits.shape[-1])
    target = ids[:, 1:].reshape(-1)
    per = F.cross_entropy(pred, target, reduction="none").reshape(ids.shape[0], ids.shape[1] - 1)
    if mask is not None:
        m = (mask[:, :-1].bool() & mask[:, 1:].bool()).to(per.dtype)
        per = per * m
        count = m.sum()
    else:
        count = torch.tensor(float(per.numel()), dtype=per.dtype, device=per.device)
    if reduction == "none":
        return per
    if reduction == "sum":
        return per.sum()
    return per.sum() / count.clamp_min(1)


def lm_labels(ids: torch.Tensor, mask: torch.Tensor | None = None) -> torch.Tensor:
    """The targets of the ``next_token`` loss as one tensor ``(n, T)`` int64: the token ids, −1 where
    ``mask (n, T)`` says the token is not real (so batches of rows can be indexed like labels)."""
    ids = ids.long()
    return ids if mask is None else torch.where(mask.bool(), ids, torch.full_like(ids, -1))


def llc_loss(kind: str) -> Callable[[torch.Tensor, torch.Tensor], torch.Tensor]:
    """The mean loss ``f(outputs, targets)`` the chains use: a task loss of :data:`LOSSES` on labels, or
    ``next_token``: :func:`next_token_loss` of logits ``(n, T, V)`` against the targets
    of :func:`lm_labels` (a prediction counts where the token it reads and the one it predicts are real)."""
    if kind == "next_token":
        return NextTokenLoss()
    return lambda out, t: task_loss(out, t, kind)


class NextTokenLoss:
    """The ``next_token`` loss of :func:`llc_loss` on :func:`lm_labels` targets, with :meth:`count`."""

    sequence_outputs = True  # it reads the logits at every position (adapters.sequence_logits)

    def __call__(self, logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        return next_token_loss(logits, labels.clamp_min(0), labels >= 0)

    @staticmethod
    def count(labels: torch.Tensor) -> torch.Tensor:
        """The number of predictions the mean is over: a real token read and a real token predicted."""
        return ((labels[:, :-1] >= 0) & (labels[:, 1:] >= 0)).sum()
