"""Nanda et al.'s one-layer modular-arithmetic transformer: no LayerNorm, ReLU MLP, logits read at
the last position (the ``=`` token)."""

from __future__ import annotations

import math

import torch
from torch import nn

from .layers import activation


class Attention(nn.Module):
    """Causal multi-head self-attention without biases."""

    def __init__(self, d_model: int, n_heads: int, d_head: int, n_ctx: int):
        super().__init__()
        self.n_heads, self.d_head = n_heads, d_head
        self.q = nn.Linear(d_model, n_heads * d_head, bias=False)
        self.k = nn.Linear(d_model, n_heads * d_head, bias=False)
        self.v = nn.Linear(d_model, n_heads * d_head, bias=False)
        self.o = nn.Linear(n_heads * d_head, d_model, bias=False)
        self.register_buffer("mask", torch.tril(torch.ones(n_ctx, n_ctx, dtype=torch.bool)), persistent=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        n, t, _ = x.shape
        split = lambda z: z.view(n, t, self.n_heads, self.d_head).transpose(1, 2)  # noqa: E731
        q, k, v = split(self.q(x)), split(self.k(x)), split(self.v(x))
        scores = q @ k.transpose(-1, -2) / math.sqrt(self.d_head)
        scores = scores.masked_fill(~self.mask[:t, :t], float("-inf"))
        z = torch.softmax(scores, dim=-1) @ v
        return self.o(z.transpose(1, 2).reshape(n, t, -1))


class OneLayerTransformer(nn.Module):
    """Token ids ``(n, n_ctx)`` → logits ``(n, p)`` at the last position."""

    def __init__(self, p: int, d_model: int = 128, n_heads: int = 4, d_head: int = 32,
                 d_mlp: int = 512, n_ctx: int = 3, activation_name: str = "relu"):
        super().__init__()
        self.p = p
        self.embed_tokens = nn.Embedding(p + 1, d_model)
        self.pos = nn.Parameter(torch.randn(n_ctx, d_model) / math.sqrt(d_model))
        nn.init.normal_(self.embed_tokens.weight, std=1 / math.sqrt(d_model))
        self.attn = Attention(d_model, n_heads, d_head, n_ctx)
        self.mlp_in = nn.Linear(d_model, d_mlp)
        self.act = activation(activation_name)
        self.mlp_out = nn.Linear(d_mlp, d_model)
        self.unembed = nn.Linear(d_model, p, bias=False)

    def embed(self, tokens: torch.Tensor) -> torch.Tensor:
        """Token embeddings ``(n, n_ctx, d_model)`` (after ``W_E``, before the positional embedding)."""
        return self.embed_tokens(tokens)

    def forward_embedded(self, h: torch.Tensor) -> torch.Tensor:
        x = h + self.pos[: h.shape[1]]
        x = x + self.attn(x)
        x = x + self.mlp_out(self.act(self.mlp_in(x)))
        return self.unembed(x[:, -1])

    def forward(self, tokens: torch.Tensor) -> torch.Tensor:
        return self.forward_embedded(self.embed(tokens))


def transformer(p: int, d_model: int = 128, n_heads: int = 4, d_head: int = 32, d_mlp: int = 512,
                n_ctx: int = 3, activation_name: str = "relu") -> OneLayerTransformer:
    """Builder for :class:`OneLayerTransformer` (defaults: Nanda et al.)."""
    return OneLayerTransformer(p, d_model, n_heads, d_head, d_mlp, n_ctx, activation_name)
