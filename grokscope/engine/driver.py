"""The driver: plan the jobs, run them on Dask (or in-process), write every result into the store.

``probe_runs(path, config)`` is what ``grokscope probe`` calls:

1. discover runs and checkpoints (:mod:`.discovery`); the model/data spec of each run comes from its
   ``run.json`` or from the command line (a command-line spec that a run's run.json overrides is
   warned about: :func:`ignored_spec`);
2. lock the store (:mod:`.lock`), refuse groups whose stored parameters or run spec differ from the
   request (``--overwrite`` deletes and recomputes them), grow ``step`` where new checkpoints appeared,
   and skip every (run, step, probe) whose ``done`` flag is set or that the probe's ``--steps``
   selection leaves out (:mod:`.selection`; a group still spans every checkpoint of its run); check
   each run's model on one checkpoint (:mod:`.model_check`: a run that fails is one line, the others go on);
3. submit one task per pending (run, checkpoint) (:func:`.jobs.run_task`) to a Dask client: an
   in-process ``LocalCluster`` of worker processes by default, ``--scheduler ADDRESS`` for an existing
   cluster, ``--scheduler sync`` to run in this process; ``--device cuda`` asks for ``GPU=1``;
4. as tasks complete (``distributed.as_completed``), write each job's result or error into the store
   (this process is the store's only writer) and set its ``done`` flag after its data; results are
   committed in batches every ``flush_interval`` seconds, or every ten times the last commit's
   duration when that is longer (commits of many groups are slow), so a killed driver loses at most
   the jobs in flight and those since the last commit;
5. return a :class:`Summary` (the CLI prints it and exits non-zero when any job failed).

``probe_runs(..., follow=alive)`` keeps searching the path while ``alive()`` is true and adds the
jobs of new checkpoints as they appear (``grokscope demo`` and ``grokscope probe --follow`` probe a
run while it trains).
"""

from __future__ import annotations

import errno
import logging
import os
import shutil
import subprocess
import time
from collections import defaultdict
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Iterator

import grokscope
from grokscope.errors import GrokscopeError
from grokscope.presentation import to_attrs

from .discovery import Checkpoint, Run, find_runs
from .jobs import HashTask, Outcome, ProbeRequest, Task, describe_error, hash_task, run_task
from .lock import StoreLock
from .model_check import screen_plan
from .selection import parse_selection, select_steps
from .store import GroupInfo, ProbeStore, StoreError, check_store_path, normalise



class EngineError(GrokscopeError, RuntimeError):
    """The probe run cannot start (no runs, no model spec, no GPU workers, ...)."""


class StoreWriteError(EngineError):
    """The store cannot be written (disk full, read-only, no permission): the run stops, the lock is
    released, what was committed stays."""


class Interrupted(EngineError):
    """The run was stopped (Ctrl-C) after committing what had finished."""


# errors of the machine, not of a job: every later write would fail the same way
ENVIRONMENTAL = {errno.ENOSPC, errno.EDQUOT, errno.EROFS, errno.EACCES, errno.EPERM, errno.EIO, errno.EFBIG}


def environmental(e: BaseException) -> bool:
    """Whether ``e`` (or what caused it) is an :data:`ENVIRONMENTAL` ``OSError``."""
    while e is not None:
        if isinstance(e, OSError) and e.errno in ENVIRONMENTAL:
            return True
        e = e.__cause__ or e.__context__  # type: ignore[assignment]
    return False


def _os_cause(e: BaseException) -> OSError:
    while not (isinstance(e, OSError) and e.errno in ENVIRONMENTAL):
        e = e.__cause__ or e.__context__  # type: ignore[assignment]
    return e


