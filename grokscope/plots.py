"""Figures of a probe store over log-step (what ``grokscope plot`` draws).

Small multiples: one panel per measure, every run of the store overlaid in its own colour, only the
panels whose data exist. The x axis of every panel is the training step on a *symlog* scale (linear
between 0 and 1, logarithmic above), so step 0 is drawn at 0 and every tick and onset line sits at its
true step. Onsets (:func:`grokscope.analysis.standard_onsets`) are dashed vertical lines in the run's
colour, labelled at the top of the panel ("mem", "gen", "ε=0.1").

Panels (each probe declares its own, ``Probe.panels``; a probe that declares none gets one generic
panel per variable), each only where some selected run has finished steps of it:

=========================  ==================================================================
acc                        accuracy and loss, train/test (line style per split)
lc                         mean LC around each split's points (all layers); ``layers=True``
                           adds one panel per layer (``lc_mean``)
pgd                        PGD robust accuracy per ε: a colour scale (plasma, dark = small ε)
                           for one run, shades of each run's colour when runs are overlaid
align                      centroid alignment, Jacobian alignment, ‖J‖_F (per split)
fourier                    Fourier norms of the embedding as a heat map over (step, frequency),
                           one panel per run; Fourier Gini
norm                       ‖θ‖² and the tangent fraction of the weight-decay direction
=========================  ==================================================================

``metrics`` entries are probe names (``acc``) or ``probe.variable`` (``align.pc1_mean``: any variable
over ``step`` with at most :data:`MAX_LINES` lines, or one extra dim drawn as a heat map).

Public: :func:`plot_store` (files), :func:`overview_figure` / :func:`fourier_figure` (matplotlib
Figures), :func:`plan_panels` (which panels would be drawn), :func:`iter_runs`, :func:`select_runs`,
:func:`plot_run` (one run, one file). The ``grokscope plot`` command is :mod:`grokscope.cli.plot`.
"""

from __future__ import annotations

import math
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from grokscope.errors import GrokscopeError
from grokscope.presentation import PanelSpec, for_group, probe_order

FORMATS = ("png", "pdf", "svg")
MAX_LINES = 12          # a generic ``probe.var`` panel with more lines than this is refused (or a heat map)
DPI = 110
RUN_COLOURS = ["#1f77b4", "#d62728", "#2ca02c", "#9467bd", "#ff7f0e", "#8c564b", "#e377c2", "#17becf",
               "#7f7f7f", "#bcbd22"]
SPLIT_STYLES = {"train": "-", "test": "--", "random": ":", "boundary": "-."}
STYLE_CYCLE = ["-", "--", ":", "-."]
ONSET_DASH = (0, (4, 3))
ONSET_SHORT = {"memorisation": "mem", "generalisation": "gen"}
# x axis: symlog, linear on [0, 1] (so step 0 is drawn), one decade per decade above
SYMLOG = {"linthresh": 1.0, "linscale": 0.4}
XLABEL = "step (log scale; 0 at left)"


class PlotError(GrokscopeError, ValueError):
    """A store, run or metric that cannot be plotted; the message names it (exit code 1 on the CLI)."""


# One panel's drawing instructions, as a probe declares them (grokscope.presentation.PanelSpec).
Spec = PanelSpec
ENGINE_VARS = ("done", "error", "checkpoint_hash")


@dataclass(frozen=True)
class Panel:
    """One panel of the overview: ``key`` is unique (``"acc.accuracy"``, ``"lc.lc_mean[layer=2]"``,
    ``"fourier.fourier_norms[run=a]"``); ``sel`` the fixed labels of non-hue dims; ``runs`` the run
    paths drawn in it (those with finished, non-NaN data)."""

    key: str
    spec: Spec
    title: str
    sel: tuple[tuple[str, Any], ...] = ()
    runs: tuple[str, ...] = ()

    @property
    def probe(self) -> str:
        return self.spec.probe

    @property
    def var(self) -> str:
        return self.spec.var

    @property
    def kind(self) -> str:
        return self.spec.kind


# --------------------------------------------------------------------------------------------------
# runs


def iter_runs(tree) -> list[tuple[str, Any]]:
    """``[(path, node)]`` of the nodes that hold probe groups (their children have a ``step`` dim), sorted
    by path."""
    found = []
    for node in tree.subtree:
        if node.children and any("step" in c.dims for c in node.children.values()):
            found.append((node.path.strip("/") or "root", node))
    return sorted(found, key=lambda item: item[0])


