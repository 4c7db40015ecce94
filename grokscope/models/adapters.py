"""Views of a model that probes need: the continuous input a probe differentiates or perturbs.

For continuous-input models the view is the model itself. Token models (``Data.input_kind ==
"tokens"``) must provide ``embed(tokens)`` and ``forward_embedded(h)``; probes then work on the
embedding output ``h`` (GrokAlign's transformer experiment; Humayun et al.'s token-space PGD).
"""

from __future__ import annotations

from typing import Callable

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
