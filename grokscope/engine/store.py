"""The probe store: xarray on Zarr v3, one group per run, a sub-group per probe, one writer.

Layout (``xr.open_datatree(path, engine="zarr", consolidated=False)``)::

    /                       attrs: grokscope_version
    /<run>                  attrs: path, rel, model, dataset, train (the run's spec)
    /<run>/<probe>          dims: step (+ the probe's own: split, layer, eps, ...)
        step                int64 coordinate: the checkpoints' training steps
        <outputs>           (step, ...) the probe's variables
        done                (step,) bool: this (run, step, probe) job is complete
        error               (step,) str: why the last attempt failed ('' otherwise)
        checkpoint_hash     (step,) str: content hash of the checkpoint's tensors
        attrs: probe, params (dict), params_json, seed, model, dataset, grokscope_version,
               committed_steps (the rows of every step-dim array that are committed), ...

Write rules (Zarr v3 has no write synchroniser; see DESIGN.md "Store"):

* only the driver process writes (workers return numpy results), so no two writers ever touch a chunk;
* the template of a (run, probe) group is written once by xarray (``compute=False``, ``zarr_format=3``,
  ``consolidated=False``), sized to every step known at the time; its output variables are shaped
  from the probe's declared template (``Probe.template``, built before any job runs from the
  parameters, the model and the data) or, for a probe that declares none, from its first result;
  it is built in ``STORE/.grokscope-tmp/`` and renamed into place, so readers see all of it or none;
* ``step`` is chunked at 1 and chunks are grouped into shards along ``step`` (Zarr v3 sharding), so
  10 000 checkpoints make a few shard files per variable, not 10 000; a shard holds at most 1024 steps
  and about 1 MiB of its variable (sized per variable, so one large output does not cut the group's
  scalars into small shards);
* results are written into their step region (``arr[i:j] = ...``, the same region write as
  ``to_zarr(mode="r+", region=...)`` without re-opening the store each time), contiguous steps (and
  steps a few apart in one shard, with the cells between them) in one write, and the ``done`` flags
  only after the data: a killed writer leaves at most data without a
  ``done`` flag, which a resumed run recomputes;
* only the driver grows ``step`` when new checkpoints appear (arrays resized, new steps appended
  after the old ones: use ``ds.sortby("step")`` if a later run back-filled earlier steps). A growth
  resizes every step-dim array, writes the new step values, and only then raises the group's
  ``committed_steps`` attribute: the rows below it are the group. A growth killed before that
  leaves longer arrays that nobody trusts: readers (:func:`open_store`, :func:`load_group`) clip
  every step-dim array to ``committed_steps`` and the driver shrinks them back before growing again,
  so no half-grown row (a ``step = 0`` that no checkpoint has) is ever seen or counted.

Readers see each file whole (zarr writes a file aside and renames it into place) and, through
:class:`CommittedView`, every file of one open as one version (a shard read in two pieces, its
index then its chunks, is read once), the arrays clipped to the committed rows, and ``done`` read
before the data (so a ``done`` flag never shows a cell whose data the reader saw missing).

Missing values: floats are NaN; integers are stored with the fill value ``-2**63`` (``_FillValue``,
so xarray shows NaN as floats; open with ``mask_and_scale=False`` for raw ints); unsigned integers
with ``2**64-1``; booleans ``False``; strings ``''``. ``done`` says which cells are real.
"""

from __future__ import annotations

import json
import os
import shutil
import uuid
import warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
from zarr.storage import WrapperStore

import grokscope
from grokscope import jsonbounds
from grokscope.errors import GrokscopeError

from . import faults

ENGINE_VARS = ("done", "error", "checkpoint_hash")
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


def _mark_removing(meta: Path) -> bool:
    """Write :data:`REMOVING` into the group metadata file ``meta`` (aside, then renamed over it,
    as zarr writes it); False when the file is not readable JSON (nothing to mark)."""
    try:
        doc = jsonbounds.read_json(meta)
    except (OSError, ValueError):
        return False
    if not isinstance(doc, dict):
        return False
    doc.setdefault("attributes", {})[REMOVING] = True
    tmp = meta.with_name(f"zarr.json.{uuid.uuid4().hex[:8]}.partial")
    tmp.write_text(json.dumps(doc))
    os.replace(tmp, meta)
    return True


