"""``grokscope simulate``: closed-form dynamics written as a run (:mod:`grokscope.simulate`)."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import click

from grokscope.simulate import SimulateError, simulate_musat


@click.group("simulate")
def simulate() -> None:
    """Closed-form training dynamics written as ordinary grokscope runs."""


@simulate.command("musat")
@click.option("--p", "p", type=int, default=23, show_default=True, help="Prime modulus (a + b mod p).")
@click.option("--hidden", type=int, default=256, show_default=True,
              help="Hidden width h (must exceed the number of training pairs, 0.7·p(p+1)/2).")
@click.option("--lr", type=float, default=2e-3, show_default=True, help="Step size η of E ← E + η ΔE.")
@click.option("--steps", type=int, default=2000, show_default=True, help="Number of updates.")
@click.option("--seed", type=int, default=0, show_default=True, help="Seed of the split and of E's init.")
@click.option("--save", default="log:40", show_default=True,
              help="Checkpoint schedule: log:N, every:K or a list 1,10,100.")
@click.option("--eval-every", default="every:50", show_default=True,
              help="Extra log.jsonl evaluations (a schedule spec, or 'none').")
@click.option("--out", type=click.Path(path_type=Path), required=True, help="Run folder to write.")
@click.option("--overwrite", is_flag=True, help="Replace a run already in --out.")
@click.option("--threads", type=int, default=0, show_default=True,
              help="torch CPU threads (0: torch's default).")
@click.option("--quiet", is_flag=True, help="Do not print progress.")
def musat(p: int, hidden: int, lr: float, steps: int, seed: int, save: str, eval_every: str, out: Path,
          overwrite: bool, threads: int, quiet: bool) -> None:
    """Musat §7: the first layer of a two-layer ReLU net under eq. 20, readout = min-norm interpolant.

    The full setting of the paper is --p 37 --hidden 512 --lr 1e-3 --steps 5000 (about 5 min of CPU);
    the defaults are a smaller setting that groks in well under a minute.
    """
    def show(rec: dict[str, Any]) -> None:
        if not quiet:
            click.echo(f"step {rec['step']:>6}  train_acc {rec['train_acc']:.3f}  test_acc {rec['test_acc']:.3f}"
                       f"  |E|^2 {rec['embed_sq']:.1f}  ({rec['wall']:.1f}s)", err=True)

    if threads > 0:
        import torch

        torch.set_num_threads(threads)
    try:
        simulate_musat(out, p=p, hidden=hidden, lr=lr, steps=steps, seed=seed, save=save,
                       eval_every=None if eval_every in ("none", "") else eval_every,
                       overwrite=overwrite, progress=show)
    except (SimulateError, ValueError) as e:
        raise click.ClickException(str(e)) from None
    if not quiet:
        click.echo(json.dumps({"run": str(out)}))
