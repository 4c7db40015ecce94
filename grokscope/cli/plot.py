"""``grokscope plot STORE``: the figures of a probe store (:mod:`grokscope.plots` draws them)."""

from __future__ import annotations

from pathlib import Path

import click


@click.command()
@click.argument("store", type=click.Path(exists=True, path_type=Path))
@click.option("--out", "out", type=click.Path(path_type=Path), default=None,
              help="Folder for the figures, or a file (fig.png, fig.pdf); default: STORE's parent / plots.")
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
def plot(store: Path, out: Path | None, runs: tuple[str, ...], metrics: tuple[str, ...], formats: str | None,
         layers: bool, mem: float | None, grok: float | None, robust: float | None) -> None:
    """Plot a probe STORE over log steps: overview.png (every run overlaid, one panel per measure with
    data, onsets as dashed lines) and fourier_<run>.png heat maps."""
    from grokscope.plots import plot_store

    thresholds = {k: v for k, v in (("mem", mem), ("grok", grok), ("robust", robust)) if v is not None}
    paths = plot_store(store, out or store.parent / "plots", runs=list(runs) or None,
                       metrics=list(metrics) or None, formats=formats, layers=layers, thresholds=thresholds)
    for p in paths:
        click.echo(str(p))
