"""A store's runs read as events: the standard onsets, the probes' declared change points, lead/lag
between them and :func:`run_summary` (what ``grokscope report`` prints), from a run's DataTree node."""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping
from dataclasses import asdict, dataclass, field
from typing import Any

import numpy as np

from grokscope.presentation import EventSpec, for_group, group_order, probe_order
from grokscope.reading import done_steps

from .curves import (CHANCE_MARGIN, CHANGE_TOL, DEFAULT_GROK_THRESHOLD, GROK_START, GROK_THRESHOLDS,
                     MEM_THRESHOLD, NOISE_K, ROBUST_THRESHOLD, chance_level, change_point, clear_of_chance,
                     largest_change, lc_phases, lead_lag, onset)


@dataclass
class Onset:
    """An onset or change point found on one curve, with the parameters that found it.

    ``step`` is NaN when the curve never got there. ``kind`` is ``"threshold"`` (:func:`onset`) or
    ``"change"`` (:func:`change_point`; then ``threshold`` holds the fraction and ``above`` is True for
    a rise).
    """

    name: str
    step: float
    probe: str
    var: str
    threshold: float
    above: bool = True
    window: int = 1
    patience: int = 1
    kind: str = "threshold"
    sel: dict[str, Any] = field(default_factory=dict)
    # threshold onsets: {"asked": the threshold asked for, "chance", "max": the curve's highest value};
    # change points: largest_change's result (start/end of the move, size, noise, size needed)
    detail: dict[str, Any] = field(default_factory=dict)
    words: str = ""

    @property
    def found(self) -> bool:
        return not math.isnan(self.step)

    def to_dict(self) -> dict[str, Any]:
        return json_safe(asdict(self))


def grok_threshold_for(dataset_spec: dict[str, Any] | None) -> float:
    """The test-accuracy threshold of "generalised" for a dataset spec ``{"name": ...}`` of a store
    written before the probe engine recorded each run's task (:func:`task_of` reads what the dataset
    states); :data:`GROK_THRESHOLDS` of the built-ins, else :data:`DEFAULT_GROK_THRESHOLD`."""
    name = (dataset_spec or {}).get("name") if isinstance(dataset_spec, dict) else None
    return GROK_THRESHOLDS.get(name, DEFAULT_GROK_THRESHOLD)


def task_of(run_node: Any) -> dict[str, Any]:
    """What is known of a run's task: ``{"n_classes", "chance", "classes_from", "grok_threshold",
    "threshold_from"}``. ``grokscope probe`` stores them with each run, as the dataset states them
    (:func:`grokscope.datasets.task_facts`: the number of classes stated by the dataset or read from
    its labels, the generalisation threshold stated by the dataset or the default). A store written
    before that gets the built-ins' values from the dataset spec (``"classes_from": "name"``), and
    ``chance`` None (``"classes_from": "unknown"``) for other datasets."""
    task = run_node.attrs.get("task")
    if isinstance(task, dict) and task.get("n_classes"):
        return dict(task)
    spec = run_node.attrs.get("dataset")
    chance = chance_level(spec)
    n = round(1 / chance) if chance else None
    name = spec.get("name") if isinstance(spec, dict) else None
    return {"n_classes": n, "chance": chance, "classes_from": "name" if n else "unknown",
            "grok_threshold": grok_threshold_for(spec),
            "threshold_from": "name" if name in GROK_THRESHOLDS else "default"}


def log_accuracy(run_node: Any):
    """The run's own ``log.jsonl`` accuracies as an ``acc``-like Dataset (``accuracy`` over
    ``step, split``; attrs ``source``: the log's path), read from the run folder recorded in the
    store; None when the folder or its log is not there or holds no accuracy. Used for the onsets
    when ``acc`` was not probed."""
    import xarray as xr

    folder = run_node.attrs.get("path")
    if not folder:
        return None
    import json
    from pathlib import Path

    # read as grokscope.runs.read_log reads it (a torn last line skipped); not imported from there:
    # that module imports torch, and the package (an import circle through grokscope.analysis)
    path = Path(folder) / "log.jsonl"
    try:
        lines = path.read_text().splitlines() if path.is_file() else []
    except OSError:
        return None
    records = []
    for line in lines:
        try:
            r = json.loads(line)
        except ValueError:
            continue
        if isinstance(r, dict) and "step" in r:
            records.append(r)
    keys = [k for k in ("train_acc", "test_acc") if any(r.get(k) is not None for r in records)]
    if not keys:
        return None
    by_step: dict[int, dict[str, Any]] = {}
    for r in records:
        by_step.setdefault(int(r["step"]), {}).update({k: r[k] for k in keys if r.get(k) is not None})
    steps = np.array(sorted(by_step), dtype=np.int64)
    values = np.array([[float(by_step[t].get(k, math.nan)) for k in keys] for t in steps])
    return xr.Dataset({"accuracy": (("step", "split"), values)},
                      coords={"step": steps, "split": [k.split("_")[0] for k in keys]},
                      attrs={"source": str(path)})


