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

import contextlib
import contextvars
import pickle
import re
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import Any

import torch
from torch import nn

from grokscope.errors import GrokscopeError
from grokscope.jsonbounds import read_json
from grokscope.locations import is_url

from .checkpoints import Checkpoint, shard_names

# where trainers nest the model's weights inside a saved dict, in order of preference
NESTED_KEYS = ("state_dict", "model_state_dict", "model", "module", "net", "network", "weights",
               "params")
KNOWN_PREFIXES = ("module.", "_orig_mod.", "model.")


class CheckpointError(GrokscopeError, ValueError):
    """A checkpoint could not be read or does not fit the model; the message names file and cause."""


class CheckpointDtypeError(CheckpointError):
    """A checkpoint holds integer or bool tensors where the model holds floats: a fault of that file
    (that step fails), not of the model spec (:func:`check_dtypes`)."""


# -- reading files --------------------------------------------------------------------------------

def _torch_load(path: Path) -> Any:
    try:
        return torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as e:
        raise CheckpointError(pickle_refusal(path, str(e))) from None
    except (RuntimeError, EOFError, OSError, ValueError, AttributeError, ImportError) as e:
        first = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
        raise CheckpointError(f"{path}: unreadable PyTorch file ({type(e).__name__}: {first})") from None


# torch < 2.6: "Unsupported global: GLOBAL mod.name was not an allowed global by default";
# torch 2.13: "Trying to load unsupported GLOBAL posix.system whose module posix is blocked."
_BLOCKED = re.compile(r"unsupported global:?\s*(?:GLOBAL\s+)?([\w.<>]+)(?:\s+whose module ([\w.]+) is blocked)?",
                      re.IGNORECASE)


def pickle_refusal(path: Path | str, torch_message: str) -> str:
    """The one-line refusal of a pickle that ``torch.load(weights_only=True)`` would not load: the
    file, the global it needs (from torch's ``torch_message``) and what to do instead. torch's own
    advice to retry without ``weights_only`` is never repeated: that runs the file's code."""
    m = _BLOCKED.search(torch_message)
    if m:
        what = f"it needs the global {m.group(1)}" + (f" of the blocked module {m.group(2)}" if m.group(2) else "")
    else:
        lines = [ln.strip() for ln in torch_message.splitlines() if ln.strip()
                 and "weights_only" not in ln and "Weights only load failed" not in ln
                 and "documentation" not in ln]
        what = lines[0] if lines else "it is not a plain state dict"
    return (f"{path}: refused: this pickle needs code to load ({what}). grokscope reads pickles only "
            "with torch.load(weights_only=True) and never runs code from a checkpoint; if you trust "
            "its source, convert it with your own trusted code into a plain state dict or a "
            "safetensors file, and probe that")


def _safetensors_load(path: Path, copy: bool = False) -> dict[str, torch.Tensor]:
    """The tensors of a safetensors file; ``copy``: read into memory (nothing left mapped to the
    file, which may then be deleted and its disk space freed), else mapped by safetensors."""
    from safetensors.torch import load, load_file

    try:
        if copy:
            return load(Path(path).read_bytes())
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


# the state dicts read inside a read_once() block, by checkpoint (None outside one)
_READ_ONCE: contextvars.ContextVar[dict[Any, dict[str, torch.Tensor]] | None] = \
    contextvars.ContextVar("grokscope_read_once", default=None)


@contextlib.contextmanager
def read_once() -> Iterator[None]:
    """Inside this block :func:`read_state_dict` reads each checkpoint once (the same files, sizes and
    modification times: the same checkpoint) and hands out that state dict again; the driver's
    client-side checks (the model check, then the probes' checks) run in one, so the first
    checkpoint of a run is read once before the jobs start. Nothing is kept after the block."""
    token = _READ_ONCE.set({})
    try:
        yield
    finally:
        _READ_ONCE.reset(token)


def _identity(ckpt: Checkpoint) -> tuple[Any, ...]:
    def stat(f: str) -> tuple[str, int, int]:
        try:
            st = Path(f).stat()
            return f, st.st_size, st.st_mtime_ns
        except OSError:
            return f, -1, -1
    return (ckpt.path, ckpt.kind) + tuple(stat(f) for f in (ckpt.files or (ckpt.path,)))


