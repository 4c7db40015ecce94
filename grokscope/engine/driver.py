"""The driver: wires the engine's rooms into one probe run (``probe_runs(path, config)``, what
``grokscope probe`` calls). Each room has one job and imports only the rooms below it:

1. discovery (:mod:`.discovery`): the runs and checkpoints under ``path``; the model/data spec of
   each run comes from its ``run.json`` or from the command line (a command-line spec that a
   run's run.json overrides is warned about: :func:`.planning.ignored_spec`);
2. plan (:mod:`.planning`): under the store's lock (:mod:`.lock`), the jobs still to do — every
   (run, step, probe) not done and chosen by the probe's ``--steps`` (:mod:`.selection`) — and
   what the store must change first; refusals of groups whose stored parameters or run spec differ
   (``--overwrite`` deletes and recomputes them);
3. prepare (:mod:`.model_check`, :mod:`.prepare`): each run's model checked against a checkpoint,
   each probe's ``check`` run once per run spec, then the plan applied to the store (deletions,
   growths, declared templates) — nothing is written before every check passed;
4. dispatch (:mod:`.dispatch`): one task per pending (run, checkpoint) (:func:`.jobs.run_task`) on a
   Dask client — an in-process ``LocalCluster`` of worker processes by default, ``--scheduler
   ADDRESS`` for an existing cluster, ``--scheduler sync`` in this process (:mod:`.cluster`);
   ``--device cuda`` asks for ``GPU=1`` — results in completion order; recheck and follow mode;
5. commit (:mod:`.commit`): the store's only writer, data then ``done`` flags, in batches every
   ``flush_interval`` seconds (or ten times the last commit's duration when that is longer), so a
   killed driver loses at most the jobs in flight and those since the last commit;
6. outcomes (:mod:`.outcomes`): the :class:`Summary` (the CLI prints it and exits non-zero when a
   job failed), failures, and the one line of a stopped run.

``probe_runs(..., follow=alive)`` keeps searching the path while ``alive()`` is true and adds the
jobs of new checkpoints as they appear (``grokscope demo`` and ``grokscope probe --follow`` probe a
run while it trains).
"""

from __future__ import annotations

import signal
import threading
import time
from contextlib import contextmanager
from dataclasses import replace
from pathlib import Path
from typing import Any, Callable, Iterator

from grokscope.probes import ProbeError, get_probe, validate_params

from .cluster import check_scheduler, dask_client, local_gpus
from .commit import Writer
from .config import EngineConfig, EngineError
from .discovery import Problem, Run, find_runs
from .dispatch import follower, recheck, results
from .jobs import Outcome
from .loading import read_once
from .lock import StoreLock
from .object_lock import ObjectStoreLock, store_lock
from .model_check import screen_plan
from .outcomes import (Interrupted, SchedulerLost, StoreWriteError, Summary, environmental, os_cause,
                       scheduler_gone, stopped_line, task_death)
from .planning import ignored_spec, plan, record_plan
from .prepare import apply, check_probes
from .selection import parse_selection
from .store import ProbeStore, check_store_path
from .storefs import absolute
from grokscope.sources import as_path

__all__ = ["EngineConfig", "EngineError", "Interrupted", "SchedulerLost", "StoreWriteError", "Summary", "dask_client",
           "probe_runs"]


