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


INITS = ("torch", "nanda")


class OneLayerTransformer(nn.Module):
    """Token ids ``(n, n_ctx)`` → logits ``(n, p)`` at the last position.

    ``init``: ``"torch"`` (token and position embeddings N(0, 1/d_model), the linear layers torch's
    default uniform) or ``"nanda"``, the authors' code: every weight matrix N(0, 1/d_model), the
    unembedding N(0, 1/(p + 1)) (their vocabulary includes ``=``), biases zero.
    """

    def __init__(self, p: int, d_model: int = 128, n_heads: int = 4, d_head: int = 32,
                 d_mlp: int = 512, n_ctx: int = 3, activation_name: str = "relu", init: str = "torch"):
        if init not in INITS:
            raise ValueError(f"transformer init must be one of {', '.join(INITS)}, got {init!r}")
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
        if init == "nanda":
            with torch.no_grad():
                for m in (self.attn.q, self.attn.k, self.attn.v, self.attn.o, self.mlp_in, self.mlp_out):
                    m.weight.normal_(0.0, 1 / math.sqrt(d_model))
                self.unembed.weight.normal_(0.0, 1 / math.sqrt(p + 1))
                self.mlp_in.bias.zero_()
                self.mlp_out.bias.zero_()

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
                n_ctx: int = 3, activation_name: str = "relu", init: str = "torch") -> OneLayerTransformer:
    """Builder for :class:`OneLayerTransformer` (defaults: Nanda et al.'s sizes)."""
    return OneLayerTransformer(p, d_model, n_heads, d_head, d_mlp, n_ctx, activation_name, init)


class AttnOnlyTransformer(nn.Module):
    """An attention-only causal language model (Elhage et al., Olsson et al.): token and learned
    position embeddings, ``n_layers`` residual blocks of causal multi-head attention
    (:class:`Attention`, each with a pre-LayerNorm), a final LayerNorm and an unembedding. Token ids
    ``(n, T)`` → next-token logits ``(n, T, vocab_size)`` at every position.

    Head ``h`` of layer ``l`` owns rows ``h * d_head : (h + 1) * d_head`` of ``blocks.l.attn.q/k/v.weight``
    and the same columns of ``blocks.l.attn.o.weight`` (:meth:`head_slices`)."""

    def __init__(self, vocab_size: int, n_ctx: int, d_model: int = 64, n_heads: int = 4, d_head: int = 16,
                 n_layers: int = 2):
        super().__init__()
        self.vocab_size, self.n_ctx, self.n_heads, self.d_head = vocab_size, n_ctx, n_heads, d_head
        self.embed_tokens = nn.Embedding(vocab_size, d_model)
        self.pos = nn.Parameter(torch.randn(n_ctx, d_model) / math.sqrt(d_model))
        nn.init.normal_(self.embed_tokens.weight, std=1 / math.sqrt(d_model))
        self.blocks = nn.ModuleList(_AttnBlock(d_model, n_heads, d_head, n_ctx) for _ in range(n_layers))
        self.ln_final = nn.LayerNorm(d_model)
        self.unembed = nn.Linear(d_model, vocab_size, bias=False)

    def embed(self, tokens: torch.Tensor) -> torch.Tensor:
        """Token embeddings ``(n, T, d_model)`` (before the position embedding)."""
        return self.embed_tokens(tokens)

    def forward_embedded(self, h: torch.Tensor) -> torch.Tensor:
        x = h + self.pos[: h.shape[1]]
        for block in self.blocks:
            x = block(x)
        return self.unembed(self.ln_final(x))

    def forward(self, tokens: torch.Tensor) -> torch.Tensor:
        return self.forward_embedded(self.embed(tokens))

    def head_slices(self, layer: int, head: int) -> dict[str, tuple[int, slice]]:
        """``{parameter name: (dim, slice)}``: the part of each attention matrix that head ``head`` of
        layer ``layer`` owns (rows of ``q``, ``k``, ``v``; columns of ``o``)."""
        s = slice(head * self.d_head, (head + 1) * self.d_head)
        p = f"blocks.{layer}.attn"
        return {f"{p}.q.weight": (0, s), f"{p}.k.weight": (0, s), f"{p}.v.weight": (0, s), f"{p}.o.weight": (1, s)}


class _AttnBlock(nn.Module):
    def __init__(self, d_model: int, n_heads: int, d_head: int, n_ctx: int):
        super().__init__()
        self.ln = nn.LayerNorm(d_model)
        self.attn = Attention(d_model, n_heads, d_head, n_ctx)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x + self.attn(self.ln(x))


def attn_only(vocab_size: int, n_ctx: int, d_model: int = 64, n_heads: int = 4, d_head: int = 16,
              n_layers: int = 2) -> AttnOnlyTransformer:
    """Builder for :class:`AttnOnlyTransformer` (``vocab_size`` and ``n_ctx`` come from a causal-LM
    dataset when trained with ``grokscope train``)."""
    return AttnOnlyTransformer(vocab_size, n_ctx, d_model, n_heads, d_head, n_layers)
