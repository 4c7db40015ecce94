"""Plot local-complexity phases and delayed robustness of one run from its probe store.

Makes ``lc_phases.png`` (LC around train / test / random / decision-boundary points, per layer for
train, and accuracy, over log-time) and ``delayed_robustness.png`` (PGD robust accuracy per ε next to
test accuracy), and prints the numbers behind them (docs/lc_pgd.md quotes them)::

    grokscope train --preset digits-mlp --save "$(python examples/lc_phases.py --save-spec)" --out runs/lc-digits
    grokscope probe runs/lc-digits --metrics acc,lc,pgd --param pgd.steps=20
    python examples/lc_phases.py runs/lc-digits --out docs

The store is ``RUN/probes.zarr`` unless ``--store`` says otherwise; the run's group is the run
folder's name unless ``--group`` says otherwise.
"""

from __future__ import annotations

import argparse
import math
from pathlib import Path

import numpy as np

COLORS = {"train": "tab:blue", "test": "tab:orange", "random": "tab:green", "boundary": "tab:red"}


def save_spec(steps: int = 100_000, n_log: int = 60, every: int = 10_000) -> str:
    """About ``n_log`` log-spaced save steps plus every ``every`` steps (resume points for long runs)."""
    from grokscope.training.schedule import log_steps

    return ",".join(str(s) for s in sorted(set(log_steps(n_log, steps)) | set(range(0, steps + 1, every))))


def _x(steps: np.ndarray) -> np.ndarray:
    return steps + 1.0  # log axis: step 0 (the initialisation) sits at 1


def load(run: Path, store: Path, group: str):
    """``(acc, lc, pgd)`` Datasets of the run (acc from the ``acc`` probe, else from log.jsonl)."""
    import xarray as xr

    import grokscope

    tree = grokscope.open_store(store)
    lc = tree[f"{group}/lc"].to_dataset().load()
    pgd = tree[f"{group}/pgd"].to_dataset().load()
    try:
        acc = tree[f"{group}/acc"].to_dataset().load()
    except KeyError:
        from grokscope.runs import read_log

        log = read_log(run)
        steps = np.array([r["step"] for r in log])
        acc = xr.Dataset({"accuracy": (("step", "split"), np.array([[r["train_acc"], r["test_acc"]] for r in log]))},
                         coords={"step": steps, "split": ["train", "test"]})
    return acc, lc, pgd


