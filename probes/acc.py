"""``acc``: loss and accuracy on the train and test splits (the trainer's own evaluation).

Definitions and defaults: ``docs/algorithms.md#acc--loss-and-accuracy``.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch
from torch import nn

from grokscope.functional import eval_mode
from grokscope.losses import LOSSES, task_loss

from .base import EventSpec, PanelSpec, Probe, ProbeContext, check_at_least, check_choice, check_work, template_dataset


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


@dataclass(frozen=True)
class AccParams:
    loss: str = "auto"  # "auto": the loss the run was trained with (run.json), else "ce"
    batch_size: int = 4096


class AccProbe(Probe):
    name = "acc"
    panel_order = 10
    description = "loss and accuracy on the train and test splits"
    Params = AccParams
    outputs = {"loss": ("split",), "accuracy": ("split",)}

    panels = (
        PanelSpec("accuracy", "Accuracy", "fraction correct", "split", ylim=(-0.03, 1.03), higher_is_better=True),
        PanelSpec("loss", "Loss", "task loss (log scale)", "split", yscale="log", higher_is_better=False),
    )
    events = (
        EventSpec("memorisation", "accuracy", "rise", "train accuracy reaching the memorisation threshold",
                  "train", threshold="mem"),
        EventSpec("generalisation", "accuracy", "rise", "test accuracy reaching the generalisation threshold",
                  "test", threshold="grok"),
    )

    @classmethod
    def check_params(cls, params: AccParams) -> None:
        check_choice("acc.loss", params.loss, ("auto",) + tuple(LOSSES))
        check_at_least("acc", params, batch_size=1)
        check_work("acc", "acc.batch_size", params.batch_size)

    def template(self, model, data, params: AccParams, ctx: ProbeContext | None = None):
        """Loss and accuracy per split (train, test), whatever the model."""
        return template_dataset(self.outputs, coords={"split": ["train", "test"]})

    def compute(self, model, data, params: AccParams, ctx: ProbeContext):
        import xarray as xr

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