def open_store(store_or_tree: Any):
    """A DataTree of finished steps from a store path (:func:`grokscope.open_store`) or the DataTree
    itself; PlotError naming the path (and the store inside a run folder given instead)."""
    import xarray as xr

    from grokscope.reading import StoreReadError
    from grokscope.reading import open_store as open_tree

    if isinstance(store_or_tree, xr.DataTree):
        return store_or_tree
    try:
        return open_tree(Path(store_or_tree))
    except StoreReadError as e:
        raise PlotError(str(e)) from e


def _where(store_or_tree: Any) -> str:
    """How error messages name the store: its path, or "store" for an opened DataTree."""
    import xarray as xr

    return "store" if isinstance(store_or_tree, xr.DataTree) else str(store_or_tree)


def _split_list(values: Sequence[str] | str | None) -> list[str]:
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
    wanted = _split_list(runs)
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


class _Runs:
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


# --------------------------------------------------------------------------------------------------
# the panel plan


def _label(ds, dim: str, want: Any):
    """The label of ``dim`` matching ``want`` (``"first"``: the first one); None if absent."""
    labels = list(ds[dim].values)
    if want == "first":
        return labels[0].item() if hasattr(labels[0], "item") else labels[0]
    for lab in labels:
        if str(lab) == str(want):
            return lab.item() if hasattr(lab, "item") else lab
    return None


def curve_block(ds, spec: Spec, sel: Mapping[str, Any] = ()):
    """``ds[spec.var]`` reduced to dims ``(step,)`` or ``(step, hue)`` (or ``(step, other)`` for a heat
    map): ``sel`` labels are selected, ``spec.prefer`` picks a label of a dim (first label if the preferred
    one is absent), length-1 dims are dropped. None if the variable or a label is missing, or if more
    than one non-step dim remains."""
    if spec.var not in ds:
        return None
    da = ds[spec.var]
    if "step" not in da.dims or da.dtype.kind not in "fiub":
        return None
    for dim, lab in dict(sel).items():
        if dim in da.dims:
            found = _label(da, dim, lab)
            if found is None:
                return None
            da = da.sel({dim: found})
    for dim, want in spec.prefer:
        if dim in da.dims:
            da = da.sel({dim: _label(da, dim, want) if _label(da, dim, want) is not None
                         else _label(da, dim, "first")})
    for dim in [d for d in da.dims if d not in ("step", spec.hue) and da.sizes[d] == 1]:
        da = da.isel({dim: 0})
    rest = [d for d in da.dims if d != "step"]
    if len(rest) > 1:
        return None
    return da.transpose("step", *rest)


def _has_data(block) -> bool:
    return block is not None and block.sizes["step"] > 0 and bool(np.isfinite(block.values).any())


DIM_SHORT = {"radius": "r"}
PARAM_WORDS = {"linf": "L∞", "l2": "L2"}


def _panel_title(spec: Spec, ds, sel: Mapping[str, Any]) -> str:
    """``spec.title`` with ``{dim}`` filled from ``sel`` and ``{param}`` from the group's parameters,
    followed by the labels that ``spec.prefer`` chose (``r = 0.005``, ``test split``)."""
    params = {k: PARAM_WORDS.get(str(v), v) for k, v in (ds.attrs.get("params") or {}).items()}
    try:
        title = spec.title.format(**{**params, **dict(sel)})
    except (KeyError, IndexError, ValueError):
        title = spec.title
    extra = []
    for dim, want in spec.prefer:
        if dim in ds[spec.var].dims:
            lab = _label(ds, dim, want)
            lab = _label(ds, dim, "first") if lab is None else lab
            extra.append(f"{lab} split" if dim == "split" else
                         f"{DIM_SHORT.get(dim, dim)} = {lab:g}" if isinstance(lab, (int, float)) else f"{dim} {lab}")
    if extra and title.endswith(")"):
        return f"{title[:-1]}, {', '.join(extra)})"
    return f"{title} ({', '.join(extra)})" if extra else title


