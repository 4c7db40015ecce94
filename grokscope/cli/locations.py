"""The command-line side of :mod:`grokscope.locations`: an argument or option that takes a local path
or an fsspec URL (:data:`LOCATION`), and ``--storage-options JSON`` (:func:`storage_options_option`)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import click


class Location(click.ParamType):
    """A local path (a :class:`Path`; ``must_exist``: checked like ``click.Path(exists=True)``) or an
    fsspec URL such as ``s3://bucket/probes.zarr`` (kept as text; checked where it is opened)."""

    name = "path|url"

    def __init__(self, must_exist: bool = False):
        self.must_exist = must_exist

    def convert(self, value: Any, param: click.Parameter | None, ctx: click.Context | None) -> Path | str:
        from grokscope.locations import is_url, local_path

        if isinstance(value, Path) or not is_url(value):
            path = local_path(value)
            if self.must_exist and not path.exists():
                self.fail(f"{str(value)!r}: no such file or folder", param, ctx)
            return path
        return str(value)


def storage_options_option(f):
    """``--storage-options JSON``: the fsspec filesystem's keyword arguments for URLs (used, never stored)."""
    return click.option(
        "--storage-options", "storage_options", default=None, metavar="JSON",
        help="For s3:// (or other fsspec) URLs: the filesystem's options as a JSON object, e.g. "
             "'{\"endpoint_url\": \"http://127.0.0.1:9000\", \"anon\": false}'; credentials otherwise come "
             "from the environment (AWS_*) or fsspec's config. Never written into the store.")(f)


def parse_storage_options(text: str | None) -> dict[str, Any]:
    """``--storage-options`` as a dict; a UsageError naming the flag when it is not a JSON object."""
    from grokscope.locations import LocationError
    from grokscope.locations import parse_storage_options as parse

    try:
        return parse(text)
    except LocationError as e:
        raise click.UsageError(str(e)) from None
