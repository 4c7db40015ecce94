"""Where a model lives and in which precision: the device and dtype a probe puts its inputs on."""

from __future__ import annotations

import torch
from torch import nn


def model_dtype(model: nn.Module) -> torch.dtype:
    """The dtype of the model's first floating-point parameter or buffer (torch's default if none)."""
    for p in list(model.parameters()) + list(model.buffers()):
        if p.is_floating_point():
            return p.dtype
    return torch.get_default_dtype()


def model_device(model: nn.Module) -> torch.device:
    """The device of the model's first parameter or buffer (CPU if none)."""
    for p in list(model.parameters()) + list(model.buffers()):
        return p.device
    return torch.device("cpu")
