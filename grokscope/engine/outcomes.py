"""What a probe run reports: the failures of jobs and runs, the summary, and the errors that end a
run (a store that cannot be written, Ctrl-C) with the one line that says what is safe."""

from __future__ import annotations

import errno
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from .config import EngineError


class StoreWriteError(EngineError):
    """The store cannot be written (disk full, read-only, no permission): the run stops, the lock is
    released, what was committed stays."""


class Interrupted(EngineError):
    """The run was stopped (Ctrl-C, SIGTERM) after committing what had finished; ``code`` is the exit
    status a shell gives a process ended by that signal (130, 143)."""

    def __init__(self, message: str, code: int = 130):
        super().__init__(message)
        self.code = code


class SchedulerLost(EngineError):
    """The Dask scheduler went away during the run (after committing what had finished)."""


def scheduler_gone(e: BaseException) -> bool:
    """Whether ``e`` says the connection to the Dask scheduler is gone (its comm closed, the client
    cancelled our futures, a reconnect that timed out)."""
    names = {type(x).__name__ for x in (e, e.__cause__, e.__context__) if x is not None}
    return bool(names & {"CommClosedError", "CancelledError", "FutureCancelledError", "StreamClosedError"})


# errors of the machine, not of a job: every later write would fail the same way
ENVIRONMENTAL = {errno.ENOSPC, errno.EDQUOT, errno.EROFS, errno.EACCES, errno.EPERM, errno.EIO, errno.EFBIG}


def environmental(e: BaseException) -> bool:
    """Whether ``e`` (or what caused it) is an :data:`ENVIRONMENTAL` ``OSError``."""
    while e is not None:
        if isinstance(e, OSError) and e.errno in ENVIRONMENTAL:
            return True
        e = e.__cause__ or e.__context__  # type: ignore[assignment]
    return False


def os_cause(e: BaseException) -> OSError:
    while not (isinstance(e, OSError) and e.errno in ENVIRONMENTAL):
        e = e.__cause__ or e.__context__  # type: ignore[assignment]
    return e


@dataclass
class Failure:
    """A job (or a whole run) that did not produce a result, and why."""

    run: str
    step: int | None
    probe: str
    file: str
    reason: str

    def line(self) -> str:
        where = f"{self.run} step {self.step}" if self.step is not None else self.run
        return f"{where} [{self.probe}] {self.file}: {self.reason}"


@dataclass
class Summary:
    """What a probe run did."""

    store: Path | str
    runs: int = 0
    jobs: int = 0  # jobs submitted this time
    skipped: int = 0  # jobs already done in the store
    excluded: int = 0  # (checkpoint, probe) pairs left out by the probes' step selections
    completed: int = 0
    failures: list[Failure] = field(default_factory=list)
    warnings: list[str] = field(default_factory=list)
    seconds: float = 0.0
    probe_seconds: float = 0.0  # time spent inside probe.compute, summed over jobs
    seconds_by_probe: dict[str, float] = field(default_factory=dict)  # the same per probe
    took_over: dict[str, Any] | None = None
    scheduler: str = ""
    writer: Any = field(default=None, repr=False)  # the run's commit.Writer, once there is one

    @property
    def ok(self) -> bool:
        return not self.failures


NOT_WRITABLE = {errno.EROFS, errno.EACCES, errno.EPERM}  # a rerun fails the same way


def stopped_line(what: str, out: Path, summary: Summary, lost: int, code: int | None = None) -> str:
    """The one line a stopped run ends with: why, what is safe, what to do (``code``: the errno that
    stopped it; a folder that cannot be written gets the way around it, not "rerun")."""
    lost_text = f", {lost} finished job(s) could not be committed" if lost else ""
    todo = ("rerun the same command to continue" if code not in NOT_WRITABLE else
            "a rerun fails the same way: put the store in a folder you can write with --out DIR/probes.zarr, "
            "or keep all of grokscope's files out of a read-only checkpoint folder with --workspace DIR")
    return (f"{out}: {what}; {summary.completed - lost} job(s) of this run committed{lost_text}, the "
            f"store is consistent and the lock released: {todo}")


def task_death(e: BaseException) -> str:
    name = type(e).__name__
    if name == "KilledWorker":
        return f"the worker process died while probing this checkpoint, on every retry ({name}: {e})"
    return f"task failed outside the probe: {name}: {e}"
