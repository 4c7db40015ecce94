"""The probe store: xarray on Zarr v3, one group per run, a sub-group per probe, one writer.

This module is the writer (:class:`ProbeStore`); the read view is :mod:`.store_view`
(:func:`~.store_view.open_store`, :func:`~.store_view.load_group`) and the shared schema
(constants, dtypes, missing values, output signatures) :mod:`.store_schema`.

Layout (``xr.open_datatree(path, engine="zarr", consolidated=False)``)::

    /                       attrs: grokscope_version
    /<run>                  attrs: path, rel, model, dataset, train (the run's spec)
    /<run>/<probe>          dims: step (+ the probe's own: split, layer, eps, ...)
        step                int64 coordinate: the checkpoints' training steps
        <outputs>           (step, ...) the probe's variables
        done                (step,) bool: this (run, step, probe) job is complete
        error               (step,) str: why the last attempt failed ('' otherwise)
        checkpoint_hash     (step,) str: content hash of the checkpoint's tensors
        checkpoint_etag     (step,) str: a remote checkpoint's listed ETags, hashed ('' if local; new)
        attrs: probe, params (dict), params_json, seed, model, dataset, grokscope_version,
               committed_steps (the rows of every step-dim array that are committed), ...

Write rules (Zarr v3 has no write synchroniser; see DESIGN.md "Store"):

* only the driver process writes (workers return numpy results), so no two writers ever touch a chunk;
* the template of a (run, probe) group is written once by xarray (``compute=False``, ``zarr_format=3``,
  ``consolidated=False``), sized to every step known at the time; its output variables are shaped
  from the probe's declared template (``Probe.template``, built before any job runs from the
  parameters, the model and the data) or, for a probe that declares none, from its first result;
  it is built in ``STORE/.grokscope-tmp/`` and renamed into place, so readers see all of it or none
  (on object storage, which has no rename: built in a local temporary folder, every file uploaded
  but the group's ``zarr.json``, then that one last: a group without it is absent to readers, and
  the next writer deletes such a leftover; see :mod:`.storefs`);
* ``step`` is chunked at 1 and chunks are grouped into shards along ``step`` (Zarr v3 sharding), so
  10 000 checkpoints make a few shard files per variable, not 10 000; a shard holds at most 1024 steps
  and about 1 MiB of its variable (sized per variable, so one large output does not cut the group's
  scalars into small shards);
* results are written into their step region (``arr[i:j] = ...``, the same region write as
  ``to_zarr(mode="r+", region=...)`` without re-opening the store each time), contiguous steps (and
  steps a few apart in one shard, with the cells between them) in one write, and the ``done`` flags
  only after the data: a killed writer leaves at most data without a ``done`` flag, which a resumed
  run recomputes;
* only the driver grows ``step`` when new checkpoints appear (arrays resized, new steps appended
  after the old ones: use ``ds.sortby("step")`` if a later run back-filled earlier steps). A growth
  resizes every step-dim array, writes the new step values, and only then raises the group's
  ``committed_steps`` attribute: the rows below it are the group. A growth killed before that
  leaves longer arrays that nobody trusts: readers (:func:`open_store`, :func:`load_group`) clip
  every step-dim array to ``committed_steps`` and the driver shrinks them back before growing again,
  so no half-grown row (a ``step = 0`` that no checkpoint has) is ever seen or counted.

Readers see each file whole (zarr writes a file aside and renames it into place) and, through
:class:`CommittedView`, every file of one open as one version (a shard read in two pieces, its index
then its chunks, is read once), the arrays clipped to the committed rows, and ``done`` read before
the data (so a ``done`` flag never shows a cell whose data the reader saw missing).

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
import weakref
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from grokscope.version import __version__
from grokscope import jsonbounds

from . import faults
from .store_schema import (COMMITTED, ENGINE_VARS, MERGE_GAP, MISSING_DOC, REMOVING, REQUIRED_ENGINE_VARS, TMP_DIR,
                           StoreError, first_dim, fill_value, normalise, shard_steps, storage_dtype, template_key)
from .storefs import StoreFS, store_fs
from .store_view import damage_named
from .lock import LOCK_NAME
from .scratch import new_folder


def _read_meta(fs: StoreFS, key: str) -> Any:
    """The JSON document of the metadata object ``key`` (bounded: :mod:`grokscope.jsonbounds`);
    ``OSError``/``ValueError`` when it is missing or not JSON."""
    raw = fs.read(key)
    if raw is None:
        raise FileNotFoundError(fs.display(key))
    return jsonbounds.loads(raw, fs.display(key))


def _mark_removing(fs: StoreFS, meta: str) -> bool:
    """Write :data:`REMOVING` into the group metadata object ``meta`` (one whole write, as zarr
    writes it); False when it is not readable JSON (nothing to mark)."""
    try:
        doc = _read_meta(fs, meta)
    except (OSError, ValueError):
        return False
    if not isinstance(doc, dict):
        return False
    doc.setdefault("attributes", {})[REMOVING] = True
    fs.write(meta, json.dumps(doc).encode())
    return True


def _removal_unfinished(fs: StoreFS, group: str) -> bool:
    """Whether the group ``group`` is what an interrupted removal left: its metadata carries
    :data:`REMOVING`, or (a removal by a grokscope before the marker existed) an engine variable is
    missing or a sub-folder is no longer a zarr node."""
    try:
        doc = _read_meta(fs, f"{group}/zarr.json")
    except (OSError, ValueError):
        return False
    if not isinstance(doc, dict) or doc.get("node_type") != "group":
        return False
    if (doc.get("attributes") or {}).get(REMOVING):
        return True
    if not fs.is_folder(f"{group}/done") or not fs.is_folder(f"{group}/step"):
        return False  # not a probe group at all: group() says so
    return any(not fs.exists(f"{group}/{v}/zarr.json") for v in REQUIRED_ENGINE_VARS) or \
        any(fs.is_folder(f"{group}/{d}") and not fs.exists(f"{group}/{d}/zarr.json") for d in fs.children(group))


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


def check_store_path(path: str | Path, storage_options: dict[str, Any] | None = None) -> None:
    """Raise :class:`StoreError` (one line naming what is there) unless ``path`` (a local path or an fsspec
    URL) is absent, an empty folder or a grokscope store: a file, a folder of other things, a Zarr v2
    store, a Zarr array or a Zarr v3 group that grokscope did not write are refused, so our groups never
    mix into them. A URL whose bucket cannot be reached raises :class:`~grokscope.locations.LocationError`."""

    fs = store_fs(path, storage_options)
    p = fs.display()
    refuse = "; refusing to write into it (choose a new or existing grokscope store with --out)"
    if fs.remote:
        fs.check_reachable()  # type: ignore[attr-defined]
        if fs.exists(""):
            raise StoreError(f"{p}: exists and is an object, not a grokscope store{refuse}")
    else:
        local = Path(path)
        if not local.exists():
            return
        if not local.is_dir():
            raise StoreError(f"{p}: exists and is a file, not a grokscope store{refuse}")
    names = {n for n in fs.children() if not n.startswith(LOCK_NAME)} - {TMP_DIR}
    if not names:
        return
    if names & set(V2_FILES):
        raise StoreError(f"{p}: is a Zarr v2 store, not a grokscope store (grokscope writes Zarr v3){refuse}")
    if "zarr.json" not in names:
        raise StoreError(f"{p}: exists and is not a Zarr store{refuse}")
    try:
        meta = _read_meta(fs, "zarr.json")
        meta = meta if isinstance(meta, dict) else {}
    except (OSError, ValueError) as e:
        raise StoreError(f"{p}/zarr.json: unreadable ({e}){refuse}") from None
    if meta.get("node_type") != "group":
        raise StoreError(f"{p}: is a Zarr {meta.get('node_type', 'node')}, not a grokscope store{refuse}")
    if "grokscope_version" not in (meta.get("attributes") or {}) and names - {"zarr.json"}:
        raise StoreError(f"{p}: is a Zarr v3 store that grokscope did not write (no grokscope_version "
                         f"attribute at its root){refuse}")


class ProbeStore:
    """The driver's handle on a store (it alone writes; see the module docstring): a local folder or
    an fsspec URL (``storage_options``: the filesystem's keyword arguments, never stored)."""

    def __init__(self, path: str | Path, read_only: bool = False,
                 storage_options: dict[str, Any] | None = None):
        """``read_only``: only read (``--dry-run``): nothing is created, repaired or cleaned, and a
        store that does not exist yet reads as empty."""
        import zarr

        check_store_path(path, storage_options)
        self.fs = store_fs(path, storage_options)
        self.path = self.fs.location  # a Path, or the URL
        self.read_only = read_only
        self.zstore = self.fs.zarr_store(read_only=read_only)
        self.groups: dict[tuple[str, str], GroupInfo] = {}
        self.templates: dict[str, Path] = {}  # template_key -> a pristine copy (see create_group)
        self._scratch_dir: Path | None = None
        # groups an interrupted removal left (see delete_group): absent to the plan, removed by apply
        self.half_removed: set[tuple[str, str]] = set()
        if read_only:
            self.root = None
            return
        root_attrs = {"grokscope_version": __version__, "layout": "run/probe"}
        # created with its attributes in one write: a root without them would read as foreign
        self.root = zarr.open_group(store=self.zstore, mode="a", zarr_format=3, attributes=root_attrs)
        if "grokscope_version" not in self.root.attrs:
            self.root.attrs.update(root_attrs)
        if not self.fs.remote:
            self.fs.remove_folder(TMP_DIR)  # left by a killed writer

    # -- reading --------------------------------------------------------------------------------
    def _zgroup(self, path: str):
        import zarr

        try:
            return zarr.open_group(store=self.zstore, path=path, mode="r" if self.read_only else "r+",
                                   zarr_format=3)
        except (FileNotFoundError, KeyError, ValueError):
            return None
        except Exception as e:  # noqa: BLE001 - zarr raises GroupNotFoundError and friends
            if type(e).__name__ in ("GroupNotFoundError", "NodeTypeValidationError", "ContainsArrayError"):
                return None
            raise

    def has_group(self, run: str, probe: str | None = None) -> bool:
        return self.fs.exists(f"{run}/{probe}/zarr.json" if probe else f"{run}/zarr.json")

    def probe_names(self, run: str) -> list[str]:
        """The names of the folders under the run group ``run`` (its probe groups, whole or not)."""
        return [n for n in self.fs.children(run) if n != "zarr.json" and self.fs.is_folder(f"{run}/{n}")]

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
        if _removal_unfinished(self.fs, f"{run}/{probe}"):
            self.half_removed.add(key)
            return None
        with damage_named(self.fs, f"{run}/{probe}"):
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
        stepped = {name: a for name, a in arrays.items() if first_dim(a) == "step"}
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

        g = zarr.open_group(store=self.zstore, path=run, mode="a", zarr_format=3)
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
        target = f"{run}/{probe}"
        if not self.fs.is_folder(target):
            return
        meta = f"{target}/zarr.json"
        if self.fs.exists(meta):
            marked = _mark_removing(self.fs, meta)
            faults.point("remove:marker")
        else:
            marked = False
        files = sorted((f for f in self.fs.files(target) if f != meta), key=lambda f: (-f.count("/"), f))
        for f in files:
            self.fs.delete(f)
            faults.point("remove:file")
        if marked or self.fs.exists(meta):
            self.fs.delete(meta)
            faults.point("remove:meta")
        self.fs.remove_folder(target)  # the empty folders left (local)

    def create_group(self, run: str, probe: str, steps: list[int], attrs: dict[str, Any],
                     first: Any = None) -> GroupInfo:
        """Write the template of a (run, probe) group: ``step``, the engine variables and, when the
        first result ``first`` (an ``xr.Dataset`` without step) is given, its variables. No data."""
        import dask.array as da
        import xarray as xr
        import zarr

        n = len(steps)
        # the probe's own dataset attributes (notes, units) from its first result; the engine's win a clash
        group_attrs = normalise({**(dict(first.attrs) if first is not None else {}), **attrs,
                                 "missing": MISSING_DOC, COMMITTED: n})
        # written beside the hierarchy, then renamed (or uploaded) into place: readers never see half of one
        aside = self._scratch() if self.fs.remote else Path(self.path) / TMP_DIR
        tmp = aside / f"{run}--{probe}-{uuid.uuid4().hex[:8]}"
        key = template_key(probe, steps, first)
        if key in self.templates:
            # the same steps and output signature as a group written before (a sweep of runs): copy that
            # pristine template, set this group's attributes (to_zarr: ~0.1-0.2 s per group, a copy ms)
            shutil.copytree(self.templates[key], tmp)
            zarr.open_group(str(tmp), mode="r+", zarr_format=3).attrs.put(group_attrs)
        else:
            s = shard_steps(n, 64)
            ds = xr.Dataset(
                {"done": (("step",), da.zeros(n, dtype=bool, chunks=s)),
                 "error": (("step",), np.full(n, "", dtype=object)),
                 "checkpoint_hash": (("step",), np.full(n, "", dtype=object)),
                 "checkpoint_etag": (("step",), np.full(n, "", dtype=object))},
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
        self.delete_group(run, probe)  # what an interrupted removal (or upload) left
        if not self.has_group(run):
            self.set_run_attrs(run, {})
        self._place(tmp, f"{run}/{probe}")
        faults.point("create:rename")
        if not self.fs.remote:
            try:
                aside.rmdir()
            except OSError:
                pass
        self.groups.pop((run, probe), None)
        info = self.group(run, probe)
        assert info is not None
        return info

    def _place(self, tmp: Path, target: str) -> None:
        """Put the template folder ``tmp`` at the group ``target`` as one commit: a rename in a local
        folder; on object storage every file uploaded but the group's ``zarr.json``, then that one
        (the commit point: without it the group is absent to readers). ``tmp`` is gone after."""
        if not self.fs.remote:
            dest = Path(self.path) / target
            dest.parent.mkdir(parents=True, exist_ok=True)
            os.rename(tmp, dest)
            return
        files = {f.relative_to(tmp).as_posix(): f for f in sorted(tmp.rglob("*")) if f.is_file()}
        meta = files.pop("zarr.json")
        self.fs.write_many({f"{target}/{k}": f.read_bytes() for k, f in files.items()})  # type: ignore[attr-defined]
        faults.point("create:upload")
        self.fs.write(f"{target}/zarr.json", meta.read_bytes())
        shutil.rmtree(tmp, ignore_errors=True)

    def _scratch(self) -> Path:
        """This handle's private local folder (pristine templates; on object storage, the templates
        being built): removed when the handle goes, or by the next handle on this machine if this
        process is killed (:mod:`.scratch`)."""
        if self._scratch_dir is None:
            self._scratch_dir = new_folder("grokscope-store-")
            weakref.finalize(self, shutil.rmtree, str(self._scratch_dir), True)
        return self._scratch_dir

    def _keep_template(self, tmp: Path) -> Path:
        """A pristine copy of the template at ``tmp`` in this handle's scratch folder."""
        copy = self._scratch() / "templates" / uuid.uuid4().hex
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
            dtype = storage_dtype(values)
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
            ds.to_zarr(self.zstore, group=f"{info.run}/{info.probe}", mode="a", zarr_format=3,
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
            if name != "step" and first_dim(arr) == "step":
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
        if "checkpoint_etag" in info.arrays:  # groups written before it existed lack it
            _put_rows(info.arrays["checkpoint_etag"], index, np.array([o.checkpoint_etag for _, o in rows], dtype=object))
        faults.point("commit:hash")
        _put_rows(info.arrays["error"], index, np.array([o.error for _, o in rows], dtype=object))
        faults.point("commit:error")
        if ok:
            done = [i for i, _ in ok]
            _put_rows(info.arrays["done"], done, np.ones(len(done), dtype=bool))
            info.done[done] = True
            faults.point("commit:done")


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
