"""Onsets, phases and lead/lag read off a probe store (docs/algorithms.md#analysis--onsets-and-phases).

These are the numbers `grokscope report` prints, `grokscope plot` draws as vertical lines and the
``ds.grok`` / ``dt.grok`` accessors return. Every threshold, window and fraction is an argument, never
hidden, and every result carries the parameters it was computed with.

Vocabulary (all on the checkpoint axis; checkpoints are log-spaced, so "smoothing" is a running median
over ``window`` consecutive checkpoints, i.e. over a stretch of log-time):

* an **onset** is the first step at which a (smoothed) curve is past a threshold and stays there for
  ``patience`` checkpoints — memorisation, generalisation, robustness at each ε;
* a **change point** is the step at which a curve has completed ``fraction`` of its largest rise (or
  fall) — used for measures without a natural threshold (LC falling, Fourier Gini rising). A move
  counts only when it is larger than both ``tol`` × the curve's range and ``noise_k`` × the curve's
  checkpoint-to-checkpoint noise (:func:`noise_level`); otherwise the curve shows "no clear change";
* accuracy thresholds are raised to **clear chance**: a generalisation or robustness onset needs at
  least ``chance + CHANCE_MARGIN · (1 − chance)`` (:func:`clear_of_chance`), chance = 1 / classes;
* **LC phases** (Humayun et al.): first descent, ascent, second descent, found as the largest run-up of
  the smoothed LC curve and the minima either side of it;
* **lead/lag** compares two steps on a log scale (decades), since grokking is a log-time phenomenon.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import asdict, dataclass, field
from typing import Any

import numpy as np

from grokscope.presentation import EventSpec, for_group, probe_order
from grokscope.reading import done_steps

MEM_THRESHOLD = 0.99
ROBUST_THRESHOLD = 0.5
# Test-accuracy threshold of "generalised" per dataset (docs/algorithms.md#onsets): 0.99 for algorithmic
# tasks, 0.85 for image classification (GrokAlign Table 1); DEFAULT_GROK_THRESHOLD otherwise.
GROK_THRESHOLDS = {"modular": 0.99, "xor": 0.99, "mnist": 0.85, "mnist5k": 0.85, "fashion_mnist": 0.85,
                   "digits": 0.85, "cifar10": 0.85}
DEFAULT_GROK_THRESHOLD = 0.95
# A change point needs a move larger than this fraction of the curve's range (else: noise) ...
CHANGE_TOL = 0.2
# ... and larger than NOISE_K x the curve's checkpoint-to-checkpoint noise (noise_level). On pure
# Gaussian noise over 100 checkpoints smoothed over 5, the largest rise is 2.2 noise widths (median),
# 3.2 (95th percentile), 3.7 (99th; 2 000 draws): 4 names a noise-only curve's move < 1 % of the time.
NOISE_K = 4.0
# A generalisation / robustness threshold is raised to at least chance + CHANCE_MARGIN (1 - chance).
CHANCE_MARGIN = 0.25
# The grokking phase starts where test accuracy is GROK_START of the way from chance to 1.
GROK_START = 0.2


# --------------------------------------------------------------------------------------------------
# curves


def _sorted_curve(steps: Any, values: Any) -> tuple[np.ndarray, np.ndarray]:
    steps, values = np.asarray(steps), np.asarray(values, dtype=float)
    if steps.shape != values.shape or steps.ndim != 1:
        raise ValueError(f"steps {steps.shape} and values {values.shape} must be 1-D of equal length")
    order = np.argsort(steps, kind="stable")
    return steps[order], values[order]


def smooth_log_time(values: np.ndarray, window: int = 5) -> np.ndarray:
    """Running median over ``window`` consecutive checkpoints, centred, NaNs ignored (shape kept)."""
    values = np.asarray(values, dtype=float)
    if window <= 1:
        return values.copy()
    half = window // 2
    out = np.empty_like(values)
    for i in range(len(values)):
        seg = values[max(0, i - half): i + half + 1]
        seg = seg[~np.isnan(seg)]
        out[i] = np.median(seg) if len(seg) else np.nan
    return out


def onset(steps: Any, values: Any, threshold: float, above: bool = True, window: int = 1,
          patience: int = 1) -> float:
    """The first step at which the curve, smoothed over ``window`` checkpoints, is ``>= threshold``
    (``<=`` if not ``above``) and stays so for ``patience`` consecutive checkpoints; NaN if never.

    ``steps`` and ``values`` are 1-D of equal length, in any order; NaN values (missing cells) are
    dropped before smoothing.
    """
    steps, values = _sorted_curve(steps, values)
    keep = ~np.isnan(values)
    steps, values = steps[keep], smooth_log_time(values[keep], window)
    past = (values >= threshold) if above else (values <= threshold)
    patience = max(1, int(patience))
    for i in range(len(past) - patience + 1):
        if past[i: i + patience].all():
            return float(steps[i])
    return math.nan


def first_crossing(steps: Any, values: Any, threshold: float, above: bool = True) -> float:
    """The first step at which ``values >= threshold`` (``<=`` if not ``above``), unsmoothed; NaN if
    never (:func:`onset` with ``window=1, patience=1``)."""
    return onset(steps, values, threshold, above)


def first_logged_step(records: list[dict[str, Any]], key: str, threshold: float) -> int | None:
    """The first step of ``log.jsonl`` records whose ``key`` is ``>= threshold``; None if never.

    Records without ``key`` are skipped (same rule as :func:`first_crossing`).
    """
    steps = np.array([r["step"] for r in records], dtype=np.int64)
    values = np.array([np.nan if r.get(key) is None else r[key] for r in records], dtype=float)
    t = first_crossing(steps, values, threshold) if len(records) else math.nan
    return None if math.isnan(t) else int(t)


def noise_level(values: Any) -> float:
    """Checkpoint-to-checkpoint noise σ of a curve: a robust standard deviation (1.4826 × the median
    absolute deviation) of its second differences ``v[i+1] − 2 v[i] + v[i−1]``, divided by √6.

    Second differences cancel any locally linear trend, so a smooth curve has σ ≈ 0 however much it
    moves, while independent noise of standard deviation σ gives second differences of standard
    deviation σ√6. NaNs are dropped first; 0.0 for fewer than 3 values.
    """
    v = np.asarray(values, dtype=float)
    v = v[np.isfinite(v)]
    if len(v) < 3:
        return 0.0
    d2 = v[2:] - 2 * v[1:-1] + v[:-2]
    return float(1.4826 * np.median(np.abs(d2 - np.median(d2))) / math.sqrt(6))


def chance_level(dataset_spec: dict[str, Any] | None) -> float | None:
    """Accuracy of guessing, 1 / number of classes, for a dataset spec ``{"name", "kwargs"}``; None
    when the dataset is not one of grokscope's (its number of classes is not known here)."""
    if not isinstance(dataset_spec, dict):
        return None
    name, kw = dataset_spec.get("name"), dataset_spec.get("kwargs") or {}
    if name == "modular":
        return 1.0 / int(kw.get("p", 97))
    classes = {"xor": 2, "mnist": 10, "mnist5k": 10, "fashion_mnist": 10, "digits": 10, "cifar10": 10}
    return 1.0 / classes[name] if name in classes else None