def probe_dataset(run_node: Any, probe: str):
    """The finished steps of one probe group of a run node, as a Dataset (None if the run lacks it)."""
    if probe not in run_node.children:
        return None
    return done_steps(run_node[probe].to_dataset())


def select_curve(ds, var: str, **sel) -> Any:
    """``ds[var]`` selected down to a curve over ``step``: keywords select by label; any other
    remaining dim is reduced to its first element only if it has length 1, otherwise an error names it.
    """
    if var not in ds:
        raise KeyError(f"no variable {var!r} (have: {', '.join(map(str, ds.data_vars))})")
    da = ds[var]
    for dim, label in sel.items():
        if dim not in da.dims:
            raise KeyError(f"{var} has no dim {dim!r} (dims: {da.dims})")
        if label not in da[dim].values:
            raise KeyError(f"{var}: {dim}={label!r} not in {list(da[dim].values)}")
        da = da.sel({dim: label})
    extra = [d for d in da.dims if d != "step"]
    for d in extra:
        if da.sizes[d] != 1:
            raise ValueError(f"{var} still has dim {d!r} of size {da.sizes[d]}: select it with {d}=...")
        da = da.isel({d: 0})
    return da


def _split_label(ds, var: str, preferred: str) -> dict[str, Any]:
    if "split" not in ds[var].dims:
        return {}
    labels = [str(v) for v in ds[var]["split"].values]
    return {"split": preferred if preferred in labels else labels[0]}


def _radius0(ds, var: str) -> dict[str, Any]:
    return {"radius": ds[var]["radius"].values[0].item()} if "radius" in ds[var].dims else {}


def standard_onsets(run_node: Any, mem: float = MEM_THRESHOLD, grok: float | None = None,
                    robust: float = ROBUST_THRESHOLD, window: int = 1, patience: int = 1,
                    chance_margin: float = CHANCE_MARGIN) -> dict[str, Onset]:
    """The threshold onsets of one run (an ``xr.DataTree`` node whose children are probe groups): every
    threshold event its probes declare (:class:`~grokscope.presentation.EventSpec` with ``threshold``),
    in panel order.

    For the built-ins: ``memorisation``, train accuracy ≥ ``mem``, and ``generalisation``, test
    accuracy ≥ ``grok`` (default: the threshold the run's dataset states, :func:`task_of`), both of
    ``acc``; ``robustness@<eps>``, PGD robust accuracy on the test split (else the pgd probe's first
    split) ≥ ``robust``, one per ε, of ``pgd``. Every threshold is raised by :func:`clear_of_chance`
    (``chance_margin``) where the task's chance level is known, so no onset is ever at or below chance;
    ``detail`` keeps the threshold asked for, the chance level, the number of classes and the curve's
    highest value. Without an ``acc`` group, ``acc``'s events are read on the run's own log
    (:func:`log_accuracy`; ``probe`` is then ``"log"`` and ``detail["source"]`` names the file).
    """
    task = task_of(run_node)
    if grok is None:
        grok = float(task.get("grok_threshold") or DEFAULT_GROK_THRESHOLD)
    asked = {"mem": mem, "grok": grok, "robust": robust}
    out: dict[str, Onset] = {}
    for spec, ds, source in _threshold_events(run_node):
        for name, sel in _event_curves(spec, ds):
            out.setdefault(name, _threshold_onset(name, source, ds, spec.var, sel, asked[spec.threshold or ""],
                                                  task, window, patience, chance_margin))
    return out


