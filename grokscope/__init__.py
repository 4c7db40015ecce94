"""grokscope: progress measures for grokking, computed over saved checkpoints.

The package is laid out by job (see CONTRIBUTING.md):

* ``grokscope.datasets`` (folder ``datasets/``): one module per task, all returning :class:`Data`.
* ``grokscope.models``: model builders by name (``mlp``, ``cnn``, ``transformer`` ...).
* ``grokscope.runs``: the run format (``run.json``, checkpoints, ``log.jsonl``).
* ``grokscope.training``: the minimal trainer and its presets.
* ``grokscope.probes`` (folder ``probes/``): one module per probe family.
* ``grokscope.engine``: checkpoint discovery, the Dask driver and the Zarr store.
* ``grokscope.open_store(path)``: a store as an ``xarray.DataTree`` of finished steps (also
  ``xr.open_datatree(path, engine="grokscope")``).

Importing grokscope registers the ``ds.grok`` / ``dt.grok`` accessors (:mod:`grokscope.analysis`) —
at once if xarray is already imported, otherwise as soon as it is, so ``grokscope --help`` does not
pay for importing xarray.
"""

from __future__ import annotations

import sys
from typing import Any

__all__ = ["GrokscopeError", "open_store", "probe", "__version__"]

from grokscope.errors import GrokscopeError  # noqa: E402
from grokscope.version import __version__  # noqa: E402


def open_store(path: Any, storage_options: dict[str, Any] | None = None) -> Any:
    """The probe store at ``path`` (a folder or an fsspec URL such as ``s3://bucket/probes.zarr``;
    ``storage_options``: the filesystem's keyword arguments) as an ``xr.DataTree``: finished steps
    only, in step order (:func:`grokscope.reading.open_store`)."""
    from grokscope.reading import open_store as _open

    return _open(path, storage_options)


def probe(path: Any, probes: Any = "acc", **kwargs: Any) -> Any:
    """Run probes over every checkpoint under ``path`` into a store; returns the engine's Summary
    (:func:`grokscope.api.probe`: ``out=``, ``steps=``, ``scheduler=``, ...)."""
    from grokscope.api import probe as _probe

    return _probe(path, probes, **kwargs)


def _register_accessors() -> None:
    from grokscope.analysis import register_accessors

    register_accessors()


class _AccessorsOnXarrayImport:
    """A meta-path finder that registers the accessors right after ``xarray`` is first imported."""

    def find_spec(self, name: str, path: Any = None, target: Any = None) -> Any:
        if name != "xarray":
            return None
        import importlib.util

        sys.meta_path.remove(self)
        spec = importlib.util.find_spec(name)
        if spec is None or spec.loader is None:
            return spec
        exec_module = spec.loader.exec_module

        def exec_and_register(module: Any) -> None:
            exec_module(module)
            _register_accessors()

        spec.loader.exec_module = exec_and_register  # type: ignore[method-assign]
        return spec


if "xarray" in sys.modules:
    _register_accessors()
elif not any(isinstance(f, _AccessorsOnXarrayImport) for f in sys.meta_path):
    sys.meta_path.insert(0, _AccessorsOnXarrayImport())