def clear_of_chance(threshold: float, chance: float | None, margin: float = CHANCE_MARGIN) -> float:
    """``threshold`` raised to ``chance + margin · (1 − chance)`` if below it (unchanged if chance is
    unknown): on a binary task an onset at accuracy 0.5 is no onset at all."""
    if chance is None:
        return float(threshold)
    return float(max(threshold, chance + margin * (1.0 - chance)))


def _range(s: np.ndarray) -> float:
    finite = s[np.isfinite(s)]
    return float(finite.max() - finite.min()) if len(finite) else 0.0


def largest_move(values: np.ndarray, direction: str) -> tuple[int, int]:
    """Indices ``(i, j)``, ``i <= j``, of the largest rise ``values[j] - values[i]`` (``direction="rise"``)
    or the largest fall ``values[i] - values[j]`` (``"fall"``) with ``i`` before ``j``; NaNs ignored.

    ``(0, 0)`` when the curve never moves that way.
    """
    if direction not in ("rise", "fall"):
        raise ValueError(f"direction must be 'rise' or 'fall', not {direction!r}")
    v = np.asarray(values, dtype=float)
    v = v if direction == "rise" else -v
    best, best_ij, i_lo = 0.0, (0, 0), None
    for j, x in enumerate(v):
        if np.isnan(x):
            continue
        if i_lo is None or x < v[i_lo]:
            i_lo = j
        if x - v[i_lo] > best:
            best, best_ij = x - v[i_lo], (i_lo, j)
    return best_ij


