"""``grokscope reproduce NAME [--out DIR] [--quick]``: the papers' headline results, one command each.

Each entry trains (or simulates), probes, draws the figure that corresponds to the paper's and writes
``paper_vs_run.md``, a table of the paper's numbers beside this run's, and ``results.json``.
``--quick`` runs a few hundred steps of the same pipeline (what the tests run; no claim). Re-running
reuses what ``--out`` already holds: a finished training run, the probes already in the store.
"""

from __future__ import annotations

import importlib
import time
from pathlib import Path

import click

# name: (module, what it reproduces, full-run cost on 2 shared CPU cores)
REPRODUCTIONS = {
    "humayun-mnist": ("grokscope.reproduce.humayun",
                      "Humayun et al. Fig. 2: LC phases, region migration, delayed robustness (MNIST MLP, 10⁵ steps)",
                      "hours on 2 shared cores (training alone ≈ 10 min on an idle core)"),
    "grokalign-mnist": ("grokscope.reproduce.grokalign",
                        "GrokAlign Table 1 (MSE): steps to 85 % test accuracy, weight decay vs GrokAlign",
                        "hours on 2 shared cores (18 / 31 ms per step on an idle core, float64)"),
    "musat": ("grokscope.reproduce.musat",
              "Musat §7 / Fig. 4: grokking of the closed-form first-layer dynamics, a + b mod 37",
              "≈ 2-5 min"),
}
# Left out, and why (measured on this project's 2-core CPU machine).
NOT_INCLUDED = {
    "nanda": "Nanda et al.'s one-layer transformer on a + b mod 113 needs ≈ 10⁴ full-batch steps to grok at "
             "≈ 1 s per step on 2 CPU cores (docs/grokalign.md): ≈ 3 h, over the 40-minute budget; train it "
             "with `grokscope train --preset modadd-transformer` on a GPU.",
}


def run_reproduction(name: str, out: Path, quick: bool = False, threads: int = 1) -> dict:
    """Run reproduction ``name`` into ``out``; returns the module's result (``{"files": [...], ...}``)."""
    if name not in REPRODUCTIONS:
        raise click.BadParameter(f"unknown reproduction {name!r}; valid: {', '.join(REPRODUCTIONS)}"
                                 + (f" ({name} is not included: {NOT_INCLUDED[name]})" if name in NOT_INCLUDED else ""),
                                 param_hint="NAME")
    module = importlib.import_module(REPRODUCTIONS[name][0])
    return module.run(Path(out), quick=quick, threads=threads)


@click.command("reproduce")
@click.argument("name", required=False)
@click.option("--out", type=click.Path(file_okay=False, path_type=Path), default=None,
              help="Output folder (default runs/reproduce/NAME[-quick]).")
@click.option("--quick", is_flag=True, help="A few hundred steps of the same pipeline (for the tests; no claim).")
@click.option("--list", "list_", is_flag=True, help="List the reproductions and exit.")
@click.option("--threads", type=int, default=1, show_default=True, help="torch threads for training.")
@click.pass_context
def reproduce(ctx: click.Context, name: str | None, out: Path | None, quick: bool, list_: bool, threads: int) -> None:
    """Reproduce a paper's headline result: train, probe, draw its figure and write a table of the
    paper's numbers beside this run's (OUT/paper_vs_run.md)."""
    if list_ or name is None:
        from grokscope.cli.ignored import warn_ignored

        warn_ignored(ctx, ("out", "quick", "threads"), "when listing the reproductions (nothing is run; "
                     + ("NAME is ignored too)" if name else "give a NAME to run one)"))
        for key, (_, what, cost) in REPRODUCTIONS.items():
            click.echo(f"{key:16s} {what} [full run: {cost}]")
        for key, why in NOT_INCLUDED.items():
            click.echo(f"{key:16s} not included: {why}")
        return
    out = out if out is not None else Path("runs/reproduce") / (name + ("-quick" if quick else ""))
    t0 = time.perf_counter()
    result = run_reproduction(name, out, quick, threads)
    for f in result["files"]:
        click.echo(f"wrote {f}")
    click.echo(Path(out, "paper_vs_run.md").read_text())
    click.echo(f"{name}{' --quick' if quick else ''} took {time.perf_counter() - t0:.0f} s")