@dataclass
class EngineConfig:
    """Everything ``grokscope probe`` decides besides the path (see the CLI's help for each)."""

    probes: list[ProbeRequest]
    out: Path
    scheduler: str | None = None  # None / "local": in-process LocalCluster; "sync"; or an address
    workers: int | None = None
    threads: int | None = None
    device: str = "cpu"
    overwrite: bool = False
    spec: dict[str, Any] | None = None  # model/dataset/train for runs without run.json
    flush_interval: float = 1.0
    dry_run: bool = False
    trust: Any = None  # grokscope.trust.Trust: code the user vouched for (None: built-ins/entry points only)
    recheck: bool = True  # hash the checkpoints of done jobs and recompute those that changed


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

    store: Path
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

    @property
    def ok(self) -> bool:
        return not self.failures


@dataclass
class _Plan:
    tasks: list[Task]
    jobs: int
    skipped: int
    excluded: int
    runs: dict[str, Run]
    specs: dict[str, dict[str, Any]]
    group_attrs: dict[tuple[str, str], dict[str, Any]]
    failures: list[Failure]
    warnings: list[str]


# -- planning -------------------------------------------------------------------------------------

def _run_spec(run: Run, cli_spec: dict[str, Any] | None) -> tuple[dict[str, Any] | None, str]:
    if run.spec_error:
        return None, run.spec_error
    if run.spec is not None:
        return run.spec, ""
    if cli_spec is not None:
        return cli_spec, ""
    return None, (f"{run.path}: no run.json and no --model/--dataset given (write one with "
                  f"`grokscope init {run.path} --model ... --dataset ...`)")


_SPEC_FLAGS = (("model", "--model/--model-kwargs"), ("dataset", "--dataset/--dataset-kwargs/--dataset-seed"))


def ignored_spec(runs: list[Run], cli_spec: dict[str, Any] | None) -> tuple[str | None, list[str]]:
    """What the command line's model/dataset spec means for ``runs``: ``(refusal, warnings)``.

    A run with its own run.json uses that; where the command line names another model or dataset
    for it, the flags are ignored for that run and it gets a warning naming the flags and what is
    used instead (``refusal`` is always None: the flags also vouch for a factory, so they are kept).
    """
    if cli_spec is None:
        return None, []
    notes, first = [], None
    for run in runs:
        if run.spec is None:
            continue
        flags = [f"{flag} ({_spec_name(cli_spec.get(key))})" for key, flag in _SPEC_FLAGS
                 if normalise(cli_spec.get(key)) != normalise(run.spec.get(key))]
        if flags:
            first = first or run
            notes.append(f"{' and '.join(flags)} ignored for run {run.name!r}: {run.path / 'run.json'} gives "
                         f"model {_spec_name(run.spec.get('model'))}, dataset {_spec_name(run.spec.get('dataset'))}, "
                         "which are used")
    if not notes:
        return None, []
    # a warning, not a refusal: naming a factory on the command line is also how a user vouches for it
    hint = f" (drop the flags, or rewrite the run.json with `grokscope init {first.path} --force --model ... --dataset ...`)"
    return None, [n + hint for n in notes]


def _spec_name(spec: Any) -> str:
    """A model/dataset spec in a few words: its name and kwargs."""
    if not isinstance(spec, dict):
        return repr(spec)
    name = spec.get("arch") or spec.get("factory") or spec.get("name")
    parts = [f"{k}={v!r}" for k, v in sorted((spec.get("kwargs") or {}).items())]
    parts += [f"seed={spec['seed']}"] if "seed" in spec else []
    return f"{name!r}" + (f" ({', '.join(parts)})" if parts else "")


def _data_words(spec: dict[str, Any]) -> str:
    from grokscope.datasets import describe_data

    return describe_data(spec.get("dataset"))


def _spec_file(run: Run) -> str:
    return str(run.path / "run.json") if run.spec is not None else "the command line"


