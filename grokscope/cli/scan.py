"""``grokscope scan``: audit the checkpoints under a path."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import click

from .locations import LOCATION, open_location, storage_options_option


@click.command()
@click.argument("path", type=LOCATION)
@click.option("--json", "as_json", is_flag=True, help="Print the full audit as JSON on stdout.")
@storage_options_option
def scan(path: Path, as_json: bool, storage_options: str | None = None) -> None:
    """Audit the checkpoints under PATH (a folder or a URL such as s3://bucket/runs): per run, the
    number of checkpoints, step range, gaps in the save schedule, duplicate weights, steps written out
    of order, dtype/shape drift, unreadable files. A remote series is audited from its listing and
    safetensors headers, without downloading weights."""
    from grokscope.engine.discovery import DiscoveryError
    from grokscope.engine.scan import format_report
    from grokscope.engine.scan import scan as do_scan

    path = open_location(path, storage_options)
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
