"""``grokscope scan``: audit the checkpoints under a path."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import click


@click.command()
@click.argument("path", type=click.Path(exists=True, path_type=Path))
@click.option("--json", "as_json", is_flag=True, help="Print the full audit as JSON on stdout.")
def scan(path: Path, as_json: bool) -> None:
    """Audit the checkpoints under PATH: per run, the number of checkpoints, step range, gaps in the
    save schedule, duplicate weights, steps written out of order, dtype/shape drift, unreadable files."""
    from grokscope.engine.discovery import DiscoveryError
    from grokscope.engine.scan import format_report
    from grokscope.engine.scan import scan as do_scan

    skipped: list[Any] = []
    try:
        reports = do_scan(path, skipped)
    except DiscoveryError as e:
        raise click.ClickException(str(e)) from e
    for p in skipped:
        click.echo(f"warning: {p.path}: {p.reason}", err=True)
    if as_json:
        click.echo(json.dumps(reports, indent=2))
    else:
        click.echo(format_report(reports))
