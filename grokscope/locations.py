"""Where things are: a local path or an fsspec URL (``s3://bucket/runs``, ``gs://…``, ``hf://…``).

Every place that takes a run folder, a checkpoint folder or a store goes through here to tell the
two apart and to get a filesystem for a URL. Credentials and endpoints come the way the ecosystem
passes them: the environment (``AWS_ACCESS_KEY_ID``, ``AWS_ENDPOINT_URL``, ...), fsspec's own
configuration, or ``--storage-options '{...}'`` (JSON, handed to the filesystem as keyword
arguments). None of them is ever written into a store or a run folder.
"""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any

from grokscope.errors import GrokscopeError

_SCHEME = re.compile(r"^([a-zA-Z][a-zA-Z0-9+.-]*)://")
# the filesystems' packages, for the error that names what to install
_PACKAGES = {"s3": "s3fs", "s3a": "s3fs", "gs": "gcsfs", "gcs": "gcsfs", "az": "adlfs", "abfs": "adlfs",
             "hf": "huggingface_hub"}


class LocationError(GrokscopeError, ValueError):
    """A URL or its storage options cannot be used (unknown scheme, missing package, bad JSON)."""


def scheme(location: str | Path) -> str | None:
    """The URL scheme of ``location`` (``"s3"``), or None for a local path (``file://`` included)."""
    if isinstance(location, Path):
        return None
    m = _SCHEME.match(str(location))
    if m is None or m.group(1).lower() in ("file", "local"):
        return None
    return m.group(1).lower()


def is_url(location: str | Path) -> bool:
    """Whether ``location`` names a remote location (an fsspec URL other than ``file://``)."""
    return scheme(location) is not None


def local_path(location: str | Path) -> Path:
    """``location`` as a local :class:`Path` (``file://`` stripped); a remote URL raises."""
    if is_url(location):
        raise LocationError(f"{location}: a remote URL where a local path is needed")
    text = str(location)
    return Path(text[len("file://"):] if text.startswith("file://") else text)


def parse_storage_options(text: str | None, flag: str = "--storage-options") -> dict[str, Any]:
    """The JSON object ``text`` as a dict (``{}`` for None or empty); a clear error naming ``flag``."""
    if not text:
        return {}
    try:
        value = json.loads(text)
    except ValueError as e:
        raise LocationError(f"{flag}: not JSON ({e}): {text[:80]!r}") from None
    if not isinstance(value, dict):
        raise LocationError(f"{flag}: must be a JSON object such as '{{\"anon\": true}}', got {text[:80]!r}")
    return value


def filesystem(url: str, storage_options: dict[str, Any] | None = None) -> tuple[Any, str]:
    """``(fs, path)``: the fsspec filesystem of ``url`` (its listings never cached, so every listing
    is the server's) and the path inside it. A missing package or unknown scheme raises
    :class:`LocationError` naming what to install."""
    import fsspec

    options = dict(storage_options or {})
    proto = scheme(url) or "file"
    if proto in ("s3", "s3a", "gs", "gcs"):
        options.setdefault("use_listings_cache", False)
    try:
        return fsspec.core.url_to_fs(url, **options)
    except ImportError as e:
        pkg = _PACKAGES.get(proto, f"the fsspec implementation of {proto}://")
        raise LocationError(f"{url}: reading {proto}:// needs {pkg} (pip install 'grokscope[remote]' "
                            f"or pip install {pkg}): {e}") from None
    except ValueError as e:
        raise LocationError(f"{url}: {e}") from None


def join(location: str | Path, *parts: str) -> str | Path:
    """``location`` / parts, for a path or a URL alike (URLs keep their ``/`` separators)."""
    if not is_url(location):
        return Path(location).joinpath(*parts)
    return "/".join([str(location).rstrip("/"), *(p.strip("/") for p in parts if p)])
