"""``grokscope plot STORE``: the figures of a probe store (:mod:`grokscope.plots` draws them)."""

from __future__ import annotations

from pathlib import Path

import click

from .locations import Location, storage_options_option
from .locations import storage_options as parse_storage_options
from grokscope.cli.ignored import warn_ignored


@click.command()
@click.argument("store", type=Location(must_exist=True, file_okay=True))
@click.option("--out", "out", type=click.Path(path_type=Path), default=None,
              help="Folder for the figures, or a file (fig.png, fig.pdf); default: STORE's parent / plots "
                   "(./plots for a STORE at a URL such as s3://bucket/probes.zarr).")
@storage_options_option
@click.option("--runs", "--run", "runs", multiple=True, metavar="RUN[,RUN...]",
              help="Only these runs (group paths in the store): a comma list and/or repeated.")
@click.option("--metrics", "--probe", "metrics", multiple=True, metavar="PROBE[,PROBE...]",
              help="Only these probes' panels (acc, lc, pgd, align, fourier, norm) or probe.variable.")
@click.option("--format", "formats", default=None, metavar="png,pdf,svg",
              help="Figure formats, comma list (default: the suffix of --out, else png).")
@click.option("--layers", is_flag=True, help="Add one LC panel per layer.")
@click.option("--mem", type=float, default=None, help="Train-accuracy threshold of memorisation (0.99).")
@click.option("--grok", type=float, default=None,
              help="Test-accuracy threshold of generalisation (default: per dataset).")
@click.option("--robust", type=float, default=None, help="Robust-accuracy threshold per ε (0.5).")
@click.pass_context
def plot(ctx: click.Context, store: Path | str, out: Path | None, storage_options: str | None, runs: tuple[str, ...], metrics: tuple[str, ...],
         formats: str | None, layers: bool, mem: float | None, grok: float | None, robust: float | None) -> None:
    """Plot a probe STORE over log steps: overview.png (every run overlaid, one panel per measure with
    data, onsets as dashed lines) and fourier_<run>.png heat maps."""
    from grokscope.plots import FORMATS, plot_store

    wanted = [m.strip().split(".")[0] for group in metrics for m in group.split(",") if m.strip()]
    if wanted and "lc" not in wanted:
        warn_ignored(ctx, ("layers",), f"with --metrics {','.join(wanted)} (the per-layer panels are lc's)")
    if out is not None and formats and out.suffix.lstrip(".").lower() in FORMATS and \
            out.suffix.lstrip(".").lower() not in [f.strip().lower().lstrip(".") for f in formats.split(",")]:
        click.echo(f"warning: the suffix of --out {out} is ignored: --format {formats} is used "
                   f"({out.with_suffix('')}.<format>)", err=True)

    thresholds = {k: v for k, v in (("mem", mem), ("grok", grok), ("robust", robust)) if v is not None}
    from grokscope.engine.store_view import damage_named
    from grokscope.plots import open_store

    options = parse_storage_options(storage_options)
    with damage_named(store, storage_options=options):  # a damaged file of the store: one line naming it
        tree = open_store(store, options) if isinstance(store, str) else store  # a URL: read here
        if isinstance(store, str) and out is None:
            out = Path("plots")
        paths = plot_store(tree, out or store.parent / "plots", runs=list(runs) or None,
                           metrics=list(metrics) or None, formats=formats, layers=layers, thresholds=thresholds)
    for p in paths:
        click.echo(str(p))
