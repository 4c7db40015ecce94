"""Two-layer (or deeper) networks for modular arithmetic (Musat; Gromov; GrokAlign's one-hot MLP).

The first layer is the *embedding*: an ``nn.Embedding`` of the two operand tokens (summed), or a
bias-free ``nn.Linear`` acting on a one-hot encoding. ``σ(embed) → hidden → unembed``.
"""

from __future__ import annotations

import torch
from torch import nn

from .layers import activation, scale_init_


class ModularMLP(nn.Module):
    """``h = σ(E[a] + E[b])`` (tokens) or ``h = σ(x E)`` (one-hot), then ``depth - 1`` hidden layers,
    then a linear readout to ``p`` logits. Token inputs have shape ``(n, 3)`` (``a, b, =``)."""

    def __init__(self, p: int, width: int = 256, depth: int = 1, input: str = "tokens",
                 activation_name: str = "relu", bias: bool = False, init_scale: float = 1.0):
        super().__init__()
        self.p, self.input = p, input
        if input == "tokens":
            self.embed_tokens = nn.Embedding(p + 1, width)
        elif input in ("onehot_sum", "onehot_concat"):
            self.embed_linear = nn.Linear(p if input == "onehot_sum" else 2 * p, width, bias=False)
        else:
            raise ValueError(f"modular_mlp input must be tokens, onehot_sum or onehot_concat, not {input!r}")
        self.act = activation(activation_name)
        hidden: list[nn.Module] = []
        for _ in range(depth - 1):
            hidden += [nn.Linear(width, width, bias=bias), activation(activation_name)]
        self.hidden = nn.Sequential(*hidden)
        self.unembed = nn.Linear(width, p, bias=bias)
        scale_init_(self, init_scale)

    def embed(self, x: torch.Tensor) -> torch.Tensor:
        """Token ids ``(n, 3)`` → operand embeddings ``(n, 2, width)``. One-hot inputs pass through."""
        if self.input != "tokens":
            return x
        return self.embed_tokens(x[:, :2])

    def forward_embedded(self, h: torch.Tensor) -> torch.Tensor:
        """Logits ``(n, p)`` from the output of :meth:`embed`."""
        z = h.sum(dim=1) if self.input == "tokens" else self.embed_linear(h)
        return self.unembed(self.hidden(self.act(z)))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.forward_embedded(self.embed(x))


def modular_mlp(p: int, width: int = 256, depth: int = 1, input: str = "tokens",
                activation_name: str = "relu", bias: bool = False, init_scale: float = 1.0) -> ModularMLP:
    """Builder for :class:`ModularMLP` (``input``: ``tokens``, ``onehot_sum`` or ``onehot_concat``)."""
    return ModularMLP(p, width, depth, input, activation_name, bias, init_scale)