def largest_change(steps: Any, values: Any, direction: str = "rise", fraction: float = 0.5,
                   window: int = 5, tol: float = CHANGE_TOL, noise_k: float = NOISE_K) -> dict[str, Any]:
    """The largest rise (or fall) of a curve and whether it is clear of the noise.

    The move is found by :func:`largest_move` on the curve smoothed over ``window`` checkpoints. It is
    ``clear`` when its size exceeds ``max(tol × range of the smoothed curve, noise_k × noise_level of
    the raw curve)``. Returns ``{"clear", "step": first step of the move past start + fraction · (end −
    start) (NaN unless clear), "t_start", "v_start", "t_end", "v_end" (smoothed values), "size",
    "noise", "needed": the size a clear move needs}``.
    """
    if not 0.0 < fraction <= 1.0:
        raise ValueError(f"fraction must be in (0, 1], not {fraction}")
    steps, values = _sorted_curve(steps, values)
    keep = ~np.isnan(values)
    steps, raw = steps[keep], values[keep]
    s = smooth_log_time(raw, window)
    out: dict[str, Any] = {"clear": False, "step": math.nan, "t_start": math.nan, "v_start": math.nan,
                           "t_end": math.nan, "v_end": math.nan, "size": 0.0, "noise": noise_level(raw),
                           "needed": math.nan}
    if len(s) == 0:
        return out
    i, j = largest_move(s, direction)
    out["needed"] = max(tol * _range(s), noise_k * out["noise"])
    out.update(t_start=float(steps[i]), v_start=float(s[i]), t_end=float(steps[j]), v_end=float(s[j]),
               size=float(abs(s[j] - s[i])))
    if i == j or out["size"] <= out["needed"]:
        return out
    level = s[i] + fraction * (s[j] - s[i])
    seg = s[i: j + 1]
    hit = np.flatnonzero(seg >= level if direction == "rise" else seg <= level)
    out.update(clear=True, step=float(steps[i + hit[0]]))
    return out


def change_point(steps: Any, values: Any, direction: str = "rise", fraction: float = 0.5,
                 window: int = 5, tol: float = CHANGE_TOL, noise_k: float = NOISE_K) -> float:
    """The step at which the smoothed curve has completed ``fraction`` of its largest rise (or fall);
    NaN when that move is not clear of the noise (see :func:`largest_change`)."""
    return largest_change(steps, values, direction, fraction, window, tol, noise_k)["step"]


def lc_phases(steps: Any, lc: Any, window: int = 5, tol: float = 0.1, noise_k: float = NOISE_K) -> dict[str, Any]:
    """Humayun et al.'s LC phases from a curve LC(step) (``docs/algorithms.md#lc-phases``).

    On the curve smoothed over ``window`` checkpoints: the **ascent** is its largest run-up, from
    ``t_min1`` (end of the first descent) to ``t_peak``; ``t_min2`` is the minimum after the peak (end
    of the second descent, where region migration has finished). ``descent1`` = LC(first) − LC(t_min1),
    ``rise`` = LC(t_peak) − LC(t_min1), ``depth`` = LC(t_peak) − LC(t_min2), ``t_fall_half`` = the step
    at which half of that second descent is done. A phase is present (``has_*``) when its size is above
    both ``tol`` × the range of the smoothed curve (max − min) and ``noise_k`` × the raw curve's
    :func:`noise_level` (``noise`` in the result). Times are NaN where the curve is too short
    (< 3 checkpoints).
    """
    steps, lc = _sorted_curve(steps, lc)
    keep = ~np.isnan(lc)
    steps, s = steps[keep], smooth_log_time(lc[keep], window)
    out: dict[str, Any] = {"t_min1": math.nan, "t_peak": math.nan, "t_min2": math.nan,
                           "t_fall_half": math.nan, "descent1": math.nan, "rise": math.nan,
                           "depth": math.nan, "has_first_descent": False, "has_ascent": False,
                           "has_second_descent": False, "window": window, "tol": tol,
                           "noise": noise_level(lc[keep]), "noise_k": noise_k}
    if len(s) < 3:
        return out
    i_min1, i_peak = largest_move(s, "rise")
    if i_min1 == i_peak:  # never rises: all descent
        i_min1 = i_peak = 0
    i_min2 = i_peak + int(np.argmin(s[i_peak:]))
    scale = max(tol * _range(s), noise_k * out["noise"])
    half = s[i_peak] - 0.5 * (s[i_peak] - s[i_min2])
    i_half = i_peak + int(np.flatnonzero(s[i_peak: i_min2 + 1] <= half)[0])
    out.update(t_min1=float(steps[i_min1]), t_peak=float(steps[i_peak]), t_min2=float(steps[i_min2]),
               t_fall_half=float(steps[i_half]) if i_min2 > i_peak else math.nan,
               descent1=float(s[0] - s[i_min1]), rise=float(s[i_peak] - s[i_min1]),
               depth=float(s[i_peak] - s[i_min2]))
    out["has_first_descent"] = out["descent1"] > scale
    out["has_ascent"] = out["rise"] > scale
    out["has_second_descent"] = out["depth"] > scale
    return out


