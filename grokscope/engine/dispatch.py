"""Dispatching jobs: tasks to a Dask client (or run in this process), their results in completion
order, the re-hashing of done checkpoints (recheck) and follow mode's new tasks."""

from __future__ import annotations

import time
from collections import defaultdict
from dataclasses import replace
from pathlib import Path
from typing import Any, Callable, Iterator

from .commit import Writer
from .config import EngineConfig
from .discovery import DiscoveryError, Problem, find_runs
from .jobs import HashTask, Outcome, Task, hash_task, run_task
from .outcomes import Summary
from .planning import Plan, ignored_spec, plan, spec_file
from .prepare import apply
from .store import ProbeStore


More = Callable[[], tuple[list[Task], bool]]


def results(client: Any, tasks: list[Task], device: str, more: More | None = None, poll: float = 1.0
             ) -> Iterator[tuple[Task, list[Outcome] | BaseException]]:
    """``(task, outcomes or the exception that ended the task)`` in completion order.

    With ``more``: called every ``poll`` seconds for ``(tasks to add, whether that was the last
    call)``; the iteration ends when the last call was made and every task is done.
    """
    following = more is not None
    if client is None:
        queue = list(tasks)
        while queue or following:
            while queue:
                t = queue.pop(0)
                yield t, run_task(t)
            if following:
                new, last = more()  # type: ignore[misc]
                following = not last
                if not new and following:
                    time.sleep(poll)
                queue.extend(new)
        return
    from distributed import as_completed

    resources = {"GPU": 1} if device.startswith("cuda") else None
    by_key: dict[str, Task] = {}

    def submit(batch: list[Task]) -> list[Any]:
        futures = client.map(run_task, batch, pure=False, resources=resources)
        by_key.update({f.key: t for f, t in zip(futures, batch)})
        return futures

    completed = as_completed(submit(tasks))
    next_poll = time.monotonic() + poll

    def collect(fut: Any) -> tuple[Task, list[Outcome] | BaseException]:
        task = by_key.pop(fut.key)
        if fut.status == "error":
            res: list[Outcome] | BaseException = fut.exception()
        else:
            try:
                res = fut.result()
            except Exception as e:  # noqa: BLE001 - e.g. a result that cannot be deserialised
                res = e
        fut.release()
        return task, res

    if not following:
        for fut in completed:
            yield collect(fut)
        return
    while True:
        if completed.has_ready():
            for fut in completed.next_batch(block=False):
                yield collect(fut)
            continue
        if following and time.monotonic() >= next_poll:
            new, last = more()  # type: ignore[misc]
            following = not last
            next_poll = time.monotonic() + poll
            if new:
                completed.update(submit(new))
                continue
        if not following and completed.is_empty():
            return
        time.sleep(0.05)


HASH_BATCH = 256  # checkpoints per re-hashing task


def to_recheck(p: Plan, store: ProbeStore, cfg: EngineConfig) -> dict[tuple[str, int], dict[str, str]]:
    """``{(run, step): {probe: stored checkpoint_hash}}`` of the done jobs whose checkpoint must be
    hashed again: rows without a stored hash are trusted, and so are those of a remote checkpoint whose
    listed ETags (``checkpoint_etag``) are the ones it was probed with (unchanged files: nothing to
    fetch)."""
    import numpy as np

    stored: dict[tuple[str, int], dict[str, str]] = defaultdict(dict)
    for name, run in p.runs.items():
        listed = {ck.step: ck.etag for ck in run.checkpoints}
        for req in cfg.probes:
            info = store.group(name, req.name)
            if info is None or not info.done.any():
                continue
            n = len(info.steps)
            hashes = np.asarray(info.arrays["checkpoint_hash"][:n], dtype=object)
            etags = (np.asarray(info.arrays["checkpoint_etag"][:n], dtype=object)
                     if "checkpoint_etag" in info.arrays else np.full(n, "", dtype=object))
            for step, i in info.index.items():
                if info.done[i] and hashes[i] and not (etags[i] and etags[i] == listed.get(step)):
                    stored[(name, step)][req.name] = str(hashes[i])
    return stored


