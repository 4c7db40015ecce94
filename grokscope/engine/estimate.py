"""``grokscope probe … --estimate``: what a probe run would cost, found without writing anything.

The plan is the driver's own (:func:`.driver.plan`: the jobs the store lacks, after ``--steps`` and
resume), made against the store read as it is (or an empty throw-away store when there is none yet;
no lock is taken, the store is not touched). Then:

* **jobs** per probe;
* **bytes read**: the checkpoint files the jobs load (each checkpoint once, plus the previous one for
  probes that compare with it), and the files ``--recheck`` hashes again for jobs already done;
* **bytes written**: the results of one timed job per probe (their arrays, uncompressed: the store
  compresses them, so this is an upper bound) times that probe's jobs, plus each job's ``done`` flag and
  content hash;
* **time**: one job per probe run here, in this process, with the torch threads a worker would use,
  and timed (a job shorter than ``REPEAT_BELOW`` seconds is run twice and the second run timed: the
  first pays the loading of the model and data that a worker caches, and torch's first-call costs); the checkpoint overhead
  (read, hash, load) of that task counted once per checkpoint. The projection is the sum over probes of
  jobs × seconds, plus checkpoints × overhead, divided by the number of worker processes (the local
  cluster's: ``--workers``, else one per core). The cluster's start-up and the store's commits are not
  in it; a first job that pays a one-off cost (a compiled kernel, a cache) makes it pessimistic.
"""

from __future__ import annotations

import os
import tempfile
import time
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

from .config import EngineConfig, EngineError
from .discovery import find_runs
from .dispatch import to_recheck
from .outcomes import Summary
from .planning import ignored_spec, plan
from .jobs import Task, probe_class, run_task
from .model_check import screen_plan
from .store import ProbeStore, check_store_path
from .storefs import absolute, store_fs
from grokscope.sources import RemotePath, as_path

REPEAT_BELOW = 5.0  # seconds: a first job shorter than this is run again and the second one timed
HASH_BYTES = 64  # a content hash as stored, per job
DONE_BYTES = 1


@dataclass
class Estimate:
    """What ``grokscope probe`` would do (see the module docstring). Times in seconds, sizes in bytes."""

    runs: int = 0
    jobs: int = 0
    skipped: int = 0
    checkpoints: int = 0
    jobs_by_probe: dict[str, int] = field(default_factory=dict)
    read_bytes: int = 0
    recheck_bytes: int = 0
    write_bytes: int = 0
    write_bytes_by_probe: dict[str, int] = field(default_factory=dict)
    seconds_by_probe: dict[str, float] = field(default_factory=dict)
    checkpoint_seconds: float = 0.0
    workers: int = 1
    threads: int = 1
    cpu_seconds: float = 0.0
    projected_seconds: float = 0.0
    failures: list[str] = field(default_factory=list)
    warnings: list[str] = field(default_factory=list)

    def lines(self) -> list[str]:
        """The estimate in words, one line each."""
        out = [f"estimate: {self.jobs} job(s) over {self.runs} run(s) and {self.checkpoints} checkpoint(s), "
               f"{self.skipped} already done; nothing was written"]
        for name, n in self.jobs_by_probe.items():
            t = self.seconds_by_probe.get(name)
            timed = f"{t:.3g} s a job (one timed)" if t is not None else "not timed (its timed job failed)"
            out.append(f"  {name}: {n} job(s), {timed}, ~{_size(self.write_bytes_by_probe.get(name, 0))} of results")
        recheck = f" (+{_size(self.recheck_bytes)} hashed again by --recheck)" if self.recheck_bytes else ""
        out.append(f"  read: {_size(self.read_bytes)} of checkpoints{recheck}; "
                   f"write: ~{_size(self.write_bytes)} (uncompressed; the store compresses)")
        out.append(f"  time: ~{_duration(self.projected_seconds)} on {self.workers} worker(s) x {self.threads} "
                   f"thread(s) ({self.cpu_seconds:.1f} worker-seconds; cluster start and commits not included)")
        out += [f"  failed: {f}" for f in self.failures]
        return out

    def as_dict(self) -> dict[str, Any]:
        """A JSON-ready dict of every field."""
        from dataclasses import asdict

        return asdict(self)


def _size(n: float) -> str:
    for unit in ("B", "KB", "MB", "GB"):
        if n < 1000 or unit == "GB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1000
    return f"{n:.1f} TB"  # pragma: no cover


def _duration(s: float) -> str:
    return f"{s:.0f} s" if s < 120 else f"{s / 60:.1f} min" if s < 7200 else f"{s / 3600:.1f} h"


def _file_bytes(files: tuple[str, ...]) -> int:

    total = 0
    for f in files:
        p = as_path(f)
        if isinstance(p, RemotePath):  # the listing's size
            total += p.stat().st_size if p.is_file() else 0
        elif os.path.exists(f):
            total += os.path.getsize(f)
    return total


