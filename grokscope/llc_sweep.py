"""Calibrate the ``llc`` probe's step size ε and localisation γ on one checkpoint.

Runs the probe's sampler (:func:`grokscope.probes.llc.estimate_llc`, the same code the probe runs) for
every pair of a small grid of ``lr`` × ``gamma`` on one checkpoint of a run, prints one line per pair
(the estimate, its spread over chains, split R-hat, step-to-noise ratios and the warnings) and draws
every chain's trace ``nβ (L(w_t) − L(w*))`` in a grid of panels (rows: γ, columns: ε), so a healthy
setting (flat, overlapping traces, no warning) can be told from a bad one before a whole run is probed.
The command is ``grokscope llc-sweep`` (:mod:`grokscope.cli.llc_sweep`).
"""

from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import Any, Sequence

import numpy as np
import torch

from grokscope.errors import GrokscopeError


def load_checkpoint(run_dir: Path, step: int | None, device: str = "cpu") -> tuple[Any, Any, dict[str, Any], int]:
    """``(model with the weights of checkpoint step, data, run spec, step)`` of the one run in ``run_dir``
    (``step=None``: the last checkpoint). Code the run names is imported only as the user's allow-list
    permits (:mod:`grokscope.trust`). Raises :class:`GrokscopeError` naming the folder or step at fault."""
    from grokscope.datasets import load_dataset
    from grokscope.engine.discovery import find_runs
    from grokscope.engine.loading import load_into, read_state_dict
    from grokscope.models import build_model

    found = find_runs(Path(run_dir))
    if len(found) != 1:
        raise GrokscopeError(f"{run_dir}: holds {len(found)} runs; pass one run folder")
    run = found[0]
    if run.spec is None:
        raise GrokscopeError(run.spec_error or f"{run_dir}: no run.json (write one with `grokscope init`)")
    steps = sorted(int(c.step) for c in run.checkpoints)
    if not steps:
        raise GrokscopeError(f"{run_dir}: no usable checkpoints")
    chosen = steps[-1] if step is None else int(step)
    if chosen not in steps:
        near = min(steps, key=lambda s: abs(s - chosen))
        raise GrokscopeError(f"{run_dir}: step {chosen} has no checkpoint (nearest: {near})")
    ck = next(c for c in run.checkpoints if c.step == chosen)
    where = f"{run_dir}/run.json"
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(0)  # the skeleton's init is overwritten by the checkpoint
        model = build_model(run.spec["model"], None, where).to(device)
    data = load_dataset(run.spec["dataset"], None, where)
    load_into(model, read_state_dict(ck), ck.path)
    return model.eval(), data.to(device) if device != "cpu" else data, run.spec, chosen


def sweep(model: Any, data: Any, spec: dict[str, Any], params: Any, lrs: Sequence[float],
          gammas: Sequence[float]) -> list[dict[str, Any]]:
    """The probe's estimate for each ``(lr, gamma)`` (γ outer, ε inner); each entry is
    :func:`estimate_llc`'s dict plus ``lr`` and ``gamma``."""
    from grokscope.probes.llc import LLCProbe, estimate_llc, llc_loss, resolve_loss, training_points

    loss = resolve_loss(params, data, spec)
    x, y = training_points(data, params, loss)
    out = []
    for gamma in gammas:
        for lr in lrs:
            p = dataclasses.replace(params, lr=lr, gamma=gamma)
            LLCProbe.check_params(p)
            m = estimate_llc(model, x, y, llc_loss(loss), **LLCProbe.sampler_settings(p))
            out.append({**m, "lr": lr, "gamma": gamma})
    return out


def sweep_figure(results: list[dict[str, Any]], lrs: Sequence[float], gammas: Sequence[float], out: Path,
                 title: str) -> Path:
    """Draw every chain's ``nβ (L(w_t) − L(w*))`` per grid cell (rows γ, columns ε) into ``out``."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    rows, cols = len(gammas), len(lrs)
    fig, axes = plt.subplots(rows, cols, figsize=(3.2 * cols + 0.6, 2.5 * rows + 0.8), squeeze=False,
                             sharex=True)
    for k, r in enumerate(results):
        ax = axes[k // cols][k % cols]
        excess = r["nbeta"] * (np.asarray(r["loss_trace"]) - r["loss_init"])
        for c in range(excess.shape[0]):
            ax.plot(excess[c], lw=0.8, alpha=0.8)
        ax.axhline(r["llc"], color="k", lw=1.0, ls="--")
        ax.axhline(0.0, color="0.6", lw=0.6)
        bad = bool(r["warnings"])
        ax.set_title(f"ε={r['lr']:.3g}  γ={r['gamma']:.3g}\nλ̂={r['llc']:.3g} ± {r['llc_std']:.2g}"
                     f"  R̂={r['rhat']:.3f}", fontsize=8, color="firebrick" if bad else "black")
        if bad:
            ax.text(0.02, 0.97, "\n".join(w.split(":")[0] for w in r["warnings"]), transform=ax.transAxes,
                    va="top", fontsize=6.5, color="firebrick")
        if k % cols == 0:
            ax.set_ylabel("nβ (L(w) − L(w*))", fontsize=8)
        if k // cols == rows - 1:
            ax.set_xlabel("draw", fontsize=8)
        ax.tick_params(labelsize=7)
    fig.suptitle(title, fontsize=9)
    fig.tight_layout()
    out.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(out, dpi=110)
    plt.close(fig)
    return out
