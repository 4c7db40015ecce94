"""``grokscope llc-sweep``: a grid of llc step sizes and localisations on one checkpoint
(:mod:`grokscope.llc_sweep`)."""

from __future__ import annotations

import dataclasses
import math
from pathlib import Path

import click
import numpy as np

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
    from grokscope.llc_sweep import load_checkpoint, sweep, sweep_figure
    from grokscope.probes.llc import LLCProbe

    lrs, gammas = parse_grid(lr_text, "--lr"), parse_grid(gamma_text, "--gamma")
    overrides = {}
    for item in param_items:
        key, eq, value = item.partition("=")
        if not eq:
            raise click.BadParameter(f"--param needs FIELD=VALUE, got {item!r}")
        field = key.strip().removeprefix("llc.")
        if field in ("lr", "gamma"):
            raise click.BadParameter(f"{item!r} would be ignored: the sweep takes {field} from --{field} "
                                     f"(a grid, e.g. --{field} {value})", param_hint="--param")
        overrides[field] = value
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