def _generic_spec(probe: str, var: str, ds) -> Spec:
    """A Spec for any ``probe.var``: lines over the one remaining dim, or a heat map if it is long."""
    da = ds[var]
    if "step" not in da.dims or da.dtype.kind not in "fiub":
        raise PlotError(f"metric {probe}.{var}: not a numeric variable over step (dims {da.dims})")
    rest = [d for d in da.dims if d != "step" and da.sizes[d] > 1]
    if len(rest) > 1:
        raise PlotError(f"metric {probe}.{var}: dims {da.dims} have more than one dim besides step; "
                        f"plot it from a notebook (xarray .sel)")
    if rest and da.sizes[rest[0]] > MAX_LINES:
        return Spec(var, f"{probe}: {var}", rest[0], kind="heatmap", probe=probe)
    return Spec(var, f"{probe}: {var}", var, rest[0] if rest else None, probe=probe)


def _resolve_metrics(runs: _Runs, metrics: Sequence[str] | str | None, where: str
                     ) -> tuple[list[str] | None, list[tuple[str, str]]]:
    """``(probe names or None for all, [(probe, var)] extra variables)``; PlotError for unknown ones."""
    names = _split_list(metrics)
    if not names:
        return None, []
    have = runs.probes()
    probes, extras = [], []
    for name in names:
        probe, _, var = name.partition(".")
        if probe not in have:
            raise PlotError(f"{where}: unknown metric {name!r}: the selected runs have probe(s) "
                            f"{', '.join(have) or 'none'} (a metric is a probe name or probe.variable)")
        if not var:
            probes.append(probe)
            continue
        if not any(var in runs.get(p, probe) for p in runs.paths if runs.get(p, probe) is not None):
            ds = next(runs.get(p, probe) for p in runs.paths if runs.get(p, probe) is not None)
            raise PlotError(f"{where}: unknown metric {name!r}: probe {probe!r} has variables "
                            f"{', '.join(map(str, ds.data_vars))}")
        extras.append((probe, var))
    return probes, extras


def _generic_specs(probe: str, ds) -> list[Spec]:
    """Panels for a probe that declares none: every numeric variable over step that one panel can show."""
    out = []
    for var in ds.data_vars:
        if var in ENGINE_VARS:
            continue
        try:
            out.append(_generic_spec(probe, str(var), ds))
        except PlotError:
            continue
    return out


def probe_specs(runs: _Runs, probe: str) -> list[Spec]:
    """The panels of ``probe`` in the selected runs: those it declares (stored with its groups, or its
    installed class's), else one generic panel per variable."""
    for path in runs.paths:
        ds = runs.get(path, probe)
        if ds is None:
            continue
        found = for_group(probe, dict(ds.attrs))
        if found is not None and found[0]:
            return found[0]
        return _generic_specs(probe, ds)
    return []


def _plan(runs: _Runs, metrics: Sequence[str] | str | None = None, layers: bool = False,
          where: str = "store") -> list[Panel]:
    probes, extras = _resolve_metrics(runs, metrics, where)
    specs: list[Spec] = []
    declared: list[Spec] = []
    for probe in probe_order(runs.probes()):
        mine = probe_specs(runs, probe)
        declared += mine
        if probes is None or probe in probes:
            specs += [s for s in mine if s.headline or layers]
    for probe, var in extras:
        same = [s for s in declared if (s.probe, s.var) == (probe, var)]
        if same:
            specs.append(same[0])
            continue
        ds = next(runs.get(p, probe) for p in runs.paths if runs.get(p, probe) is not None and var in
                  runs.get(p, probe))
        specs.append(_generic_spec(probe, var, ds))
    panels: list[Panel] = []
    seen: set[str] = set()
    for spec in specs:
        for panel in _expand(runs, spec):
            if panel.key not in seen:
                seen.add(panel.key)
                panels.append(panel)
    return panels