def probe_runs(path: Path, cfg: EngineConfig,
               progress: Callable[[int, int, int, float], None] | None = None,
               start: Callable[[int, int, str], None] | None = None,
               follow: Callable[[], bool] | None = None, poll: float = 1.0) -> Summary:
    """Run ``cfg.probes`` over every checkpoint under ``path`` into the store ``cfg.out``.

    ``start(jobs, skipped, scheduler)`` is called once the plan is known; ``progress(n_new_done,
    done, failed, rate)`` after every completed task. Raises :class:`StoreError` (refusals, an
    ``--out`` that is not a grokscope store), :class:`~.lock.StoreLocked`, :class:`EngineError` or a
    discovery error before any computation; :class:`StoreWriteError` when the store cannot be
    written (disk full, read-only), :class:`Interrupted` on Ctrl-C or SIGTERM and :class:`SchedulerLost`
    when an external scheduler goes away, each after committing what could be and releasing the lock.

    With ``cfg.recheck`` the checkpoints of done jobs are hashed again (by the workers) and a job
    whose checkpoint's content hash differs from the stored ``checkpoint_hash`` is recomputed, with
    a warning naming it.

    ``follow``: while ``follow()`` is true (e.g. a training run is still writing checkpoints), the
    runs under ``path`` are searched again every ``poll`` seconds and the new checkpoints' jobs are
    added to the ones running; after it turns false, one last search, then the call returns when
    every job is done. ``summary.jobs`` then counts every job submitted and ``summary.warnings`` are
    those of the last search.
    """
    t0 = time.perf_counter()
    for req in cfg.probes:
        try:
            parse_selection(req.steps)
            validate_params(get_probe(req.name), req.params)  # before the store is touched
        except ProbeError as e:
            raise EngineError(str(e)) from None
        except ValueError as e:
            raise EngineError(f"probe {req.name}: {e}") from None
    # workers may run elsewhere (another host, another working directory): absolute paths only; a
    # remote series (an fsspec URL) is listed once here, its checkpoints fetched by the workers; the
    # store (a folder or an fsspec URL) is written by this process only

    from .fetch import FetchError, check_budget, configure

    configure(cfg.fetch_settings())  # the client's own reads (model check, probe checks)
    path = as_path(path, cfg.storage_options, fresh=True).absolute()
    out = absolute(cfg.out)  # a URL as it is
    check_store_path(out, cfg.storage_options)
    links: list[Problem] = []  # folders left out: links leading outside path, or loops
    runs = find_runs(path, links)
    try:
        check_budget([ck for r in runs for ck in r.checkpoints], cfg.cache_budget)
    except FetchError as e:
        raise EngineError(str(e)) from None
    refusal, ignored = ignored_spec(runs, cfg.spec)
    ignored = [f"{x.path}: {x.reason}" for x in links] + ignored
    if refusal:
        raise EngineError(refusal)
    if cfg.device.startswith("cuda") and cfg.scheduler in (None, "", "local"):
        local_gpus(cfg)  # refuses, in one line, a host without the GPU(s) asked for
    if cfg.scheduler not in (None, "", "local", "sync") and not cfg.dry_run:
        check_scheduler(cfg.scheduler)  # before the store is touched: a Dask scheduler, answering
    summary = Summary(store=out)
    lock = store_lock(out, cfg.storage_options)
    try:
        with _sigterm_stops():
            return _probe(path, cfg, runs, ignored, summary, lock, out, progress, start, follow, poll)
    except KeyboardInterrupt as e:
        code, what = (143, "stopped by SIGTERM") if isinstance(e, _Terminated) else (130, "interrupted")
        raise Interrupted(stopped_line(what, out, summary, _lost(summary.writer)), code) from None
    finally:
        lock.release()
        summary.seconds = time.perf_counter() - t0


