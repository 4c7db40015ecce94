"""Figures of a probe store over steps: one PNG per run, one panel per probe (``grokscope plot``)."""

from __future__ import annotations

import math
import re
from pathlib import Path
from typing import Any

import click
import numpy as np

# The variables worth a panel, per probe, in order; anything else small enough is plotted after them.
HEADLINE = {
    "acc": ["accuracy", "loss"],
    "lc": ["lc_total_mean"],
    "pgd": ["robust_acc"],
    "align": ["centroid_cos_mean", "jac_align_mean", "pc1_mean", "jac_fro_mean"],
    "fourier": ["gini_real", "fourier_norms"],
    "norm": ["weight_sq_total", "weight_sq", "dist_zero_loss", "update_cos", "wd_tangent_frac"],
}
MAX_LINES = 12
# bookkeeping variables that are constant or not a measure
SKIP = {"done", "neurons", "n_samples", "n_found"}


def _plottable(da) -> bool:
    if "step" not in da.dims or da.dtype.kind not in "fiub":
        return False
    others = [d for d in da.dims if d != "step"]
    return int(np.prod([da.sizes[d] for d in others])) <= MAX_LINES if others else True


def panels_for(probe: str, ds, max_panels: int = 3) -> list[str]:
    """Names of the variables of ``ds`` (a probe group) to draw, headline ones first."""
    names = [v for v in HEADLINE.get(probe, []) if v in ds and _plottable(ds[v])]
    for v in ds.data_vars:
        if v not in names and v not in SKIP and _plottable(ds[v]):
            names.append(v)
    return names[:max_panels]


def plot_run(tree: Any, title: str, out: Path, probes: list[str] | None = None) -> Path:
    """Draw every selected probe of one run (a DataTree node) against log step into ``out`` (PNG)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from grokscope.analysis import done_steps

    order = list(HEADLINE) if probes is None else probes
    groups = sorted((p for p in tree.children if probes is None or p in probes),
                    key=lambda p: order.index(p) if p in order else len(order))
    panels = []
    for probe in groups:
        ds = done_steps(tree[probe].to_dataset())
        if ds.sizes.get("step", 0) == 0:
            continue
        panels += [(probe, v, ds) for v in panels_for(probe, ds)]
    if not panels:
        raise click.ClickException(f"{title}: nothing to plot (no finished steps)")
    ncol = min(3, len(panels))
    nrow = math.ceil(len(panels) / ncol)
    fig, axes = plt.subplots(nrow, ncol, figsize=(4.6 * ncol, 3.2 * nrow), squeeze=False)
    for ax, (probe, var, ds) in zip(axes.flat, panels):
        da = ds[var]
        steps = np.maximum(ds["step"].values, 0) + 1  # log axis: step 0 drawn at 1
        others = [d for d in da.dims if d != "step"]
        if others:
            stacked = da.stack(line=others).transpose("step", "line")
            for j in range(stacked.sizes["line"]):
                label = ", ".join(str(v) for v in np.atleast_1d(stacked["line"].values[j]))
                ax.plot(steps, stacked.values[:, j], marker=".", ms=3, label=label)
            ax.legend(fontsize=6)
        else:
            ax.plot(steps, da.values, marker=".", ms=3)
        ax.set_xscale("log")
        ax.set_title(f"{probe}: {var}", fontsize=9)
        ax.set_xlabel("step + 1")
        ax.grid(alpha=0.3)
    for ax in list(axes.flat)[len(panels):]:
        ax.axis("off")
    fig.suptitle(title, fontsize=10)
    fig.tight_layout()
    out.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(out, dpi=110)
    plt.close(fig)
    return out


def iter_runs(tree) -> list[tuple[str, Any]]:
    """``[(path, node)]`` of the nodes that hold probe groups (their children have a ``step`` dim)."""
    found = []
    for node in tree.subtree:
        if node.children and any("step" in c.dims for c in node.children.values()):
            found.append((node.path.strip("/") or "root", node))
    return found


@click.command()
@click.argument("store", type=click.Path(exists=True, path_type=Path))
@click.option("--out", "out_dir", type=click.Path(path_type=Path), default=None,
              help="Folder for the PNGs (default: STORE's parent / plots).")
@click.option("--run", "runs", multiple=True, help="Only these runs (group paths); repeatable.")
@click.option("--probe", "probes", multiple=True, help="Only these probes; repeatable.")
def plot(store: Path, out_dir: Path | None, runs: tuple[str, ...], probes: tuple[str, ...]) -> None:
    """Plot every run of a probe STORE over log steps, one PNG per run."""
    import xarray as xr

    tree = xr.open_datatree(store, engine="zarr", consolidated=False)
    out_dir = out_dir or store.parent / "plots"
    written = 0
    for path, node in iter_runs(tree):
        if runs and path not in runs:
            continue
        name = re.sub(r"[^A-Za-z0-9_.-]+", "_", path)
        out = plot_run(node, path, out_dir / f"{name}.png", list(probes) or None)
        click.echo(str(out))
        written += 1
    if not written:
        raise click.ClickException(f"{store}: no runs with probe results found")