def _removal_unfinished(folder: Path) -> bool:
    """Whether the group folder ``folder`` is what an interrupted removal left: its metadata carries
    :data:`REMOVING`, or (a removal by a grokscope before the marker existed) an engine variable is
    missing or a sub-folder is no longer a zarr node."""
    try:
        doc = jsonbounds.read_json(folder / "zarr.json")
    except (OSError, ValueError):
        return False
    if not isinstance(doc, dict) or doc.get("node_type") != "group":
        return False
    if (doc.get("attributes") or {}).get(REMOVING):
        return True
    if not (folder / "done").is_dir() or not (folder / "step").is_dir():
        return False  # not a probe group at all: group() says so
    return any(not (folder / v / "zarr.json").is_file() for v in ENGINE_VARS) or \
        any(d.is_dir() and not (d / "zarr.json").is_file() for d in folder.iterdir())


def open_store(path: str | Path):
    """The whole store as an ``xr.DataTree`` (lazy; safe to call while a probe run is writing).

    Like ``xr.open_datatree(path, engine="zarr", consolidated=False)``, read through a
    :class:`CommittedView`: every group shows its committed steps only, every file is read as one
    version, and each group's ``done`` is read at open (a later read of its data is at least as
    new, so ``done`` never marks a cell that reads as missing).
    """
    import xarray as xr

    tree = xr.open_datatree(committed_view(path), engine="zarr", consolidated=False)
    for node in tree.subtree:
        if "done" in node.variables:
            node["done"].values  # noqa: B018 - reads (and pins in the view) the done flags first
    return tree


def load_group(path: str | Path, run: str, probe: str):
    """One probe group of a store as an in-memory ``xr.Dataset`` (step, probe outputs, done, error,
    checkpoint_hash; attrs with parameters and provenance): its committed steps, read as in
    :func:`open_store` (``done`` first). A damaged file of the group is named
    (:class:`DamagedStore`)."""
    import xarray as xr

    with damage_named(path, f"{run}/{probe}"):
        with xr.open_dataset(committed_view(path), group=f"{run}/{probe}", engine="zarr",
                             consolidated=False) as ds:
            ds["done"].load()
            return ds.load()


class DamagedStore(StoreError):
    """A file of the store cannot be read (truncated, corrupted, nested too deep); the message names
    it and what to do."""


def damaged_files(path: str | Path, group: str = "") -> list[tuple[Path, str]]:
    """``[(file, why)]`` of the files of the store ``path`` (under ``group``) that cannot be read:
    metadata (``zarr.json``, read with :mod:`grokscope.jsonbounds`'s bounds) that is not JSON, and
    chunk or shard files that do not decode (each array is read shard by shard). Empty when every
    file reads."""
    import itertools
    import math

    import zarr

    from grokscope.jsonbounds import read_json

    top = Path(path) / group if group else Path(path)
    bad: list[tuple[Path, str]] = []
    for meta in sorted(top.rglob("zarr.json")) if top.is_dir() else []:
        if TMP_DIR in meta.parts:
            continue
        try:
            read_json(meta)
        except (OSError, ValueError) as e:
            bad.append((meta, _first_line(e)))
    if bad:
        return bad
    try:
        root = zarr.open_group(str(path), path=group, mode="r", zarr_format=3)
        arrays = [(name, node) for name, node in root.members(max_depth=None) if isinstance(node, zarr.Array)]
    except Exception as e:  # noqa: BLE001 - zarr raises many types for damaged metadata
        return [(top / "zarr.json", _first_line(e))]
    for name, arr in arrays:
        grid = arr.shards or arr.chunks
        for idx in itertools.product(*(range(math.ceil(s / c)) for s, c in zip(arr.shape, grid))):
            region = tuple(slice(i * c, min((i + 1) * c, s)) for i, c, s in zip(idx, grid, arr.shape))
            try:
                arr[region]
            except Exception as e:  # noqa: BLE001 - a codec's error (checksum, truncated shard ...)
                bad.append((top / name / arr.metadata.encode_chunk_key(idx), _first_line(e)))
    return bad


def _first_line(e: BaseException) -> str:
    """``Type: the first sentence of the message`` (zarr's checksum error goes on with the bytes)."""
    text = str(e).strip()
    return f"{type(e).__name__}: {text.splitlines()[0].split('. ')[0][:200]}" if text else type(e).__name__


