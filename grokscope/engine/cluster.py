"""The Dask client of a probe run: an in-process ``LocalCluster`` of worker processes (started from a
fork server with torch & co. imported), one spawned worker per GPU for ``--device cuda``, an existing
scheduler's address, or none (``sync``: this process). The driver only asks :func:`dask_client`."""

from __future__ import annotations

import logging
import os
import shutil
import subprocess
from contextlib import contextmanager
from typing import Any, Iterator

from .config import EngineConfig, EngineError


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


def local_gpus(cfg: EngineConfig) -> list[str]:
    """The GPU ids the local cluster starts one worker each for: every visible GPU for ``--device
    cuda`` (the first ``--workers`` of them), the N-th visible one for ``cuda:N``; one-line
    :class:`EngineError` when there is none."""
    gpus = visible_gpus()
    if not gpus:
        raise EngineError("--device cuda: this host shows no GPU (CUDA_VISIBLE_DEVICES / nvidia-smi -L); "
                          "use --device cpu or --scheduler ADDRESS of a cluster with GPU workers")
    if cfg.device.startswith("cuda:"):
        index = cfg.device.split(":", 1)[1]
        if not index.isdigit() or int(index) >= len(gpus):
            raise EngineError(f"--device {cfg.device}: this host shows {len(gpus)} GPU(s) "
                              f"({', '.join(gpus)}); use cuda (all of them) or cuda:0..cuda:{len(gpus) - 1}")
        return [gpus[int(index)]]
    return gpus[: cfg.workers] if cfg.workers else gpus


def job_device(cfg: EngineConfig) -> str:
    """The device a job asks its worker for: ``cuda`` on the local GPU workers (each sees only its
    own GPU, as ``cuda:0``), else what ``--device`` says."""
    local = cfg.scheduler in (None, "", "local")
    return "cuda" if local and cfg.device.startswith("cuda") else cfg.device


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
        with _spawn() if cfg.device.startswith("cuda") else _forkserver():
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


@contextmanager
def _spawn() -> Iterator[None]:
    """Start local worker processes with ``spawn``: a fresh interpreter each, as CUDA requires (a forked
    process cannot initialise CUDA again, and no state of this process reaches a GPU worker)."""
    import dask

    with dask.config.set({"distributed.worker.multiprocessing-method": "spawn", **LOCAL_WORKER_CONFIG}):
        yield


def _local_client(cfg: EngineConfig) -> Iterator[tuple[Any, int, str]]:
    from distributed import Client, LocalCluster

    cores = os.cpu_count() or 1
    if cfg.device.startswith("cuda"):
        gpus = local_gpus(cfg)
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
    """A local cluster of one single-threaded worker process per GPU, each seeing only its GPU (as
    ``cuda:0``) and advertising ``GPU=1`` (what dask-cuda's LocalCUDACluster does, without the
    dependency); start it inside :func:`_spawn`."""
    from distributed import Nanny, Scheduler, SpecCluster

    # worker_init: the workers ignore Ctrl-C, the driver stops them (spawned: no fork server preloads it)
    workers = {f"gpu-{g}": {"cls": Nanny, "options": {"nthreads": 1, "resources": {"GPU": 1},
                                                      "env": {"CUDA_VISIBLE_DEVICES": g},
                                                      "preload": ["grokscope.engine.worker_init"]}}
               for g in gpus}
    return SpecCluster(workers=workers, scheduler={"cls": Scheduler,
                                                   "options": {"dashboard_address": ":0"}},
                       silence_logs=logging.CRITICAL)
