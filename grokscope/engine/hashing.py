"""Content hashes of state dicts: equal weights give equal hashes whatever the file format or metadata."""

from __future__ import annotations

import hashlib
from typing import Mapping

import torch


def tensor_bytes(t: torch.Tensor) -> memoryview:
    """The raw bytes of ``t`` (CPU, contiguous, any dtype incl. bfloat16/bool, 0-d included)."""
    t = t.detach().cpu().contiguous().reshape(-1)
    return memoryview(t.view(torch.uint8).numpy())


def state_dict_hash(sd: Mapping[str, torch.Tensor]) -> str:
    """A 32-hex-digit BLAKE2b digest of a state dict: keys (sorted), dtypes, shapes and tensor bytes.

    File metadata (e.g. the ``step`` written into safetensors headers) does not enter, so the same
    weights saved at two steps hash the same: that is how ``grokscope scan`` finds duplicates.
    """
    h = hashlib.blake2b(digest_size=16)
    for key in sorted(sd):
        t = sd[key]
        h.update(key.encode())
        h.update(b"\0")
        h.update(str(t.dtype).encode())
        h.update(repr(tuple(t.shape)).encode())
        h.update(tensor_bytes(t))
    return h.hexdigest()
