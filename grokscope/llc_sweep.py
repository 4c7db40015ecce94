"""``grokscope llc-sweep``: calibrate the ``llc`` probe's step size ε and localisation γ on one checkpoint.

Runs the probe's sampler (:func:`grokscope.probes.llc.estimate_llc`, the same code the probe runs) for
every pair of a small grid of ``lr`` × ``gamma`` on one checkpoint of a run, prints one line per pair
(the estimate, its spread over chains, split R-hat, step-to-noise ratios and the warnings) and draws
every chain's trace ``nβ (L(w_t) − L(w*))`` in a grid of panels (rows: γ, columns: ε), so a healthy
setting (flat, overlapping traces, no warning) can be told from a bad one before a whole run is probed.
"""

from __future__ import annotations

import dataclasses
import math
from pathlib import Path
from typing import Any, Sequence

import click
import numpy as np
import torch

from grokscope.errors import GrokscopeError


def parse_grid(text: str, what: str) -> list[float]:
    """``"1e-4,3e-4"`` → ``[1e-4, 3e-4]``; raises ``click.BadParameter`` naming ``what`` otherwise."""
    try:
        values = [float(t) for t in text.replace(" ", "").split(",") if t]
    except ValueError:
        raise click.BadParameter(f"{what} must be comma-separated numbers like 1e-4,3e-4, got {text!r}") from None
    if not values or any(not (v >= 0 and math.isfinite(v)) for v in values):
        raise click.BadParameter(f"{what} must be one or more numbers >= 0, got {text!r}")
    return values


def load_checkpoint(run_dir: Path, step: int | None, device: str = "cpu") -> tuple[Any, Any, dict[str, Any], int]:
    """``(model with the weights of checkpoint step, data, run spec, step)`` of the run in ``run_dir``
    (``step=None``: the last checkpoint)."""
    from grokscope.datasets import load_dataset
    from grokscope.engine.loading import load_into, read_state_dict
    from grokscope.models import build_model
    from grokscope.regions import open_run, select_steps

    run = open_run(run_dir)
    steps = [c.step for c in run.checkpoints]
    chosen = select_steps("last" if step is None else str(step), steps)[0]
    ck = next(c for c in run.checkpoints if c.step == chosen)
    try:
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(0)  # the skeleton's init is overwritten by the checkpoint
            model = build_model(run.spec["model"]).to(device)
        data = load_dataset(run.spec["dataset"])
    except (ValueError, KeyError, TypeError) as e:
        raise GrokscopeError(f"{run_dir}/run.json: cannot build the model or dataset: {e}") from None
    load_into(model, read_state_dict(ck), ck.path)
    return model.eval(), data.to(device) if device != "cpu" else data, run.spec, int(chosen)


def sweep(model: Any, data: Any, spec: dict[str, Any], params: Any, lrs: Sequence[float],
          gammas: Sequence[float]) -> list[dict[str, Any]]:
    """The probe's estimate for each ``(lr, gamma)`` (γ outer, ε inner); each entry is
    :func:`estimate_llc`'s dict plus ``lr`` and ``gamma``."""
    from grokscope.losses import task_loss
    from grokscope.probes.llc import DTYPES, LLCProbe, estimate_llc

    loss = params.loss if params.loss != "auto" else (spec.get("train") or {}).get("loss", "ce")
    x, y = LLCProbe.training_points(data, params)
    out = []
    for gamma in gammas:
        for lr in lrs:
            p = dataclasses.replace(params, lr=lr, gamma=gamma)
            LLCProbe.check_params(p)
            m = estimate_llc(model, x, y, lambda o, t: task_loss(o, t, loss), lr=p.lr, gamma=p.gamma, beta=p.beta,
                             n_chains=p.n_chains, n_draws=p.n_draws, n_burnin=p.n_burnin, thin=p.thin,
                             batch_size=p.batch_size, sampler=p.sampler, rms_alpha=p.rms_alpha,
                             rms_eps=p.rms_eps, seed=p.seed,
                             dtype=None if p.dtype == "auto" else DTYPES[p.dtype])
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


@click.command("llc-sweep")
@click.argument("run_dir", type=click.Path(exists=True, file_okay=False, path_type=Path))
@click.option("--step", type=int, default=None, help="Checkpoint step [default: the last].")
@click.option("--lr", "lr_text", default="1e-5,1e-4,1e-3", show_default=True, metavar="E1,E2,...",
              help="SGLD step sizes ε to try.")
@click.option("--gamma", "gamma_text", default="100", show_default=True, metavar="G1,G2,...",
              help="Localisation strengths γ to try.")
@click.option("--param", "param_items", multiple=True, metavar="FIELD=VALUE",
              help="Any other llc parameter (n_chains=4, n_draws=200, sampler=rmsprop, ...); repeat.")
@click.option("--out", type=click.Path(dir_okay=False, path_type=Path), default=None,
              help="PNG of the traces [default: RUN_DIR/plots/llc-sweep-step-S.png].")
@click.option("--device", default="cpu", show_default=True, help="torch device.")
def llc_sweep(run_dir: Path, step: int | None, lr_text: str, gamma_text: str, param_items: tuple[str, ...],
              out: Path | None, device: str) -> None:
    """Try a grid of llc step sizes (--lr) and localisations (--gamma) on one checkpoint of RUN_DIR;
    print the estimate and diagnostics of each and plot every chain's trace."""
    from grokscope.probes.llc import LLCProbe

    lrs, gammas = parse_grid(lr_text, "--lr"), parse_grid(gamma_text, "--gamma")
    overrides = {}
    for item in param_items:
        key, eq, value = item.partition("=")
        if not eq:
            raise click.BadParameter(f"--param needs FIELD=VALUE, got {item!r}")
        overrides[key.strip().removeprefix("llc.")] = value
    try:
        params = LLCProbe.make_params(overrides)
        for lr in lrs:
            for gamma in gammas:
                LLCProbe.check_params(dataclasses.replace(params, lr=lr, gamma=gamma))
        model, data, spec, chosen = load_checkpoint(run_dir, step, device)
        LLCProbe().check(model, data, params)
        results = sweep(model, data, spec, params, lrs, gammas)
    except GrokscopeError as e:
        raise click.ClickException(str(e)) from None
    click.echo(f"{run_dir} step {chosen}: n={results[0]['n']}, nβ={results[0]['nbeta']:.4g}, "
               f"{params.n_chains} chains x {params.n_draws} draws after {params.n_burnin} burn-in steps, "
               f"{params.sampler}")
    click.echo(f"{'lr':>9} {'gamma':>9} {'llc':>10} {'std':>9} {'rhat':>7} {'grad/noise':>10} {'loc/noise':>9}  warnings")
    for r in results:
        g = float(np.mean(r["grad_step"] / r["noise_step"]))
        l_ = float(np.mean(r["loc_step"] / r["noise_step"]))
        click.echo(f"{r['lr']:>9.3g} {r['gamma']:>9.3g} {r['llc']:>10.4g} {r['llc_std']:>9.3g} {r['rhat']:>7.3f} "
                   f"{g:>10.3g} {l_:>9.3g}  {'; '.join(r['warnings']) or '-'}")
    out = out or Path(run_dir) / "plots" / f"llc-sweep-step-{chosen}.png"
    sweep_figure(results, lrs, gammas, out, f"{Path(run_dir).name}, step {chosen}: llc traces "
                 f"({params.sampler}, n={results[0]['n']}, nβ={results[0]['nbeta']:.4g})")
    click.echo(f"wrote {out}")
