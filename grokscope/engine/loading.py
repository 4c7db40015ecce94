"""Safe checkpoint loading: state dicts out of safetensors, sharded HF checkpoints, ``.pt``/``.pth``/
``.bin`` files and Lightning ``.ckpt`` files, matched to a model's keys.

Nothing in a checkpoint is ever executed: safetensors holds no code, and pickle-based files are read
only with ``torch.load(weights_only=True)``; a pickle that needs code to load is refused with a
message saying so. Key prefixes left by wrappers (``module.`` from DDP, ``_orig_mod.`` from
``torch.compile``, ``model.`` from Lightning, or any other single wrapper attribute) are removed
when that makes the keys match the model; otherwise the error lists missing and unexpected keys and
shape mismatches.
"""

from __future__ import annotations

import json
import pickle
import re
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import torch
from torch import nn

from grokscope.errors import GrokscopeError

from .discovery import Checkpoint

# where trainers nest the model's weights inside a saved dict, in order of preference
NESTED_KEYS = ("state_dict", "model_state_dict", "model", "module", "net", "network", "weights",
               "params")
KNOWN_PREFIXES = ("module.", "_orig_mod.", "model.")


class CheckpointError(GrokscopeError, ValueError):
    """A checkpoint could not be read or does not fit the model; the message names file and cause."""


# -- reading files --------------------------------------------------------------------------------

def _torch_load(path: Path) -> Any:
    try:
        return torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as e:
        text = str(e)
        m = re.search(r"(Unsupported global[^\n]*?)(?: Please use|\n|$)", text)
        detail = m.group(1).strip() if m else text.splitlines()[0]
        raise CheckpointError(
            f"{path}: refused: this pickle needs code to load ({detail}). grokscope reads pickles "
            "only with torch.load(weights_only=True) and never runs code from a checkpoint; re-save "
            "the weights as a plain state dict or as safetensors") from None
    except (RuntimeError, EOFError, OSError, ValueError, AttributeError, ImportError) as e:
        first = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
        raise CheckpointError(f"{path}: unreadable PyTorch file ({type(e).__name__}: {first})") from None


def _safetensors_load(path: Path) -> dict[str, torch.Tensor]:
    from safetensors.torch import load_file

    try:
        return load_file(str(path), device="cpu")
    except Exception as e:  # noqa: BLE001 - safetensors raises its own error types (and OSError)
        first = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
        raise CheckpointError(f"{path}: unreadable safetensors file ({type(e).__name__}: {first})") from None


def extract_state_dict(obj: Any, where: str) -> dict[str, torch.Tensor]:
    """The tensors of a state dict inside whatever ``torch.load`` returned.

    A flat ``{name: tensor}`` mapping is returned as is (non-tensor entries dropped); a dict holding
    one under ``state_dict`` (Lightning), ``model_state_dict``, ``model``, ``module``, ... is
    unwrapped. Raises :class:`CheckpointError` listing the top-level keys otherwise.
    """
    if isinstance(obj, Mapping):
        for key in NESTED_KEYS:
            inner = obj.get(key)
            if isinstance(inner, Mapping) and any(isinstance(v, torch.Tensor) for v in inner.values()):
                return extract_state_dict(inner, where)
        tensors = {str(k): v for k, v in obj.items() if isinstance(v, torch.Tensor)}
        if tensors and len(tensors) * 2 >= len(obj):
            return tensors
        keys = ", ".join(repr(k) for k in list(obj)[:12])
        raise CheckpointError(f"{where}: no state dict found (top-level keys: {keys}; looked under "
                              f"{', '.join(NESTED_KEYS)})")
    raise CheckpointError(f"{where}: expected a state dict, found a {type(obj).__name__}")


def read_state_dict(ckpt: Checkpoint | str | Path) -> dict[str, torch.Tensor]:
    """The raw state dict (CPU tensors, keys as saved) of one checkpoint, any supported format."""
    if not isinstance(ckpt, Checkpoint):
        p = Path(ckpt)
        kind = "safetensors" if p.name.endswith(".safetensors") else "torch"
        ckpt = Checkpoint(path=str(p), kind=kind, files=(str(p),), step=None, label=p.name)
    if ckpt.sharded:
        return _read_sharded(ckpt)
    path = Path(ckpt.path)
    if ckpt.kind == "safetensors":
        return _safetensors_load(path)
    return extract_state_dict(_torch_load(path), str(path))


def _read_sharded(ckpt: Checkpoint) -> dict[str, torch.Tensor]:
    index = Path(ckpt.path)
    try:
        weight_map = json.loads(index.read_text())["weight_map"]
    except (OSError, ValueError, KeyError, TypeError) as e:
        raise CheckpointError(f"{index}: unreadable shard index ({e})") from None
    out: dict[str, torch.Tensor] = {}
    for shard in sorted(set(weight_map.values())):
        path = index.parent / shard
        if not path.is_file():
            raise CheckpointError(f"{index}: shard {shard} is missing")
        part = (_safetensors_load(path) if ckpt.kind == "safetensors"
                else extract_state_dict(_torch_load(path), str(path)))
        out.update(part)
    missing = sorted(k for k in weight_map if k not in out)
    if missing:
        raise CheckpointError(f"{index}: {len(missing)} tensor(s) named in the index are not in their "
                              f"shards: {', '.join(missing[:8])}")
    return {k: out[k] for k in weight_map}