def _untrusted(run: Run, spec: dict[str, Any], trust: Any) -> str:
    """Why ``spec`` names code the user has not vouched for (one line), or ""; imports nothing."""
    from grokscope.datasets import DatasetError, check_dataset_spec
    from grokscope.models import ModelError, check_model_spec
    from grokscope.trust import Trust, UntrustedCode

    t = trust if trust is not None else Trust()
    try:
        check_model_spec(spec.get("model") or {}, t, _spec_file(run))
        check_dataset_spec(spec.get("dataset") or {}, t, _spec_file(run))
    except (UntrustedCode, ModelError, DatasetError) as e:
        return str(e)
    return ""


def _group_attrs(run: Run, spec: dict[str, Any], req: ProbeRequest) -> dict[str, Any]:
    from grokscope.probes import params_attrs

    from .jobs import probe_class

    cls = probe_class(req.name)
    params = params_attrs(req.params)
    attrs = {"probe": req.name, "description": cls.description, "params": params,
             "params_json": _dumps(params), "probe_version": int(cls.version),
             "presentation": to_attrs(cls.panel_specs(), cls.event_specs()),
             "grokscope_version": grokscope.__version__,
             "model": spec.get("model", {}), "dataset": spec.get("dataset", {}),
             "dataset_seed": int((spec.get("dataset") or {}).get("seed", 0)),
             "run": run.name, "run_rel": run.rel}
    if "seed" in params:
        attrs["seed"] = params["seed"]
    return normalise(attrs)


def _dumps(obj: Any) -> str:
    import json
    return json.dumps(normalise(obj), sort_keys=True)


def _diff(stored: dict[str, Any], wanted: dict[str, Any]) -> list[str]:
    keys = sorted(set(stored) | set(wanted))
    return [f"{k}: stored {stored.get(k, '<absent>')!r}, requested {wanted.get(k, '<absent>')!r}"
            for k in keys if stored.get(k) != wanted.get(k)]


