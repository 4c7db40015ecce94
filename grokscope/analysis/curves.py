"""Onsets, change points, LC phases and lead/lag of single curves (steps and values as arrays), with
the thresholds, windows and noise rules they use (docs/algorithms.md#analysis--onsets-and-phases)."""

from __future__ import annotations

import math
from typing import Any

import numpy as np


MEM_THRESHOLD = 0.99
ROBUST_THRESHOLD = 0.5
# Test-accuracy threshold of "generalised" (docs/algorithms.md#onsets): each dataset states its own
# (``GROK_THRESHOLD`` of its module, ``grok_threshold`` of a third party's), stored with each run by
# ``grokscope probe``; DEFAULT_GROK_THRESHOLD when it states none. GROK_THRESHOLDS and chance_level
# below only serve stores written before the run's task was stored (the built-ins' values then).
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
    """Accuracy of guessing, 1 / number of classes, for a built-in dataset's spec ``{"name", "kwargs"}``
    (stores written before the run's task was stored; ``grokscope.analysis.task_of`` reads the stored
    one); None for any other dataset."""
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
    (either event missing; then ``"why"`` names it)."""
    out: dict[str, Any] = {"a": name_a, "b": name_b, "t_a": t_a, "t_b": t_b, "lag_steps": math.nan,
                           "lag_decades": math.nan, "order": "undetermined",
                           "together_decades": together_decades}
    if math.isnan(t_a) or math.isnan(t_b):
        out["why"] = "; ".join(f"{n} has no step (never found on its curve)"
                               for n, t in ((name_a, t_a), (name_b, t_b)) if math.isnan(t))
        return out
    dec = math.log10((t_b + 1.0) / (t_a + 1.0))
    out.update(lag_steps=t_b - t_a, lag_decades=dec)
    out["order"] = "together" if abs(dec) <= together_decades else (f"{name_a} first" if dec > 0
                                                                     else f"{name_b} first")
    return out
