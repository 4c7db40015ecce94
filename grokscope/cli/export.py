"""``grokscope export STORE --to tensorboard DIR`` / ``--to wandb [DIR]``: every scalar of a probe store (a
folder or a URL such as ``s3://bucket/probes.zarr``) at its own step, into TensorBoard event files or
Weights & Biases runs (:mod:`grokscope.export`)."""

from __future__ import annotations

from pathlib import Path

import click

from .locations import Location, storage_options_option
from .locations import storage_options as parse_storage_options


@click.command()
@click.argument("store", type=Location(must_exist=True, file_okay=True))
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
@storage_options_option
def export(store: Path | str, out_dir: Path | None, target: str, runs: str | None, probes: str | None,
           max_per_var: int, project: str, entity: str | None, mode: str | None, storage_options: str | None) -> None:
    """Export every scalar of a probe STORE (a folder or a URL), at its own step, to TensorBoard or
    Weights & Biases."""
    from grokscope.engine.store_view import damage_named
    from grokscope.export import ExportError, to_tensorboard, to_wandb
    from grokscope.plots.runs import open_store

    keep = [p for p in (probes or "").split(",") if p] or None
    if target == "tensorboard" and out_dir is None:
        raise ExportError("export --to tensorboard needs DIR, the folder of the event files")
    options = parse_storage_options(storage_options)
    with damage_named(store, storage_options=options):  # a damaged file of the store: one line naming it
        tree = open_store(store, options)
        if target == "tensorboard":
            summary = to_tensorboard(tree, out_dir, runs, keep, max_per_var)  # type: ignore[arg-type]
        else:
            summary = to_wandb(tree, out_dir, project, mode, runs, keep, max_per_var, entity)
    click.echo(summary.describe())
