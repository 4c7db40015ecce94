"""Small building blocks shared by the model builders."""

from __future__ import annotations

from torch import nn

ACTIVATIONS = {
    "relu": nn.ReLU,
    "leaky_relu": nn.LeakyReLU,
    "gelu": nn.GELU,
    "identity": nn.Identity,
}


def activation(name: str) -> nn.Module:
    """A fresh activation module by name (one instance per layer, so hooks see each layer apart)."""
    if name not in ACTIVATIONS:
        raise ValueError(f"unknown activation {name!r}; valid: {', '.join(ACTIVATIONS)}")
    return ACTIVATIONS[name]()


def scale_init_(module: nn.Module, scale: float) -> nn.Module:
    """Multiply every parameter of ``module`` by ``scale`` in place (Omnigrok-style x8 init)."""
    if scale != 1.0:
        import torch

        with torch.no_grad():
            for p in module.parameters():
                p.mul_(scale)
    return module