# -- matching to a model --------------------------------------------------------------------------

def _strip(sd: Mapping[str, torch.Tensor], prefix: str) -> dict[str, torch.Tensor] | None:
    if not all(k.startswith(prefix) for k in sd):
        return None
    return {k[len(prefix):]: v for k, v in sd.items()}


def match_keys(sd: Mapping[str, torch.Tensor], expected: Mapping[str, tuple[int, ...]],
               where: str) -> dict[str, torch.Tensor]:
    """``sd`` renamed to the model's keys ``expected`` (``{key: shape}``), with shapes checked.

    Tries, in order: the keys as saved; ``_orig_mod.`` removed everywhere; one or two leading
    wrapper components removed (``module.``, ``model.``, ``model.module.``, or any other name whose
    stripping yields exactly the model's keys, e.g. Lightning's ``net.``); a prefix added when the
    model's own keys share one. Raises :class:`CheckpointError` listing missing/unexpected keys (up to
    10 of each) or every shape mismatch.
    """
    want = set(expected)
    cands: list[dict[str, torch.Tensor]] = [dict(sd)]
    if any("_orig_mod." in k for k in sd):
        cands.append({k.replace("_orig_mod.", ""): v for k, v in sd.items()})
    chosen: dict[str, torch.Tensor] | None = None
    for cand in cands:
        if set(cand) == want:
            chosen = cand
            break
        hits = []
        heads = sorted({".".join(k.split(".")[:n]) + "." for k in cand for n in (1, 2) if k.count(".") >= n})
        for prefix in heads:
            sub = {k[len(prefix):]: v for k, v in cand.items() if k.startswith(prefix)}
            if set(sub) == want:
                hits.append((prefix, sub))
        if len(hits) > 1:
            known = [h for h in hits if h[0] in KNOWN_PREFIXES]
            if len(known) == 1:
                hits = known
        if len(hits) == 1:
            chosen = hits[0][1]  # keys outside the prefix (e.g. a loss module's buffers) are dropped
            break
        if len(hits) > 1:
            raise CheckpointError(f"{where}: ambiguous keys: the model's weights are found under "
                                  f"{' and '.join(repr(h[0]) for h in hits)}")
        # the model's keys have a prefix the checkpoint lacks
        first = next(iter(want), "")
        for n in (1, 2):
            if first.count(".") < n:
                break
            prefix = ".".join(first.split(".")[:n]) + "."
            if all(k.startswith(prefix) for k in want):
                added = {prefix + k: v for k, v in cand.items()}
                if set(added) == want:
                    chosen = added
                    break
        if chosen is not None:
            break
    if chosen is None:
        best = max(cands + [_strip(c, p) or c for c in cands for p in KNOWN_PREFIXES],
                   key=lambda c: len(set(c) & want))
        missing = sorted(want - set(best))
        unexpected = sorted(set(best) - want)
        raise CheckpointError(
            f"{where}: state dict keys do not match the model: {len(missing)} missing "
            f"({', '.join(missing[:10])}{', ...' if len(missing) > 10 else ''}), {len(unexpected)} "
            f"unexpected ({', '.join(unexpected[:10])}{', ...' if len(unexpected) > 10 else ''}); "
            f"checked prefixes {', '.join(KNOWN_PREFIXES)} and any single wrapper name. Is the model "
            "spec (--model / run.json) the one these checkpoints were saved from?")
    bad = [f"{k}: checkpoint {tuple(chosen[k].shape)} vs model {tuple(expected[k])}"
           for k in sorted(want) if tuple(chosen[k].shape) != tuple(expected[k])]
    if bad:
        raise CheckpointError(f"{where}: shape mismatch with the model ({len(bad)} tensor(s)): "
                              + "; ".join(bad[:10]) + ("; ..." if len(bad) > 10 else ""))
    return chosen


def float_dtype(sd: Mapping[str, torch.Tensor]) -> torch.dtype:
    """The dtype probes compute in for this checkpoint: float64 if its floating tensors are float64,
    else float32 (half and bfloat16 weights are upcast)."""
    floats = [t.dtype for t in sd.values() if t.is_floating_point()]
    if floats and all(d == torch.float64 for d in floats):
        return torch.float64
    return torch.float32


def load_into(model: nn.Module, sd: Mapping[str, torch.Tensor], where: str) -> nn.Module:
    """Load ``sd`` into ``model`` (in place, keys matched as in :func:`match_keys`).

    The model is first cast to :func:`float_dtype` of the checkpoint so float64 weights keep their
    precision. Returns the model.
    """
    expected = {k: tuple(v.shape) for k, v in model.state_dict().items()}
    matched = match_keys(sd, expected, where)
    model.to(float_dtype(matched))
    try:
        model.load_state_dict(matched, strict=True)
    except RuntimeError as e:
        raise CheckpointError(f"{where}: cannot load into the model: {e}") from None
    return model
