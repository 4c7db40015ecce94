"""Named kill points for fault-injection tests: ``GROKSCOPE_FAULT=NAME[@N]`` ends the process
(``os._exit(FAULT_EXIT)``, no clean-up, like a SIGKILL) the N-th time (default 1st) the store
passes the point ``NAME``; ``GROKSCOPE_FAULT_LOG=FILE`` appends the name of every point passed to
FILE (a test first records the points of a run, then kills at each).

The points sit at every boundary of a commit (between the writes of the arrays it touches) and of a
growth of ``step`` (between resizing arrays, writing step values and the committed-length marker).
Unset, :func:`point` costs one dictionary lookup.
"""

from __future__ import annotations

import os

FAULT_EXIT = 87
_seen: dict[str, int] = {}


def point(name: str) -> None:
    """Pass the kill point ``name`` (see the module docstring)."""
    log = os.environ.get("GROKSCOPE_FAULT_LOG")
    if log:
        with open(log, "a") as f:
            f.write(name + "\n")
    want = os.environ.get("GROKSCOPE_FAULT")
    if not want:
        return
    target, _, nth = want.partition("@")
    if target != name:
        return
    _seen[name] = _seen.get(name, 0) + 1
    if _seen[name] == int(nth or 1):
        os._exit(FAULT_EXIT)
