"""What a state dict holds: its content hash (equal weights give equal hashes whatever the file
format, metadata or wrapper key prefixes) and its non-finite tensors."""

from __future__ import annotations

import hashlib
from typing import Mapping

import torch

# wrapper prefixes a key layout may add around the model's own keys: DDP, Lightning
WRAPPERS = ("module.", "model.")


def tensor_bytes(t: torch.Tensor) -> memoryview:
    """The raw bytes of ``t`` (CPU, contiguous, any dtype incl. bfloat16/bool, 0-d included)."""
    t = t.detach().cpu().contiguous().reshape(-1)
    return memoryview(t.view(torch.uint8).numpy())


def strip_wrappers(sd: Mapping[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """``sd`` with wrapper prefixes removed: ``_orig_mod.`` (``torch.compile``) wherever it is, then
    ``module.`` / ``model.`` as long as every key starts with it. The same weights saved plainly,
    under DDP or in a Lightning module (as ``model``) give the same keys."""
    out = {k.replace("_orig_mod.", ""): v for k, v in sd.items()}
    while out:
        head = next((w for w in WRAPPERS if all(k.startswith(w) for k in out)), None)
        if head is None:
            break
        out = {k[len(head):]: v for k, v in out.items()}
    return out


def state_dict_hash(sd: Mapping[str, torch.Tensor]) -> str:
    """A 32-hex-digit BLAKE2b digest of a state dict: keys (sorted, after :func:`strip_wrappers`),
    dtypes, shapes and tensor bytes.

    File metadata (e.g. the ``step`` written into safetensors headers) does not enter, so the same
    weights saved at two steps hash the same: that is how ``grokscope scan`` finds duplicates. The
    engine hashes the tensors matched to the model (:func:`grokscope.engine.jobs.content_hash`), so
    extra tensors a training wrapper saved beside the model do not enter either.
    """
    h = hashlib.blake2b(digest_size=16)
    sd = strip_wrappers(sd)
    for key in sorted(sd):
        t = sd[key]
        h.update(key.encode())
        h.update(b"\0")
        h.update(str(t.dtype).encode())
        h.update(repr(tuple(t.shape)).encode())
        h.update(tensor_bytes(t))
    return h.hexdigest()


def nonfinite_tensors(sd: Mapping[str, torch.Tensor]) -> list[str]:
    """``"name (k NaN, m Inf)"`` for every floating tensor of ``sd`` holding NaN or ±Inf, sorted."""
    out = []
    for key in sorted(sd):
        t = sd[key]
        if not (t.is_floating_point() or t.is_complex()) or bool(torch.isfinite(t).all()):
            continue
        nan = int(torch.isnan(t).sum())
        inf = int(torch.isinf(t).sum())
        out.append(f"{key} ({', '.join(p for p in (f'{nan} NaN' if nan else '', f'{inf} Inf' if inf else '') if p)})")
    return out


def nonfinite_message(bad: list[str]) -> str:
    """The error of a job whose checkpoint has non-finite weights ``bad`` (from
    :func:`nonfinite_tensors`)."""
    more = f" and {len(bad) - 5} more tensor(s)" if len(bad) > 5 else ""
    return f"non-finite weights in {', '.join(bad[:5])}{more}: nothing computed on this checkpoint"