def _threshold_events(run_node: Any) -> list[tuple[EventSpec, Any, str]]:
    """``[(event, the group's Dataset, probe or "log")]`` for every threshold event of the run's probes,
    in panel order; ``acc``'s on the run's own log when the run has no ``acc`` group."""
    out: list[tuple[EventSpec, Any, str]] = []
    children = [str(c) for c in run_node.children]
    for probe in probe_order(children + ["acc"], panel_order_of([run_node])):
        node = run_node[probe] if probe in children else None
        if node is not None and "step" not in node.dims:
            continue
        found = for_group(probe, dict(node.attrs) if node is not None else {}, installed_presentation)
        events = [e for e in (found[1] if found else []) if e.threshold]
        if not events:
            continue
        if node is not None:
            ds, source = probe_dataset(run_node, probe), probe
        else:
            ds, source = accuracy_dataset(run_node)
        if ds is None:
            continue
        out += [(e, ds, source) for e in events if e.var in ds]
    return out


def _event_curves(spec: EventSpec, ds: Any) -> list[tuple[str, dict[str, Any]]]:
    """``[(event name, selection)]``: the curves a threshold event is read on (one per label of
    ``spec.per``); none when its split is not there (a threshold onset never moves to another split,
    except ``per`` events, which fall back to the first split)."""
    var = ds[spec.var]
    sel: dict[str, Any] = {}
    if spec.split and "split" in var.dims:
        labels = [str(v) for v in var["split"].values]
        if spec.split in labels:
            sel["split"] = spec.split
        elif spec.per:
            sel["split"] = labels[0]
        else:
            return []
    if not spec.per:
        return [(spec.name, sel)]
    return [(spec.name.format(float(v)), {**sel, spec.per: float(v)}) for v in var[spec.per].values]


def _threshold_onset(name: str, probe: str, ds: Any, var: str, sel: dict[str, Any], asked: float,
                     task: dict[str, Any], window: int, patience: int, chance_margin: float) -> Onset:
    chance = task.get("chance")
    da = select_curve(ds, var, **sel)
    thr = clear_of_chance(asked, chance, chance_margin)
    finite = da.values[np.isfinite(da.values)]
    detail = {"asked": float(asked), "chance": chance, "n_classes": task.get("n_classes"),
              "max": float(finite.max()) if len(finite) else math.nan}
    if "source" in ds.attrs:
        detail["source"] = ds.attrs["source"]
    return Onset(name, onset(ds.step.values, da.values, thr, True, window, patience), probe, var, thr,
                 window=window, patience=patience, sel=sel, detail=detail)


def panel_order_of(run_nodes: Any) -> Callable[[str], float | None]:
    """``order(probe)``: the ``panel_order`` stored with that probe's group in the first of
    ``run_nodes`` (DataTree run nodes) that has one, else what the installed probe class states."""
    def order(probe: str) -> float | None:
        for node in run_nodes:
            if probe in node.children:
                value = group_order(probe, dict(node[probe].attrs))
                if value is not None:
                    return value
        return group_order(probe, {}, _declared_order)
    return order


def accuracy_dataset(run_node: Any) -> tuple[Any, str]:
    """``(Dataset with accuracy over step and split, where it came from)``: the ``acc`` probe's group
    (``"acc"``), else the run's own log (``"log"``, :func:`log_accuracy`), else ``(None, "")``."""
    acc = probe_dataset(run_node, "acc")
    if acc is not None and "accuracy" in acc:
        return acc, "acc"
    log = log_accuracy(run_node)
    return (log, "log") if log is not None else (None, "")


def _change(run_node: Any, event: EventSpec, fraction: float, window: int) -> Onset | None:
    ds = probe_dataset(run_node, event.probe)
    if ds is None or event.var not in ds or ds.sizes.get("step", 0) < 3:
        return None
    sel = {**(_split_label(ds, event.var, event.split) if event.split else {}), **_radius0(ds, event.var)}
    for dim in ds[event.var].dims:  # any other dim at its first label
        if dim not in sel and dim != "step" and dim != "split":
            sel[dim] = ds[event.var][dim].values[0].item()
    if "split" in ds[event.var].dims and "split" not in sel:
        sel["split"] = str(ds[event.var]["split"].values[0])
    da = select_curve(ds, event.var, **sel)
    move = largest_change(ds.step.values, da.values, event.direction, fraction, window)
    return Onset(event.name, move["step"], event.probe, event.var, fraction, event.direction == "rise", window, 1,
                 "change", sel, words=event.words, detail=move)


