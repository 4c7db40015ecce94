"""Which points of a split a probe looks at, and how ragged splits are stacked: one rule for all."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np
import torch

SELECTIONS = ("random", "first")


def subset_indices(n: int, k: int, seed: int = 0, selection: str = "random") -> torch.Tensor:
    """Indices ``(m,)`` of the points a probe uses from a split of ``n``: all of them, in order, when
    ``k <= 0`` or ``k >= n``; else the first ``k`` (``"first"``) or the first ``k`` of a permutation
    seeded by ``seed`` (``"random"``; the same points as :func:`grokscope.datasets.seeded_subset`)."""
    if selection not in SELECTIONS:
        raise ValueError(f"selection must be one of {', '.join(SELECTIONS)}, not {selection!r}")
    if subset_size(n, k) == n:
        return torch.arange(n)
    if selection == "first":
        return torch.arange(k)
    return torch.randperm(n, generator=torch.Generator().manual_seed(int(seed)))[:k]


def subset_size(n: int, k: int) -> int:
    """How many points :func:`subset_indices` takes from a split of ``n`` with ``k`` asked: all ``n``
    when ``k <= 0`` or ``k >= n``, else ``k`` (what a probe's sample dim is sized by, before computing)."""
    return int(n) if k <= 0 or k >= n else int(k)


def split_subset(data: Any, split: str, k: int, seed: int = 0, selection: str = "random"
                 ) -> tuple[torch.Tensor, torch.Tensor]:
    """``(x, y)`` of the points of ``data``'s ``split`` that a probe uses (:func:`subset_indices`)."""
    x, y = data.split(split)
    if subset_size(len(x), k) < len(x):
        idx = subset_indices(len(x), k, seed, selection)
        x, y = x[idx], y[idx]
    return x, y


def pad_value(dtype: np.dtype) -> object:
    """The filler of a missing point: NaN for floats, -1 for integers, False for booleans."""
    kind = np.dtype(dtype).kind
    if kind == "f" or kind == "c":
        return np.nan
    if kind in "iu":
        return -1
    if kind == "b":
        return False
    raise TypeError(f"no padding rule for dtype {dtype}")


def pad_stack(arrays: Sequence[np.ndarray], length: int, axis: int = 0, dtype: np.dtype | None = None
              ) -> np.ndarray:
    """Stack per-split arrays along a new first axis, each padded along ``axis`` to ``length`` with
    :func:`pad_value` (shape ``(len(arrays), ..., length, ...)``)."""
    if not arrays:
        raise ValueError("pad_stack needs at least one array")
    dtype = np.dtype(dtype or np.result_type(*arrays))
    first = np.asarray(arrays[0])
    shape = list(first.shape)
    shape[axis] = length
    out = np.full((len(arrays), *shape), pad_value(dtype), dtype=dtype)
    for i, a in enumerate(arrays):
        a = np.asarray(a)
        index = [slice(None)] * a.ndim
        index[axis] = slice(0, a.shape[axis])
        out[(i, *index)] = a
    return out
