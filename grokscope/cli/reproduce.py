"""``grokscope reproduce NAME``: a paper's headline result in one command (:mod:`grokscope.reproduce`)."""

from __future__ import annotations

import time
from pathlib import Path

import click
from grokscope.cli.ignored import warn_ignored
from grokscope.reproduce import NOT_INCLUDED, REPRODUCTIONS, ReproduceError, check_name, run_reproduction


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
        warn_ignored(ctx, ("out", "quick", "threads"), "when listing the reproductions (nothing is run; "
                     + ("NAME is ignored too)" if name else "give a NAME to run one)"))
        for key, (_, what, cost) in REPRODUCTIONS.items():
            click.echo(f"{key:16s} {what} [full run: {cost}]")
        for key, why in NOT_INCLUDED.items():
            click.echo(f"{key:16s} not included: {why}")
        return
    try:
        check_name(name)
    except ReproduceError as e:
        raise click.BadParameter(str(e), param_hint="NAME") from None
    out = out if out is not None else Path("runs/reproduce") / (name + ("-quick" if quick else ""))
    t0 = time.perf_counter()
    result = run_reproduction(name, out, quick, threads)
    for f in result["files"]:
        click.echo(f"wrote {f}")
    click.echo(Path(out, "paper_vs_run.md").read_text())
    click.echo(f"{name}{' --quick' if quick else ''} took {time.perf_counter() - t0:.0f} s")