def read_state_dict(ckpt: Checkpoint | str | Path) -> dict[str, torch.Tensor]:
    """The raw state dict (CPU tensors, keys as saved) of one checkpoint, any supported format.

    A checkpoint at an fsspec URL is fetched into the local cache under the budget, read, and its
    files deleted (:mod:`.fetch`). Inside :func:`read_once`, each checkpoint is read once."""
    if not isinstance(ckpt, Checkpoint):
        name = str(ckpt).rstrip("/").rsplit("/", 1)[-1]
        kind = "safetensors" if name.endswith(".safetensors") else "torch"
        ckpt = Checkpoint(path=str(ckpt), kind=kind, files=(str(ckpt),), step=None, label=name)
    memo = _READ_ONCE.get()
    if memo is None:
        return _read(ckpt)
    key = _identity(ckpt)
    if key not in memo:
        memo[key] = _read(ckpt)
    return dict(memo[key])


def _read(ckpt: Checkpoint) -> dict[str, torch.Tensor]:
    return _read_remote(ckpt) if is_url(ckpt.path) else _read_local(ckpt)


def _read_remote(ckpt: Checkpoint) -> dict[str, torch.Tensor]:
    from . import fetch

    try:
        with fetch.local_copy(ckpt) as local:
            return _read_local(local, copy=True)
    except fetch.FetchError as e:
        raise CheckpointError(str(e)) from None
    except OSError as e:
        raise CheckpointError(f"{ckpt.path}: cannot fetch ({type(e).__name__}: {e})") from None
    except CheckpointError as e:  # name the remote file, not the cache's copy
        raise CheckpointError(str(e).replace(str(Path(local.path).parent) + "/",
                                             ckpt.path.rsplit("/", 1)[0] + "/")) from None


def _read_local(ckpt: Checkpoint, copy: bool = False) -> dict[str, torch.Tensor]:
    if ckpt.sharded:
        return _read_sharded(ckpt, copy)
    path = Path(ckpt.path)
    if ckpt.kind == "safetensors":
        return _safetensors_load(path, copy)
    return extract_state_dict(_torch_load(path), str(path))


def _read_sharded(ckpt: Checkpoint, copy: bool = False) -> dict[str, torch.Tensor]:
    index = Path(ckpt.path)
    try:
        weight_map = read_json(index)["weight_map"]
        shards = shard_names(weight_map, index)
    except (OSError, ValueError, KeyError, TypeError) as e:
        raise CheckpointError(f"{index}: unreadable shard index ({e})") from None
    out: dict[str, torch.Tensor] = {}
    for shard in shards:
        path = index.parent / shard
        if not path.is_file():
            raise CheckpointError(f"{index}: shard {shard} is missing")
        part = (_safetensors_load(path, copy) if ckpt.kind == "safetensors"
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


def check_dtypes(sd: Mapping[str, torch.Tensor], expected: Mapping[str, torch.dtype], where: str) -> None:
    """Raise :class:`CheckpointError` listing every tensor of ``sd`` that is not floating point where
    the model's own tensor (``expected``: ``{key: dtype}``, keys as the model names them) is floating:
    integer or bool weights are not weights, whatever a cast would make of them."""
    bad = [f"{k}: checkpoint {str(t.dtype).removeprefix('torch.')} vs model "
           f"{str(expected[k]).removeprefix('torch.')}" for k, t in sorted(sd.items())
           if k in expected and expected[k].is_floating_point and not t.is_floating_point()]
    if bad:
        raise CheckpointDtypeError(f"{where}: dtype mismatch with the model ({len(bad)} tensor(s) not floating "
                              "point where the model holds floats): " + "; ".join(bad[:10])
                              + ("; ..." if len(bad) > 10 else "") + "; not a checkpoint of this model's weights")


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
    precision. A tensor that is not floating point (integers, bool, complex) where the model holds
    floats is refused (:func:`check_dtypes`): it would be cast silently into plausible weights.
    Returns the model.
    """
    own = model.state_dict()
    expected = {k: tuple(v.shape) for k, v in own.items()}
    matched = match_keys(sd, expected, where)
    check_dtypes(matched, {k: v.dtype for k, v in own.items()}, where)
    model.to(float_dtype(matched))
    try:
        model.load_state_dict(matched, strict=True)
    except RuntimeError as e:
        raise CheckpointError(f"{where}: cannot load into the model: {e}") from None
    return model
