"""Figure and numbers of the `llc` probe over one run: the LLC estimate (mean ± std over chains, each
chain's value) beside train/test accuracy, and the split R-hat of each checkpoint's chains.

    python examples/llc.py STORE RUN [--out docs/llc.png] [--acc-store S] [--lc-store S]

STORE is the Zarr store written by ``grokscope probe RUN_DIR --metrics acc,llc`` and RUN the run's group
name in it (the run folder's name). ``--acc-store`` reads ``acc`` from another store; ``--lc-store`` adds
a panel of the run's ``lc`` (mean total LC per point set, first radius) from that store. See
``examples/llc.sh`` and ``docs/llc.md``.
"""

from __future__ import annotations

import argparse

import numpy as np

import grokscope


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("store")
    ap.add_argument("run")
    ap.add_argument("--out", default="docs/llc.png")
    ap.add_argument("--acc-store", default=None, help="the store holding acc (default: STORE)")
    ap.add_argument("--lc-store", default=None, help="a store holding the run's lc: drawn in a panel")
    args = ap.parse_args()
    tree = grokscope.open_store(args.store)
    acc = grokscope.open_store(args.acc_store or args.store)[f"{args.run}/acc"].to_dataset().load()
    llc = tree[f"{args.run}/llc"].to_dataset().load()
    lc = grokscope.open_store(args.lc_store)[f"{args.run}/lc"].to_dataset().load() if args.lc_store else None
    steps = llc.step.values

    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    rows = [3, 2, 1] if lc is not None else [3, 1]
    fig, axes = plt.subplots(len(rows), 1, figsize=(7.5, 5.6 + 2.2 * (lc is not None)), sharex=True,
                             gridspec_kw={"height_ratios": rows})
    ax1, ax3 = axes[0], axes[-1]
    if lc is not None:
        for split, colour in zip(lc.split.values, ("tab:blue", "tab:orange", "tab:green", "tab:red")):
            da = lc.lc_total_mean.isel(radius=0).sel(split=split)
            axes[1].plot(np.maximum(da.step.values, 1), da.values, color=colour, lw=1.2, label=str(split))
        axes[1].set_ylabel(f"LC (r={float(lc.radius.values[0]):g})")
        axes[1].legend(fontsize=7, ncol=4, loc="upper right")
    x = np.maximum(steps, 1)
    ax1.fill_between(x, llc.llc - llc.llc_std, llc.llc + llc.llc_std, color="tab:purple", alpha=0.2, lw=0)
    for c in llc.chain.values:
        ax1.plot(x, llc.llc_chain.sel(chain=c), color="tab:purple", lw=0.5, alpha=0.5)
    ax1.plot(x, llc.llc, color="tab:purple", lw=2, marker="o", ms=3, label="LLC λ̂ (mean ± std over chains)")
    bad = np.array([bool(w) for w in llc.warning.values])
    if bad.any():
        ax1.plot(x[bad], llc.llc.values[bad], "x", color="firebrick", ms=8, label="checkpoint with a warning")
    ax1.set_ylabel("λ̂")
    ax1.set_xscale("log")
    ax2 = ax1.twinx()
    ax2.plot(np.maximum(acc.step.values, 1), acc.accuracy.sel(split="train"), color="0.3", lw=1, ls="--",
             label="train accuracy")
    ax2.plot(np.maximum(acc.step.values, 1), acc.accuracy.sel(split="test"), color="tab:green", lw=1.5,
             label="test accuracy")
    ax2.set_ylabel("accuracy")
    ax2.set_ylim(-0.03, 1.03)
    h1, l1 = ax1.get_legend_handles_labels()
    h2, l2 = ax2.get_legend_handles_labels()
    ax1.legend(h1 + h2, l1 + l2, fontsize=7, loc="upper left")
    a = llc.attrs
    p = a.get("params", {})
    ax1.set_title(f"{args.run}: LLC (SGLD ε={p.get('lr')}, γ={p.get('gamma')}, nβ={a.get('nbeta', float('nan')):.4g}, "
                  f"{p.get('n_chains')} chains × {p.get('n_draws')} draws) and accuracy", fontsize=9)
    ax3.plot(x, llc.rhat, marker="o", ms=3, color="0.2")
    ax3.axhline(1.1, color="firebrick", lw=0.8, ls=":")
    ax3.set_ylabel("split R̂")
    ax3.set_xlabel("step (log scale; step 0 drawn at 1)")
    fig.tight_layout()
    fig.savefig(args.out, dpi=120)
    print(f"wrote {args.out}")
    for s, v, sd, r, w in zip(steps, llc.llc.values, llc.llc_std.values, llc.rhat.values, llc.warning.values):
        ta = float(acc.accuracy.sel(split="test", step=s)) if s in acc.step.values else float("nan")
        print(f"step {int(s):6d}  llc {v:8.2f} ± {sd:6.2f}  rhat {r:6.3f}  test acc {ta:.3f}  {w}")


if __name__ == "__main__":
    main()
