"""The one way to read a probe store: :func:`open_store`.

``grokscope.open_store(path)`` and ``xr.open_datatree(path, engine="grokscope")`` give the same
``xarray.DataTree``: one node per run, under it one node per probe, each holding only the steps whose
job is done, in increasing step order (a store that back-filled earlier checkpoints holds them after
the later ones on disk). Data stay lazy (Zarr-backed) until you ``.load()`` or compute with them; the
``done`` flags are read at once. It is safe to call while a probe run is still writing the store.

``plot``, ``report``, the accessors and the examples all read through here.
"""

from __future__ import annotations

from collections.abc import Iterable
from pathlib import Path
from typing import Any

import numpy as np

from grokscope.errors import GrokscopeError
from grokscope.engine.storefs import store_fs
from grokscope.locations import LocationError, is_url


class StoreReadError(GrokscopeError, ValueError):
    """A path that cannot be read as a probe store; the message names it and, where it can, the fix."""


def done_steps(ds: Any) -> Any:
    """Only the steps whose ``done`` flag is set (all steps if the dataset has no flag), in increasing
    step order."""
    if "done" in ds:
        ds = ds.isel(step=np.flatnonzero(np.asarray(ds["done"].values).astype(bool)))
    if "step" in ds.dims and np.any(np.diff(ds["step"].values) < 0):
        ds = ds.sortby("step")
    return ds


def _hint(path: Path) -> str:
    inside = sorted(p.name for p in path.glob("*.zarr")) if path.is_dir() else []
    if inside:
        return f"; it holds {', '.join(inside)}: pass {path / inside[0]}"
    return ""


def open_store(path: str | Path, storage_options: dict[str, Any] | None = None) -> Any:
    """The probe store at ``path`` (a local folder or an fsspec URL such as ``s3://bucket/p.zarr``;
    ``storage_options``: the filesystem's keyword arguments) as an ``xr.DataTree`` of finished steps
    (see the module docstring).

    Raises :class:`StoreReadError` naming the path when it does not exist, cannot be reached (a
    bucket that does not exist, credentials refused) or is not a Zarr store (a run folder given
    instead names the store inside it), or naming the damaged file when one cannot be read (data
    read later, lazily, name theirs under ``grokscope.engine.store_view.damage_named``)."""
    import xarray as xr

    from grokscope.engine.store_view import open_store as open_raw

    if is_url(path):
        try:
            fs = store_fs(path, storage_options)
            fs.check_reachable()  # type: ignore[attr-defined]
        except LocationError as e:
            raise StoreReadError(str(e)) from None
        if not fs.exists("zarr.json"):
            there = fs.is_folder("")
            raise StoreReadError(f"{path}: not a probe store (no zarr.json)" if there else f"{path}: no such store")
    else:
        path = Path(path)
        if not path.exists():
            raise StoreReadError(f"{path}: no such store")
        if not (path / "zarr.json").exists():
            raise StoreReadError(f"{path}: not a probe store (no zarr.json){_hint(path)}")
        fs = store_fs(path)
    try:
        raw = open_raw(fs)
    except Exception as e:  # zarr/xarray raise many types for a damaged store
        from grokscope.engine.store_view import damage_line, damaged_files

        bad = damaged_files(fs)
        if bad:
            raise StoreReadError(damage_line(path, bad)) from None
        raise StoreReadError(f"{path}: cannot open as a probe store ({type(e).__name__}: {e})") from e
    return xr.DataTree.from_dict(_groups(raw))


def _groups(raw: Any) -> dict[str, Any]:
    out = {}
    for node in raw.subtree:
        ds = node.to_dataset(inherit=False)
        out[node.path] = done_steps(ds) if "step" in ds.dims else ds
    return out


try:
    from xarray.backends import BackendEntrypoint
except ImportError:  # pragma: no cover - xarray is a dependency; keeps this module importable alone
    BackendEntrypoint = object  # type: ignore[misc,assignment]


class GrokscopeBackend(BackendEntrypoint):  # type: ignore[misc]
    """``xr.open_datatree(path, engine="grokscope")`` (registered through the ``xarray.backends`` entry
    point): :func:`open_store`. ``xr.open_dataset(path, engine="grokscope", group="run/probe")`` gives
    one probe group, also done-filtered and step-sorted."""

    description = "grokscope probe stores: finished steps only, in step order"
    url = "https://github.com/grokscope/grokscope"
    open_dataset_parameters = ("filename_or_obj", "drop_variables", "group")
    supports_groups = True

    def guess_can_open(self, filename_or_obj: Any) -> bool:
        return False  # never chosen silently: ask for engine="grokscope"

    def open_datatree(self, filename_or_obj: Any, *, drop_variables: str | Iterable[str] | None = None,
                      **kwargs: Any) -> Any:
        tree = open_store(filename_or_obj)
        return tree if not drop_variables else tree.drop_vars(drop_variables, errors="ignore")

    def open_groups_as_dict(self, filename_or_obj: Any, *, drop_variables: str | Iterable[str] | None = None,
                            **kwargs: Any) -> dict[str, Any]:
        return {node.path: node.to_dataset(inherit=False)
                for node in self.open_datatree(filename_or_obj, drop_variables=drop_variables).subtree}

    def open_dataset(self, filename_or_obj: Any, *, drop_variables: str | Iterable[str] | None = None,
                     group: str | None = None, **kwargs: Any) -> Any:
        tree = open_store(filename_or_obj)
        node = tree[group] if group else tree
        ds = node.to_dataset(inherit=False)
        return ds.drop_vars(drop_variables, errors="ignore") if drop_variables else ds
