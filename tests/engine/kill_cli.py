"""Run one ``grokscope`` command once per kill point, each time killed there, without paying the
imports each time.

``python -m tests.engine.kill_cli POINTS TEMPLATE DIR -- ARGS...``: for the ``i``-th line ``NAME@N`` of
the file POINTS, copy the store TEMPLATE to ``DIR/<i>.zarr`` and run ``grokscope ARGS... -o
DIR/<i>.zarr`` in a process forked from this one (grokscope, torch, xarray and dask imported, nothing
run yet) with ``GROKSCOPE_FAULT=NAME@N``; print each child's point and exit status.
"""

from __future__ import annotations

import os
import shutil
import sys
from pathlib import Path

import grokscope.engine.driver  # noqa: F401 - imported before the fork, so each child starts warm
from grokscope.cli import main


def kill_at_each(points_file: str, body) -> None:
    """For the ``i``-th line ``NAME@N`` of ``points_file``: ``body(i)`` in a process forked from this one
    with ``GROKSCOPE_FAULT=NAME@N`` (exit 0 if never killed); print each point and its exit status."""
    for i, point in enumerate(p for p in Path(points_file).read_text().split() if p):
        pid = os.fork()
        if pid == 0:
            os.environ["GROKSCOPE_FAULT"] = point
            try:
                body(i)
            finally:
                os._exit(0)  # not killed at the point: the test sees 0
        _, status = os.waitpid(pid, 0)
        print(point, os.waitstatus_to_exitcode(status), flush=True)


def kill_each(points_file: str, template: str, folder: str, args: list[str]) -> None:
    def body(i: int) -> None:
        store = Path(folder) / f"{i}.zarr"
        main([*args, "-o", str(store)], standalone_mode=False)

    for i, _ in enumerate(p for p in Path(points_file).read_text().split() if p):
        shutil.copytree(template, Path(folder) / f"{i}.zarr")
    kill_at_each(points_file, body)


if __name__ == "__main__":
    split = sys.argv.index("--")
    kill_each(*sys.argv[1:4], sys.argv[split + 1:])