def _expand(runs: _Runs, spec: Spec) -> list[Panel]:
    """The panels of one spec: one (lines), one per label of ``spec.per`` (``lc_mean`` per layer), one per
    run (heat maps)."""
    with_data = [(p, runs.get(p, spec.probe)) for p in runs.paths if runs.get(p, spec.probe) is not None]
    with_data = [(p, ds) for p, ds in with_data if spec.var in ds]
    if not with_data:
        return []
    sels: list[dict[str, Any]] = [{}]
    if spec.per:
        per_labels: list[Any] = []
        for _, ds in with_data:
            if spec.per in ds[spec.var].dims:
                for lab in ds[spec.var][spec.per].values:
                    lab = lab.item() if hasattr(lab, "item") else lab
                    if lab not in per_labels:
                        per_labels.append(lab)
        sels = [{spec.per: lab} for lab in per_labels]
    out = []
    for sel in sels:
        drawn = [(p, ds) for p, ds in with_data if _has_data(curve_block(ds, spec, sel))]
        if not drawn:
            continue
        suffix = "".join(f"[{k}={v}]" for k, v in sel.items())
        title = _panel_title(spec, drawn[0][1], sel)
        if spec.kind == "heatmap":
            out += [Panel(f"{spec.probe}.{spec.var}{suffix}[run={p}]", spec, f"{title} — {p}", tuple(sel.items()),
                          (p,)) for p, _ in drawn]
        else:
            out.append(Panel(f"{spec.probe}.{spec.var}{suffix}", spec, title, tuple(sel.items()),
                             tuple(p for p, _ in drawn)))
    return out


def plan_panels(tree, metrics: Sequence[str] | str | None = None, runs: Sequence[str] | str | None = None,
                layers: bool = False) -> list[Panel]:
    """The panels :func:`overview_figure` draws for ``tree`` (a store's DataTree, a run node or a store
    path), in order: only those whose data exist in at least one selected run (finished steps, not all
    NaN). PlotError for a store without runs, an unknown run or an unknown metric."""
    where = _where(tree)
    tree = open_store(tree)
    return _plan(_Runs(select_runs(tree, runs, where)), metrics, layers, where)


# --------------------------------------------------------------------------------------------------
# drawing


def _shade(colour: str, i: int, n: int) -> tuple[float, float, float]:
    """``colour`` mixed with white: index 0 of ``n`` is the full colour, the last 60 % white."""
    from matplotlib.colors import to_rgb

    t = 0.0 if n <= 1 else 0.6 * i / (n - 1)
    return tuple(c * (1 - t) + t for c in to_rgb(colour))  # type: ignore[return-value]


def _eps_colour(i: int, n: int) -> tuple[float, float, float]:
    """Colour ``i`` of ``n`` radii on a sequential scale (plasma, from dark purple to yellow-orange)."""
    from matplotlib import colormaps

    return tuple(colormaps["plasma"](0.0 if n <= 1 else 0.85 * i / (n - 1))[:3])  # type: ignore[return-value]


def _hue_styles(labels: list[Any], dim: str) -> list[dict[str, Any]]:
    """Per hue label: a line style (≤ 4 labels; splits by name) or a shade index (more labels)."""
    if dim == "split" and all(str(lab) in SPLIT_STYLES for lab in labels):
        return [{"ls": SPLIT_STYLES[str(lab)]} for lab in labels]
    if len(labels) <= len(STYLE_CYCLE) and dim != "eps":
        return [{"ls": STYLE_CYCLE[i]} for i in range(len(labels))]
    return [{"shade": (i, len(labels))} for i in range(len(labels))]


def _fmt_label(dim: str, lab: Any) -> str:
    if dim == "eps":
        return f"ε = {float(lab):g}"
    if isinstance(lab, (float, np.floating)):
        return f"{dim} = {float(lab):g}"
    return str(lab) if dim == "split" else f"{dim} = {lab}"


def _set_xaxis(ax, xlim: tuple[float, float] | None) -> None:
    from matplotlib.ticker import SymmetricalLogLocator

    ax.set_xscale("symlog", **SYMLOG)
    ax.xaxis.set_minor_locator(SymmetricalLogLocator(base=10, linthresh=SYMLOG["linthresh"],
                                                     subs=np.arange(2, 10)))
    if xlim is not None and xlim[1] > xlim[0]:
        # a little room right of the last step, so an onset there is not hidden by the frame
        ax.set_xlim(xlim[0], _right_edge(xlim[1]))
    ax.set_xlabel(XLABEL, fontsize=8)
    ax.tick_params(labelsize=7)


def _onsets_for(panel: Panel, events: Mapping[str, Any]) -> list[tuple[str, Any]]:
    out = []
    for name, ev in events.items():
        want = any(name == o or (o == "robustness" and name.startswith("robustness@")) for o in panel.spec.onsets)
        if want and ev.found:
            out.append((name, ev))
    return out


