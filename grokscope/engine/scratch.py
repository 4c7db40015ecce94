"""Private local scratch folders of one process, and the sweep of those a killed process left.

A scratch folder is named ``<prefix><pid>-<random>`` so that any later process on the machine can tell
whose it is: :func:`new_folder` first removes the folders of its prefix whose process is gone (a worker
or driver killed with SIGKILL runs no clean-up of its own), then makes its own. The owner removes its
folder when done; nothing in one is meant to outlive its process.
"""

from __future__ import annotations

import os
import shutil
import tempfile
from pathlib import Path

from .lock import pid_alive


def temp_root() -> Path:
    """The temporary folder the environment names now: ``$TMPDIR``, else :func:`tempfile.gettempdir`
    (which caches its answer for the process's life, and a forked worker inherits that answer)."""
    return Path(os.environ.get("TMPDIR") or tempfile.gettempdir())


def sweep(parent: Path, prefix: str) -> None:
    """Remove every folder ``parent/<prefix><pid>-*`` whose process ``pid`` is no longer alive."""
    for d in Path(parent).glob(f"{prefix}*"):
        try:
            pid = int(d.name[len(prefix):].split("-", 1)[0])
        except ValueError:
            continue
        if pid != os.getpid() and not pid_alive(pid):
            shutil.rmtree(d, ignore_errors=True)


def new_folder(prefix: str, parent: Path | None = None) -> Path:
    """A new empty folder ``parent/<prefix><pid>-<random>`` (``parent``: the temporary folder), after
    sweeping those of ``prefix`` that dead processes left there."""
    parent = temp_root() if parent is None else Path(parent)
    sweep(parent, prefix)
    return Path(tempfile.mkdtemp(prefix=f"{prefix}{os.getpid()}-", dir=parent))
