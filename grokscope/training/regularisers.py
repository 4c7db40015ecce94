"""Training-time regularisers and baselines the trainer can switch on with ``--reg NAME:ARGS``.

Interface used by the trainer (one object per run):

* ``transform_input(x, state)`` — e.g. Gaussian input noise; ``state`` holds ``train_acc``;
* ``penalty(model, x, y, logits)`` — a differentiable scalar added to the task loss (or None);
  its value is logged as ``reg`` in ``log.jsonl``;
* ``after_backward(model)`` — e.g. Grokfast's EMA gradient filter, called between backward and step.

``build_regulariser("grokalign:1e-3", loss_kind="ce", input_kind="continuous")`` parses the spec.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import nn


class Regulariser:
    """Does nothing; subclasses override what they need."""

    name = "none"

    def transform_input(self, x: torch.Tensor, state: dict[str, Any]) -> torch.Tensor:
        return x

    def penalty(self, model: nn.Module, x: torch.Tensor, y: torch.Tensor,
                logits: torch.Tensor) -> torch.Tensor | None:
        return None

    def after_backward(self, model: nn.Module) -> None:
        return None

    def describe(self) -> dict[str, Any]:
        return {"name": self.name}


REGULARISERS: dict[str, type[Regulariser]] = {}


def build_regulariser(spec: str | None, loss_kind: str = "ce", input_kind: str = "continuous") -> Regulariser | None:
    """Parse ``NAME[:ARGS]``; None/"none" gives None. Unknown names raise ValueError listing valid ones."""
    if not spec or spec == "none":
        return None
    name, _, args = spec.partition(":")
    if name not in REGULARISERS:
        raise ValueError(f"unknown regulariser {name!r}; valid: {', '.join(sorted(REGULARISERS)) or '(none yet)'}")
    return REGULARISERS[name].from_spec(args, loss_kind=loss_kind, input_kind=input_kind)  # type: ignore[attr-defined]
