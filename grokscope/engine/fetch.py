"""Remote checkpoints streamed under a disk budget: fetch a checkpoint's files, read them, drop them.

A checkpoint whose path is an fsspec URL (``s3://…``) is read by copying its files into a folder of
the local fetch cache (``fs.get``, streamed to disk), loading the state dict from there into memory
(copied out of the files, nothing left mapped), and deleting the folder at once. So a worker holds
the files of at most the checkpoint it is loading.

``--cache-budget SIZE`` bounds the bytes of checkpoint files held in the cache **per machine**: the
worker processes of one machine share the cache folder (``$TMPDIR/grokscope-fetch-<uid>`` unless
``cache_dir`` is given) and reserve a checkpoint's bytes there before fetching it, under a file lock
(``fcntl``) on a ledger of reservations, one small file per fetch in flight, naming its process; a
process that died leaves a reservation that the next fetch clears. A fetch that does not fit waits
until others finish; a checkpoint larger than the whole budget is refused in one line. Without a
budget, a machine holds at most one checkpoint per worker thread (each fetch is dropped after it is
read).

Settings travel with each job (:class:`FetchSettings` in the task); the client's own reads use the
ones :func:`configure` set. The client's model check and probe checks read each run's first
checkpoint once (:func:`.loading.read_once`); a job reads its checkpoint once for all its probes
(:func:`.jobs.run_task`), and ``load_previous`` fetches the previous step when a probe asks for it.
"""

from __future__ import annotations

import fcntl
import os
import re
import shutil
import time
import uuid
from contextlib import contextmanager
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any, Iterator

from .checkpoints import Checkpoint
from .lock import pid_alive
from .scratch import new_folder, temp_root
from grokscope.locations import filesystem
from grokscope.sources import real_url

_UNITS = {"": 1, "b": 1, "k": 10**3, "kb": 10**3, "m": 10**6, "mb": 10**6, "g": 10**9, "gb": 10**9,
          "t": 10**12, "tb": 10**12, "kib": 2**10, "mib": 2**20, "gib": 2**30, "tib": 2**40}
_SIZE = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*([a-zA-Z]*)\s*$")


class FetchError(ValueError):
    """A remote checkpoint cannot be fetched under the budget (larger than it, a bad size)."""


def parse_size(text: str, flag: str = "--cache-budget") -> int:
    """Bytes of a size such as ``2GB``, ``500MiB``, ``1e9``-free ``123456`` (decimal and binary units);
    a one-line :class:`FetchError` naming ``flag`` otherwise."""
    m = _SIZE.match(str(text))
    unit = m.group(2).lower() if m else ""
    if m is None or unit not in _UNITS:
        raise FetchError(f"{flag}: {text!r} is not a size (examples: 2GB, 500MB, 8GiB)")
    n = int(float(m.group(1)) * _UNITS[unit])
    if n < 1:
        raise FetchError(f"{flag}: {text!r} must be positive")
    return n


def format_size(n: int) -> str:
    """``n`` bytes in words (``1.5 GB``)."""
    for unit, size in (("TB", 10**12), ("GB", 10**9), ("MB", 10**6), ("kB", 10**3)):
        if n >= size:
            return f"{n / size:.1f} {unit}"
    return f"{n} B"


@dataclass(frozen=True)
class FetchSettings:
    """How a process reads remote checkpoints: the filesystem's ``storage_options`` (never written
    anywhere), the per-machine ``budget`` in bytes (None: one checkpoint per worker thread) and the
    cache folder (None: ``$TMPDIR/grokscope-fetch-<uid>``)."""

    storage_options: dict[str, Any] = field(default_factory=dict)
    budget: int | None = None
    cache_dir: str | None = None

    def folder(self) -> Path:
        return Path(self.cache_dir) if self.cache_dir else temp_root() / f"grokscope-fetch-{os.getuid()}"


_SETTINGS = FetchSettings()
def configure(settings: FetchSettings | None) -> None:
    """The settings this process's remote reads use (the driver: from the command line; a worker:
    from each job's task)."""
    global _SETTINGS
    _SETTINGS = settings or FetchSettings()


def current() -> FetchSettings:
    return _SETTINGS


# -- the per-machine ledger -----------------------------------------------------------------------