def lead_lag(t_a: float, t_b: float, name_a: str = "a", name_b: str = "b",
             together_decades: float = 0.1) -> dict[str, Any]:
    """Which of two events came first. Returns ``{"a", "b", "t_a", "t_b", "lag_steps": t_b − t_a,
    "lag_decades": log10((t_b + 1) / (t_a + 1)), "order"}`` with ``order`` one of ``"<a> first"``,
    ``"<b> first"``, ``"together"`` (within ``together_decades`` of each other) or ``"undetermined"``
    (either event missing)."""
    out: dict[str, Any] = {"a": name_a, "b": name_b, "t_a": t_a, "t_b": t_b, "lag_steps": math.nan,
                           "lag_decades": math.nan, "order": "undetermined",
                           "together_decades": together_decades}
    if math.isnan(t_a) or math.isnan(t_b):
        return out
    dec = math.log10((t_b + 1.0) / (t_a + 1.0))
    out.update(lag_steps=t_b - t_a, lag_decades=dec)
    out["order"] = "together" if abs(dec) <= together_decades else (f"{name_a} first" if dec > 0
                                                                     else f"{name_b} first")
    return out


# --------------------------------------------------------------------------------------------------
# a store's runs


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
    """The test-accuracy threshold of "generalised" for a dataset spec ``{"name": ...}``."""
    name = (dataset_spec or {}).get("name") if isinstance(dataset_spec, dict) else None
    return GROK_THRESHOLDS.get(name, DEFAULT_GROK_THRESHOLD)


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
    """The standard onsets of one run (an ``xr.DataTree`` node whose children are probe groups).

    ``memorisation``: train accuracy ≥ ``mem``; ``generalisation``: test accuracy ≥ ``grok`` (default:
    :func:`grok_threshold_for` the run's dataset); ``robustness@<eps>``: PGD robust accuracy on the
    pgd probe's first split ≥ ``robust``, one per ε. The generalisation and robustness thresholds are
    raised by :func:`clear_of_chance` (``chance_margin``) where the dataset's chance level is known;
    ``detail`` keeps the threshold asked for, the chance level and the curve's highest value. Only the
    onsets whose probe the run has.
    """
    out: dict[str, Onset] = {}
    common = {"window": window, "patience": patience}
    dataset = run_node.attrs.get("dataset")
    chance = chance_level(dataset)

    def make(name: str, probe: str, ds, var: str, asked: float, sel: dict[str, Any],
             raise_to_chance: bool) -> Onset:
        da = select_curve(ds, var, **sel)
        thr = clear_of_chance(asked, chance, chance_margin) if raise_to_chance else float(asked)
        finite = da.values[np.isfinite(da.values)]
        detail = {"asked": float(asked), "chance": chance,
                  "max": float(finite.max()) if len(finite) else math.nan}
        return Onset(name, onset(ds.step.values, da.values, thr, True, window, patience), probe, var, thr,
                     sel=sel, detail=detail, **common)

    acc = probe_dataset(run_node, "acc")
    if acc is not None and "accuracy" in acc:
        if grok is None:
            grok = grok_threshold_for(dataset or acc.attrs.get("dataset"))
        for name, split, thr in (("memorisation", "train", mem), ("generalisation", "test", grok)):
            if split in acc["split"].values:
                out[name] = make(name, "acc", acc, "accuracy", thr, {"split": split}, name == "generalisation")
    pgd = probe_dataset(run_node, "pgd")
    if pgd is not None and "robust_acc" in pgd:
        sel = _split_label(pgd, "robust_acc", "test")
        for eps in pgd["eps"].values:
            eps = float(eps)
            name = f"robustness@{eps:g}"
            out[name] = make(name, "pgd", pgd, "robust_acc", robust, {**sel, "eps": eps}, True)
    return out


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
    """The change-point events that the probes of one run declare (``Probe.events``), in panel order."""
    out: list[EventSpec] = []
    for probe in probe_order([str(c) for c in run_node.children]):
        node = run_node[probe]
        if "step" not in node.dims:
            continue
        found = for_group(probe, dict(node.attrs))
        if found is not None:
            out += found[1]
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
    ``"grok_phase"``: steps at which test accuracy first reaches 0.2 and the grok threshold,
    ``"settings"``: the run's model/dataset/train specs, ``"final"``: last train/test accuracy,
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
    acc = probe_dataset(run_node, "acc")
    if acc is not None and "accuracy" in acc and acc.sizes["step"]:
        out["final"] = {f"{s}_acc": float(acc["accuracy"].sel(split=s).values[-1])
                        for s in acc["split"].values}
        if "generalisation" in events:
            out["grok_phase"] = grok_phase(acc, events["generalisation"], window, patience)
    out["settings"] = {k: run_node.attrs.get(k) for k in ("model", "dataset", "train", "path")
                       if k in run_node.attrs}
    out["params"] = {**thresholds, "phase_window": phase_window, "fraction": fraction,
                     "change_tol": CHANGE_TOL, "noise_k": NOISE_K, "chance_margin": CHANCE_MARGIN,
                     "chance": chance_level(run_node.attrs.get("dataset"))}
    return json_safe(out)


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