def declared_events(run_node: Any) -> list[EventSpec]:
    """The change-point events that the probes of one run declare (``Probe.events`` without a
    threshold), in panel order."""
    out: list[EventSpec] = []
    for probe in probe_order([str(c) for c in run_node.children], panel_order_of([run_node])):
        node = run_node[probe]
        if "step" not in node.dims:
            continue
        found = for_group(probe, dict(node.attrs), installed_presentation)
        if found is not None:
            out += [e for e in found[1] if not e.threshold]
    return out


def run_events(run_node: Any, fraction: float = 0.5, change_window: int = 5, **thresholds) -> dict[str, Onset]:
    """:func:`standard_onsets` plus the change points that the run's probes declare (``Probe.events``:
    for the built-ins ``lc_fall``, half of LC's largest fall around training points; ``gini_rise``,
    the Fourier Gini; ``alignment_rise``, mean centroid alignment on train; ``weight_norm_fall``, ‖θ‖²),
    each smoothed over ``change_window`` checkpoints; ``thresholds`` go to :func:`standard_onsets`."""
    events: dict[str, Onset] = dict(standard_onsets(run_node, **thresholds))
    for spec in declared_events(run_node):
        ev = _change(run_node, spec, fraction, change_window)
        if ev is not None and ev.name not in events:
            events[ev.name] = ev
    return events


def lead_lag_pairs(events: Mapping[str, Onset]) -> list[tuple[str, str]]:
    """The lead/lag questions a report answers, as (first event, second event) names: memorisation and
    every change point against generalisation, then generalisation against every robustness onset."""
    pairs = [("memorisation", "generalisation")]
    pairs += [(k, "generalisation") for k, v in events.items() if v.kind == "change"]
    pairs += [("generalisation", k) for k in events if k.startswith("robustness@")]
    return [(a, b) for a, b in pairs if a in events and b in events]


def run_summary(run_node: Any, mem: float = MEM_THRESHOLD, grok: float | None = None,
                robust: float = ROBUST_THRESHOLD, window: int = 1, patience: int = 1,
                phase_window: int = 5, fraction: float = 0.5) -> dict[str, Any]:
    """Everything known about one run's timeline, JSON-safe (NaN → None).

    ``{"onsets": {name: Onset.to_dict()}`` (standard onsets and change points, see :func:`run_events`),
    ``"lc_phases": {split: lc_phases(...)}`` (train/test/random/boundary at the first radius),
    ``"migration"``: LC(boundary)/LC(train) first, last, max and the step of half its largest rise,
    ``"lead_lag"``: [lead_lag(...)] for :func:`lead_lag_pairs`,
    ``"grok_phase"``: steps at which test accuracy first reaches ``GROK_START`` of the way from
    chance to 1, and the grok threshold, ``"settings"``: the run's model/dataset/train specs,
    ``"final"``: last train/test accuracy, ``"accuracy_from"``: ``"acc"``, the log file the
    accuracies were read from (``acc`` not probed) or None, ``"task"``: :func:`task_of`,
    ``"params"``: the arguments used}.
    """
    thresholds = {"mem": mem, "grok": grok, "robust": robust, "window": window, "patience": patience}
    events = run_events(run_node, fraction, phase_window, **thresholds)
    out: dict[str, Any] = {"onsets": {k: v.to_dict() for k, v in events.items()}}
    lc = probe_dataset(run_node, "lc")
    if lc is not None and "lc_total_mean" in lc:
        var = lc["lc_total_mean"]
        rad = _radius0(lc, "lc_total_mean")
        splits = [str(s) for s in var["split"].values] if "split" in var.dims else [None]
        out["lc_phases"] = {}
        for split in splits:
            da = select_curve(lc, "lc_total_mean", **({"split": split} if split else {}), **rad)
            out["lc_phases"][split or "all"] = lc_phases(lc.step.values, da.values, phase_window)
        if "boundary" in splits and "train" in splits:
            ratio = (select_curve(lc, "lc_total_mean", split="boundary", **rad)
                     / select_curve(lc, "lc_total_mean", split="train", **rad)).values
            finite = ratio[np.isfinite(ratio)]
            out["migration"] = {
                "ratio_first": float(finite[0]) if len(finite) else math.nan,
                "ratio_last": float(finite[-1]) if len(finite) else math.nan,
                "ratio_max": float(finite.max()) if len(finite) else math.nan,
                "t_half_rise": change_point(lc.step.values, np.where(np.isfinite(ratio), ratio, np.nan),
                                            "rise", fraction, phase_window)}
    out["lead_lag"] = [lead_lag(events[a].step, events[b].step, a, b) for a, b in lead_lag_pairs(events)]
    acc, source = accuracy_dataset(run_node)
    out["accuracy_from"] = acc.attrs.get("source", source) if acc is not None else None
    if acc is not None and acc.sizes["step"]:
        out["final"] = {f"{s}_acc": _last_finite(acc["accuracy"].sel(split=s).values)
                        for s in acc["split"].values}
        if "generalisation" in events:
            out["grok_phase"] = grok_phase(acc, events["generalisation"], window, patience)
    out["settings"] = {k: run_node.attrs.get(k) for k in ("model", "dataset", "train", "path")
                       if k in run_node.attrs}
    task = task_of(run_node)
    out["task"] = task
    out["params"] = {**thresholds, "phase_window": phase_window, "fraction": fraction,
                     "change_tol": CHANGE_TOL, "noise_k": NOISE_K, "chance_margin": CHANCE_MARGIN,
                     "chance": task.get("chance"), "grok_start": GROK_START}
    return json_safe(out)


