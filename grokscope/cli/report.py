"""``grokscope report STORE``: one self-contained HTML page (or ``--json``) about a probe store
(:mod:`grokscope.report` builds it)."""

from __future__ import annotations

import json
from pathlib import Path

import click

from .locations import Location, storage_options_option
from .locations import storage_options as parse_storage_options
from grokscope.cli.ignored import warn_ignored


def _grok_option(ctx: click.Context, param: click.Parameter, value: str) -> float | None:
    if value == "auto":
        return None
    try:
        return float(value)
    except ValueError:
        raise click.BadParameter(f"expected 'auto' or a number, got {value!r}") from None


@click.command()
@click.argument("store", type=Location(must_exist=True, file_okay=True))
@click.option("--out", type=click.Path(dir_okay=False, path_type=Path), default=None,
              help="HTML file to write (default: report.html next to STORE; ./report.html for a STORE at "
                   "a URL such as s3://bucket/probes.zarr).")
@storage_options_option
@click.option("--json", "as_json", is_flag=True, help="Print run_summary of every run as JSON instead.")
@click.option("--mem", default=0.99, show_default=True, help="Train-accuracy threshold of memorisation.")
@click.option("--grok", default="auto", show_default=True, callback=_grok_option,
              help="Test-accuracy threshold of generalisation; 'auto' = the dataset's (0.99 algorithmic, "
                   "0.85 images, else 0.95).")
@click.option("--robust", default=0.5, show_default=True, help="Robust-accuracy threshold of robustness@eps.")
@click.option("--window", default=1, show_default=True, type=click.IntRange(min=1),
              help="Smoothing window (checkpoints) of the onset curves.")
@click.option("--regions/--no-regions", default=True, show_default=True,
              help="Draw the linear-region picture of piecewise-linear runs (needs the checkpoints).")
@click.pass_context
def report(ctx: click.Context, store: Path | str, out: Path | None, storage_options: str | None, as_json: bool, mem: float, grok: float | None,
           robust: float, window: int, regions: bool) -> None:
    """Write one self-contained HTML page about every run in a probe STORE and print its path."""
    from grokscope.engine.store_view import damage_named
    from grokscope.report import summaries, write_report

    thresholds = {"mem": mem, "grok": grok, "robust": robust, "window": window}
    options = parse_storage_options(storage_options) or None
    if as_json:
        warn_ignored(ctx, ("out", "regions"), "with --json (the summaries go to stdout; no page is written)")
        with damage_named(store, storage_options=options):
            click.echo(json.dumps(summaries(store, options, **thresholds), indent=2, allow_nan=False))
        return
    with damage_named(store, storage_options=options):  # a damaged file of the store: one line naming it
        path = write_report(store, out, regions=regions, storage_options=options, **thresholds)
    click.echo(str(path))