def lc_ci(lc, split: str, radius_index: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """Mean total LC of a split per step and the half-width of its 99 % confidence interval."""
    raw = lc["lc"].isel(radius=radius_index).sel(split=split).values  # (step, sample, layer)
    total = raw.sum(axis=-1)
    total = np.where((raw >= 0).all(axis=-1), total, np.nan)  # padding (-1) / missing cells
    n = np.sum(~np.isnan(total), axis=1)
    filled = np.where(np.isnan(total), 0.0, total)
    mean = np.where(n > 0, filled.sum(axis=1) / np.maximum(n, 1), np.nan)
    var = ((filled - mean[:, None]) ** 2 * ~np.isnan(total)).sum(axis=1) / np.maximum(n - 1, 1)
    return mean, np.where(n > 1, 2.576 * np.sqrt(var / np.maximum(n, 1)), np.nan)


def summarise(acc, lc, pgd, eps_mark: float, radius_index: int = 0) -> dict[str, float]:
    """The numbers quoted in docs/lc_pgd.md: LC phases per split (``grokscope.analysis.lc_phases``),
    when accuracy settles, and robust accuracy at ``eps_mark``: its trough after test accuracy has
    settled, its final level and the step where the (5-checkpoint running median) curve has made half
    of the rise from the trough to the final level."""
    from grokscope.analysis import first_crossing, lc_phases, smooth_log_time

    out: dict[str, float] = {}
    steps = lc["step"].values
    for split in lc["split"].values:
        mean = lc["lc_total_mean"].isel(radius=radius_index).sel(split=split).values
        ph = lc_phases(steps, mean)
        out.update({f"lc_{split}_{k}": v for k, v in ph.items()})
        out[f"lc_{split}_init"] = float(mean[0])
        out[f"lc_{split}_final"] = float(mean[-1])
        out[f"lc_{split}_max"] = float(np.nanmax(mean))
    a_steps = acc["step"].values
    test_acc = acc["accuracy"].sel(split="test").values
    train_acc = acc["accuracy"].sel(split="train").values
    out["t_train_99"] = first_crossing(a_steps, train_acc, 0.99)
    final_test = float(test_acc[-1])
    out["test_acc_final"] = final_test
    out["t_test_95pct_of_final"] = first_crossing(a_steps, test_acc, 0.95 * final_test)
    out["t_test_99pct_of_final"] = first_crossing(a_steps, test_acc, 0.99 * final_test)
    out["test_acc_max"] = float(np.nanmax(test_acc))
    r = pgd["robust_acc"].sel(split="test", eps=eps_mark, method="nearest").values
    p_steps = pgd["step"].values
    rs = smooth_log_time(r)  # running median over 5 checkpoints: robust accuracy is noisy step to step
    settled = p_steps >= out["t_test_99pct_of_final"]
    out["robust_final_smoothed"] = float(rs[-1])
    out["robust_max_before_settle"] = float(np.nanmax(r[~settled])) if (~settled).any() else math.nan
    if settled.any():
        i_trough = int(np.flatnonzero(settled)[np.nanargmin(rs[settled])])
        out["robust_trough_smoothed"] = float(rs[i_trough])
        out["t_robust_trough"] = float(p_steps[i_trough])
        half = rs[i_trough] + 0.5 * (rs[-1] - rs[i_trough])
        after = p_steps > p_steps[i_trough]
        out["t_robust_half_rise"] = first_crossing(p_steps[after], rs[after], half)
    return out


    return out


def plot(acc, lc, pgd, out_dir: Path, eps_mark: float, radius_index: int = 0, title: str = "") -> list[Path]:
    """Write the two figures into ``out_dir``; returns their paths."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from grokscope.analysis import lc_phases

    out_dir.mkdir(parents=True, exist_ok=True)
    steps = lc["step"].values
    r = float(lc["radius"].values[radius_index])
    p = lc.attrs.get("params", {})
    fig, axes = plt.subplots(3, 1, figsize=(7.5, 9), sharex=True,
                             gridspec_kw={"height_ratios": [3, 2, 1.4]})
    ax = axes[0]
    for split in lc["split"].values:
        mean, ci = lc_ci(lc, split, radius_index)
        ax.plot(_x(steps), mean, "-o", ms=2.5, color=COLORS.get(split), label=split)
        ax.fill_between(_x(steps), mean - ci, mean + ci, color=COLORS.get(split), alpha=0.2, lw=0)
    ph = lc_phases(steps, lc["lc_total_mean"].isel(radius=radius_index).sel(split="train").values)
    for key, style in (("t_min1", ":"), ("t_peak", "--")):
        if not math.isnan(ph[key]):
            for a in axes:
                a.axvline(ph[key] + 1, color="gray", ls=style, lw=1)
    ax.set_ylabel("LC (intersecting neurons, all layers)")
    ax.set_title(title or f"local complexity, r={r:g}, P={p.get('n_dirs', '?')}, mean ± 99 % CI\n"
                 "dotted: end of first descent, dashed: peak of LC(train)", fontsize=10)
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
    cmap = plt.get_cmap("viridis")
    for k, e in enumerate(eps):
        lw = 2.5 if np.isclose(e, eps_mark) else 1.2
        ax.plot(_x(p_steps), pgd["robust_acc"].sel(split="test").isel(eps=k).values,
                color=cmap(k / max(len(eps) - 1, 1)), lw=lw, label=f"robust acc ε={e:g}")
    ax.plot(_x(a_steps), acc["accuracy"].sel(split="test").values, "k--", lw=1.5, label="test acc (clean)")
    ax.plot(_x(a_steps), acc["accuracy"].sel(split="train").values, "k:", lw=1, label="train acc")
    pp = pgd.attrs.get("params", {})
    ax.set_title(f"delayed robustness: L∞ PGD, {pp.get('steps', '?')} steps, α={pp.get('alpha', '?')}, test split")
    ax.set_xscale("log")
    ax.set_xlabel("training step + 1 (log)")
    ax.set_ylabel("accuracy")
    ax.legend(fontsize=7, loc="upper left")
    fig.tight_layout()
    f2 = out_dir / "delayed_robustness.png"
    fig.savefig(f2, dpi=120)
    plt.close(fig)
    return [f1, f2]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("run", nargs="?", type=Path, help="the run folder")
    ap.add_argument("--store", type=Path, help="probe store (default RUN/probes.zarr)")
    ap.add_argument("--group", help="the run's group in the store (default: the run folder's name)")
    ap.add_argument("--out", type=Path, default=Path("docs"))
    ap.add_argument("--eps", type=float, default=0.16, help="the radius to highlight and time")
    ap.add_argument("--save-spec", action="store_true", help="print the --save list for the training run")
    args = ap.parse_args()
    if args.save_spec:
        print(save_spec())
        return
    if args.run is None:
        ap.error("give the run folder")
    store = args.store or args.run / "probes.zarr"
    acc, lc, pgd = load(args.run, store, args.group or args.run.name)
    for f in plot(acc, lc, pgd, args.out, args.eps):
        print(f"wrote {f}")
    for k, v in summarise(acc, lc, pgd, args.eps).items():
        print(f"{k:28s} {v:.4g}")
    print("LC total mean per split (step: train test random boundary) and robust acc at eps:")
    r = pgd["robust_acc"].sel(split="test", eps=args.eps, method="nearest")
    a = acc["accuracy"].sel(split="test")
    for i, s in enumerate(lc["step"].values):
        vals = " ".join(f"{v:7.2f}" for v in lc["lc_total_mean"].isel(step=i, radius=0).values)
        rv = r.sel(step=s).item() if s in r["step"].values else math.nan
        av = a.sel(step=s).item() if s in a["step"].values else math.nan
        nb = int(lc["n_samples"].isel(step=i).sel(split="boundary").item()) if "boundary" in lc["split"].values else -1
        print(f"{s:7d}: {vals}   boundary n={nb:4d}   test acc {av:.4f}   robust {rv:.4f}")


if __name__ == "__main__":
    main()
