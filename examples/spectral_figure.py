"""α per layer over steps beside the accuracies, for one or more probe stores (``acc`` and ``spectral``).

    python examples/spectral_figure.py runs/demo/probes.zarr runs/mnist/probes.zarr --out docs/spectral.png

One row per store: the power-law exponent α of each layer's weight spectrum (left axis) with train and
test accuracy (right axis, grey), then the stable rank and the correlation traps of each layer. Steps on
a log axis (step 0 drawn at 1). Prints, per store and layer, α at the first checkpoint, at memorisation
(train accuracy ≥ 0.99), at generalisation (the dataset's threshold) and at the last checkpoint.
"""

from __future__ import annotations

import argparse
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402

from grokscope import open_store  # noqa: E402
from grokscope.analysis import MEM_THRESHOLD, first_crossing, grok_threshold_for  # noqa: E402


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("stores", type=Path, nargs="+")
    ap.add_argument("--out", type=Path, required=True)
    args = ap.parse_args()
    fig, axes = plt.subplots(len(args.stores), 3, figsize=(15, 3.6 * len(args.stores)), squeeze=False)
    for row, store in zip(axes, args.stores):
        tree = open_store(store)
        (run,) = list(tree.children)
        sp, acc = tree[f"{run}/spectral"].to_dataset(), tree[f"{run}/acc"].to_dataset()
        x = np.maximum(sp.step.values, 1)
        xa = np.maximum(acc.step.values, 1)
        grok = grok_threshold_for(tree[run].attrs.get("dataset"))
        t_mem = first_crossing(acc.step.values, acc.accuracy.sel(split="train").values, MEM_THRESHOLD)
        t_grok = first_crossing(acc.step.values, acc.accuracy.sel(split="test").values, grok)
        print(f"{store} ({run}): memorisation at {t_mem}, generalisation (test >= {grok}) at {t_grok}")
        for layer in sp.layer.values:
            a = sp.alpha.sel(layer=layer).values
            row[0].plot(x, a, label=f"α {layer}")
            row[1].plot(x, sp.stable_rank.sel(layer=layer).values, label=f"{layer}")
            row[2].plot(x, sp.n_traps.sel(layer=layer).values, label=f"{layer}")
            at = {"first": a[0], "last": a[-1]}
            for name, t in (("memorisation", t_mem), ("generalisation", t_grok)):
                if np.isfinite(t):
                    at[name] = a[np.searchsorted(sp.step.values, t)] if t <= sp.step.values[-1] else np.nan
            print(f"  layer {layer}: α " + ", ".join(f"{k} {v:.2f}" for k, v in at.items()))
        twin = row[0].twinx()
        for split, style in (("train", ":"), ("test", "-")):
            twin.plot(xa, acc.accuracy.sel(split=split).values, color="0.5", linestyle=style, label=f"{split} acc")
        twin.set_ylim(-0.03, 1.03)
        twin.set_ylabel("accuracy (grey)")
        for ax, title in zip(row, ("power-law α per layer", "stable rank Σλ/λmax", "correlation traps")):
            ax.set_xscale("log")
            ax.set_xlabel("step")
            ax.set_title(f"{run}: {title}")
            for t in (t_mem, t_grok):
                if np.isfinite(t):
                    ax.axvline(max(t, 1), color="k", linewidth=0.6, linestyle="--")
        row[0].legend(fontsize=7, loc="upper left")
        twin.legend(fontsize=7, loc="lower right")
        row[1].set_yscale("log")
        row[1].legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(args.out, dpi=90)
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
