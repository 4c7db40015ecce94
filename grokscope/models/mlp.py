"""Fully connected ReLU/GELU networks (Humayun et al.'s MNIST MLP, GrokAlign's MLPs)."""

from __future__ import annotations

from torch import nn

from .layers import activation, scale_init_


def mlp(in_dim: int, out_dim: int, depth: int = 4, width: int = 200, activation_name: str = "relu",
        bias: bool = True, init_scale: float = 1.0) -> nn.Sequential:
    """``Flatten → [Linear(width) → act] × depth → Linear(out_dim)``.

    ``depth`` counts hidden layers (``784-200×4-10`` is ``depth=4, width=200``); ``init_scale``
    multiplies every initial parameter (the papers' ×8 init).
    """
    if depth < 0 or width < 1:
        raise ValueError(f"mlp needs depth >= 0 and width >= 1, got depth={depth}, width={width}")
    layers: list[nn.Module] = [nn.Flatten()]
    d = in_dim
    for _ in range(depth):
        layers += [nn.Linear(d, width, bias=bias), activation(activation_name)]
        d = width
    layers.append(nn.Linear(d, out_dim, bias=bias))
    return scale_init_(nn.Sequential(*layers), init_scale)