def damage_line(path: str | Path, bad: list[tuple[Path, str]]) -> str:
    """The one line naming the damaged files ``bad`` of store ``path`` and what to do."""
    file, why = bad[0]
    more = f" (and {len(bad) - 1} more file(s))" if len(bad) > 1 else ""
    try:
        run, probe = Path(file).relative_to(Path(path)).parts[:2]
        fix = (f"recompute that group (grokscope probe on run {run} with -m {probe} --overwrite -o {path}) "
               "or probe into a fresh store (-o NEW.zarr)")
    except ValueError:
        fix = "probe into a fresh store (-o NEW.zarr)"
    return f"{file}: damaged store file ({why}){more}; {fix}"


class damage_named:
    """``with damage_named(store):`` an error reading the store (other than grokscope's own) that a
    damaged file explains becomes a :class:`DamagedStore` naming that file (:func:`damaged_files`);
    any other error passes through unchanged."""

    def __init__(self, path: str | Path, group: str = ""):
        self.path, self.group = Path(path), group

    def __enter__(self) -> "damage_named":
        return self

    def __exit__(self, kind: Any, e: BaseException | None, tb: Any) -> bool:
        if e is None or isinstance(e, GrokscopeError) or not isinstance(e, Exception):
            return False
        bad = damaged_files(self.path, self.group)
        if bad:
            raise DamagedStore(damage_line(self.path, bad)) from None
        return False


def committed_view(path: str | Path):
    """A read-only :class:`CommittedView` of the store folder ``path`` (for ``xr.open_*``)."""
    from zarr.storage import LocalStore

    return CommittedView(LocalStore(str(path), read_only=True))


class CommittedView(WrapperStore):
    """A read-only zarr store over a probe store that shows what is committed, consistently.

    * an array whose first dim is ``step`` reads with ``shape[0]`` clipped to its group's
      ``committed_steps`` (read once per group per view, before the arrays' shapes): rows of a
      growth in progress are not there (the attribute itself is not shown);
    * every chunk or shard file is read whole, once per view, and served from that copy (zarr
      reads a shard's index and then its chunks in separate requests, which could otherwise
      come from two versions of the file);
    * the writer's temporary files and the lock file are not listed.
    """

    def __init__(self, store):
        super().__init__(store)
        self._committed: dict[str, int | None] = {}
        self._files: dict[str, bytes | None] = {}

    def _with_store(self, store):
        return type(self)(store)

    async def _group_committed(self, group: str, prototype) -> int | None:
        if group not in self._committed:
            raw = await self._store.get(f"{group}/zarr.json" if group else "zarr.json", prototype)
            n = None
            if raw is not None:
                n = (jsonbounds.loads(raw.to_bytes(), f"{group}/zarr.json").get("attributes") or {}).get(COMMITTED)
            self._committed.setdefault(group, None if n is None else int(n))
        return self._committed[group]

    async def get(self, key, prototype, byte_range=None):
        if key == "zarr.json" or key.endswith("/zarr.json"):
            node = key[: -len("/zarr.json")] if "/" in key else ""
            parent = node.rsplit("/", 1)[0] if "/" in node else ""
            # the marker before the array's shape: arrays only grow before the marker rises, so
            # every array read after it is at least that long
            n = await self._group_committed(parent, prototype) if node else None
            raw = await self._store.get(key, prototype, byte_range)
            if raw is None or byte_range is not None:
                return raw
            meta = jsonbounds.loads(raw.to_bytes(), key)
            dims = meta.get("dimension_names") or []
            if meta.get("node_type") == "array" and dims and dims[0] == "step":
                if n is not None and meta["shape"][0] > n:
                    meta["shape"][0] = n
                    return prototype.buffer.from_bytes(json.dumps(meta).encode())
            elif meta.get("node_type") == "group" and (meta.get("attributes") or {}).get(REMOVING):
                return None  # a group being removed is gone from the moment it is marked
            elif meta.get("node_type") == "group" and COMMITTED in (meta.get("attributes") or {}):
                mark = meta["attributes"].pop(COMMITTED)  # applied here; not a property of the data
                self._committed.setdefault(node, int(mark))
                return prototype.buffer.from_bytes(json.dumps(meta).encode())
            return raw
        if key not in self._files:
            raw = await self._store.get(key, prototype)
            self._files.setdefault(key, None if raw is None else raw.to_bytes())
        data = self._files[key]
        if data is None:
            return None
        return prototype.buffer.from_bytes(_byte_range(data, byte_range))

    async def get_partial_values(self, prototype, key_ranges):
        return [await self.get(k, prototype, r) for k, r in key_ranges]

    async def _get_many(self, requests):
        for key, prototype, byte_range in requests:
            yield key, await self.get(key, prototype, byte_range)

    async def list_dir(self, prefix):
        from zarr.core.buffer import default_buffer_prototype

        async for name in self._store.list_dir(prefix):
            if name.endswith(".partial") or name.startswith(".grokscope"):
                continue
            run = prefix.strip("/")
            if name != "zarr.json" and run and "/" not in run:  # a run's children: its probe groups
                key = f"{run}/{name}/zarr.json"
                raw = await self._store.get(key, default_buffer_prototype())
                if raw is None:
                    continue  # not a node: the empty folder of a removed group
                if b'"%s"' % REMOVING.encode() in raw.to_bytes() and \
                        (jsonbounds.loads(raw.to_bytes(), key).get("attributes") or {}).get(REMOVING):
                    continue  # a group being removed (see ProbeStore.delete_group)
            yield name


