"""The report page: the figures of each run (drawn, or those the demo already drew), its region
pictures from the store, one section per run and the whole self-contained page (:func:`write_report`)."""

from __future__ import annotations

import datetime
import tempfile
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from grokscope.plots import PlotError, slug

from .markup import (CSS, _e, img_html, lead_lag_table_html, migration_table_html, note_html, onset_table_html,
                     phase_table_html, settings_html, settings_line)
from .words import _missing, describe_run, fmt_step
from grokscope import __version__
from grokscope.runlog import store_split_checks
from grokscope.locations import is_url

# -- figures -----------------------------------------------------------------------------------------

# the run_summary thresholds that the plots' onset lines take too
PLOT_THRESHOLDS = ("mem", "grok", "robust", "window", "patience")


def figures(tree: Any, work: Path, thresholds: dict[str, Any], run: str | None = None,
            drawn: Mapping[str | None, Sequence[Path]] | None = None) -> list[tuple[Path, str]]:
    """``[(png, caption)]`` of :func:`grokscope.plots.plot_store` for one run (``run``) or for all runs
    overlaid (``run=None``: its overview only), written under ``work`` — or, when ``drawn`` has the
    key ``run``, the PNGs ``plot_store`` already wrote for it (nothing is drawn a second time)."""
    if drawn is not None and run in drawn:
        pngs = [Path(p) for p in drawn[run] if Path(p).suffix == ".png"]
    else:
        from grokscope.plots import plot_store

        onset_args = {k: v for k, v in thresholds.items() if k in PLOT_THRESHOLDS}
        out = work / ("all-runs" if run is None else slug(run))
        pngs = plot_store(tree, out, runs=None if run is None else [run], formats=["png"],
                          thresholds=onset_args)
    found = []
    for png in pngs:
        if png.stem == "overview":
            who = "every run overlaid" if run is None else run
            found.append((png, f"{who}: each measure over log step (0 at the left); dashed lines: onsets"))
        elif run is not None:
            found.append((png, f"{run}: Fourier norms of the embedding per frequency over steps"))
    return found


def figures_html(tree: Any, work: Path, thresholds: dict[str, Any], run: str | None = None,
                 drawn: Mapping[str | None, Sequence[Path]] | None = None) -> str:
    """:func:`figures` embedded, or a note saying why there are none."""
    try:
        return "".join(img_html(png, caption) for png, caption in figures(tree, work, thresholds, run, drawn))
    except Exception as e:  # the page still renders; the note says what failed
        return note_html(f"No figures for {run or 'the store'} ({type(e).__name__}: {e}).")


def region_steps(summary: dict[str, Any], available: list[int]) -> dict[int, list[str]]:
    """Checkpoints worth a region panel, each with why: the first, memorisation, generalisation and
    the last, snapped to the nearest available checkpoint; ``{step: [roles]}`` in step order. A role
    snapped to another step says where the event itself was (``"nearest to generalisation at 613"``)."""
    available = sorted(available)
    if not available:
        return {}
    onsets = summary.get("onsets") or {}
    wanted = [("first", available[0])] + [(k, float(onsets[k]["step"])) for k in ("memorisation", "generalisation")
                                          if k in onsets and not _missing(onsets[k].get("step"))]
    wanted.append(("last", available[-1]))
    out: dict[int, list[str]] = {}
    for role, w in wanted:
        at = min(available, key=lambda a: abs(a - w))
        out.setdefault(at, []).append(role if at == w or role in ("first", "last") else
                                      f"nearest to {role} at {fmt_step(w)}")
    return dict(sorted(out.items()))


def region_html(node: Any, summary: dict[str, Any], path: str, work: Path) -> str:
    """The run's stored region pictures (probe ``regions``) at :func:`region_steps`, or a note saying
    why there are none. Drawn from the store only: the run folder is not needed."""
    from grokscope.regions import RegionsError, regions_figure

    if "regions" not in node.children or not node["regions"].ds.sizes.get("step", 0):
        return note_html(f"No region picture: the store has no finished regions results for {path} "
                         "(grokscope probe RUN --metrics regions, or grokscope regions RUN).")
    steps = region_steps(summary, [int(s) for s in node["regions"].ds.step.values])
    try:
        png = regions_figure(node.root, path, list(steps), work / f"{slug(path)}_regions.png")
    except RegionsError as e:
        return note_html(f"No region picture: {e}")
    at = ", ".join(f"{fmt_step(s)} ({', '.join(roles)})" for s, roles in steps.items())
    return img_html(png, f"{path}: linear regions (grey) and decision boundary (red) on the plane through three "
                         f"training points, at steps {at}")


# -- the page ----------------------------------------------------------------------------------------

def load_runs(store: Path | str, storage_options: dict[str, Any] | None = None
              ) -> tuple[Any, list[tuple[str, Any]]]:
    """``(tree, [(run path, run node)])`` of a probe store (a folder or an fsspec URL); PlotError
    naming the store if it cannot be opened or has no runs with probe results."""
    from grokscope.plots import iter_runs, open_store

    tree = open_store(store, storage_options)
    runs = iter_runs(tree)
    if not runs:
        raise PlotError(f"{store}: no runs with probe results found (nothing to report)")
    return tree, runs


