"""The store's schema: its layout constants, the dtypes and missing values it stores, and the
signature of a group's outputs (what a template takes from a result). Shared by the writer
(:mod:`.store`) and the read view (:mod:`.store_view`); see :mod:`.store` for the layout."""

from __future__ import annotations

import json
from typing import Any

import numpy as np

from grokscope.errors import GrokscopeError

ENGINE_VARS = ("done", "error", "checkpoint_hash", "checkpoint_etag")
REQUIRED_ENGINE_VARS = ENGINE_VARS[:3]  # groups written before checkpoint_etag existed lack it
TMP_DIR = ".grokscope-tmp"  # templates are built here, then renamed into the hierarchy
SHARD_BYTES = 1 << 20
MAX_SHARD_STEPS = 1024
MERGE_GAP = 8  # rows of a commit at most this many steps apart are written together (see _put_rows)
MISSING_DOC = ("missing cells: NaN (floats), -2**63 via _FillValue (ints), False (bools), '' "
               "(strings); 'done' marks complete jobs, 'error' why a job failed")


class StoreError(GrokscopeError, ValueError):
    """The store cannot take these results (parameters or run spec differ, shapes drift, ...)."""


COMMITTED = "committed_steps"  # group attribute: rows of the step-dim arrays that are committed
REMOVING = "grokscope_removing"  # group attribute: the group is being removed (see delete_group)


def shard_steps(n_steps: int, bytes_per_step: int) -> int:
    """Steps per shard: a power of two ≥ ``n_steps`` (so a small run is one shard), at most
    ``MAX_SHARD_STEPS`` and about ``SHARD_BYTES`` of data."""
    by_size = max(1, SHARD_BYTES // max(1, bytes_per_step))
    cap = max(1, min(MAX_SHARD_STEPS, by_size))
    n = 1
    while n < n_steps and n < cap:
        n *= 2
    return min(n, cap)


def fill_value(dtype: np.dtype) -> Any:
    """The missing-value marker of a stored variable of ``dtype`` (see the module docstring)."""
    dtype = np.dtype(dtype)
    if dtype.kind == "f":
        return np.nan
    if dtype.kind == "i":
        return np.iinfo(dtype).min
    if dtype.kind == "u":
        return np.iinfo(dtype).max
    if dtype.kind == "b":
        return False
    if dtype.kind in "USOT":
        return ""
    raise StoreError(f"cannot store values of dtype {dtype} (use float, int, bool or str)")


def storage_dtype(values: np.ndarray) -> np.dtype:
    k = values.dtype.kind
    if k == "f":
        return values.dtype if values.dtype.itemsize >= 4 else np.dtype("float32")
    if k in "iu":
        return np.dtype("int64") if k == "i" else np.dtype("uint64")
    if k == "b":
        return np.dtype(bool)
    if k in "USOT":
        return np.dtype(object)
    raise StoreError(f"cannot store values of dtype {values.dtype} (use float, int, bool or str)")


def normalise(obj: Any) -> Any:
    """``obj`` as it reads back from JSON attributes (tuples → lists, numpy scalars → Python)."""
    return json.loads(json.dumps(obj, sort_keys=True, default=_json_default))


def _json_default(o: Any) -> Any:
    if isinstance(o, np.generic):
        return o.item()
    if isinstance(o, np.ndarray):
        return o.tolist()
    return str(o)


def output_signature(ds: Any) -> dict[str, Any]:
    """What a group's template takes from a result (or a declared template) ``ds``: its variables
    (names, dims, shapes, storage dtypes, attributes) and the coordinates of its dims (names, dims,
    dtypes, values, attributes), JSON-friendly."""
    return {"vars": [(name, list(var.dims), list(np.shape(var.values)),
                      str(storage_dtype(np.asarray(var.values))), normalise(dict(var.attrs)))
                     for name, var in sorted(ds.data_vars.items())],
            "coords": [(name, list(c.dims), str(c.dtype), np.asarray(c.values).tolist(), normalise(dict(c.attrs)))
                       for name, c in sorted(ds.coords.items()) if "step" not in c.dims]}


def template_mismatch(template: Any, result: Any) -> str:
    """'' if a probe's declared ``template`` describes ``result`` (the same :func:`output_signature`
    and dataset attributes), else the first difference, in words."""
    a, b = output_signature(template), output_signature(result)
    for part in ("vars", "coords"):
        mine, theirs = {x[0]: x for x in a[part]}, {x[0]: x for x in b[part]}
        for name in sorted(set(mine) | set(theirs)):
            if mine.get(name) != theirs.get(name):
                return (f"{part[:-1]} {name!r}: the template declares {mine.get(name, '<absent>')!r}, the "
                        f"result has {theirs.get(name, '<absent>')!r}")
    ta, ra = normalise(dict(template.attrs)), normalise(dict(result.attrs))
    if ta != ra:
        return f"dataset attributes: the template declares {ta!r}, the result has {ra!r}"
    return ""


def template_key(probe: str, steps: list[int], first: Any) -> str:
    """What a group template depends on besides its attributes: the probe, the steps and the
    first result's (or declared template's) :func:`output_signature`. Equal keys give
    byte-identical templates up to group attrs."""
    import hashlib

    sig: dict[str, Any] = {"probe": probe, "steps": [int(s) for s in steps]}
    if first is not None:
        sig.update(output_signature(first))
    text = json.dumps(sig, sort_keys=True, default=_json_default)
    return hashlib.sha256(text.encode()).hexdigest()


def first_dim(arr: Any) -> str | None:
    dims = tuple(arr.metadata.dimension_names or ())
    return dims[0] if dims else None
