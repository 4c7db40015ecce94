"""JSON from files anyone may have written, read with bounds on size and nesting depth.

``json.loads`` recurses once per ``[`` or ``{``: a run.json of a million ``[`` raises
``RecursionError`` inside the parser, and a document nested 900 deep parses but breaks every later
step that walks it (copies, comparisons, ``json.dumps``). Every JSON document grokscope reads from a
run folder, a checkpoint or a store (run.json, logs, safetensors headers, shard indexes, Hugging Face
configs, Zarr metadata) goes through :func:`loads` or :func:`read_json`: the depth is measured first,
without recursion, and a document nested deeper than :data:`MAX_DEPTH` or larger than its byte limit is
refused with :class:`JSONBoundsError` (a ``ValueError``) naming the file, before it is parsed.
"""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any

import numpy as np

MAX_DEPTH = 64  # nesting of arrays and objects; grokscope's own files use at most 6
MAX_BYTES = 64 * 2**20  # a JSON file (run.json, config.json, a log, a shard index); a safetensors header has its own

# a JSON string (escapes included): its brackets are not structure
_STRING = re.compile(rb'"[^"\\]*(?:\\.[^"\\]*)*"', re.S)
_OPEN = np.zeros(256, dtype=np.int8)
_OPEN[[ord("["), ord("{")]] = 1
_OPEN[[ord("]"), ord("}")]] = -1


class JSONBoundsError(ValueError):
    """A JSON document that is too deep or too large to read; the message names where it is from."""


def depth(raw: bytes | str) -> int:
    """The deepest nesting of arrays and objects in the JSON text ``raw`` (brackets inside strings do
    not count), computed without recursion."""
    if isinstance(raw, str):
        raw = raw.encode("utf-8", "surrogatepass")
    bare = _STRING.sub(b'""', raw)
    if not bare:
        return 0
    steps = _OPEN[np.frombuffer(bare, dtype=np.uint8)].astype(np.int64)
    return int(np.cumsum(steps).max(initial=0))


def loads(raw: bytes | str, where: str | Path, max_depth: int = MAX_DEPTH) -> Any:
    """``json.loads(raw)`` once its nesting is known to be at most ``max_depth``.

    Raises :class:`JSONBoundsError` naming ``where`` (a file) for a deeper document, and ``ValueError``
    for text that is not JSON."""
    d = depth(raw)
    if d > max_depth:
        raise JSONBoundsError(f"{where}: JSON nested {d} deep (at most {max_depth} is read); refused")
    return json.loads(raw)


def read_json(path: str | Path, max_bytes: int = MAX_BYTES, max_depth: int = MAX_DEPTH) -> Any:
    """The JSON document in the file ``path``, refused (:class:`JSONBoundsError`) when it is larger
    than ``max_bytes`` or nested deeper than ``max_depth``. ``OSError`` and ``ValueError`` (not JSON)
    pass through."""
    # a local path, or a remote one (grokscope.sources.RemotePath: read whole, from the listing's source)
    with (path.open("rb") if hasattr(path, "source") else open(path, "rb")) as f:
        raw = f.read(max_bytes + 1)
    if len(raw) > max_bytes:
        raise JSONBoundsError(f"{path}: larger than {max_bytes} bytes; refused (not a JSON file grokscope reads)")
    return loads(raw, path, max_depth)
