"""Figures and numbers of ``docs/collapse.md``.

    python examples/collapse_figure.py collapse STORE [STORE ...] [--out docs/collapse.png]
    python examples/collapse_figure.py attacks PGD_STORE APGD_STORE RUN [--out docs/pgd_apgd.png]

``collapse``: every run of the stores (written by ``grokscope probe RUNS --metrics acc,collapse``):
test accuracy, the softmax-collapse fraction on training points, the median training margin and
``cos(−∇L, θ)`` over the step, plus a table of those numbers at a few steps. ``attacks``: robust test
accuracy per radius of one run under PGD and APGD-CE (two stores of ``--metrics pgd`` with
``pgd.attack=pgd`` / ``apgd``). See ``examples/collapse_runs.sh``.
"""

from __future__ import annotations

import argparse
from pathlib import Path

import numpy as np

import grokscope

TABLE_STEPS = (0, 300, 1000, 3000, 6000, 10000, 20000)


def runs_of(stores: list[str]) -> dict[str, tuple]:
    """``{run: (acc, collapse)}`` datasets (loaded, sorted by step) of every run in ``stores``."""
    out = {}
    for store in stores:
        tree = grokscope.open_store(store)
        for run in tree.children:
            if "collapse" in tree[run].children and "acc" in tree[run].children:
                acc = tree[f"{run}/acc"].to_dataset().load().sortby("step")
                col = tree[f"{run}/collapse"].to_dataset().load().sortby("step")
                out[run] = (acc, col)
    return out


def collapse_figure(stores: list[str], out: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    runs = runs_of(stores)
    fig, axes = plt.subplots(1, 4, figsize=(17, 3.8))
    panels = [("test accuracy", lambda a, c: a.accuracy.sel(split="test")),
              ("softmax-collapse fraction (train, float32)", lambda a, c: c.collapse_frac.sel(split="train")),
              ("median margin z_y − max z_j (train)", lambda a, c: c.margin.sel(split="train", quantile=0.5)),
              ("cos(−∇L, θ) (train)", lambda a, c: c.nlm_cos_weights.sel(split="train"))]
    for ax, (title, get) in zip(axes, panels):
        for run, (a, c) in sorted(runs.items()):
            da = get(a, c)
            ax.plot(np.maximum(da.step.values, 1), da.values, label=run, lw=1.3)
        ax.set_xscale("log")
        ax.set_title(title, fontsize=9)
        ax.set_xlabel("step")
    axes[2].set_yscale("symlog", linthresh=1.0)
    axes[1].set_ylim(-0.03, 1.03)
    axes[0].legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(out, dpi=110)
    print(f"wrote {out}")
    for run, (a, c) in sorted(runs.items()):
        print(f"{run} (loss {c.attrs.get('loss', '?')})")
        steps = c.step.values
        for s in TABLE_STEPS:
            if s > steps.max():
                continue
            i = int(np.argmin(np.abs(steps - s)))
            st = int(steps[i])
            print(f"  step {st:6d}: acc train {float(a.accuracy.sel(split='train', step=st)):.3f} "
                  f"test {float(a.accuracy.sel(split='test', step=st)):.3f} | collapse train "
                  f"{float(c.collapse_frac.sel(split='train', step=st)):.4f} test "
                  f"{float(c.collapse_frac.sel(split='test', step=st)):.4f} | zero-grad train "
                  f"{float(c.zero_grad_frac.sel(split='train', step=st)):.4f} | margin q10/q50/q90 train "
                  + "/".join(f"{float(c.margin.sel(split='train', quantile=q, step=st)):.1f}"
                             for q in (0.1, 0.5, 0.9))
                  + f" | cos_w {float(c.nlm_cos_weights.sel(split='train', step=st)):.3f} "
                  f"cos_z {float(c.nlm_cos_logits.sel(split='train', step=st)):.3f}")


def attacks_figure(pgd_store: str, apgd_store: str, run: str, out: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    pgd = grokscope.open_store(pgd_store)[f"{run}/pgd"].to_dataset().load().sortby("step")
    apgd = grokscope.open_store(apgd_store)[f"{run}/pgd"].to_dataset().load().sortby("step")
    fig, ax = plt.subplots(figsize=(7, 4))
    colours = plt.cm.viridis(np.linspace(0, 0.9, pgd.sizes["eps"]))
    for k, eps in enumerate(pgd.eps.values):
        for ds, style, name in ((pgd, "-", "PGD"), (apgd, "--", "APGD-CE")):
            da = ds.robust_acc.sel(split="test", eps=eps)
            ax.plot(np.maximum(da.step.values, 1), da.values, style, color=colours[k],
                    label=f"{name} ε={eps:g}" if k in (0, pgd.sizes["eps"] - 1) or name == "PGD" else None)
    ax.set_xscale("log")
    ax.set_xlabel("step")
    ax.set_ylabel("robust test accuracy")
    ax.set_title(f"{run}: PGD (solid) vs APGD-CE (dashed), "
                 f"{int(pgd.attrs['params']['steps'])} steps each", fontsize=9)
    ax.legend(fontsize=6, ncol=2)
    fig.tight_layout()
    fig.savefig(out, dpi=110)
    print(f"wrote {out}")
    steps = np.intersect1d(pgd.step.values, apgd.step.values)  # the checkpoints both attacks saw
    worst = (apgd.robust_acc - pgd.robust_acc).sel(split="test").max()
    print(f"max over steps and radii of APGD − PGD robust accuracy: {float(worst):+.4f}")
    for s in (0, 10, 100, 1000, int(steps.max())):
        i = int(np.argmin(np.abs(steps - s)))
        st = int(steps[i])
        print(f"  step {st:6d}: PGD " + " ".join(f"{v:.3f}" for v in pgd.robust_acc.sel(split="test", step=st).values)
              + " | APGD " + " ".join(f"{v:.3f}" for v in apgd.robust_acc.sel(split="test", step=st).values))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    sub = ap.add_subparsers(dest="what", required=True)
    c = sub.add_parser("collapse")
    c.add_argument("stores", nargs="+")
    c.add_argument("--out", type=Path, default=Path("docs/collapse.png"))
    a = sub.add_parser("attacks")
    a.add_argument("pgd_store")
    a.add_argument("apgd_store")
    a.add_argument("run")
    a.add_argument("--out", type=Path, default=Path("docs/pgd_apgd.png"))
    args = ap.parse_args()
    if args.what == "collapse":
        collapse_figure(args.stores, args.out)
    else:
        attacks_figure(args.pgd_store, args.apgd_store, args.run, args.out)


if __name__ == "__main__":
    main()
