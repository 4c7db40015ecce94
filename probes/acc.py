"""``acc``: loss and accuracy on the train and test splits (the trainer's own evaluation).

On a causal language-model task (a dataset of token sequences, ``task == "causal_lm"``) the loss is
the next-token loss (:func:`grokscope.losses.next_token_loss`) and the accuracy that of the next token;
``acc`` adds the loss by position and the in-context-learning score (:func:`next_token_stats`).

Definitions and defaults: ``docs/algorithms.md#acc--loss-and-accuracy``.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch
from torch import nn

from grokscope.functional import eval_mode
from grokscope.losses import LOSSES, next_token_loss, task_loss
from grokscope.models.adapters import sequence_logits

from .base import (EventSpec, PanelSpec, Probe, ProbeContext, ProbeError, check_at_least, check_choice, check_work,
                   template_dataset)

CAUSAL_LM = "causal_lm"  # Data.task of a token-sequence dataset (grokscope.datasets.base.CAUSAL_LM)
LOGIT_BUDGET = 2**24  # logits (rows x T x vocab) held at once on a causal-LM task: 64 MiB of float32


@torch.no_grad()
def loss_and_accuracy(model: nn.Module, x: torch.Tensor, y: torch.Tensor, loss: str = "ce",
                      batch_size: int = 4096) -> tuple[float, float]:
    """Mean task loss and accuracy of ``model`` on ``(x, y)``, in eval mode, in chunks of ``batch_size``.

    Returns ``(loss, accuracy)`` as Python floats. The model's train/eval mode is restored.
    """
    total_loss, correct = 0.0, 0
    with eval_mode(model):
        for i in range(0, len(x), batch_size):
            xb, yb = x[i:i + batch_size], y[i:i + batch_size]
            logits = model(xb)
            total_loss += float(task_loss(logits, yb, loss, reduction="sum"))
            correct += int((logits.argmax(dim=-1) == yb).sum())
    n = max(len(x), 1)
    return total_loss / n, correct / n


@torch.no_grad()
def next_token_stats(model: nn.Module, ids: torch.Tensor, mask: torch.Tensor | None = None,
                     batch_size: int = 4096, vocab_size: int | None = None) -> dict[str, np.ndarray | float]:
    """Next-token loss and accuracy of a causal language model on token ids ``(n, T)``.

    A prediction is that of token ``t`` (``1 <= t < T``) from the tokens before it; it counts where
    ``mask`` (``(n, T)``, True where the token is real; None: all) has both tokens ``t - 1`` and ``t``.
    Returns ``{"loss", "accuracy"}`` (means over every counted prediction, Python floats),
    ``"loss_by_position"`` ``(T - 1,)`` (position ``t = 1 .. T-1``: the mean loss of the predictions of
    token ``t``; NaN where none counts) and ``"count_by_position"`` ``(T - 1,)``. Rows go through the
    model (:func:`grokscope.models.adapters.sequence_logits`) ``batch_size`` at a time, fewer where
    their logits (``rows x T x vocab_size``) would pass :data:`LOGIT_BUDGET`; sums are float64.
    """
    n, t = ids.shape
    rows = max(1, min(batch_size, LOGIT_BUDGET // max(1, t * int(vocab_size or 1))))
    loss_pos = torch.zeros(t - 1, dtype=torch.float64)
    count_pos = torch.zeros(t - 1, dtype=torch.float64)
    correct = 0.0
    with eval_mode(model):
        for i in range(0, n, rows):
            ib = ids[i:i + rows]
            mb = None if mask is None else mask[i:i + rows]
            logits = sequence_logits(model, ib, mb)
            if logits.dtype != torch.float64:
                logits = logits.float()  # half or bfloat16 logits: the loss in float32
            per = next_token_loss(logits, ib, mb, reduction="none").double()  # (rows, T-1), 0 where not counted
            counted = (torch.ones_like(per, dtype=torch.bool) if mb is None else
                       mb[:, :-1].bool() & mb[:, 1:].bool())
            right = (logits[:, :-1].argmax(dim=-1) == ib[:, 1:]) & counted
            loss_pos += per.sum(dim=0).cpu()
            count_pos += counted.double().sum(dim=0).cpu()
            correct += float(right.double().sum())
    total = float(count_pos.sum())
    by_pos = (loss_pos / count_pos).numpy()  # NaN (0/0) where no prediction counts
    return {"loss": float(loss_pos.sum()) / max(total, 1.0), "accuracy": correct / max(total, 1.0),
            "loss_by_position": by_pos, "count_by_position": count_pos.numpy()}


def icl_positions(seq_len: int, early: int, late: int) -> tuple[int, int]:
    """The predicted-token positions ``(early, late)`` of the in-context-learning score for sequences of
    ``seq_len`` tokens: each clipped to ``1 .. seq_len - 1`` (the positions that have a prediction); when
    both fall past the end, the early one keeps its ratio to the late one (50/500 on 20 tokens: 2, 19),
    so the score stays a difference of two positions."""
    top = seq_len - 1
    e, l_ = min(max(early, 1), top), min(max(late, 1), top)
    if e == l_ and l_ > 1:
        e = max(1, min(l_ - 1, round(early * l_ / late)))
    return e, l_


@dataclass(frozen=True)
class AccParams:
    loss: str = "auto"  # "auto": the loss the run was trained with (run.json), else "ce"; LM task: "ce"
    batch_size: int = 4096
    icl_early: int = 50  # LM task: the early token position of the ICL score (clipped to T-1)
    icl_late: int = 500  # LM task: the late token position of the ICL score (clipped to T-1)


class AccProbe(Probe):
    name = "acc"
    panel_order = 10
    description = "loss and accuracy on the train and test splits (LM task: next token, by position, ICL score)"
    Params = AccParams
    tasks = ("classification", CAUSAL_LM)
    outputs = {"loss": ("split",), "accuracy": ("split",)}
    task_outputs = {CAUSAL_LM: {"loss_by_position": ("split", "position"), "icl_score": ("split",)}}
    added_params = {"icl_early": 50, "icl_late": 500}  # stores written before the LM task: the defaults

    panels = (
        PanelSpec("accuracy", "Accuracy", "fraction correct", "split", ylim=(-0.03, 1.03), higher_is_better=True),
        PanelSpec("loss", "Loss", "task loss (log scale)", "split", yscale="log", higher_is_better=False),
        PanelSpec("icl_score", "In-context learning score", "loss(late token) - loss(early token)", "split",
                  higher_is_better=False),
    )
    events = (
        EventSpec("memorisation", "accuracy", "rise", "train accuracy reaching the memorisation threshold",
                  "train", threshold="mem"),
        EventSpec("generalisation", "accuracy", "rise", "test accuracy reaching the generalisation threshold",
                  "test", threshold="grok"),
        EventSpec("icl_fall", "icl_score", "fall", "the fall of the in-context-learning score", "test"),
    )

    @classmethod
    def check_params(cls, params: AccParams) -> None:
        check_choice("acc.loss", params.loss, ("auto",) + tuple(LOSSES))
        check_at_least("acc", params, batch_size=1, icl_early=1, icl_late=1)
        check_work("acc", "acc.batch_size", params.batch_size)
        if params.icl_early >= params.icl_late:
            raise ProbeError(f"acc.icl_early ({params.icl_early}) must be below acc.icl_late ({params.icl_late})")

    def check(self, model, data, params: AccParams) -> None:
        if getattr(data, "task", None) == CAUSAL_LM and params.loss not in ("auto", "ce"):
            raise ProbeError(f"acc.loss={params.loss!r}: a causal-LM task has one loss, the next-token "
                             "cross-entropy (acc.loss=auto or ce)")

    def template(self, model, data, params: AccParams, ctx: ProbeContext | None = None):
        """Loss and accuracy per split (train, test), whatever the model; on a causal-LM task also the
        loss by position ``(split, position)`` and the ICL score per split."""
        if getattr(data, "task", None) != CAUSAL_LM:
            return template_dataset(self.outputs, coords={"split": ["train", "test"]})
        early, late = icl_positions(data.seq_len, params.icl_early, params.icl_late)
        return template_dataset(self.outputs_for(CAUSAL_LM),
                                coords={"split": ["train", "test"], "position": np.arange(1, data.seq_len)},
                                var_attrs={"icl_score": {"early_position": early, "late_position": late}})

    def compute(self, model, data, params: AccParams, ctx: ProbeContext):
        import xarray as xr

        if getattr(data, "task", None) == CAUSAL_LM:
            return self._lm(model, data, params)
        loss_kind = params.loss
        if loss_kind == "auto":
            loss_kind = (ctx.run_spec.get("train") or {}).get("loss", "ce")
        losses, accs = [], []
        for split in ("train", "test"):
            x, y = data.split(split)
            lo, ac = loss_and_accuracy(model, x, y, loss_kind, params.batch_size)
            losses.append(lo)
            accs.append(ac)
        return xr.Dataset(
            {"loss": (("split",), np.array(losses)), "accuracy": (("split",), np.array(accs))},
            coords={"split": ["train", "test"]},
        )

    def _lm(self, model, data, params: AccParams):
        ds = self.template(model, data, params)
        early, late = icl_positions(data.seq_len, params.icl_early, params.icl_late)
        for i, split in enumerate(("train", "test")):
            ids, mask = data.tokens(split)
            st = next_token_stats(model, ids, mask, params.batch_size, data.vocab_size)
            ds["loss"][i] = st["loss"]
            ds["accuracy"][i] = st["accuracy"]
            ds["loss_by_position"][i] = st["loss_by_position"]
            by_pos = st["loss_by_position"]
            ds["icl_score"][i] = by_pos[late - 1] - by_pos[early - 1]
        return ds