def _byte_range(data: bytes, request: Any) -> bytes:
    """The bytes of ``data`` that a zarr ``ByteRequest`` (or None: all) asks for."""
    from zarr.abc.store import OffsetByteRequest, RangeByteRequest, SuffixByteRequest

    if request is None:
        return data
    if isinstance(request, RangeByteRequest):
        return data[request.start:request.end]
    if isinstance(request, OffsetByteRequest):
        return data[request.offset:]
    if isinstance(request, SuffixByteRequest):
        return data[max(0, len(data) - request.suffix):]
    raise TypeError(f"unexpected byte range {request!r}")




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


def _storage_dtype(values: np.ndarray) -> np.dtype:
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


@dataclass
class GroupInfo:
    """What the driver knows about one (run, probe) group while writing it."""

    run: str
    probe: str
    steps: list[int]
    done: np.ndarray
    attrs: dict[str, Any]
    arrays: dict[str, Any] = field(default_factory=dict)  # zarr arrays by name
    zgroup: Any = None  # the zarr group (its attributes hold the committed-length marker)
    data_vars: set[str] = field(default_factory=set)
    coords: dict[str, np.ndarray] = field(default_factory=dict)  # non-step coordinates
    index: dict[int, int] = field(default_factory=dict)

    def __post_init__(self) -> None:
        self.index = {s: i for i, s in enumerate(self.steps)}


V2_FILES = (".zgroup", ".zarray", ".zattrs", ".zmetadata")


def check_store_path(path: str | Path) -> None:
    """Raise :class:`StoreError` (one line naming what is there) unless ``path`` is absent, an empty
    folder or a grokscope store: a file, a folder of other things, a Zarr v2 store, a Zarr array or a
    Zarr v3 group that grokscope did not write are refused, so our groups never mix into them."""
    from .lock import LOCK_NAME

    p = Path(path)
    if not p.exists():
        return
    refuse = "; refusing to write into it (choose a new or existing grokscope store with --out)"
    if not p.is_dir():
        raise StoreError(f"{p}: exists and is a file, not a grokscope store{refuse}")
    names = {c.name for c in p.iterdir()} - {LOCK_NAME, TMP_DIR}
    if not names:
        return
    if names & set(V2_FILES):
        raise StoreError(f"{p}: is a Zarr v2 store, not a grokscope store (grokscope writes Zarr v3){refuse}")
    if "zarr.json" not in names:
        raise StoreError(f"{p}: exists and is not a Zarr store{refuse}")
    try:
        meta = jsonbounds.read_json(p / "zarr.json")
        meta = meta if isinstance(meta, dict) else {}
    except (OSError, ValueError) as e:
        raise StoreError(f"{p}/zarr.json: unreadable ({e}){refuse}") from None
    if meta.get("node_type") != "group":
        raise StoreError(f"{p}: is a Zarr {meta.get('node_type', 'node')}, not a grokscope store{refuse}")
    if "grokscope_version" not in (meta.get("attributes") or {}) and names - {"zarr.json"}:
        raise StoreError(f"{p}: is a Zarr v3 store that grokscope did not write (no grokscope_version "
                         f"attribute at its root){refuse}")