def plan(runs: list[Run], store: ProbeStore, cfg: EngineConfig, threads: int,
         stale: frozenset[tuple[str, int, str]] = frozenset()) -> _Plan:
    """The tasks still to do: every (run, step, probe) not done, or in ``stale``. Raises
    :class:`StoreError` listing every group whose stored parameters or run spec differ from the
    request (unless ``cfg.overwrite``, which deletes those groups)."""
    failures: list[Failure] = []
    warnings: list[str] = []
    refusals: list[str] = []
    ready: list[tuple[Run, dict[str, Any]]] = []
    for run in runs:
        for pr in run.problems:
            warnings.append(f"{run.name}: {pr.path}: {pr.reason}")
        spec, why = _run_spec(run, cfg.spec)
        if spec is None:
            failures.append(Failure(run.name, None, "*", str(run.path), why))
            continue
        why = _untrusted(run, spec, cfg.trust)
        if why:
            failures.append(Failure(run.name, None, "*", _spec_file(run), why))
            continue
        if not run.checkpoints:
            warnings.append(f"{run.name}: no checkpoints with a step in {run.checkpoint_dir}")
            continue
        ready.append((run, spec))
        stored = store.run_attrs(run.name) or {}
        if stored.get("path") and stored["path"] != str(run.path.resolve()):
            warnings.append(f"{run.name}: the store's results came from {stored['path']}, this run is "
                            f"{run.path.resolve()} (same group name; pass another --out if they differ)")
        want = normalise({"model": spec.get("model"), "dataset": spec.get("dataset")})
        if stored.get("model") is not None:
            d = _diff({"model": stored.get("model"), "dataset": stored.get("dataset")}, want)
            if d and not cfg.overwrite:
                refusals.append(f"run {run.name!r}: the store was computed with another model/dataset "
                                f"spec ({'; '.join(d)})")
        for req in cfg.probes:
            info = store.group(run.name, req.name)
            if info is None:
                continue
            wanted = _group_attrs(run, spec, req)
            # stores written before probes had versions hold version 1 results
            d = _diff({**(info.attrs.get("params") or {}), "probe version": info.attrs.get("probe_version", 1)},
                      {**wanted["params"], "probe version": wanted["probe_version"]})
            if d and not cfg.overwrite:
                refusals.append(f"{run.name}/{req.name}: stored parameters differ ({'; '.join(d)})")
    if refusals:
        raise StoreError(f"store {store.path} refuses this request:\n  " + "\n  ".join(refusals)
                         + "\nuse another --out, keep the stored parameters, or pass --overwrite to "
                           "delete those results and recompute them")
    tasks: list[Task] = []
    group_attrs: dict[tuple[str, str], dict[str, Any]] = {}
    n_jobs = skipped = excluded = 0
    for run, spec in ready:
        if not cfg.dry_run:
            stored = store.run_attrs(run.name) or {}
            want = normalise({"model": spec.get("model"), "dataset": spec.get("dataset")})
            if cfg.overwrite and stored.get("model") is not None and _diff(
                    {"model": stored.get("model"), "dataset": stored.get("dataset")}, want):
                for child in list((store.path / run.name).iterdir()):
                    if child.is_dir():
                        store.delete_group(run.name, child.name)
            store.set_run_attrs(run.name, {"path": str(run.path.resolve()), "rel": run.rel,
                                           "model": spec.get("model"), "dataset": spec.get("dataset"),
                                           "train": spec.get("train", {}), "data": _data_words(spec),
                                           "grokscope_version": grokscope.__version__})
        pending: dict[int, list[ProbeRequest]] = defaultdict(list)
        for req in cfg.probes:
            group_attrs[(run.name, req.name)] = _group_attrs(run, spec, req)
            chosen, missing = select_steps(req.steps, run.steps)  # type: ignore[arg-type]
            wanted_steps = set(chosen)
            excluded += len(run.checkpoints) - len(wanted_steps)
            if missing:
                warnings.append(f"{run.name}: {req.name} --steps {req.steps}: no checkpoint at step(s) "
                                f"{', '.join(map(str, missing[:10]))}{' ...' if len(missing) > 10 else ''}")
            info = None
            if cfg.overwrite and not cfg.dry_run:
                store.delete_group(run.name, req.name)
            else:
                info = store.group(run.name, req.name)
                if info is not None and not cfg.dry_run:
                    info = store.grow(info, run.steps)
            for ck in run.checkpoints:
                if ck.step not in wanted_steps:
                    continue
                i = info.index.get(ck.step) if info is not None else None  # type: ignore[arg-type]
                if info is not None and i is not None and info.done[i] and \
                        (run.name, ck.step, req.name) not in stale:
                    skipped += 1
                else:
                    pending[ck.step].append(req)  # type: ignore[index]
                    n_jobs += 1
        prev: Checkpoint | None = None
        for ck in run.checkpoints:
            if pending.get(ck.step):  # type: ignore[arg-type]
                tasks.append(Task(run=run.name, spec=spec, checkpoint=ck, previous=prev,
                                  probes=tuple(pending[ck.step]), device=cfg.device,  # type: ignore[index]
                                  threads=threads, trust=cfg.trust, where=_spec_file(run)))
            prev = ck
    return _Plan(tasks=tasks, jobs=n_jobs, skipped=skipped, excluded=excluded, runs={r.name: r for r, _ in ready},
                 specs={r.name: spec for r, spec in ready}, group_attrs=group_attrs, failures=failures,
                 warnings=warnings)


def check_probes(tasks: list[Task]) -> None:
    """Run each probe's ``check`` once per distinct (run spec, probe set) on the first checkpoint that
    needs it, in this process, before any job is sent: a parameter that this model or data cannot take
    (``lc.n_dirs`` above the input dimension ...) raises :class:`EngineError` with one line. The model
    itself was checked before (:mod:`.model_check`); problems of one checkpoint are left to its jobs."""
    from dataclasses import replace

    from grokscope.probes import ProbeError

    from .jobs import preflight

    seen: set[str] = set()
    for task in tasks:
        key = _dumps([task.spec, [[r.name, repr(r.params)] for r in task.probes]])
        if key in seen:
            continue
        seen.add(key)
        if task.device != "cpu":
            import torch

            if not torch.cuda.is_available():
                task = replace(task, device="cpu")
        try:
            preflight(task)
        except ProbeError as e:
            raise EngineError(f"{task.run}: {e} (checked on {task.checkpoint.path}; nothing was computed)"
                              ) from None
        except Exception:  # noqa: BLE001 - reported per job, with the checkpoint named
            continue