def _probe(path: Path, cfg: EngineConfig, runs: list[Run], ignored: list[str], summary: Summary,
           lock: StoreLock | ObjectStoreLock, out: Path | str, progress: Callable[[int, int, int, float], None] | None,
           start: Callable[[int, int, str], None] | None, follow: Callable[[], bool] | None,
           poll: float) -> Summary:
    """The body of :func:`probe_runs`, from taking the lock to the last commit (see there)."""
    writer: Writer | None = None
    external = cfg.scheduler not in (None, "", "local", "sync")  # a scheduler this run did not start
    try:
        if not cfg.dry_run:  # a dry run only reads: no lock, nothing created
            lock.acquire()
        summary.took_over = lock.took_over
        store = ProbeStore(out, read_only=cfg.dry_run, storage_options=cfg.storage_options)
        p = plan(runs, store, cfg, threads=cfg.threads or 1)
        writer = summary.writer = Writer(store, p, cfg.flush_interval, summary)
        writer.guard = lock.check  # a lock taken over (object storage): no more commits
        record_plan(summary, p)
        summary.warnings[:0] = ignored
        with read_once():  # the model check and the probes' checks read each run's first checkpoint once
            unfit = screen_plan(p, summary, watch=follow is None)  # one line per run whose model does not fit
            templates = check_probes(p.tasks, p.runs)
        has_done = cfg.recheck and p.skipped > 0
        if not cfg.dry_run:  # the store changes only now, after every check passed
            apply(p, store, templates)
        if cfg.dry_run or (not p.tasks and not has_done and follow is None):
            if start:
                start(p.jobs, p.skipped, "none")
            return summary
        with dask_client(cfg) as (client, threads, desc):
            summary.scheduler = desc
            if has_done and not cfg.dry_run:
                stale, lines = recheck(client, p, store, cfg)
                if stale:
                    p = plan(runs, store, cfg, threads=cfg.threads or 1, stale=frozenset(stale))
                    apply(p, store)
                    writer.plan = p
                    record_plan(summary, p)
                    screen_plan(p, summary, unfit)
                summary.warnings.extend(lines)
            tasks = [t if t.threads == threads else replace(t, threads=threads) for t in p.tasks]
            if start:
                start(p.jobs, p.skipped, desc)
            if not tasks and follow is None:
                return summary
            more = follower(path, store, cfg, p, writer, summary, follow, threads) if follow else None
            t1 = time.perf_counter()
            done = 0
            failed0 = len(summary.failures)
            try:
                for task, res in results(client, tasks, cfg.device, more, poll):
                    if isinstance(res, BaseException) and scheduler_gone(res) and external:
                        raise res  # not this job's failure: the run stops (SchedulerLost, below)
                    if isinstance(res, BaseException):
                        reason = task_death(res)
                        res = [Outcome(run=task.run, step=int(task.checkpoint.step), probe=r.name,  # type: ignore[arg-type]
                                       label=task.checkpoint.label, error=reason) for r in task.probes]
                    for o in res:
                        writer.add(o, task.checkpoint.path)
                        summary.probe_seconds += o.seconds
                        summary.seconds_by_probe[o.probe] = summary.seconds_by_probe.get(o.probe, 0.0) + o.seconds
                    done += len(res)
                    if progress:
                        progress(len(res), done, len(summary.failures) - failed0,
                                 done / max(time.perf_counter() - t1, 1e-9))
            finally:
                writer.flush()  # also on Ctrl-C and errors: what finished is committed
    except KeyboardInterrupt:
        raise
    except BaseException as e:  # asyncio's CancelledError (a lost scheduler) is no Exception
        if scheduler_gone(e) and external:
            raise SchedulerLost(stopped_line(f"lost the Dask scheduler {cfg.scheduler} ({type(e).__name__})",
                                             out, summary, _lost(writer))) from None
        if not isinstance(e, Exception) or not environmental(e):
            raise
        cause = os_cause(e)
        where = f" ({cause.filename})" if cause.filename else ""
        raise StoreWriteError(stopped_line(f"cannot write the store: {cause.strerror or cause}{where}", out,
                                           summary, _lost(writer), cause.errno)) from None
    return summary


class _Terminated(KeyboardInterrupt):
    """SIGTERM, raised in the driver's thread by :func:`_sigterm_stops`, handled like a Ctrl-C."""


@contextmanager
def _sigterm_stops() -> Iterator[None]:
    """While in this block (main thread only), SIGTERM stops the run as a Ctrl-C does: what finished is
    committed, the lock released, the cluster closed, and the run ends in one line (exit 143)."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return

    def stop(signum: int, frame: Any) -> None:
        raise _Terminated()

    before = signal.signal(signal.SIGTERM, stop)
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, before)


def _lost(writer: Writer | None) -> int:
    return writer.uncommitted() if writer is not None else 0