# --------------------------------------------------------------------------------------------------
# accessors


def register_accessors() -> None:
    """Register ``ds.grok`` on Datasets and ``dt.grok`` on DataTrees (done on import)."""
    import xarray as xr

    if not hasattr(xr.Dataset, "grok"):
        xr.register_dataset_accessor("grok")(DatasetGrok)
    if not hasattr(xr.DataTree, "grok"):
        xr.register_datatree_accessor("grok")(TreeGrok)


class DatasetGrok:
    """``ds.grok`` on one probe group (finished steps only).

    ``ds.grok.onset("accuracy", 0.95, split="test")``, ``ds.grok.change("lc_total_mean", "fall",
    split="train")``, ``ds.grok.lc_phases(split="train")``; keywords select down to a curve over step.
    """

    def __init__(self, ds):
        self._ds = done_steps(ds)

    def curve(self, var: str, **sel) -> tuple[np.ndarray, np.ndarray]:
        """``(steps, values)`` of ``var`` selected down to a curve over step."""
        return self._ds["step"].values, select_curve(self._ds, var, **sel).values

    def onset(self, var: str, threshold: float, above: bool = True, window: int = 1, patience: int = 1,
              **sel) -> float:
        """:func:`onset` of ``var``'s curve."""
        return onset(*self.curve(var, **sel), threshold, above, window, patience)

    def change(self, var: str, direction: str = "rise", fraction: float = 0.5, window: int = 5,
               **sel) -> float:
        """:func:`change_point` of ``var``'s curve."""
        return change_point(*self.curve(var, **sel), direction, fraction, window)

    def lc_phases(self, var: str = "lc_total_mean", window: int = 5, **sel) -> dict[str, Any]:
        """:func:`lc_phases` of ``var``'s curve (a length-1 ``radius`` is dropped automatically)."""
        return lc_phases(*self.curve(var, **sel), window)


class TreeGrok:
    """``dt.grok`` on a run node (children = probe groups) or a whole store (first run if only one).

    ``dt["run"].grok.onsets()``, ``.summary()``, ``.lead_lag("lc_fall", "generalisation")``.
    """

    def __init__(self, tree):
        self._tree = tree

    def _run(self):
        node = self._tree
        if any("step" in c.dims for c in node.children.values()):
            return node
        runs = [n for n in node.subtree if n.children and any("step" in c.dims for c in n.children.values())]
        if len(runs) != 1:
            names = ", ".join(n.path for n in runs) or "none"
            raise ValueError(f"select one run first (dt['<run>'].grok); runs here: {names}")
        return runs[0]

    def onsets(self, **thresholds) -> dict[str, Onset]:
        """:func:`standard_onsets` of the run."""
        return standard_onsets(self._run(), **thresholds)

    def events(self, fraction: float = 0.5, change_window: int = 5, **thresholds) -> dict[str, Onset]:
        """:func:`run_events` of the run (onsets and change points)."""
        return run_events(self._run(), fraction, change_window, **thresholds)

    def summary(self, **kwargs) -> dict[str, Any]:
        """:func:`run_summary` of the run."""
        return run_summary(self._run(), **kwargs)

    def lead_lag(self, a: str, b: str, **kwargs) -> dict[str, Any]:
        """:func:`lead_lag` between two named events of :meth:`events` (e.g. ``"lc_fall"``)."""
        events = self.events(**kwargs)
        for name in (a, b):
            if name not in events:
                raise KeyError(f"no event {name!r} for this run (have: {', '.join(events)})")
        return lead_lag(events[a].step, events[b].step, a, b)


register_accessors()
