"""The read side of a probe store: :func:`open_store` and :func:`load_group` through a
:class:`CommittedView` (committed rows only, each file read as one version, groups being
removed hidden), and the naming of damaged files (:class:`DamagedStore`). Writers see
:mod:`.store`."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from zarr.storage import WrapperStore

from grokscope import jsonbounds
from grokscope.errors import GrokscopeError

from .store_schema import COMMITTED, REMOVING, TMP_DIR, StoreError
from .storefs import StoreFS, store_fs

Options = dict[str, Any] | None


def _fs(location: str | Path | StoreFS, storage_options: Options = None) -> StoreFS:
    return location if isinstance(location, StoreFS) else store_fs(location, storage_options)


def open_store(path: str | Path, storage_options: Options = None):
    """The whole store as an ``xr.DataTree`` (lazy; safe to call while a probe run is writing).
    ``path``: a local folder or an fsspec URL (``storage_options``: the filesystem's keyword
    arguments).

    Like ``xr.open_datatree(path, engine="zarr", consolidated=False)``, read through a
    :class:`CommittedView`: every group shows its committed steps only, every file is read as one
    version, and each group's ``done`` is read at open (a later read of its data is at least as
    new, so ``done`` never marks a cell that reads as missing).
    """
    import xarray as xr

    tree = xr.open_datatree(committed_view(path, storage_options), engine="zarr", consolidated=False)
    for node in tree.subtree:
        if "done" in node.variables:
            node["done"].values  # noqa: B018 - reads (and pins in the view) the done flags first
    return tree


def load_group(path: str | Path, run: str, probe: str, storage_options: Options = None):
    """One probe group of a store as an in-memory ``xr.Dataset`` (step, probe outputs, done, error,
    checkpoint_hash; attrs with parameters and provenance): its committed steps, read as in
    :func:`open_store` (``done`` first). A damaged file of the group is named
    (:class:`DamagedStore`)."""
    import xarray as xr

    fs = _fs(path, storage_options)
    with damage_named(fs, f"{run}/{probe}"):
        with xr.open_dataset(committed_view(fs), group=f"{run}/{probe}", engine="zarr",
                             consolidated=False) as ds:
            ds["done"].load()
            return ds.load()


class DamagedStore(StoreError):
    """A file of the store cannot be read (truncated, corrupted, nested too deep); the message names
    it and what to do."""


def damaged_files(path: str | Path | StoreFS, group: str = "", storage_options: Options = None
                  ) -> list[tuple[Path | str, str]]:
    """``[(file, why)]`` of the files of the store ``path`` (under ``group``) that cannot be read:
    metadata (``zarr.json``, read with :mod:`grokscope.jsonbounds`'s bounds) that is not JSON, and
    chunk or shard files that do not decode (each array is read shard by shard). Empty when every
    file reads. A file is a :class:`Path` in a local store, its URL in a remote one."""
    import itertools
    import math

    import zarr

    from grokscope.jsonbounds import MAX_BYTES, loads

    fs = _fs(path, storage_options)

    def name(key: str) -> Path | str:
        return fs.root / key if not fs.remote else fs.display(key)  # type: ignore[attr-defined]

    top = f"{group.strip('/')}/" if group else ""
    bad: list[tuple[Path | str, str]] = []
    for meta in fs.files(group.strip("/")):
        if not (meta == "zarr.json" or meta.endswith("/zarr.json")) or TMP_DIR in meta.split("/"):
            continue
        try:
            raw = fs.read(meta)
            if raw is not None:
                if len(raw) > MAX_BYTES:
                    raise ValueError(f"larger than {MAX_BYTES} bytes")
                loads(raw, name(meta))
        except (OSError, ValueError) as e:
            bad.append((name(meta), _first_line(e)))
    if bad:
        return bad
    try:
        root = zarr.open_group(store=fs.zarr_store(read_only=True), path=group, mode="r", zarr_format=3)
        arrays = [(name_, node) for name_, node in root.members(max_depth=None) if isinstance(node, zarr.Array)]
    except Exception as e:  # noqa: BLE001 - zarr raises many types for damaged metadata
        return [(name(f"{top}zarr.json"), _first_line(e))]
    for array_name, arr in arrays:
        grid = arr.shards or arr.chunks
        for idx in itertools.product(*(range(math.ceil(s / c)) for s, c in zip(arr.shape, grid))):
            region = tuple(slice(i * c, min((i + 1) * c, s)) for i, c, s in zip(idx, grid, arr.shape))
            try:
                arr[region]
            except Exception as e:  # noqa: BLE001 - a codec's error (checksum, truncated shard ...)
                bad.append((name(f"{top}{array_name}/{arr.metadata.encode_chunk_key(idx)}"), _first_line(e)))
    return bad


def _first_line(e: BaseException) -> str:
    """``Type: the first sentence of the message`` (zarr's checksum error goes on with the bytes)."""
    text = str(e).strip()
    return f"{type(e).__name__}: {text.splitlines()[0].split('. ')[0][:200]}" if text else type(e).__name__


def damage_line(path: str | Path | StoreFS, bad: list[tuple[Path | str, str]]) -> str:
    """The one line naming the damaged files ``bad`` of store ``path`` and what to do."""
    file, why = bad[0]
    more = f" (and {len(bad) - 1} more file(s))" if len(bad) > 1 else ""
    where = path.display() if isinstance(path, StoreFS) else str(path)
    rel = str(file)[len(where):].strip("/").split("/") if str(file).startswith(where) else []
    if len(rel) > 2:
        run, probe = rel[:2]
        fix = (f"recompute that group (grokscope probe on run {run} with -m {probe} --overwrite -o {where}) "
               "or probe into a fresh store (-o NEW.zarr)")
    else:
        fix = "probe into a fresh store (-o NEW.zarr)"
    return f"{file}: damaged store file ({why}){more}; {fix}"


class damage_named:
    """``with damage_named(store):`` an error reading the store (other than grokscope's own) that a
    damaged file explains becomes a :class:`DamagedStore` naming that file (:func:`damaged_files`);
    any other error passes through unchanged."""

    def __init__(self, path: str | Path | StoreFS, group: str = "", storage_options: Options = None):
        self.path, self.group, self.options = path, group, storage_options

    def __enter__(self) -> "damage_named":
        return self

    def __exit__(self, kind: Any, e: BaseException | None, tb: Any) -> bool:
        if e is None or isinstance(e, GrokscopeError) or not isinstance(e, Exception):
            return False
        fs = _fs(self.path, self.options)
        bad = damaged_files(fs, self.group)
        if bad:
            raise DamagedStore(damage_line(fs, bad)) from None
        return False


def committed_view(path: str | Path | StoreFS, storage_options: Options = None):
    """A read-only :class:`CommittedView` of the store ``path`` (a folder, an fsspec URL or a
    :class:`~.storefs.StoreFS`; for ``xr.open_*``)."""
    return CommittedView(_fs(path, storage_options).zarr_store(read_only=True))


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
