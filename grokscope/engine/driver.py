"""The driver: plan the jobs, run them on Dask (or in-process), write every result into the store.

``probe_runs(path, config)`` is what ``grokscope probe`` calls:

1. discover runs and checkpoints (:mod:`.discovery`); the model/data spec of each run comes from its
   ``run.json`` or from the command line;
2. lock the store (:mod:`.lock`), refuse groups whose stored parameters or run spec differ from the
   request (``--overwrite`` deletes and recomputes them), grow ``step`` where new checkpoints appeared,
   and skip every (run, step, probe) whose ``done`` flag is set;
3. submit one task per pending (run, checkpoint) (:func:`.jobs.run_task`) to a Dask client: an
   in-process ``LocalCluster`` of worker processes by default, ``--scheduler ADDRESS`` for an existing
   cluster, ``--scheduler sync`` to run in this process; ``--device cuda`` asks for ``GPU=1``;
4. as tasks complete (``distributed.as_completed``), write each job's result or error into the store
   (this process is the store's only writer) and set its ``done`` flag after its data; results are
   committed in batches at most ``flush_interval`` seconds old, so a killed driver loses at most the
   jobs in flight and those of the last interval;
5. return a :class:`Summary` (the CLI prints it and exits non-zero when any job failed).
"""

from __future__ import annotations

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

from .discovery import Checkpoint, Run, find_runs
from .jobs import Outcome, ProbeRequest, Task, run_task
from .lock import StoreLock
from .store import GroupInfo, ProbeStore, StoreError, normalise

class EngineError(RuntimeError):
    """The probe run cannot start (no runs, no model spec, no GPU workers, ...)."""


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
    completed: int = 0
    failures: list[Failure] = field(default_factory=list)
    warnings: list[str] = field(default_factory=list)
    seconds: float = 0.0
    probe_seconds: float = 0.0  # time spent inside probe.compute, summed over jobs
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
    runs: dict[str, Run]
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


def _group_attrs(run: Run, spec: dict[str, Any], req: ProbeRequest) -> dict[str, Any]:
    from grokscope.probes import params_attrs

    from .jobs import probe_class

    cls = probe_class(req.name)
    params = params_attrs(req.params)
    attrs = {"probe": req.name, "description": cls.description, "params": params,
             "params_json": _dumps(params), "grokscope_version": grokscope.__version__,
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


def plan(runs: list[Run], store: ProbeStore, cfg: EngineConfig, threads: int) -> _Plan:
    """The tasks still to do. Raises :class:`StoreError` listing every group whose stored parameters
    or run spec differ from the request (unless ``cfg.overwrite``, which deletes those groups)."""
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
            wanted = _group_attrs(run, spec, req)["params"]
            d = _diff(info.attrs.get("params") or {}, wanted)
            if d and not cfg.overwrite:
                refusals.append(f"{run.name}/{req.name}: stored parameters differ ({'; '.join(d)})")
    if refusals:
        raise StoreError(f"store {store.path} refuses this request:\n  " + "\n  ".join(refusals)
                         + "\nuse another --out, keep the stored parameters, or pass --overwrite to "
                           "delete those results and recompute them")
    tasks: list[Task] = []
    group_attrs: dict[tuple[str, str], dict[str, Any]] = {}
    n_jobs = skipped = 0
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
                                           "train": spec.get("train", {}),
                                           "grokscope_version": grokscope.__version__})
        pending: dict[int, list[ProbeRequest]] = defaultdict(list)
        for req in cfg.probes:
            group_attrs[(run.name, req.name)] = _group_attrs(run, spec, req)
            info = None
            if cfg.overwrite and not cfg.dry_run:
                store.delete_group(run.name, req.name)
            else:
                info = store.group(run.name, req.name)
                if info is not None and not cfg.dry_run:
                    info = store.grow(info, run.steps)
            for ck in run.checkpoints:
                i = info.index.get(ck.step) if info is not None else None  # type: ignore[arg-type]
                if info is not None and i is not None and info.done[i]:
                    skipped += 1
                else:
                    pending[ck.step].append(req)  # type: ignore[index]
                    n_jobs += 1
        prev: Checkpoint | None = None
        for ck in run.checkpoints:
            if pending.get(ck.step):  # type: ignore[arg-type]
                tasks.append(Task(run=run.name, spec=spec, checkpoint=ck, previous=prev,
                                  probes=tuple(pending[ck.step]), device=cfg.device,  # type: ignore[index]
                                  threads=threads))
            prev = ck
    return _Plan(tasks=tasks, jobs=n_jobs, skipped=skipped, runs={r.name: r for r, _ in ready},
                 group_attrs=group_attrs, failures=failures, warnings=warnings)


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
    except OSError as e:
        raise EngineError(f"cannot connect to the Dask scheduler {cfg.scheduler}: {e}") from e
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
PRELOAD = ["distributed", "numpy", "torch", "safetensors.torch", "xarray", "grokscope.engine.jobs",
           "grokscope.probes", "grokscope.models", "grokscope.datasets"]


@contextmanager
def _forkserver() -> Iterator[None]:
    """Start local worker processes from a fork server that has torch & co. imported (much faster
    than spawning each worker and importing everything again; no CUDA is touched there)."""
    import multiprocessing

    import dask

    if "forkserver" not in multiprocessing.get_all_start_methods():
        yield
        return
    with dask.config.set({"distributed.worker.multiprocessing-method": "forkserver"}):
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