def _last_finite(values: np.ndarray) -> float:
    finite = np.asarray(values, dtype=float)
    finite = finite[np.isfinite(finite)]
    return float(finite[-1]) if len(finite) else math.nan


def grok_phase(acc, generalisation: Onset, window: int = 1, patience: int = 1,
               start: float = GROK_START) -> dict[str, Any]:
    """The grokking phase on the test-accuracy curve of an ``acc`` group: from the first checkpoint at
    ``chance + start · (1 − chance)`` (chance from ``generalisation.detail``; 0 if unknown) to the
    generalisation onset. Returns ``{"t_start", "start_threshold", "v_start": accuracy at t_start,
    "t_before", "v_before": the checkpoint before t_start and its accuracy, "t_end", "end_threshold"}``
    (NaN where missing) — so that a sentence can say what the curve really did between checkpoints."""
    steps = acc.step.values
    test = select_curve(acc, "accuracy", split="test").values
    chance = generalisation.detail.get("chance") or 0.0
    thr = chance + start * (1.0 - chance)
    t = onset(steps, test, thr, True, window, patience)
    out = {"t_start": t, "start_threshold": thr, "v_start": math.nan, "t_before": math.nan,
           "v_before": math.nan, "t_end": generalisation.step, "end_threshold": generalisation.threshold}
    if not math.isnan(t):
        order = np.argsort(steps)
        k = int(np.flatnonzero(steps[order] == t)[0])
        out["v_start"] = float(test[order][k])
        if k > 0:
            out["t_before"], out["v_before"] = float(steps[order][k - 1]), float(test[order][k - 1])
    return out


def json_safe(v: Any) -> Any:
    """NaN → None and numpy scalars → Python, recursively (JSON has no NaN)."""
    if isinstance(v, dict):
        return {str(k): json_safe(x) for k, x in v.items()}
    if isinstance(v, (list, tuple)):
        return [json_safe(x) for x in v]
    if isinstance(v, np.generic):
        v = v.item()
    if isinstance(v, float) and math.isnan(v):
        return None
    return v


def installed_presentation(probe: str):
    """The installed probe class's panels and events (imports the probes, and so torch: only for
    stores written before groups carried their ``presentation``)."""
    from grokscope.probes import declared_presentation

    return declared_presentation(probe)


def _declared_order(probe: str) -> float | None:
    """The installed probe class's ``panel_order`` (None: no such probe installed)."""
    from grokscope.probes import declared_order

    return declared_order(probe)
