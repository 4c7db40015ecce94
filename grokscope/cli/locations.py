"""Command-line arguments and options for locations: a local folder or an fsspec URL
(``s3://bucket/runs``), and ``--storage-options`` / ``--cache-budget`` for the remote ones."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import click
from grokscope.locations import LocationError, is_url, parse_storage_options
from grokscope.sources import as_path


class Location(click.ParamType):
    """A local folder that must exist (as ``click.Path(exists=True, file_okay=False)``; with
    ``must_exist=False`` any path, as ``click.Path()``: a store to create; ``file_okay``: a file
    too), or an fsspec URL, kept as a string (listed later, with the storage options)."""

    name = "path|url"

    def __init__(self, must_exist: bool = True, file_okay: bool = False):
        self.must_exist, self.file_okay = must_exist, file_okay

    def convert(self, value: Any, param: click.Parameter | None, ctx: click.Context | None) -> Any:

        if isinstance(value, Path) or not is_url(value):
            kind = click.Path(exists=True, file_okay=self.file_okay, path_type=Path) if self.must_exist else \
                click.Path(path_type=Path)
            return kind.convert(value, param, ctx)
        return str(value).rstrip("/")


LOCATION = Location()


def storage_options_option(f):
    """``--storage-options JSON``: keyword arguments of the fsspec filesystem of a URL."""
    return click.option("--storage-options", "storage_options", default=None, metavar="JSON",
                        envvar="GROKSCOPE_STORAGE_OPTIONS",
                        help="fsspec options for URLs, as a JSON object (e.g. '{\"anon\": true}' or "
                             "'{\"endpoint_url\": \"http://127.0.0.1:9000\"}'); credentials usually come "
                             "from the environment instead. Never written anywhere.")(f)


def storage_options(text: str | None) -> dict[str, Any]:
    """``--storage-options`` as a dict; a usage error naming the flag when it is not a JSON object."""

    try:
        return parse_storage_options(text)
    except LocationError as e:
        raise click.BadParameter(str(e), param_hint="--storage-options") from None


def open_location(location: Any, text: str | None) -> Any:
    """The argument as the checkpoint floor walks it (a local Path, or a freshly listed remote path);
    a click error naming the URL when it cannot be listed."""

    try:
        return as_path(location, storage_options(text), fresh=True)
    except LocationError as e:
        raise click.ClickException(str(e)) from None


def cache_budget(text: str | None) -> int | None:
    """``--cache-budget`` in bytes (None when not given)."""
    if text is None:
        return None
    from grokscope.engine.fetch import FetchError, parse_size

    try:
        return parse_size(text)
    except FetchError as e:
        raise click.BadParameter(str(e), param_hint="--cache-budget") from None