def _results(client: Any, tasks: list[Task], device: str) -> Iterator[tuple[Task, list[Outcome] | BaseException]]:
    """``(task, outcomes or the exception that ended the task)`` in completion order."""
    if client is None:
        for t in tasks:
            yield t, run_task(t)
        return
    from distributed import as_completed

    resources = {"GPU": 1} if device.startswith("cuda") else None
    futures = client.map(run_task, tasks, pure=False, resources=resources)
    by_key = {f.key: t for f, t in zip(futures, tasks)}
    completed = as_completed(futures)
    del futures
    for fut in completed:
        task = by_key.pop(fut.key)
        if fut.status == "error":
            yield task, fut.exception()
        else:
            try:
                yield task, fut.result()
            except Exception as e:  # noqa: BLE001 - e.g. a result that cannot be deserialised
                yield task, e
        fut.release()


# -- execution ------------------------------------------------------------------------------------

class _Writer:
    """Buffers outcomes per (run, probe) group and commits them to the store in batches."""

    def __init__(self, store: ProbeStore, p: _Plan, interval: float):
        self.store, self.plan, self.interval = store, p, interval
        self.buffer: dict[tuple[str, str], list[tuple[int, Outcome]]] = defaultdict(list)
        self.last = time.monotonic()
        self.pending = 0

    def add(self, o: Outcome) -> Outcome:
        key = (o.run, o.probe)
        info: GroupInfo | None = self.store.group(*key)
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
        self.buffer[key].append((o.step, o))
        self.pending += 1
        if time.monotonic() - self.last >= self.interval or self.pending >= 4096:
            self.flush()
        return o

    def flush(self) -> None:
        for key, items in self.buffer.items():
            info = self.store.group(*key)
            if info is not None and items:
                self.store.write(info, items)
        self.buffer.clear()
        self.pending = 0
        self.last = time.monotonic()


def probe_runs(path: Path, cfg: EngineConfig,
               progress: Callable[[int, int, int, float], None] | None = None,
               start: Callable[[int, int, str], None] | None = None) -> Summary:
    """Run ``cfg.probes`` over every checkpoint under ``path`` into the store ``cfg.out``.

    ``start(jobs, skipped, scheduler)`` is called once the plan is known; ``progress(n_new_done,
    done, failed, rate)`` after every completed task. Raises :class:`StoreError` (refusals),
    :class:`~.lock.StoreLocked`, :class:`EngineError` or a discovery error before any computation.
    """
    t0 = time.perf_counter()
    runs = find_runs(Path(path))
    if cfg.device.startswith("cuda") and cfg.scheduler in (None, "", "local") and not visible_gpus():
        raise EngineError("--device cuda: this host shows no GPU (CUDA_VISIBLE_DEVICES / nvidia-smi "
                          "-L); use --device cpu or --scheduler ADDRESS of a cluster with GPU workers")
    out = Path(cfg.out)
    if out.is_dir() and not (out / "zarr.json").exists() and any(
            p.name != ".grokscope.lock" for p in out.iterdir()):
        raise EngineError(f"{out}: exists and is not a Zarr store; refusing to write into it "
                          "(choose a new or existing store with --out)")
    summary = Summary(store=out)
    lock = StoreLock(out)
    lock.acquire()
    try:
        summary.took_over = lock.took_over
        store = ProbeStore(out)
        p = plan(runs, store, cfg, threads=cfg.threads or 1)
        summary.runs, summary.jobs, summary.skipped = len(p.runs), p.jobs, p.skipped
        summary.failures.extend(p.failures)
        summary.warnings.extend(p.warnings)
        if cfg.dry_run or not p.tasks:
            if start:
                start(p.jobs, p.skipped, "none")
            return summary
        writer = _Writer(store, p, cfg.flush_interval)
        with dask_client(cfg) as (client, threads, desc):
            summary.scheduler = desc
            tasks = p.tasks
            if threads != tasks[0].threads:
                from dataclasses import replace
                tasks = [replace(t, threads=threads) for t in tasks]
            if start:
                start(p.jobs, p.skipped, desc)
            t1 = time.perf_counter()
            done = failed = 0
            try:
                for task, res in _results(client, tasks, cfg.device):
                    if isinstance(res, BaseException):
                        reason = _task_death(res)
                        res = [Outcome(run=task.run, step=int(task.checkpoint.step), probe=r.name,  # type: ignore[arg-type]
                                       label=task.checkpoint.label, error=reason) for r in task.probes]
                    for o in res:
                        o = writer.add(o)
                        summary.probe_seconds += o.seconds
                        if o.ok:
                            summary.completed += 1
                        else:
                            failed += 1
                            summary.failures.append(Failure(o.run, o.step, o.probe, _file(p, task), o.error))
                    done += len(res)
                    if progress:
                        progress(len(res), done, failed, done / max(time.perf_counter() - t1, 1e-9))
            finally:
                writer.flush()
    finally:
        lock.release()
        summary.seconds = time.perf_counter() - t0
    return summary


def _file(p: _Plan, task: Task) -> str:
    return task.checkpoint.path


def _task_death(e: BaseException) -> str:
    name = type(e).__name__
    if name == "KilledWorker":
        return f"the worker process died while probing this checkpoint, on every retry ({name}: {e})"
    return f"task failed outside the probe: {name}: {e}"