def _draw_onsets(ax, panel: Panel, path: str, events: Mapping[str, Any], colour: Any,
                 eps_index: Mapping[float, Any] | None = None, text_colour: Any = None) -> None:
    """Dashed vertical lines at each onset of ``panel.spec.onsets`` (x = the onset's step), gid
    ``onset:<run>:<name>``, with a short rotated label at the top of the axes (one label per step:
    onsets at the same step share it, "mem, gen")."""
    from matplotlib.transforms import blended_transform_factory

    trans = blended_transform_factory(ax.transData, ax.transAxes)
    labels: dict[float, tuple[list[str], Any]] = {}
    for name, ev in _onsets_for(panel, events):
        c = colour
        if name.startswith("robustness@"):
            eps = float(ev.sel.get("eps", math.nan))
            if eps_index and eps in eps_index:
                c = eps_index[eps]
            short = f"ε={eps:g}"
        else:
            short = ONSET_SHORT.get(name, name)
        line = ax.axvline(ev.step, color=c, ls=ONSET_DASH, lw=1.1, alpha=0.9, zorder=1)
        line.set_gid(f"onset:{path}:{name}")
        labels.setdefault(float(ev.step), ([], c))[0].append(short)
    for step, (names, c) in labels.items():
        ax.text(step, 0.985, " " + ", ".join(names), transform=trans, rotation=90, va="top", ha="right",
                fontsize=6, color=text_colour or c, clip_on=True)


def _markers(n: int) -> dict[str, Any]:
    """Dots on the checkpoints of short curves (they show where the data are); none on long ones."""
    return {"marker": ".", "ms": 3} if n <= 30 else {}


def _tidy_log_y(ax) -> None:
    """Readable log y ticks: labels at 1, 2, 5 × 10^k when the axis spans under two decades (else at the
    decades only); no labels on minor ticks."""
    from matplotlib.ticker import FuncFormatter, LogLocator, NullFormatter

    lo, hi = ax.get_ylim()
    if lo > 0 and hi / lo < 100:
        ax.yaxis.set_major_locator(LogLocator(base=10, subs=(1.0, 2.0, 5.0)))
        ax.yaxis.set_major_formatter(FuncFormatter(lambda v, _: f"{v:g}"))
    ax.yaxis.set_minor_formatter(NullFormatter())


def _draw_lines(ax, panel: Panel, runs: _Runs, events: Mapping[str, Mapping[str, Any]],
                xlim: tuple[float, float] | None) -> None:
    from matplotlib.lines import Line2D

    spec = panel.spec
    hue_keys: list[tuple[str, dict[str, Any]]] = []
    for path in panel.runs:
        ds = runs.get(path, spec.probe)
        block = curve_block(ds, spec, dict(panel.sel))
        colour = runs.colour[path]
        steps = block["step"].values
        eps_index = None
        if block.ndim == 1:
            ax.plot(steps, block.values, color=colour, lw=1.4, **_markers(len(steps)))
        else:
            dim = block.dims[1]
            labels = list(block[dim].values)
            styles = _hue_styles(labels, dim)
            scale = dim == "eps" and len(panel.runs) == 1  # one run: radii on a colour scale
            colours = [_eps_colour(i, len(labels)) if scale else
                       (_shade(colour, *st["shade"]) if "shade" in st and isinstance(colour, str) else colour)
                       for i, st in enumerate(styles)]
            if dim == "eps":
                eps_index = {float(lab): c for lab, c in zip(labels, colours)}
            for j, (lab, st) in enumerate(zip(labels, styles)):
                ax.plot(steps, block.values[:, j], color=colours[j], ls=st.get("ls", "-"), lw=1.3,
                        **_markers(len(steps)))
                key = _fmt_label(dim, lab)
                if key not in [k for k, _ in hue_keys]:
                    key_colour = colours[j] if scale else (_shade("#303030", *st["shade"]) if "shade" in st
                                                           else "#303030")
                    hue_keys.append((key, {"color": key_colour, "ls": st.get("ls", "-")}))
        _draw_onsets(ax, panel, path, events.get(path, {}), colour, eps_index)
    _set_xaxis(ax, xlim)
    ax.set_yscale(spec.yscale)
    if spec.ylim is not None:
        ax.set_ylim(*spec.ylim)
    if spec.yscale == "log":
        _tidy_log_y(ax)
    ax.set_title(panel.title, fontsize=9)
    ax.set_ylabel(spec.ylabel, fontsize=8)
    ax.grid(alpha=0.25, which="major")
    if len(hue_keys) > 1:
        handles = [Line2D([], [], lw=1.3, label=k, **kw) for k, kw in hue_keys]
        ax.legend(handles=handles, fontsize=6, ncol=2 if len(handles) > 4 else 1, framealpha=0.7,
                  handlelength=2.2, loc="best")