class ProbeStore:
    """The driver's handle on a store folder (it alone writes; see the module docstring)."""

    def __init__(self, path: str | Path, read_only: bool = False):
        """``read_only``: only read (``--dry-run``): nothing is created, repaired or cleaned, and a
        store that does not exist yet reads as empty."""
        import zarr

        self.path = Path(path)
        self.read_only = read_only
        check_store_path(self.path)
        self.groups: dict[tuple[str, str], GroupInfo] = {}
        self.templates: dict[str, Path] = {}  # template_key -> a pristine copy (see create_group)
        self._template_dir: Path | None = None
        # groups an interrupted removal left (see delete_group): absent to the plan, removed by apply
        self.half_removed: set[tuple[str, str]] = set()
        if read_only:
            self.root = None
            return
        root_attrs = {"grokscope_version": grokscope.__version__, "layout": "run/probe"}
        # created with its attributes in one write: a root without them would read as foreign
        self.root = zarr.open_group(str(self.path), mode="a", zarr_format=3, attributes=root_attrs)
        if "grokscope_version" not in self.root.attrs:
            self.root.attrs.update(root_attrs)
        shutil.rmtree(self.path / TMP_DIR, ignore_errors=True)  # left by a killed writer

    # -- reading --------------------------------------------------------------------------------
    def _zgroup(self, path: str):
        import zarr

        try:
            return zarr.open_group(str(self.path), path=path, mode="r" if self.read_only else "r+",
                                   zarr_format=3)
        except (FileNotFoundError, KeyError, ValueError):
            return None
        except Exception as e:  # noqa: BLE001 - zarr raises GroupNotFoundError and friends
            if type(e).__name__ in ("GroupNotFoundError", "NodeTypeValidationError", "ContainsArrayError"):
                return None
            raise

    def has_group(self, run: str, probe: str | None = None) -> bool:
        p = self.path / run / (probe or "") / "zarr.json"
        return p.is_file()

    def run_attrs(self, run: str) -> dict[str, Any] | None:
        g = self._zgroup(run) if self.has_group(run) else None
        return dict(g.attrs) if g is not None else None

    def group(self, run: str, probe: str) -> GroupInfo | None:
        """The (cached) state of an existing (run, probe) group, or None."""
        key = (run, probe)
        if key in self.groups:
            return self.groups[key]
        if not self.has_group(run, probe):
            return None
        if _removal_unfinished(self.path / run / probe):
            self.half_removed.add(key)
            return None
        with damage_named(self.path, f"{run}/{probe}"):
            g = self._zgroup(f"{run}/{probe}")
            if g is None:
                return None
            arrays = {name: g[name] for name in g.array_keys()}
            if "step" not in arrays or "done" not in arrays:
                raise StoreError(f"{self.path}/{run}/{probe}: not a grokscope probe group (no step/done)")
            n = self._repair(g, arrays)
            steps = [int(s) for s in arrays["step"][:n]]
            done = np.asarray(arrays["done"][:n], dtype=bool)
        info = GroupInfo(run=run, probe=probe, steps=steps, done=done, attrs=dict(g.attrs), arrays=arrays,
                         zgroup=g)
        for name, arr in arrays.items():
            dims = tuple(arr.metadata.dimension_names or ())
            if name in ENGINE_VARS or name == "step":
                continue
            if dims and dims[0] == "step":
                info.data_vars.add(name)
            elif name in dims or len(dims) <= 1:
                info.coords[name] = np.asarray(arr[...])
        self.groups[key] = info
        return info

    def _repair(self, g: Any, arrays: dict[str, Any]) -> int:
        """The committed length of a group, its step-dim arrays shrunk back to it if a growth was
        killed half-way (driver only).

        Groups written before the marker existed get the length every array has, cut before the
        first repeated step value (the phantom ``step = 0`` rows of a growth killed there).
        """
        stepped = {name: a for name, a in arrays.items() if _first_dim(a) == "step"}
        mark = g.attrs.get(COMMITTED)
        if mark is None:
            n = min(int(a.shape[0]) for a in stepped.values())
            seen: set[int] = set()
            for i, s in enumerate(int(v) for v in arrays["step"][:n]):
                if s in seen:
                    n = i
                    break
                seen.add(s)
        else:
            n = int(mark)
        if self.read_only:
            return n
        for name, arr in sorted(stepped.items()):
            if int(arr.shape[0]) != n:
                arr.resize((n,) + tuple(arr.shape[1:]))
                faults.point(f"repair:resize:{name}")
        if mark is None:
            g.attrs.update({COMMITTED: n})
        return n

    # -- structure (driver only) ----------------------------------------------------------------
    def set_run_attrs(self, run: str, attrs: dict[str, Any]) -> None:
        import zarr

        g = zarr.open_group(str(self.path), path=run, mode="a", zarr_format=3)
        new = normalise(attrs)
        current = dict(g.attrs)
        if any(current.get(k) != v for k, v in new.items()):  # zarr rewrites zarr.json per key set
            g.attrs.update(new)

    def delete_group(self, run: str, probe: str) -> None:
        """Remove a (run, probe) group (``--overwrite``), as a commit of its own.

        The commit point is the :data:`REMOVING` attribute written into the group's ``zarr.json``
        (one whole-file write, as every other commit point): from then on the group reads as absent
        (:meth:`group`, :class:`CommittedView`) and a killed removal is finished by the next writer.
        Then every other file goes, in any order, and the group's ``zarr.json`` last, so a folder
        that still holds files always holds the marker too.
        """
        self.groups.pop((run, probe), None)
        self.half_removed.discard((run, probe))
        target = self.path / run / probe
        if not target.exists():
            return
        meta = target / "zarr.json"
        if meta.is_file():
            marked = _mark_removing(meta)
            faults.point("remove:marker")
        else:
            marked = False
        files = sorted((f for f in target.rglob("*") if f.is_file() and f != meta),
                       key=lambda f: (-len(f.parts), str(f)))
        for f in files:
            f.unlink()
            faults.point("remove:file")
        if marked or meta.is_file():
            meta.unlink()
            faults.point("remove:meta")
        shutil.rmtree(target, ignore_errors=True)  # the empty folders left

    def create_group(self, run: str, probe: str, steps: list[int], attrs: dict[str, Any],
                     first: Any = None) -> GroupInfo:
        """Write the template of a (run, probe) group: ``step``, the engine variables and, when the
        first result ``first`` (an ``xr.Dataset`` without step) is given, its variables. No data."""
        import dask.array as da
        import xarray as xr
        import zarr

        n = len(steps)
        # the probe's own dataset attributes (notes, units) from its first result; the engine's
        # attributes win on a name clash
        group_attrs = normalise({**(dict(first.attrs) if first is not None else {}), **attrs,
                                 "missing": MISSING_DOC, COMMITTED: n})
        # written beside the hierarchy, then renamed into place: readers never see half a template
        tmp = self.path / TMP_DIR / f"{run}--{probe}-{uuid.uuid4().hex[:8]}"
        key = template_key(probe, steps, first)
        if key in self.templates:
            # the same steps and the same output signature as a group written before (a sweep of
            # runs): copy that pristine template and set this group's attributes (xarray's to_zarr
            # costs ~0.1-0.2 s per group, a copy a few ms)
            shutil.copytree(self.templates[key], tmp)
            zarr.open_group(str(tmp), mode="r+", zarr_format=3).attrs.put(group_attrs)
        else:
            s = shard_steps(n, 64)
            ds = xr.Dataset(
                {"done": (("step",), da.zeros(n, dtype=bool, chunks=s)),
                 "error": (("step",), np.full(n, "", dtype=object)),
                 "checkpoint_hash": (("step",), np.full(n, "", dtype=object))},
                coords={"step": np.asarray(steps, dtype=np.int64)}, attrs=group_attrs)
            enc = {v: {"chunks": (1,), "shards": (s,)} for v in ENGINE_VARS}
            enc["step"] = {"chunks": (s,)}
            if first is not None:
                extra, extra_enc = self._data_template(first, n)
                ds = ds.merge(extra)
                enc.update(extra_enc)
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")
                ds.to_zarr(str(tmp), mode="w", zarr_format=3, consolidated=False, compute=False,
                           encoding=enc)
            self.templates[key] = self._keep_template(tmp)
        faults.point("create:template")
        target = self.path / run / probe
        self.delete_group(run, probe)  # what an interrupted removal left
        target.parent.mkdir(parents=True, exist_ok=True)
        if not (target.parent / "zarr.json").exists():
            self.set_run_attrs(run, {})
        os.rename(tmp, target)
        faults.point("create:rename")
        try:
            (self.path / TMP_DIR).rmdir()
        except OSError:
            pass
        self.groups.pop((run, probe), None)
        info = self.group(run, probe)
        assert info is not None
        return info

    def _keep_template(self, tmp: Path) -> Path:
        """A pristine copy of the template at ``tmp`` in a private temporary folder (removed when
        this store handle goes away)."""
        if self._template_dir is None:
            import tempfile
            import weakref

            self._template_dir = Path(tempfile.mkdtemp(prefix="grokscope-templates-"))
            weakref.finalize(self, shutil.rmtree, str(self._template_dir), True)
        copy = self._template_dir / uuid.uuid4().hex
        shutil.copytree(tmp, copy)
        return copy

    def _data_template(self, first: Any, n: int) -> tuple[Any, dict[str, Any]]:
        import dask.array as da
        import xarray as xr

        out = {}
        enc: dict[str, Any] = {}
        for name, var in first.data_vars.items():
            if name in ENGINE_VARS or name == "step":
                raise StoreError(f"probe output {name!r} clashes with an engine variable")
            values = np.asarray(var.values)
            s = shard_steps(n, int(values.nbytes))  # per variable: a big one must not split the small ones
            dtype = _storage_dtype(values)
            fill = fill_value(dtype)
            shape = (n,) + values.shape
            # a zero-length dim (e.g. no layer to report) still needs chunks of length >= 1
            inner = tuple(max(1, d) for d in values.shape)
            chunks = (s,) + inner
            if dtype == object:
                data = np.full(shape, "", dtype=object)
            else:
                data = da.full(shape, fill, dtype=dtype, chunks=chunks)
            out[name] = xr.Variable(("step",) + tuple(var.dims), data, attrs=dict(var.attrs))
            e: dict[str, Any] = {"chunks": (1,) + inner, "shards": chunks}
            if dtype.kind in "fiu":
                e["_FillValue"] = fill
                if dtype.kind in "iu":
                    e["fill_value"] = fill
            enc[name] = e
        coords = {k: v.variable for k, v in first.coords.items() if "step" not in v.dims}
        return xr.Dataset(out, coords=coords), enc

    def add_data_vars(self, info: GroupInfo, first: Any) -> GroupInfo:
        """Add the variables of ``first`` that the group lacks (template only, no data)."""
        new = [v for v in first.data_vars if v not in info.data_vars]
        if not new:
            return info
        ds, enc = self._data_template(first[new], len(info.steps))
        ds = ds.drop_vars([c for c in ds.coords if c in info.coords or c == "step"])
        # mode="a" rewrites the group's attributes with these: the engine's (marker included) and
        # the probe's own from this first result (a group whose first job failed had none)
        ds.attrs = normalise({**dict(first.attrs), **info.attrs})
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            ds.to_zarr(str(self.path), group=f"{info.run}/{info.probe}", mode="a", zarr_format=3,
                       consolidated=False, compute=False, encoding=enc)
        faults.point("add-vars")
        self.groups.pop((info.run, info.probe), None)
        new_info = self.group(info.run, info.probe)
        assert new_info is not None
        return new_info

    def grow(self, info: GroupInfo, new_steps: list[int]) -> GroupInfo:
        """Append ``new_steps`` to the group's ``step`` (driver only): every step-dim array resized,
        the new step values written, then the ``committed_steps`` marker raised (the commit point:
        killed before it, readers and the next driver see the group as it was)."""
        new_steps = [s for s in new_steps if s not in info.index]
        if not new_steps:
            return info
        n0, n1 = len(info.steps), len(info.steps) + len(new_steps)
        step_arr = info.arrays["step"]
        for name, arr in sorted(info.arrays.items()):
            if name != "step" and _first_dim(arr) == "step":
                arr.resize((n1,) + tuple(arr.shape[1:]))
                faults.point(f"grow:resize:{name}")
        step_arr.resize((n1,))
        faults.point("grow:resize:step")
        step_arr[n0:n1] = np.asarray(new_steps, dtype=np.int64)
        faults.point("grow:step-values")
        info.zgroup.attrs.update({COMMITTED: n1})
        info.attrs[COMMITTED] = n1
        faults.point("grow:marker")
        info.steps = info.steps + list(new_steps)
        info.index = {s: i for i, s in enumerate(info.steps)}
        info.done = np.concatenate([info.done, np.zeros(len(new_steps), dtype=bool)])
        return info

    # -- results (driver only) ------------------------------------------------------------------
    def check_result(self, info: GroupInfo, result: Any) -> str:
        """'' if ``result`` fits the group's template, else why not (shapes/coords drifted)."""
        for name in result.data_vars:
            if name not in info.arrays:
                continue
            arr = info.arrays[name]
            shape = tuple(np.shape(result[name].values))
            if tuple(arr.shape[1:]) != shape:
                return (f"output {name!r} has shape {shape} but the store holds {tuple(arr.shape[1:])} "
                        "per step (probes must return the same shapes at every step)")
            dims = tuple(arr.metadata.dimension_names or ())[1:]
            if dims and dims != tuple(result[name].dims):
                return f"output {name!r} has dims {tuple(result[name].dims)}, the store has {dims}"
        for name, values in info.coords.items():
            if name in result.coords:
                got = np.asarray(result.coords[name].values)
                if got.shape != values.shape or not _equal(got, values):
                    return f"coordinate {name!r} differs from the store's ({got!r} vs {values!r})"
        return ""

    def write(self, info: GroupInfo, items: list[tuple[int, Any]]) -> None:
        """Write outcomes ``[(step, Outcome)]`` of one group: data, then hashes/errors, then ``done``.

        A failed outcome for a cell that was done (a stale checkpoint recomputed) first clears its
        ``done`` flag: the old results no longer describe that checkpoint.
        """
        if not items:
            return
        rows = sorted({info.index[step]: o for step, o in items}.items())  # one row per step: the last
        ok = [(i, o) for i, o in rows if o.ok]
        undone = [i for i, o in rows if not o.ok and info.done[i]]
        if undone:
            _put_rows(info.arrays["done"], undone, np.zeros(len(undone), dtype=bool))
            info.done[undone] = False
            faults.point("commit:undone")
        for name in sorted(info.data_vars):
            have = [(i, o) for i, o in ok if name in o.result.data_vars]
            if have:
                _put_rows(info.arrays[name], [i for i, _ in have],
                          np.stack([np.asarray(o.result[name].values) for _, o in have]))
                faults.point(f"commit:data:{name}")
        index = [i for i, _ in rows]
        _put_rows(info.arrays["checkpoint_hash"], index, np.array([o.checkpoint_hash for _, o in rows], dtype=object))
        faults.point("commit:hash")
        _put_rows(info.arrays["error"], index, np.array([o.error for _, o in rows], dtype=object))
        faults.point("commit:error")
        if ok:
            done = [i for i, _ in ok]
            _put_rows(info.arrays["done"], done, np.ones(len(done), dtype=bool))
            info.done[done] = True
            faults.point("commit:done")


