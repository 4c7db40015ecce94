"""Onsets and phases read off a probe store (ALGORITHMS.md §(f)): the numbers `grokscope report`
prints and the ``ds.grok`` accessor returns. Every threshold is an argument, never hidden."""

from __future__ import annotations

import math
from typing import Any

import numpy as np


def first_crossing(steps: np.ndarray, values: np.ndarray, threshold: float, above: bool = True) -> float:
    """The first step at which ``values >= threshold`` (or ``<=`` if ``above`` is False); NaN if never.

    ``steps`` and ``values`` are 1-D of equal length; NaN values (missing cells) are skipped.
    """
    steps, values = np.asarray(steps), np.asarray(values, dtype=float)
    order = np.argsort(steps)
    steps, values = steps[order], values[order]
    ok = ~np.isnan(values) & ((values >= threshold) if above else (values <= threshold))
    return float(steps[ok][0]) if ok.any() else math.nan


def first_logged_step(records: list[dict[str, Any]], key: str, threshold: float) -> int | None:
    """The first step of ``log.jsonl`` records whose ``key`` is ``>= threshold``; None if never.

    Records without ``key`` are skipped (same rule as :func:`first_crossing`).
    """
    steps = np.array([r["step"] for r in records], dtype=np.int64)
    values = np.array([np.nan if r.get(key) is None else r[key] for r in records], dtype=float)
    t = first_crossing(steps, values, threshold) if len(records) else math.nan
    return None if math.isnan(t) else int(t)


def smooth_log_time(values: np.ndarray, window: int = 5) -> np.ndarray:
    """Running median over ``window`` consecutive checkpoints (checkpoints are log-spaced already)."""
    values = np.asarray(values, dtype=float)
    half = window // 2
    out = np.empty_like(values)
    for i in range(len(values)):
        seg = values[max(0, i - half): i + half + 1]
        seg = seg[~np.isnan(seg)]
        out[i] = np.median(seg) if len(seg) else np.nan
    return out


def lc_phases(steps: np.ndarray, lc: np.ndarray, window: int = 5) -> dict[str, float]:
    """Humayun et al.'s LC phases from a curve LC(step) (§(a′)).

    After a running median over ``window`` checkpoints: ``t_peak`` = argmax of LC after its first
    local minimum (the ascent's end, start of the second descent / region migration), ``t_min1`` =
    argmin before ``t_peak`` (end of the first descent), ``depth`` = LC(t_peak) − LC(last step),
    ``rise`` = LC(t_peak) − LC(t_min1). NaNs where the curve is too short.
    """
    steps, lc = np.asarray(steps), np.asarray(lc, dtype=float)
    order = np.argsort(steps)
    steps, s = steps[order], smooth_log_time(lc[order], window)
    nan = {"t_min1": math.nan, "t_peak": math.nan, "depth": math.nan, "rise": math.nan}
    if len(s) < 3 or np.all(np.isnan(s)):
        return nan
    # first local minimum (or the start if the curve rises at once)
    i_min = 0
    for i in range(1, len(s) - 1):
        if s[i] <= s[i - 1] and s[i] < s[i + 1]:
            i_min = i
            break
    i_peak = i_min + int(np.nanargmax(s[i_min:]))
    i_min1 = int(np.nanargmin(s[: i_peak + 1]))
    return {"t_min1": float(steps[i_min1]), "t_peak": float(steps[i_peak]),
            "depth": float(s[i_peak] - s[-1]), "rise": float(s[i_peak] - s[i_min1])}


def run_onsets(tree: Any, mem_threshold: float = 0.99, grok_threshold: float = 0.95,
               robust_threshold: float = 0.5) -> dict[str, Any]:
    """Onsets of one run's probe groups (an ``xr.DataTree`` node whose children are probes).

    Keys present only for the probes the run has: ``t_mem``/``t_grok`` (acc), ``t_robust[eps]`` (pgd,
    on the first split), LC phases on the train split at the first radius (lc).
    """
    out: dict[str, Any] = {}
    children = set(tree.children)
    if "acc" in children:
        ds = done_steps(tree["acc"].to_dataset())
        acc = ds["accuracy"]
        out["t_mem"] = first_crossing(ds.step.values, acc.sel(split="train").values, mem_threshold)
        out["t_grok"] = first_crossing(ds.step.values, acc.sel(split="test").values, grok_threshold)
        out["final_test_acc"] = float(acc.sel(split="test").values[-1]) if ds.sizes["step"] else math.nan
    if "pgd" in children:
        ds = done_steps(tree["pgd"].to_dataset())
        ra = ds["robust_acc"].isel(split=0) if "split" in ds["robust_acc"].dims else ds["robust_acc"]
        out["t_robust"] = {float(e): first_crossing(ds.step.values, ra.sel(eps=e).values, robust_threshold)
                           for e in ds["eps"].values}
    if "lc" in children:
        ds = done_steps(tree["lc"].to_dataset())
        var = ds["lc_total_mean"]
        if "split" in var.dims:
            var = var.sel(split="train") if "train" in var["split"].values else var.isel(split=0)
        if "radius" in var.dims:
            var = var.isel(radius=0)
        out["lc_phases_train"] = lc_phases(ds.step.values, var.values)
    return out


def done_steps(ds):
    """Only the steps whose ``done`` flag is set (all steps if the store has no flag)."""
    if "done" in ds:
        return ds.isel(step=np.flatnonzero(ds["done"].values.astype(bool)))
    return ds


def register_accessor() -> None:
    """Register ``ds.grok`` on xarray Datasets (done on ``import grokscope.analysis``)."""
    import xarray as xr

    if hasattr(xr.Dataset, "grok"):
        return

    @xr.register_dataset_accessor("grok")
    class GrokAccessor:
        """``ds.grok.onset("accuracy", 0.95, split="test")``; ``ds.grok.lead_lag(a, b)``."""

        def __init__(self, ds):
            self._ds = done_steps(ds)

        def curve(self, var: str, **sel) -> tuple[np.ndarray, np.ndarray]:
            da = self._ds[var].sel(**sel) if sel else self._ds[var]
            if set(da.dims) != {"step"}:
                raise ValueError(f"{var} still has dims {da.dims}: select down to 'step' with keywords")
            return self._ds["step"].values, da.values

        def onset(self, var: str, threshold: float, above: bool = True, **sel) -> float:
            """First step where ``var`` (selected down to a curve over step) crosses ``threshold``."""
            return first_crossing(*self.curve(var, **sel), threshold, above)

        def lc_phases(self, var: str = "lc_total_mean", window: int = 5, **sel) -> dict[str, float]:
            return lc_phases(*self.curve(var, **sel), window)

    return None


register_accessor()