# -- Dask -----------------------------------------------------------------------------------------

def visible_gpus() -> list[str]:
    """GPU ids this host offers, from ``CUDA_VISIBLE_DEVICES`` or ``nvidia-smi -L`` (never via torch,
    so the client process does not initialise CUDA)."""
    env = os.environ.get("CUDA_VISIBLE_DEVICES")
    if env is not None:
        return [g.strip() for g in env.split(",") if g.strip() and g.strip() != "-1"]
    if shutil.which("nvidia-smi") is None:
        return []
    try:
        out = subprocess.run(["nvidia-smi", "-L"], capture_output=True, text=True, timeout=20).stdout
    except (OSError, subprocess.SubprocessError):
        return []
    return [str(i) for i, line in enumerate(out.splitlines()) if line.startswith("GPU ")]


@contextmanager
def dask_client(cfg: EngineConfig) -> Iterator[tuple[Any, int, str]]:
    """``(client or None for sync, torch threads per worker, description)`` for ``cfg``."""
    if cfg.scheduler == "sync":
        import torch

        before = torch.get_num_threads()
        try:
            yield None, cfg.threads or 0, "in-process (sync)"
        finally:
            torch.set_num_threads(before)
        return
    from distributed import Client

    if cfg.scheduler in (None, "", "local"):
        with _forkserver():
            yield from _local_client(cfg)
        return
    try:
        client = Client(cfg.scheduler, timeout="30s")
    except (OSError, ValueError, TypeError) as e:  # unreachable, timed out, or not an address
        first = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
        raise EngineError(f"cannot connect to the Dask scheduler {cfg.scheduler!r}: {first} (expected "
                          "an address such as tcp://host:8786, or 'local' or 'sync')") from None
    try:
        workers = client.scheduler_info().get("workers", {})
        if cfg.device.startswith("cuda") and not any(
                (w.get("resources") or {}).get("GPU") for w in workers.values()):
            raise EngineError(f"--device cuda: no worker of {cfg.scheduler} offers the GPU resource; "
                              "start GPU workers with `dask worker ADDRESS --nthreads 1 --resources GPU=1` "
                              "(one per GPU, each with its own CUDA_VISIBLE_DEVICES) or `dask cuda worker "
                              "ADDRESS --resources GPU=1` (dask-cuda)")
        yield client, cfg.threads or 1, f"{cfg.scheduler} ({len(workers)} worker(s))"
    finally:
        client.close()


# modules the local workers' fork server imports once, so each worker starts with them loaded
# (worker_init: the workers ignore Ctrl-C, the driver stops them)
PRELOAD = ["distributed", "numpy", "torch", "safetensors.torch", "xarray", "grokscope.engine.jobs",
           "grokscope.probes", "grokscope.models", "grokscope.datasets", "grokscope.engine.worker_init"]


# Dask's nannies export MALLOC_TRIM_THRESHOLD_=65536 to the worker processes they start. Setting it
# turns off glibc's dynamic mmap threshold, so every tensor above 128 KiB is mmap'ed and unmapped
# again, page faults included: the probes ran 1.6-2x slower (CPU time) in local workers than in one
# process. Our workers are short-lived and hold little memory: keep glibc's default. Their statistical
# profiler (for the dashboard, sampling every 10 ms) is off too: ~2 % of a core per idle worker.
LOCAL_WORKER_CONFIG = {"distributed.nanny.pre-spawn-environ.MALLOC_TRIM_THRESHOLD_": None,
                       "distributed.worker.profile.enabled": False}