def output_signature(ds: Any) -> dict[str, Any]:
    """What a group's template takes from a result (or a declared template) ``ds``: its variables
    (names, dims, shapes, storage dtypes, attributes) and the coordinates of its dims (names, dims,
    dtypes, values, attributes), JSON-friendly."""
    return {"vars": [(name, list(var.dims), list(np.shape(var.values)),
                      str(_storage_dtype(np.asarray(var.values))), normalise(dict(var.attrs)))
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


def _first_dim(arr: Any) -> str | None:
    dims = tuple(arr.metadata.dimension_names or ())
    return dims[0] if dims else None


def _put_rows(arr: Any, index: list[int], values: np.ndarray) -> None:
    """``arr[index] = values`` along the first (step) axis, ``index`` sorted and unique, in few writes.

    A zarr write costs ~2-4 ms plus ~0.2 ms per chunk (step) written, so contiguous rows go in one
    write, and a row after a short gap (at most ``MERGE_GAP`` steps, same shard) is merged with the
    rows before it and the cells between them (read back first) into one write, instead of a write
    per row (zarr's orthogonal-index writes fail on sharded arrays).
    """
    shard = int((getattr(arr, "shards", None) or arr.chunks)[0])
    blocks: list[list[int]] = []  # positions in ``index`` written together
    for pos, i in enumerate(index):
        prev = index[blocks[-1][-1]] if blocks else None
        if prev is not None and (i == prev + 1 or (i - prev - 1 <= MERGE_GAP and i // shard == prev // shard)):
            blocks[-1].append(pos)
        else:
            blocks.append([pos])
    for block in blocks:
        lo, hi = index[block[0]], index[block[-1]] + 1
        rows = values[block[0]:block[-1] + 1]
        if hi - lo != len(block):
            span = np.asarray(arr[lo:hi])
            if span.dtype.kind in "OTU" or rows.dtype.kind in "OTU":
                span = span.astype(object)
            span[np.asarray(index[block[0]:block[-1] + 1]) - lo] = rows
            rows = span
        arr[lo:hi] = _cast(rows, arr.dtype)


def _cast(values: np.ndarray, dtype: Any) -> np.ndarray:
    if getattr(dtype, "kind", None) in ("T", "O", "U") or str(dtype).startswith("StringDType"):
        return values.astype(object)
    return values.astype(dtype)


def _equal(a: np.ndarray, b: np.ndarray) -> bool:
    if a.dtype.kind in "fc" and b.dtype.kind in "fc":
        return bool(np.array_equal(a, b, equal_nan=True))
    return bool(np.array_equal(a.astype(str), b.astype(str)) if a.dtype.kind in "USOT" or b.dtype.kind in "USOT"
                else np.array_equal(a, b))
