"""Store access for the figures: the runs of a store (a path or an opened DataTree, finished steps
only), the selection of some of them by path, and their probe datasets opened once, each run with
its colour."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

from grokscope.errors import GrokscopeError
from grokscope.locations import is_url

RUN_COLOURS = ["#1f77b4", "#d62728", "#2ca02c", "#9467bd", "#ff7f0e", "#8c564b", "#e377c2", "#17becf",
               "#7f7f7f", "#bcbd22"]


class PlotError(GrokscopeError, ValueError):
    """A store, run or metric that cannot be plotted; the message names it (exit code 1 on the CLI)."""


def iter_runs(tree) -> list[tuple[str, Any]]:
    """``[(path, node)]`` of the nodes that hold probe groups (their children have a ``step`` dim), sorted
    by path."""
    found = []
    for node in tree.subtree:
        if node.children and any("step" in c.dims for c in node.children.values()):
            found.append((node.path.strip("/") or "root", node))
    return sorted(found, key=lambda item: item[0])


def open_store(store_or_tree: Any, storage_options: dict[str, Any] | None = None):
    """A DataTree of finished steps from a store path or URL (:func:`grokscope.open_store`, with
    ``storage_options``) or the DataTree itself; PlotError naming the path (and the store inside a run
    folder given instead)."""
    import xarray as xr

    from grokscope.reading import StoreReadError
    from grokscope.reading import open_store as open_tree

    if isinstance(store_or_tree, xr.DataTree):
        return store_or_tree
    try:
        return open_tree(store_or_tree if is_url(store_or_tree) else Path(store_or_tree), storage_options)
    except StoreReadError as e:
        raise PlotError(str(e)) from e


def where_of(store_or_tree: Any) -> str:
    """How error messages name the store: its path, or "store" for an opened DataTree."""
    import xarray as xr

    return "store" if isinstance(store_or_tree, xr.DataTree) else str(store_or_tree)


def split_list(values: Sequence[str] | str | None) -> list[str]:
    if values is None:
        return []
    if isinstance(values, str):
        values = [values]
    return [v.strip() for item in values for v in str(item).split(",") if v.strip()]


def select_runs(tree, runs: Sequence[str] | str | None = None, where: str = "store") -> list[tuple[str, Any]]:
    """The ``[(path, node)]`` of ``tree``'s runs named in ``runs`` (paths as :func:`iter_runs` gives
    them, comma lists allowed; None: all), in the order given; PlotError if there are no runs or a name
    is unknown."""
    found = iter_runs(tree)
    if not found:
        raise PlotError(f"{where}: no runs with probe results found")
    wanted = split_list(runs)
    if not wanted:
        return found
    by_path = dict(found)
    unknown = [r for r in wanted if r.strip("/") not in by_path]
    if unknown:
        raise PlotError(f"{where}: unknown run(s) {', '.join(map(repr, unknown))}; "
                        f"runs: {', '.join(by_path)}")
    seen: list[str] = []
    for r in wanted:
        if r.strip("/") not in seen:
            seen.append(r.strip("/"))
    return [(r, by_path[r]) for r in seen]


class Runs:
    """The selected runs with their finished probe datasets (opened once) and colours."""

    def __init__(self, runs: list[tuple[str, Any]]):
        from grokscope.analysis import probe_dataset

        self.paths = [p for p, _ in runs]
        self.nodes = dict(runs)
        self.colour = {p: RUN_COLOURS[i % len(RUN_COLOURS)] for i, p in enumerate(self.paths)}
        self.data: dict[tuple[str, str], Any] = {}
        for path, node in runs:
            for probe in node.children:
                if "step" not in node[probe].dims:
                    continue
                ds = probe_dataset(node, probe)
                if ds.sizes.get("step", 0):
                    self.data[(path, probe)] = ds

    def get(self, path: str, probe: str):
        return self.data.get((path, probe))

    def probes(self) -> list[str]:
        return sorted({p for _, p in self.data})


