"""``grokscope export STORE --to tensorboard DIR`` / ``--to wandb [DIR]``: every scalar of a probe store at
its own step, into TensorBoard event files or Weights & Biases runs (:mod:`grokscope.export`)."""

from __future__ import annotations

from pathlib import Path

import click


@click.command()
@click.argument("store", type=click.Path(exists=True, path_type=Path))
@click.argument("out_dir", metavar="DIR", required=False, type=click.Path(file_okay=False, path_type=Path))
@click.option("--to", "target", type=click.Choice(["tensorboard", "wandb"]), required=True,
              help="tensorboard: event files under DIR/<run>/; wandb: one W&B run per store run "
                   "(DIR: wandb's folder).")
@click.option("--runs", default=None, help="Only these runs (comma-separated paths as `grokscope plot` names them).")
@click.option("--probes", default=None, help="Only these probes (comma-separated).")
@click.option("--max-per-var", default=256, show_default=True, type=click.IntRange(min=1),
              help="Leave out variables with more scalars than this per step (per-sample arrays).")
@click.option("--project", default="grokscope", show_default=True, help="W&B project (--to wandb).")
@click.option("--entity", default=None, help="W&B entity (--to wandb).")
@click.option("--mode", type=click.Choice(["online", "offline"]), default=None,
              help="W&B mode (--to wandb; default: wandb's, i.e. WANDB_MODE or online).")
def export(store: Path, out_dir: Path | None, target: str, runs: str | None, probes: str | None, max_per_var: int,
           project: str, entity: str | None, mode: str | None) -> None:
    """Export every scalar of a probe STORE, at its own step, to TensorBoard or Weights & Biases."""
    from grokscope.export import ExportError, to_tensorboard, to_wandb

    keep = [p for p in (probes or "").split(",") if p] or None
    if target == "tensorboard":
        if out_dir is None:
            raise ExportError("export --to tensorboard needs DIR, the folder of the event files")
        summary = to_tensorboard(store, out_dir, runs, keep, max_per_var)
    else:
        summary = to_wandb(store, out_dir, project, mode, runs, keep, max_per_var, entity)
    click.echo(summary.describe())
