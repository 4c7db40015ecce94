"""Figure and numbers of the `fourier` and `norm` probes over one run: Gini of the embedding's Fourier
norms, ‖θ‖² and train/test accuracy against the step.

    python examples/fourier_norm.py STORE RUN [--out docs/fourier_norm.png]

STORE is the Zarr store written by ``grokscope probe RUN_DIR --metrics fourier,norm,acc`` and RUN the
run's group name in it (the run folder's name). See ``examples/fourier_norm.sh`` and
``docs/fourier_norm.md``.
"""

from __future__ import annotations

import argparse
import math
from pathlib import Path

import numpy as np

from grokscope.analysis import first_crossing
import grokscope


def series(store: str, run: str) -> dict[str, np.ndarray]:
    """``{name: values over step}`` of the quantities in the figure (steps with every probe done)."""
    tree = grokscope.open_store(store)
    acc, four, norm = (tree[f"{run}/{p}"].to_dataset().load() for p in ("acc", "fourier", "norm"))
    steps = np.intersect1d(np.intersect1d(acc.step.values, four.step.values), norm.step.values)
    pick = {"step": steps,
            "train_acc": acc.accuracy.sel(split="train", step=steps).values,
            "test_acc": acc.accuracy.sel(split="test", step=steps).values,
            "gini_real": four.gini_real.sel(step=steps).values,
            "gini_fft_raw": four.gini_fft_raw.sel(step=steps).values,
            "weight_sq": norm.weight_sq.sel(step=steps).values,
            "restricted_loss": four.restricted_loss.sel(step=steps).values,
            "excluded_loss_all": four.excluded_loss_all.sel(step=steps).values,
            "full_loss": four.full_loss.sel(step=steps).values,
            "wd_tangent_frac": norm.wd_tangent_frac.sel(step=steps).values,
            "update_cos": norm.update_cos.sel(step=steps).values,
            "key_freq": four.key_freq.sel(step=steps).values}
    return pick


def summary(s: dict[str, np.ndarray], grok: float = 0.9) -> list[str]:
    """Lines with the numbers at the landmarks: init, memorisation, peak ‖θ‖², test acc ≥ ``grok``, end."""
    steps = s["step"]
    t_mem = first_crossing(steps, s["train_acc"], 0.99)
    t_grok = first_crossing(steps, s["test_acc"], grok)
    i_peak = int(np.nanargmax(s["weight_sq"]))
    marks = [("init", steps[0]), ("train acc >= 0.99", t_mem), ("peak |theta|^2", steps[i_peak]),
             (f"test acc >= {grok}", t_grok), ("end", steps[-1])]
    lines = [f"{'landmark':<20}{'step':>7}{'train':>7}{'test':>7}{'gini':>8}{'|theta|^2':>11}"
             f"{'restr':>8}{'excl':>8}  key freqs"]
    for name, t in marks:
        if isinstance(t, float) and math.isnan(t):
            lines.append(f"{name:<20}{'never':>7}")
            continue
        i = int(np.searchsorted(steps, t))
        lines.append(f"{name:<20}{int(steps[i]):>7}{s['train_acc'][i]:>7.3f}{s['test_acc'][i]:>7.3f}"
                     f"{s['gini_real'][i]:>8.3f}{s['weight_sq'][i]:>11.1f}{s['restricted_loss'][i]:>8.3f}"
                     f"{s['excluded_loss_all'][i]:>8.3f}  {list(map(int, s['key_freq'][i]))}")
    return lines


def figure(s: dict[str, np.ndarray], title: str, out: Path) -> Path:
    """Three stacked panels over log step: accuracy; Gini (both variants); ‖θ‖²."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    x = np.maximum(s["step"], 1)
    fig, axes = plt.subplots(3, 1, figsize=(7, 7.5), sharex=True)
    axes[0].plot(x, s["train_acc"], label="train")
    axes[0].plot(x, s["test_acc"], label="test")
    axes[0].set_ylabel("accuracy")
    axes[0].legend(loc="center left")
    axes[1].plot(x, s["gini_real"], color="C2", label="gini_real (real basis, (p-1)/2 freqs)")
    axes[1].plot(x, s["gini_fft_raw"], color="C2", ls=":", label="gini_fft_raw (authors' FFT bins)")
    axes[1].set_ylabel("Gini of embedding\nFourier norms")
    axes[1].legend(loc="upper left", fontsize=8)
    axes[2].plot(x, s["weight_sq"], color="C3")
    axes[2].set_ylabel(r"$\|\theta\|^2$")
    axes[2].set_xlabel("step (log scale; step 0 drawn at 1)")
    axes[2].set_xscale("log")
    t_grok = first_crossing(s["step"], s["test_acc"], 0.9)
    for ax in axes:
        ax.grid(alpha=0.3)
        if not math.isnan(t_grok):
            ax.axvline(max(t_grok, 1), color="k", lw=0.8, ls="--")
    axes[0].set_title(title, fontsize=10)
    fig.tight_layout()
    out.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(out, dpi=110)
    plt.close(fig)
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("store")
    ap.add_argument("run")
    ap.add_argument("--out", type=Path, default=Path("docs/fourier_norm.png"))
    ap.add_argument("--title", default=None)
    a = ap.parse_args()
    s = series(a.store, a.run)
    print("\n".join(summary(s)))
    print(f"figure: {figure(s, a.title or a.run, a.out)}")


if __name__ == "__main__":
    main()