def _default_workers(cfg: EngineConfig) -> tuple[int, int]:
    """``(worker processes, torch threads each)`` that ``dask_client(cfg)`` would use on this host."""
    cores = os.cpu_count() or 1
    if cfg.scheduler == "sync":
        return 1, cfg.threads or cores
    n = cfg.workers or cores
    return n, cfg.threads or max(1, cores // n)


def estimate(path: Path, cfg: EngineConfig) -> Estimate:
    """The :class:`Estimate` of ``probe_runs(path, cfg)`` (see the module docstring). Raises what
    ``probe_runs`` raises before computing (refusals, :class:`~.store.StoreError`)."""

    path = as_path(path, cfg.storage_options).absolute()
    out = absolute(cfg.out)
    check_store_path(out, cfg.storage_options)
    runs = find_runs(path)
    refusal, ignored = ignored_spec(runs, cfg.spec)
    if refusal:
        raise EngineError(refusal)
    est = Estimate(warnings=list(ignored))
    est.workers, est.threads = _default_workers(cfg)
    with tempfile.TemporaryDirectory(prefix="grokscope-estimate-") as tmp:
        there = store_fs(out, cfg.storage_options).exists("zarr.json")
        store = ProbeStore(out if there else Path(tmp) / "probes.zarr",
                           storage_options=cfg.storage_options if there else None)
        p = plan(runs, store, cfg, threads=est.threads)
        summary = Summary(store=out)
        screen_plan(p, summary)
        rechecked = _rechecked_checkpoints(p, store, cfg) if cfg.recheck else []
    est.failures = [f.line() for f in summary.failures] + [f.line() for f in p.failures]
    est.warnings += p.warnings
    est.runs, est.jobs, est.skipped, est.checkpoints = len(p.runs), p.jobs, p.skipped, len(p.tasks)
    for t in p.tasks:
        for r in t.probes:
            est.jobs_by_probe[r.name] = est.jobs_by_probe.get(r.name, 0) + 1
        est.read_bytes += _file_bytes(t.checkpoint.files)
        if t.previous is not None and any(probe_class(r.name).needs_previous for r in t.probes):
            est.read_bytes += _file_bytes(t.previous.files)
    est.recheck_bytes = sum(_file_bytes(ck.files) for ck in rechecked)
    _time_one_job_per_probe(p.tasks, est)
    per_job = HASH_BYTES + DONE_BYTES
    est.write_bytes = sum(est.write_bytes_by_probe.values()) + per_job * est.jobs
    est.cpu_seconds = (sum(est.jobs_by_probe[n] * s for n, s in est.seconds_by_probe.items())
                       + est.checkpoints * est.checkpoint_seconds)
    est.projected_seconds = est.cpu_seconds / max(1, min(est.workers, est.checkpoints or 1))
    return est


def _rechecked_checkpoints(p: Any, store: ProbeStore, cfg: EngineConfig) -> list[Any]:
    """The checkpoints of jobs already done in the store that ``--recheck`` hashes again."""
    again = to_recheck(p, store, cfg)
    return [ck for name, run in p.runs.items() for ck in run.checkpoints if (name, ck.step) in again]


def _time_one_job_per_probe(tasks: list[Task], est: Estimate) -> None:
    """Run and time, in this process, the first job of each probe (see the module docstring); fills
    ``seconds_by_probe``, ``write_bytes_by_probe`` (per-job result bytes × jobs) and ``checkpoint_seconds``."""
    import torch

    before = torch.get_num_threads()
    try:
        for name in est.jobs_by_probe:
            task = next(t for t in tasks if any(r.name == name for r in t.probes))
            one = replace(task, probes=tuple(r for r in task.probes if r.name == name), threads=est.threads,
                          device="cpu" if task.device.startswith("cuda") and not torch.cuda.is_available()
                          else task.device)
            t0 = time.perf_counter()
            (outcome,) = run_task(one)  # the first call also loads the model and data a worker caches
            total = time.perf_counter() - t0
            if outcome.ok and total < REPEAT_BELOW:  # a short job: its first call's one-off costs dominate
                t0 = time.perf_counter()
                (outcome,) = run_task(one)
                total = time.perf_counter() - t0
            if not outcome.ok:
                est.failures.append(f"{task.run} step {outcome.step} {name}: {outcome.error}")
                continue
            est.seconds_by_probe[name] = outcome.seconds
            est.checkpoint_seconds = max(est.checkpoint_seconds, total - outcome.seconds)
            nbytes = int(sum(v.nbytes for v in outcome.result.data_vars.values()))
            est.write_bytes_by_probe[name] = nbytes * est.jobs_by_probe[name]
    finally:
        torch.set_num_threads(before)
