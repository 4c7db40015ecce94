"""Figure files: :func:`plot_store` (the overview and the Fourier heat maps of a store, in every
format asked for) and :func:`plot_run` (one run's overview into one file)."""

from __future__ import annotations

import re
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from .draw import fourier_figure, overview_figure
from .plan import resolve_metrics
from .runs import RUN_COLOURS, PlotError, Runs, open_store, select_runs, split_list, where_of

FORMATS = ("png", "pdf", "svg")
DPI = 110


def slug(path: str) -> str:
    """A run path as a file-name (and HTML anchor) fragment: ``"sweep/run 1"`` → ``"sweep_run_1"``."""
    return re.sub(r"[^A-Za-z0-9_.-]+", "_", path).strip("_") or "run"


def _formats(formats: Sequence[str] | str | None, out: Path) -> list[str]:
    names = [f.lower().lstrip(".") for f in split_list(formats)]
    if not names:
        names = [out.suffix.lstrip(".").lower()] if out.suffix.lstrip(".").lower() in FORMATS else ["png"]
    bad = [f for f in names if f not in FORMATS]
    if bad:
        raise PlotError(f"unknown format(s) {', '.join(bad)}; valid: {', '.join(FORMATS)}")
    return list(dict.fromkeys(names))


def _save(fig, base: Path, formats: list[str]) -> list[Path]:
    import matplotlib.pyplot as plt

    base.parent.mkdir(parents=True, exist_ok=True)
    out = []
    for fmt in formats:
        path = base.with_name(f"{base.name}.{fmt}")
        fig.savefig(path, dpi=DPI, format=fmt)
        out.append(path)
    plt.close(fig)
    return out


def plot_store(store_or_tree: Any, out_dir: Path | str, runs: Sequence[str] | str | None = None,
               metrics: Sequence[str] | str | None = None, formats: Sequence[str] | str | None = None,
               layers: bool = False, thresholds: Mapping[str, Any] | None = None) -> list[Path]:
    """Write the figures of a probe store (a path or an opened DataTree) and return their paths.

    ``out_dir`` is a folder, or a file whose suffix is a format (``fig.pdf``). Files, each in every
    format of ``formats`` (``png``, ``pdf``, ``svg``; None: the suffix of ``out_dir``, else png):

    * ``overview.<fmt>`` (or ``<stem>.<fmt>`` when ``out_dir`` is a file): the small multiples of
      :func:`overview_figure` — every selected run overlaid, one panel per measure with data;
    * ``fourier_<run>.<fmt>`` (or ``<stem>_fourier_<run>.<fmt>``), one per run with Fourier norms (and
      ``fourier`` among ``metrics`` if given): the heat map of :func:`fourier_figure`, large.

    Order: overview files first, then the heat maps run by run. ``runs``/``metrics`` as in
    :func:`plan_panels`; PlotError names any store, run, metric or format
    at fault.
    """
    out = Path(out_dir)
    fmts = _formats(formats, out)
    is_file = out.suffix.lstrip(".").lower() in FORMATS
    folder, stem = (out.parent, out.stem) if is_file else (out, "overview")
    where = where_of(store_or_tree)
    tree = open_store(store_or_tree)
    selected = select_runs(tree, runs, where)
    probes, extras = resolve_metrics(Runs(selected), metrics, where)
    fig = overview_figure(tree, [p for p, _ in selected], metrics, layers, thresholds)
    written = _save(fig, folder / stem, fmts)
    if probes is None or "fourier" in probes or ("fourier", "fourier_norms") in extras:
        for i, (path, node) in enumerate(selected):
            fig = fourier_figure(node, path, thresholds, RUN_COLOURS[i % len(RUN_COLOURS)])
            if fig is not None:
                name = f"{stem}_fourier_{slug(path)}" if is_file else f"fourier_{slug(path)}"
                written += _save(fig, folder / name, fmts)
    return written


def plot_run(tree: Any, title: str, out: Path, probes: list[str] | None = None) -> Path:
    """The overview of one run (a DataTree run node) into the single file ``out`` (format from its
    suffix; png if none); ``probes`` restricts the panels."""
    out = Path(out)
    fmt = out.suffix.lstrip(".").lower() or "png"
    if fmt not in FORMATS:
        raise PlotError(f"{out}: unknown figure format {fmt!r}; valid: {', '.join(FORMATS)}")
    fig = overview_figure(tree, metrics=probes or None, title=title)
    out.parent.mkdir(parents=True, exist_ok=True)
    return _save(fig, out.with_suffix(""), [fmt])[0]