@contextmanager
def _ledger(folder: Path) -> Iterator[Path]:
    """The reservations folder, under an exclusive lock of this machine's cache."""
    ledger = folder / "reservations"
    ledger.mkdir(parents=True, exist_ok=True)
    with open(folder / "ledger.lock", "a") as fh:
        fcntl.flock(fh, fcntl.LOCK_EX)
        try:
            yield ledger
        finally:
            fcntl.flock(fh, fcntl.LOCK_UN)


def held(folder: Path) -> int:
    """Bytes reserved now in the cache ``folder`` by live processes (dead ones' reservations cleared)."""
    total = 0
    for r in (folder / "reservations").glob("*"):
        try:
            pid, size = int(r.name.split("-", 1)[0]), int(r.read_text() or 0)
        except (ValueError, OSError):
            continue
        if not pid_alive(pid):
            r.unlink(missing_ok=True)
            continue
        total += size
    return total


@contextmanager
def reserve(size: int, settings: FetchSettings, what: str, poll: float = 0.05) -> Iterator[Path]:
    """Hold ``size`` bytes of the machine's budget while in the block; yields a fresh folder of the
    cache to fetch into (deleted, with its files, on leaving). Waits while the budget is taken;
    :class:`FetchError` when ``size`` alone is over the budget."""
    folder = settings.folder()
    folder.mkdir(parents=True, exist_ok=True)
    budget = settings.budget
    if budget is not None and size > budget:
        raise FetchError(f"{what}: {format_size(size)} ({size} bytes), larger than the whole --cache-budget "
                         f"{format_size(budget)} ({budget} bytes); raise --cache-budget to at least {size}")
    token = f"{os.getpid()}-{uuid.uuid4().hex}"
    while True:
        with _ledger(folder) as ledger:
            if budget is None or held(folder) + size <= budget:
                (ledger / token).write_text(str(size))
                break
        time.sleep(poll)
    work = new_folder("ck-", folder)  # the fetch folders of killed processes swept first
    try:
        yield work
    finally:
        shutil.rmtree(work, ignore_errors=True)
        with _ledger(folder) as ledger:
            (ledger / token).unlink(missing_ok=True)


def sizes(ck: Checkpoint, fs: Any, paths: list[str]) -> int:
    """Bytes of a remote checkpoint's files (the listing's sizes when discovery had them)."""
    if ck.sizes and len(ck.sizes) == len(ck.files) + (1 if ck.sharded else 0):
        return sum(ck.sizes)
    return sum(int(fs.info(p)["size"]) for p in paths)


def check_budget(checkpoints: Any, budget: int | None) -> None:
    """Refuse, in one line naming the largest, a series with a checkpoint larger than ``budget``
    bytes (sizes from the listing; checkpoints without listed sizes pass: their fetch checks)."""
    if budget is None:
        return
    sized = [(sum(ck.sizes), ck) for ck in checkpoints if ck.sizes]
    if not sized:
        return
    size, ck = max(sized, key=lambda x: x[0])
    if size > budget:
        raise FetchError(f"{ck.path}: {format_size(size)} ({size} bytes), larger than the whole --cache-budget "
                         f"{format_size(budget)} ({budget} bytes); raise --cache-budget to at least {size}")


@contextmanager
def local_copy(ck: Checkpoint, settings: FetchSettings | None = None) -> Iterator[Checkpoint]:
    """``ck`` (files at fsspec URLs) as a checkpoint of local files in the fetch cache, for the block's
    duration: fetched under the budget, deleted on leaving (see the module docstring)."""

    settings = settings or _SETTINGS
    fs, index = filesystem(real_url(ck.path), settings.storage_options)
    urls = [real_url(u) for u in ([ck.path] if ck.sharded else []) + list(ck.files)]
    paths = [filesystem(u, settings.storage_options)[1] for u in urls]
    try:
        total = sizes(ck, fs, paths)
    except FileNotFoundError:
        raise FileNotFoundError(f"{ck.path}: a file of this checkpoint is gone from the store it was listed in") from None
    with reserve(total, settings, ck.path) as work:
        local = [str(work / os.path.basename(p)) for p in paths]
        for p, dest in zip(paths, local):
            fs.get_file(p, dest)
        files = tuple(local[1:]) if ck.sharded else tuple(local)
        yield replace(ck, path=local[0], files=files, sizes=())