def recheck(client: Any, p: Plan, store: ProbeStore, cfg: EngineConfig
            ) -> tuple[set[tuple[str, int, str]], list[str]]:
    """The done jobs whose checkpoint changed since they were computed, and a line for each
    changed checkpoint: ``({(run, step, probe)}, lines)``. The checkpoints of :func:`to_recheck` are
    hashed by the workers (:func:`.jobs.hash_task`, batches of ``HASH_BATCH``)."""
    stored = to_recheck(p, store, cfg)
    tasks: list[tuple[str, HashTask]] = []
    for name, run in p.runs.items():
        cks = [ck for ck in run.checkpoints if (name, ck.step) in stored]
        for k in range(0, len(cks), HASH_BATCH):
            tasks.append((name, HashTask(spec=p.specs[name], checkpoints=tuple(cks[k:k + HASH_BATCH]),
                                         trust=cfg.trust, where=spec_file(run), fetch=cfg.fetch_settings())))
    if not tasks:
        return set(), []
    if client is None:
        results = [hash_task(t) for _, t in tasks]
    else:
        futures = client.map(hash_task, [t for _, t in tasks], pure=False)
        results = client.gather(futures, errors="skip")
        if len(results) != len(futures):  # a worker died: those checkpoints stay trusted
            results = [f.result() if f.status == "finished" else {} for f in futures]
    stale: set[tuple[str, int, str]] = set()
    lines = []
    for (name, task), now in zip(tasks, results):
        labels = {ck.step: ck.label for ck in task.checkpoints}
        for step, digest in sorted(now.items()):
            changed = sorted(probe for probe, old in stored[(name, step)].items() if old != digest)
            if not changed:
                continue
            stale.update((name, step, probe) for probe in changed)
            old = stored[(name, step)][changed[0]]
            new = f"content hash now {digest[:12]}" if digest else "now unreadable"
            lines.append(f"{name} step {step} ({labels[step]}): checkpoint changed since it was probed "
                         f"(stored hash {old[:12]}, {new}); recomputing {', '.join(changed)}")
    return stale, lines


def follower(path: Path, store: ProbeStore, cfg: EngineConfig, first: Plan, writer: Writer,
              summary: Summary, follow: Callable[[], bool], threads: int) -> More:
    """The ``more`` callback of :func:`_results` for ``probe_runs(..., follow=...)``: each call
    searches ``path`` again and returns the tasks of the jobs not submitted yet, and whether
    ``follow()`` was false (then this search was the last)."""
    again = replace(cfg, overwrite=False)  # never delete what this call is writing
    submitted = {(t.run, t.checkpoint.step, r.name) for t in first.tasks for r in t.probes}

    def more() -> tuple[list[Task], bool]:
        last = not follow()  # asked before searching: nothing written after a final search is missed
        links: list[Problem] = []
        try:
            if hasattr(path, "source"):  # a remote series: list the prefix again
                path.source.list()
            found = find_runs(path, links)
            p = plan(found, store, again, threads)
        except DiscoveryError:
            return [], last  # e.g. the run folder is not written yet
        apply(p, store)  # grows the groups of new checkpoints (as the first plan's apply did)
        writer.plan.runs.update(p.runs)
        writer.plan.specs.update(p.specs)
        writer.plan.group_attrs.update(p.group_attrs)
        new: list[Task] = []
        for t in p.tasks:
            todo = tuple(r for r in t.probes if (t.run, t.checkpoint.step, r.name) not in submitted)
            if todo:
                submitted.update((t.run, t.checkpoint.step, r.name) for r in todo)
                new.append(replace(t, probes=todo, threads=threads))
        summary.jobs += sum(len(t.probes) for t in new)
        summary.runs = max(summary.runs, len(p.runs))
        summary.excluded = p.excluded
        summary.warnings = ([f"{x.path}: {x.reason}" for x in links] + ignored_spec(found, cfg.spec)[1]
                            + list(p.warnings))
        known = {(f.run, f.file) for f in summary.failures}
        summary.failures.extend(f for f in p.failures if (f.run, f.file) not in known)
        return new, last

    return more