def _right_edge(hi: float) -> float:
    """Right end of the x axis: a little room after the last step ``hi`` (an onset there stays visible)."""
    return hi * 1.12 + 0.5


def _step_edges(steps: np.ndarray, right: float | None = None) -> np.ndarray:
    """Cell edges (``n + 1``) around ``n`` sorted steps for pcolormesh on a log axis: geometric midpoints
    of ``step + 1`` between neighbours; the first edge is the first step; the last is ``right`` if given
    (the figure's right end), else half a cell (in log ``step + 1``) after the last step."""
    s = np.asarray(steps, dtype=float)
    mid = np.sqrt((s[:-1] + 1) * (s[1:] + 1)) - 1
    if right is not None:
        last = max(right, s[-1] + 1e-9)
    elif len(s) > 1:
        last = (s[-1] + 1) * math.sqrt((s[-1] + 1) / (s[-2] + 1)) - 1
    else:
        last = s[-1] + 0.5
    return np.concatenate([[s[0]], mid, [last]])


def _draw_heatmap(ax, panel: Panel, runs: _Runs, events: Mapping[str, Mapping[str, Any]],
                  xlim: tuple[float, float] | None, colorbar: bool = True) -> None:
    spec = panel.spec
    path = panel.runs[0]
    block = curve_block(runs.get(path, spec.probe), spec, dict(panel.sel))
    ydim = block.dims[1] if block.ndim == 2 else None
    steps = block["step"].values
    yv = np.asarray(block[ydim].values, dtype=float) if ydim else np.zeros(1)
    if len(yv) > 1:
        dy = np.diff(yv)
        y_edges = np.concatenate([[yv[0] - dy[0] / 2], yv[:-1] + dy / 2, [yv[-1] + dy[-1] / 2]])
    else:
        y_edges = np.array([yv[0] - 0.5, yv[0] + 0.5])
    values = block.values.reshape(len(steps), -1).T
    # the last cell reaches the figure's right end only for the run(s) that end there
    x_edges = _step_edges(steps, _right_edge(xlim[1]) if xlim and steps[-1] >= xlim[1] else None)
    mesh = ax.pcolormesh(x_edges, y_edges, np.ma.masked_invalid(values), shading="flat", cmap="viridis",
                         rasterized=True)
    if colorbar:
        cb = ax.figure.colorbar(mesh, ax=ax, pad=0.01, fraction=0.05)
        cb.ax.tick_params(labelsize=7)
        cb.set_label("norm" if spec.var == "fourier_norms" else spec.var, fontsize=7)
    _draw_onsets(ax, panel, path, events.get(path, {}), "white", text_colour="white")
    _set_xaxis(ax, xlim)
    if ydim and np.allclose(yv, np.round(yv)):
        from matplotlib.ticker import MaxNLocator

        ax.yaxis.set_major_locator(MaxNLocator(integer=True))
    ax.set_title(panel.title, fontsize=9, color=runs.colour[path] if len(runs.paths) > 1 else "black")
    ax.set_ylabel(spec.ylabel, fontsize=8)


def _xlim(runs: _Runs, panels: list[Panel]) -> tuple[float, float] | None:
    lo, hi = math.inf, -math.inf
    for panel in panels:
        for path in panel.runs:
            steps = runs.get(path, panel.probe)["step"].values
            lo, hi = min(lo, float(steps.min())), max(hi, float(steps.max()))
    return (lo, hi) if math.isfinite(lo) else None


def _events(runs: _Runs, thresholds: Mapping[str, Any] | None) -> dict[str, dict[str, Any]]:
    from grokscope.analysis import standard_onsets

    return {p: standard_onsets(runs.nodes[p], **dict(thresholds or {})) for p in runs.paths}


def run_caption(node: Any) -> str:
    """A few words on a run node's settings from its attrs: ``"mlp on modular (p=59), seeded split
    (seed 0)"`` (which data and split the run was probed on)."""
    from grokscope.datasets import describe_data

    model, data = node.attrs.get("model") or {}, node.attrs.get("dataset") or {}
    arch = (model.get("arch") or model.get("factory") or "model") if isinstance(model, dict) else "model"
    return f"{arch} on {describe_data(data if isinstance(data, dict) else None)}"