@contextmanager
def _forkserver() -> Iterator[None]:
    """Start local worker processes from a fork server that has torch & co. imported (much faster
    than spawning each worker and importing everything again; no CUDA is touched there), without
    Dask's malloc trim setting (see ``LOCAL_WORKER_CONFIG``)."""
    import multiprocessing

    import dask

    if "forkserver" not in multiprocessing.get_all_start_methods():
        with dask.config.set(LOCAL_WORKER_CONFIG):
            yield
        return
    with dask.config.set({"distributed.worker.multiprocessing-method": "forkserver", **LOCAL_WORKER_CONFIG}):
        from distributed.utils import get_mp_context

        ctx = get_mp_context()
        ctx.set_forkserver_preload(PRELOAD)
        yield


def _local_client(cfg: EngineConfig) -> Iterator[tuple[Any, int, str]]:
    from distributed import Client, LocalCluster

    cores = os.cpu_count() or 1
    if cfg.device.startswith("cuda"):
        gpus = visible_gpus()
        if not gpus:
            raise EngineError("--device cuda: this host shows no GPU (CUDA_VISIBLE_DEVICES / "
                              "nvidia-smi -L); use --device cpu or --scheduler ADDRESS of a cluster "
                              "with GPU workers")
        gpus = gpus[: cfg.workers] if cfg.workers else gpus
        cluster = _gpu_cluster(gpus)
        threads = cfg.threads or max(1, cores // len(gpus))
        desc = f"local cluster, {len(gpus)} GPU worker(s)"
    else:
        n = cfg.workers or cores
        # dashboard ":0": the scheduler's HTTP server on a free port (8787 may be taken)
        cluster = LocalCluster(n_workers=n, threads_per_worker=1, processes=True,
                               dashboard_address=":0", silence_logs=logging.CRITICAL)
        threads = cfg.threads or max(1, cores // n)
        desc = f"local cluster, {n} worker process(es) x {threads} torch thread(s)"
    client = Client(cluster)
    try:
        yield client, threads, desc
    finally:
        client.close()
        cluster.close()


def _gpu_cluster(gpus: list[str]):
    """A local cluster of one single-threaded worker process per GPU, each seeing only its GPU and
    advertising ``GPU=1`` (what dask-cuda's LocalCUDACluster does, without the dependency)."""
    from distributed import Nanny, Scheduler, SpecCluster

    workers = {f"gpu-{g}": {"cls": Nanny, "options": {"nthreads": 1, "resources": {"GPU": 1},
                                                      "env": {"CUDA_VISIBLE_DEVICES": g}}}
               for g in gpus}
    return SpecCluster(workers=workers, scheduler={"cls": Scheduler,
                                                   "options": {"dashboard_address": ":0"}},
                       silence_logs=logging.CRITICAL)


More = Callable[[], tuple[list[Task], bool]]


def _results(client: Any, tasks: list[Task], device: str, more: More | None = None, poll: float = 1.0
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


# -- execution ------------------------------------------------------------------------------------

# A commit rewrites the shards it touches (zarr re-encodes every chunk of a shard), so its cost
# grows with the number of groups and steps; the wait between commits is stretched to this many times
# the last commit's duration (a killed driver then loses at most that much more work).
COMMIT_SHARE_INV = 10


class _Writer:
    """Buffers outcomes per (run, probe) group, commits them to the store in batches, and keeps the
    summary's counts: a job is completed once its result is accepted for a group of the store.

    One probe's group that cannot be created, grown or written fails that probe's jobs (the cause
    named) and no other. An :data:`ENVIRONMENTAL` error (disk full, read-only, ...) ends the run as
    :class:`StoreWriteError`.
    """

    def __init__(self, store: ProbeStore, p: _Plan, interval: float, summary: Summary):
        self.store, self.plan, self.interval, self.summary = store, p, interval, summary
        self.wait = interval  # the interval, stretched when commits are slow (see flush)
        self.buffer: dict[tuple[str, str], list[tuple[int, Outcome, str]]] = defaultdict(list)
        self.broken: dict[tuple[str, str], str] = {}  # groups that could not be created, and why
        self.last = time.monotonic()
        self.pending = 0

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


def probe_runs(path: Path, cfg: EngineConfig,
               progress: Callable[[int, int, int, float], None] | None = None,
               start: Callable[[int, int, str], None] | None = None,
               follow: Callable[[], bool] | None = None, poll: float = 1.0) -> Summary:
    """Run ``cfg.probes`` over every checkpoint under ``path`` into the store ``cfg.out``.

    ``start(jobs, skipped, scheduler)`` is called once the plan is known; ``progress(n_new_done,
    done, failed, rate)`` after every completed task. Raises :class:`StoreError` (refusals, an
    ``--out`` that is not a grokscope store), :class:`~.lock.StoreLocked`, :class:`EngineError` or a
    discovery error before any computation; :class:`StoreWriteError` when the store cannot be
    written (disk full, read-only) and :class:`Interrupted` on Ctrl-C, both after committing what
    could be and releasing the lock.

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
        except ValueError as e:
            raise EngineError(f"probe {req.name}: {e}") from None
    # workers may run elsewhere (another host, another working directory): absolute paths only
    path = Path(path).absolute()
    out = Path(cfg.out).absolute()
    check_store_path(out)
    runs = find_runs(path)
    refusal, ignored = ignored_spec(runs, cfg.spec)
    if refusal:
        raise EngineError(refusal)
    if cfg.device.startswith("cuda") and cfg.scheduler in (None, "", "local") and not visible_gpus():
        raise EngineError("--device cuda: this host shows no GPU (CUDA_VISIBLE_DEVICES / nvidia-smi "
                          "-L); use --device cpu or --scheduler ADDRESS of a cluster with GPU workers")
    summary = Summary(store=out)
    lock = StoreLock(out)
    writer: _Writer | None = None
    try:
        lock.acquire()
        summary.took_over = lock.took_over
        store = ProbeStore(out)
        p = plan(runs, store, cfg, threads=cfg.threads or 1)
        writer = _Writer(store, p, cfg.flush_interval, summary)
        _record_plan(summary, p)
        summary.warnings[:0] = ignored
        unfit = screen_plan(p, summary)  # one line per run whose model does not fit its checkpoints
        check_probes(p.tasks)
        has_done = cfg.recheck and p.skipped > 0
        if cfg.dry_run or (not p.tasks and not has_done and follow is None):
            if start:
                start(p.jobs, p.skipped, "none")
            return summary
        with dask_client(cfg) as (client, threads, desc):
            from dataclasses import replace

            summary.scheduler = desc
            if has_done and not cfg.dry_run:
                stale, lines = recheck(client, p, store, cfg)
                if stale:
                    p = plan(runs, store, cfg, threads=cfg.threads or 1, stale=frozenset(stale))
                    writer.plan = p
                    _record_plan(summary, p)
                    screen_plan(p, summary, unfit)
                summary.warnings.extend(lines)
            tasks = [t if t.threads == threads else replace(t, threads=threads) for t in p.tasks]
            if start:
                start(p.jobs, p.skipped, desc)
            if not tasks and follow is None:
                return summary
            more = _follower(path, store, cfg, p, writer, summary, follow, threads) if follow else None
            t1 = time.perf_counter()
            done = 0
            failed0 = len(summary.failures)
            try:
                for task, res in _results(client, tasks, cfg.device, more, poll):
                    if isinstance(res, BaseException):
                        reason = _task_death(res)
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
        raise Interrupted(_stopped("interrupted", out, summary, writer)) from None
    except Exception as e:
        if not environmental(e):
            raise
        cause = _os_cause(e)
        where = f" ({cause.filename})" if cause.filename else ""
        raise StoreWriteError(_stopped(f"cannot write the store: {cause.strerror or cause}{where}", out,
                                       summary, writer)) from None
    finally:
        lock.release()
        summary.seconds = time.perf_counter() - t0
    return summary


def _record_plan(summary: Summary, p: _Plan) -> None:
    summary.runs, summary.jobs, summary.skipped, summary.excluded = len(p.runs), p.jobs, p.skipped, p.excluded
    known = {(f.run, f.file, f.reason) for f in summary.failures}
    summary.failures.extend(f for f in p.failures if (f.run, f.file, f.reason) not in known)
    summary.warnings[:] = list(p.warnings)


def _stopped(what: str, out: Path, summary: Summary, writer: _Writer | None) -> str:
    """The one line a stopped run ends with: why, what is safe, what to do."""
    lost = writer.uncommitted() if writer is not None else 0
    lost_text = f", {lost} finished job(s) could not be committed" if lost else ""
    return (f"{out}: {what}; {summary.completed - lost} job(s) of this run committed{lost_text}, the "
            "store is consistent and the lock released: rerun the same command to continue")


HASH_BATCH = 256  # checkpoints per re-hashing task


def recheck(client: Any, p: _Plan, store: ProbeStore, cfg: EngineConfig
            ) -> tuple[set[tuple[str, int, str]], list[str]]:
    """The done jobs whose checkpoint changed since they were computed, and a line for each
    changed checkpoint: ``({(run, step, probe)}, lines)``. The checkpoints are hashed by the workers
    (:func:`.jobs.hash_task`, batches of ``HASH_BATCH``); rows without a stored hash are trusted."""
    import numpy as np

    stored: dict[tuple[str, int], dict[str, str]] = defaultdict(dict)
    for name, run in p.runs.items():
        for req in cfg.probes:
            info = store.group(name, req.name)
            if info is None or not info.done.any():
                continue
            hashes = np.asarray(info.arrays["checkpoint_hash"][: len(info.steps)], dtype=object)
            for step, i in info.index.items():
                if info.done[i] and hashes[i]:
                    stored[(name, step)][req.name] = str(hashes[i])
    tasks: list[tuple[str, HashTask]] = []
    for name, run in p.runs.items():
        cks = [ck for ck in run.checkpoints if (name, ck.step) in stored]
        for k in range(0, len(cks), HASH_BATCH):
            tasks.append((name, HashTask(spec=p.specs[name], checkpoints=tuple(cks[k:k + HASH_BATCH]),
                                         trust=cfg.trust, where=_spec_file(run))))
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


def _follower(path: Path, store: ProbeStore, cfg: EngineConfig, first: _Plan, writer: _Writer,
              summary: Summary, follow: Callable[[], bool], threads: int) -> More:
    """The ``more`` callback of :func:`_results` for ``probe_runs(..., follow=...)``: each call
    searches ``path`` again and returns the tasks of the jobs not submitted yet, and whether
    ``follow()`` was false (then this search was the last)."""
    from dataclasses import replace

    from .discovery import DiscoveryError

    again = replace(cfg, overwrite=False)  # never delete what this call is writing
    submitted = {(t.run, t.checkpoint.step, r.name) for t in first.tasks for r in t.probes}

    def more() -> tuple[list[Task], bool]:
        last = not follow()  # asked before searching: nothing written after a final search is missed
        try:
            found = find_runs(path)
            p = plan(found, store, again, threads)
        except DiscoveryError:
            return [], last  # e.g. the run folder is not written yet
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
        summary.warnings = ignored_spec(found, cfg.spec)[1] + list(p.warnings)
        known = {(f.run, f.file) for f in summary.failures}
        summary.failures.extend(f for f in p.failures if (f.run, f.file) not in known)
        return new, last

    return more


def _task_death(e: BaseException) -> str:
    name = type(e).__name__
    if name == "KilledWorker":
        return f"the worker process died while probing this checkpoint, on every retry ({name}: {e})"
    return f"task failed outside the probe: {name}: {e}"
