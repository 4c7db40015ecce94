"""Committing results: the one writer of a probe run, buffering outcomes per group and writing them
in batches (data, then hashes and errors, then ``done``)."""

from __future__ import annotations

import time
from collections import defaultdict
from collections.abc import Callable

from .jobs import Outcome, describe_error
from .outcomes import Failure, Summary, environmental
from .planning import Plan
from .store import GroupInfo, ProbeStore


# A commit rewrites the shards it touches (zarr re-encodes every chunk of a shard), so its cost
# grows with the number of groups and steps; the wait between commits is stretched to this many times
# the last commit's duration (a killed driver then loses at most that much more work).
COMMIT_SHARE_INV = 10


class Writer:
    """Buffers outcomes per (run, probe) group, commits them to the store in batches, and keeps the
    summary's counts: a job is completed once its result is accepted for a group of the store.

    One probe's group that cannot be created, grown or written fails that probe's jobs (the cause
    named) and no other. An :data:`ENVIRONMENTAL` error (disk full, read-only, ...) ends the run as
    :class:`StoreWriteError`.
    """

    def __init__(self, store: ProbeStore, p: Plan, interval: float, summary: Summary):
        self.store, self.plan, self.interval, self.summary = store, p, interval, summary
        self.wait = interval  # the interval, stretched when commits are slow (see flush)
        self.buffer: dict[tuple[str, str], list[tuple[int, Outcome, str]]] = defaultdict(list)
        self.broken: dict[tuple[str, str], str] = {}  # groups that could not be created, and why
        self.last = time.monotonic()
        self.pending = 0
        self.guard: Callable[[], None] = lambda: None  # raises when this writer may no longer write

    def _fail(self, o: Outcome, file: str, why: str, counted: bool = False) -> None:
        if counted:
            self.summary.completed -= 1
        o.error, o.result = why, None
        self.summary.failures.append(Failure(o.run, o.step, o.probe, file, why))

    def add(self, o: Outcome, file: str) -> Outcome:
        key = (o.run, o.probe)
        if key in self.broken:
            self._fail(o, file, self.broken[key])
            return o
        info: GroupInfo | None = None
        try:
            info = self.store.group(*key)
            if info is None:
                run = self.plan.runs[o.run]
                info = self.store.create_group(o.run, o.probe, run.steps, self.plan.group_attrs[key],
                                               o.result if o.ok else None)
            elif o.ok and any(v not in info.data_vars for v in o.result.data_vars):
                self.flush()  # the group's arrays are re-opened after adding variables
                info = self.store.add_data_vars(info, o.result)
            if o.ok:
                why = self.store.check_result(info, o.result)
                if why:
                    o.error, o.result = why, None
        except Exception as e:  # noqa: BLE001 - one probe's group must not end the run
            if environmental(e):
                raise
            why = f"cannot write the store group {o.run}/{o.probe}: {describe_error(e)}"
            if info is None:
                self.broken[key] = why
                self.store.groups.pop(key, None)
                self._fail(o, file, why)
                return o
            o.error, o.result = why, None
        if o.ok:
            self.summary.completed += 1
        else:
            self.summary.failures.append(Failure(o.run, o.step, o.probe, file, o.error))
        self.buffer[key].append((o.step, o, file))
        self.pending += 1
        if time.monotonic() - self.last >= self.wait or self.pending >= 4096:
            self.flush()
        return o

    def flush(self) -> None:
        t0 = time.monotonic()
        if self.buffer:
            self.guard()
        for key, items in list(self.buffer.items()):
            info = self.store.group(*key)
            if info is None or not items:
                continue
            try:
                self.store.write(info, [(step, o) for step, o, _ in items])
            except Exception as e:  # noqa: BLE001
                if environmental(e):
                    raise
                why = f"cannot write the results into the store group {key[0]}/{key[1]}: {describe_error(e)}"
                for _, o, file in items:
                    if o.ok:
                        self._fail(o, file, why, counted=True)
                self.store.groups.pop(key, None)  # re-read from the store next time
            del self.buffer[key]
        self.pending = 0
        self.last = time.monotonic()
        if self.interval > 0:  # commits take at most ~1/COMMIT_SHARE_INV of the driver's time
            self.wait = max(self.interval, COMMIT_SHARE_INV * (self.last - t0))

    def uncommitted(self) -> int:
        return sum(len(v) for v in self.buffer.values())
