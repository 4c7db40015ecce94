"""Drawing: the overview figure (the plan's panels on a grid, onsets as dashed lines) and one run's
Fourier heat map, as matplotlib Figures. The x axis of every panel is the step on a symlog scale."""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np

from .plan import Panel, curve_block, expand, plan, probe_specs
from .runs import RUN_COLOURS, PlotError, Runs, open_store, select_runs, split_list, where_of

SPLIT_STYLES = {"train": "-", "test": "--", "random": ":", "boundary": "-."}
STYLE_CYCLE = ["-", "--", ":", "-."]
ONSET_DASH = (0, (4, 3))
ONSET_SHORT = {"memorisation": "mem", "generalisation": "gen"}
# x axis: symlog, linear on [0, 1] (so step 0 is drawn), one decade per decade above
SYMLOG = {"linthresh": 1.0, "linscale": 0.4}
XLABEL = "step (log scale; 0 at left)"


def _shade(colour: str, i: int, n: int) -> tuple[float, float, float]:
    """``colour`` mixed with white: index 0 of ``n`` is the full colour, the last 60 % white."""
    from matplotlib.colors import to_rgb

    t = 0.0 if n <= 1 else 0.6 * i / (n - 1)
    return tuple(c * (1 - t) + t for c in to_rgb(colour))  # type: ignore[return-value]


def eps_colour(i: int, n: int) -> tuple[float, float, float]:
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


def _draw_lines(ax, panel: Panel, runs: Runs, events: Mapping[str, Mapping[str, Any]],
                xlim: tuple[float, float] | None) -> None:
    from matplotlib.lines import Line2D

    spec = panel.spec
    hue_keys: list[tuple[str, dict[str, Any]]] = []
    n_runs = len(panel.runs)
    for k, path in enumerate(panel.runs):
        ds = runs.get(path, spec.probe)
        block = curve_block(ds, spec, dict(panel.sel))
        colour = runs.colour[path]
        steps = block["step"].values
        eps_index = None
        # runs overlaid: each later run narrower and on top, so identical curves stay visible as a
        # line inside a wider line of the other run's colour
        widen = 1.0 + 1.5 * (n_runs - 1 - k) / (n_runs - 1) if n_runs > 1 else 1.0
        if block.ndim == 1:
            ax.plot(steps, block.values, color=colour, lw=1.4 * widen, zorder=2 + k, **_markers(len(steps)))
        else:
            dim = block.dims[1]
            labels = list(block[dim].values)
            styles = _hue_styles(labels, dim)
            scale = dim == "eps" and len(panel.runs) == 1  # one run: radii on a colour scale
            colours = [eps_colour(i, len(labels)) if scale else
                       (_shade(colour, *st["shade"]) if "shade" in st and isinstance(colour, str) else colour)
                       for i, st in enumerate(styles)]
            if dim == "eps":
                eps_index = {float(lab): c for lab, c in zip(labels, colours)}
            for j, (lab, st) in enumerate(zip(labels, styles)):
                ax.plot(steps, block.values[:, j], color=colours[j], ls=st.get("ls", "-"), lw=1.3 * widen,
                        zorder=2 + k, **_markers(len(steps)))
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


def _draw_heatmap(ax, panel: Panel, runs: Runs, events: Mapping[str, Mapping[str, Any]],
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


def _xlim(runs: Runs, panels: list[Panel]) -> tuple[float, float] | None:
    lo, hi = math.inf, -math.inf
    for panel in panels:
        for path in panel.runs:
            steps = runs.get(path, panel.probe)["step"].values
            lo, hi = min(lo, float(steps.min())), max(hi, float(steps.max()))
    return (lo, hi) if math.isfinite(lo) else None


def _events(runs: Runs, thresholds: Mapping[str, Any] | None) -> dict[str, dict[str, Any]]:
    from grokscope.analysis import standard_onsets

    return {p: standard_onsets(runs.nodes[p], **dict(thresholds or {})) for p in runs.paths}


def run_caption(node: Any) -> str:
    """A few words on a run node's settings from its attrs: ``"mlp on modular (p=59), seeded split
    (seed 0)"`` (which data and split the run was probed on)."""
    from grokscope.datasets import describe_data

    model, data = node.attrs.get("model") or {}, node.attrs.get("dataset") or {}
    arch = (model.get("arch") or model.get("factory") or "model") if isinstance(model, dict) else "model"
    return f"{arch} on {describe_data(data if isinstance(data, dict) else None)}"


def _figure_legend(fig, runs: Runs, panels: list[Panel]) -> None:
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

    where = where_of(store_or_tree)
    tree = open_store(store_or_tree)
    sel = Runs(select_runs(tree, runs, where))
    panels = plan(sel, metrics, layers, where)
    if not panels:
        raise PlotError(f"{where}: nothing to plot: runs {', '.join(sel.paths)} have no finished steps of "
                        f"{', '.join(split_list(metrics)) or 'any probe'}")
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

    one = Runs([(path, node)])
    one.colour[path] = colour
    spec = next((s for s in probe_specs(one, "fourier") if s.var == "fourier_norms"), None)
    if spec is None:
        return None
    panels = expand(one, spec)
    if not panels:
        return None
    fig, ax = plt.subplots(figsize=(8, 4.8), layout="constrained")
    ax.set_label(panels[0].key)
    _draw_heatmap(ax, panels[0], one, _events(one, thresholds), _xlim(one, panels))
    ax.set_title(f"{path}: Fourier norms of the embedding per frequency (dashed: onsets)", fontsize=10)
    return fig