def _figure_legend(fig, runs: _Runs, panels: list[Panel]) -> None:
    from matplotlib.lines import Line2D

    shown = [p for p in runs.paths if any(p in panel.runs for panel in panels)]
    handles = [Line2D([], [], color=runs.colour[p], lw=2.2, label=p) for p in shown]
    if any((line.get_gid() or "").startswith("onset:") for ax in fig.axes for line in ax.lines):
        handles.append(Line2D([], [], color="#303030", ls=ONSET_DASH, lw=1.1,
                              label="onset (mem = memorisation, gen = generalisation, ε = robustness)"))
    fig.legend(handles=handles, loc="outside lower center", ncol=min(len(handles), 6), fontsize=8,
               frameon=False)


def overview_figure(store_or_tree: Any, runs: Sequence[str] | str | None = None,
                    metrics: Sequence[str] | str | None = None, layers: bool = False,
                    thresholds: Mapping[str, Any] | None = None, title: str | None = None, ncols: int = 3):
    """The overview Figure: :func:`plan_panels`' panels on a grid of ``ncols`` columns, every panel's
    Axes labelled with its panel key (``ax.get_label()``), onset lines with gid ``onset:<run>:<name>``.
    ``thresholds`` go to :func:`grokscope.analysis.standard_onsets` (``mem``, ``grok``, ``robust``,
    ``window``, ``patience``)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    where = _where(store_or_tree)
    tree = open_store(store_or_tree)
    sel = _Runs(select_runs(tree, runs, where))
    panels = _plan(sel, metrics, layers, where)
    if not panels:
        raise PlotError(f"{where}: nothing to plot: runs {', '.join(sel.paths)} have no finished steps of "
                        f"{', '.join(_split_list(metrics)) or 'any probe'}")
    events = _events(sel, thresholds)
    xlim = _xlim(sel, panels)
    ncols = max(1, min(ncols, len(panels)))
    nrows = math.ceil(len(panels) / ncols)
    fig = plt.figure(figsize=(4.5 * ncols, 3.1 * nrows + 0.6), layout="constrained")
    for i, panel in enumerate(panels):
        ax = fig.add_subplot(nrows, ncols, i + 1, label=panel.key)
        if panel.kind == "heatmap":
            _draw_heatmap(ax, panel, sel, events, xlim)
        else:
            _draw_lines(ax, panel, sel, events, xlim)
    _figure_legend(fig, sel, panels)
    if title is None:
        title = (f"{len(sel.paths)} runs: {', '.join(sel.paths)}" if len(sel.paths) > 1
                 else f"{sel.paths[0]}: {run_caption(sel.nodes[sel.paths[0]])}")
    fig.suptitle(title, fontsize=11)
    return fig


def fourier_figure(node: Any, path: str, thresholds: Mapping[str, Any] | None = None,
                   colour: str = RUN_COLOURS[0]):
    """One run's Fourier-norm heat map over (step, frequency), large, with its onsets; None if the run
    has no finished ``fourier_norms``."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    one = _Runs([(path, node)])
    one.colour[path] = colour
    spec = next((s for s in probe_specs(one, "fourier") if s.var == "fourier_norms"), None)
    if spec is None:
        return None
    panels = _expand(one, spec)
    if not panels:
        return None
    fig, ax = plt.subplots(figsize=(8, 4.8), layout="constrained")
    ax.set_label(panels[0].key)
    _draw_heatmap(ax, panels[0], one, _events(one, thresholds), _xlim(one, panels))
    ax.set_title(f"{path}: Fourier norms of the embedding per frequency (dashed: onsets)", fontsize=10)
    return fig


# --------------------------------------------------------------------------------------------------
# files


def slug(path: str) -> str:
    """A run path as a file-name (and HTML anchor) fragment: ``"sweep/run 1"`` → ``"sweep_run_1"``."""
    return re.sub(r"[^A-Za-z0-9_.-]+", "_", path).strip("_") or "run"


def _formats(formats: Sequence[str] | str | None, out: Path) -> list[str]:
    names = [f.lower().lstrip(".") for f in _split_list(formats)]
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
    where = _where(store_or_tree)
    tree = open_store(store_or_tree)
    selected = select_runs(tree, runs, where)
    probes, extras = _resolve_metrics(_Runs(selected), metrics, where)
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