def summaries(store: Path | str, storage_options: dict[str, Any] | None = None,
              **thresholds: Any) -> dict[str, dict[str, Any]]:
    """``{run path: run_summary(run node, **thresholds)}`` for every run of ``store`` (a folder or an
    fsspec URL; JSON-safe)."""
    from grokscope.analysis import run_summary


    _, runs = load_runs(store, storage_options)
    out = {path: run_summary(node, **thresholds) for path, node in runs}
    for name, lines in store_split_checks(store, storage_options=storage_options).items():
        for path in out:
            if path.strip("/").split("/")[-1] == name:
                out[path]["split_check"] = lines
    return out


def run_section(tree: Any, path: str, node: Any, summary: dict[str, Any], work: Path,
                thresholds: dict[str, Any], regions: bool = True,
                drawn: Mapping[str | None, Sequence[Path]] | None = None) -> str:
    """The HTML section of one run: settings line, plain words, figures, tables, regions, all settings."""
    anchor = slug(path)
    settings = summary.get("settings") or {}
    parts = [f"<section id='{_e(anchor)}'><h2>Run {_e(path)}</h2>"]
    folder = settings.get("path") or node.attrs.get("path")
    parts.append(f"<p class='meta'>{_e(settings_line(settings))}<br>run folder: <code>{_e(folder)}</code>; "
                 f"probes: {_e(', '.join(sorted(node.children)))}</p>")
    lines = describe_run(summary)
    checks = summary.get("split_check") or []
    if checks:
        parts.append("".join(f"<p class='warning'><strong>{_e(c)}</strong></p>" for c in checks))
    parts.append("<h3>In plain words</h3>")
    parts.append("<ul class='summary'>" + "".join(f"<li>{_e(s)}</li>" for s in lines) + "</ul>" if lines
                 else "<p class='meta'>Nothing to say: no accuracy, LC, PGD or change-point results.</p>")
    parts.append("<h3>Figures</h3>" + figures_html(tree, work, thresholds, path, drawn))
    parts.append("<h3>Onsets</h3>" + onset_table_html(summary.get("onsets") or {}))
    parts.append("<h3>LC phases</h3>" + phase_table_html(summary.get("lc_phases") or {}))
    migration = summary.get("migration") or {}
    if migration:
        parts.append("<h3>Region migration (LC near the boundary / LC near training points)</h3>"
                     + migration_table_html(migration))
    parts.append("<h3>Lead / lag</h3>" + lead_lag_table_html(summary.get("lead_lag") or [], summary.get("onsets"),
                                                             summary.get("params")))
    if regions:
        parts.append("<h3>Linear regions</h3>" + region_html(node, summary, path, work))
    parts.append("<h3>Settings</h3>" + settings_html(settings))
    parts.append("</section>")
    return "\n".join(parts)


def render_html(store: Path | str, tree: Any, runs: list[tuple[str, Any]], sums: dict[str, dict],
                thresholds: dict[str, Any], work: Path, regions: bool = True,
                drawn: Mapping[str | None, Sequence[Path]] | None = None) -> str:
    """The whole page as a string: a header, all runs overlaid (if several), one section per run."""

    when = datetime.datetime.now().strftime("%Y-%m-%d %H:%M")
    th = ", ".join(f"{k}={'auto' if v is None else v}" for k, v in thresholds.items()) or "defaults"
    nav = ""
    if len(runs) > 1:
        nav = ("<nav><ul>" + "".join(f"<li><a href='#{_e(slug(p))}'>{_e(p)}</a></li>" for p, _ in runs)
               + "</ul></nav><h2>All runs</h2>" + figures_html(tree, work, thresholds, None, drawn))
    body = "\n".join(run_section(tree, p, n, sums[p], work, thresholds, regions, drawn)
                     for p, n in runs)
    return (f"<!DOCTYPE html>\n<html lang='en'><head><meta charset='utf-8'>"
            f"<title>grokscope report: {_e(Path(str(store)).name)}</title><style>{CSS}</style></head><body>"
            f"<h1>grokscope report</h1><p class='meta'>store <code>{_e(store)}</code> · {len(runs)} run(s) · "
            f"thresholds {_e(th)} · grokscope {_e(__version__)} · {when}</p>{nav}\n{body}\n</body></html>\n")


def write_report(store: Path | str, out: Path | None = None, regions: bool = True,
                 summaries: dict[str, dict[str, Any]] | None = None,
                 drawn: Mapping[str | None, Sequence[Path]] | None = None,
                 storage_options: dict[str, Any] | None = None, **thresholds: Any) -> Path:
    """Write the self-contained HTML report of ``store`` (a folder, or an fsspec URL read with
    ``storage_options``) to ``out`` (default ``<store parent>/report.html``; ``report.html`` in the
    current folder for a URL).

    ``thresholds`` go to :func:`grokscope.analysis.run_summary` (``mem``, ``grok``, ``robust``,
    ``window``); ``summaries`` (``{run path: run_summary(...)}`` computed with the same thresholds)
    saves computing them again; ``drawn`` (``{run path, or None for all runs overlaid: PNG paths of
    plot_store}``, drawn with the same thresholds) saves drawing those figures again. Raises
    ``PlotError`` naming the store if it holds no runs.
    """
    from grokscope.analysis import run_summary


    store = str(store) if is_url(store) else Path(store)
    default = Path("report.html") if isinstance(store, str) else store.resolve().parent / "report.html"
    out = Path(out) if out is not None else default
    tree, runs = load_runs(store, storage_options)
    sums = {path: (summaries or {}).get(path) or run_summary(node, **thresholds) for path, node in runs}
    with tempfile.TemporaryDirectory(prefix="grokscope-report-") as tmp:
        page = render_html(store, tree, runs, sums, thresholds, Path(tmp), regions, drawn)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(page, encoding="utf-8")
    return out
