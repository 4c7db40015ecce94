"""The panel plan: which panels the overview draws for the selected runs (each probe's declared
panels, :class:`grokscope.presentation.PanelSpec`, or one generic panel per variable), each reduced to
the curves it shows (:func:`curve_block`). No drawing here."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from grokscope.engine.store_schema import ENGINE_VARS
from grokscope.presentation import PanelSpec, for_group, probe_order

from grokscope.analysis.runs import installed_presentation, panel_order_of

from .runs import PlotError, Runs, open_store, select_runs, split_list, where_of

MAX_LINES = 12          # a generic ``probe.var`` panel with more lines than this is refused (or a heat map)

# One panel's drawing instructions, as a probe declares them (grokscope.presentation.PanelSpec).
Spec = PanelSpec


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


def resolve_metrics(runs: Runs, metrics: Sequence[str] | str | None, where: str
                     ) -> tuple[list[str] | None, list[tuple[str, str]]]:
    """``(probe names or None for all, [(probe, var)] extra variables)``; PlotError for unknown ones."""
    names = split_list(metrics)
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


def probe_specs(runs: Runs, probe: str) -> list[Spec]:
    """The panels of ``probe`` in the selected runs: those it declares (stored with its groups, or its
    installed class's), else one generic panel per variable."""
    for path in runs.paths:
        ds = runs.get(path, probe)
        if ds is None:
            continue
        found = for_group(probe, dict(ds.attrs), installed_presentation)
        if found is not None and found[0]:
            return found[0]
        return _generic_specs(probe, ds)
    return []


def plan(runs: Runs, metrics: Sequence[str] | str | None = None, layers: bool = False,
          where: str = "store") -> list[Panel]:
    probes, extras = resolve_metrics(runs, metrics, where)
    specs: list[Spec] = []
    declared: list[Spec] = []
    for probe in probe_order(runs.probes(), panel_order_of(runs.nodes.values())):
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
        for panel in expand(runs, spec):
            if panel.key not in seen:
                seen.add(panel.key)
                panels.append(panel)
    return panels


def expand(runs: Runs, spec: Spec) -> list[Panel]:
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
    where = where_of(tree)
    tree = open_store(tree)
    return plan(Runs(select_runs(tree, runs, where)), metrics, layers, where)
