"""The Dask client of a probe run: an in-process ``LocalCluster`` of worker processes (started from a
fork server with torch & co. imported), one spawned worker per GPU for ``--device cuda``, an existing
scheduler's address, or none (``sync``: this process). The driver only asks :func:`dask_client`."""

from __future__ import annotations

import logging
import os
import shutil
import signal
import subprocess
import threading
from contextlib import contextmanager
from typing import Any, Callable, Iterator, TypeVar

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
    check_scheduler(cfg.scheduler)
    try:
        client = Client(cfg.scheduler, timeout=f"{SCHEDULER_TIMEOUT}s")
    except (OSError, ValueError, TypeError) as e:  # unreachable, timed out, or not an address
        raise EngineError(_refusal(cfg.scheduler, _first_line(e))) from None
    quiet = quiet_distributed()  # a lost scheduler: the driver says so in one line, not the client's log
    quiet.__enter__()
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
        quiet.__exit__(None, None, None)


@contextmanager
def quiet_distributed() -> Iterator[None]:
    """Dask's own loggers (``distributed``, ``distributed.client``, ``distributed.comm`` ...) at CRITICAL
    while in this block: a lost or wrong scheduler is told in the driver's one line, not in the client's
    logged tracebacks."""
    names = ["distributed"] + [n for n in logging.root.manager.loggerDict if n.startswith("distributed.")]
    levels = {n: logging.getLogger(n).level for n in names}
    for n in names:
        logging.getLogger(n).setLevel(logging.CRITICAL)
    try:
        yield
    finally:
        for n, level in levels.items():
            logging.getLogger(n).setLevel(level)


SCHEDULER_TIMEOUT = 10.0  # seconds a scheduler address has to answer Dask's handshake and identity call


def _first_line(e: BaseException) -> str:
    text = str(e).strip()
    return text.splitlines()[0][:200] if text else type(e).__name__


def _refusal(address: str, why: str) -> str:
    return (f"cannot connect to the Dask scheduler {address!r}: {why} (expected an address such as "
            "tcp://host:8786 of a running `dask scheduler`, or 'local' or 'sync')")


def check_scheduler(address: str, timeout: float | None = None) -> None:
    """Raise :class:`EngineError` (one line) unless ``address`` answers as a Dask scheduler within
    ``timeout`` seconds (default :data:`SCHEDULER_TIMEOUT`): Dask's handshake, then its ``identity``
    call, whose reply must name a ``Scheduler``. A service that is not Dask (it answers something else,
    or never answers), an unreachable host and a malformed address are all refused before a
    ``distributed.Client`` is made (which could wait forever, or read a stranger's bytes as a frame
    length and try to allocate exabytes). The exchange runs in a daemon thread of its own, so a
    service that holds the connection open cannot hold the command."""
    import asyncio

    timeout = SCHEDULER_TIMEOUT if timeout is None else timeout
    result: dict[str, Any] = {}

    async def ask() -> Any:
        from distributed.comm import connect

        comm = await connect(address, timeout=timeout)  # Dask's handshake included
        try:
            await comm.write({"op": "identity", "reply": True})
            return await comm.read()
        finally:
            comm.abort()

    def run() -> None:
        try:
            result["reply"] = asyncio.run(asyncio.wait_for(ask(), timeout))
        except BaseException as e:  # noqa: BLE001 - a stranger's bytes may raise anything (MemoryError ...)
            result["error"] = e

    with quiet_distributed():  # the comm layer logs its own tracebacks of a failed handshake
        t = threading.Thread(target=run, name="grokscope-check-scheduler", daemon=True)
        t.start()
        t.join(timeout + 2)
    if t.is_alive() or isinstance(result.get("error"), (asyncio.TimeoutError, TimeoutError)):
        raise EngineError(_refusal(address, f"no answer to Dask's handshake within {timeout:g} s (is it a "
                                            "Dask scheduler?)"))
    e = result.get("error")
    if isinstance(e, (ValueError, TypeError)) and "://" not in address:
        raise EngineError(_refusal(address, _first_line(e)))
    if isinstance(e, OSError) and not isinstance(e, (ConnectionResetError, BrokenPipeError)):
        raise EngineError(_refusal(address, _first_line(e)))
    reply = result.get("reply")
    if e is not None or not isinstance(reply, dict) or reply.get("type") != "Scheduler":
        what = f"it answered as a {reply.get('type')}" if isinstance(reply, dict) and reply.get("type") else \
            "it does not speak Dask's protocol"
        raise EngineError(_refusal(address, f"not a Dask scheduler ({what})"))


T = TypeVar("T")


def start_deferring_signals(start: Callable[[], T], stop: Callable[[T], None]) -> T:
    """``start()`` with Ctrl-C (SIGINT) and SIGTERM held back: while it runs they are only noted, and
    one that came is acted on once the start is over, after ``stop(started)`` has undone it (its
    usual handler then runs: ``KeyboardInterrupt``, or the driver's SIGTERM exception). A Ctrl-C used to
    land in the middle of a cluster's start and leave a traceback from each half-started piece; a start
    that fails after such a signal reached its processes (a SIGTERM to the process group ends a
    half-started worker) ends as that signal does, not with the failure's traceback."""
    if threading.current_thread() is not threading.main_thread():
        return start()
    came: list[int] = []

    def note(signum: int, frame: Any) -> None:
        came.append(signum)

    held = (signal.SIGINT, signal.SIGTERM)
    before = {s: signal.signal(s, note) for s in held}
    started: Any = None
    try:
        started = start()
        if came:
            stop(started)
    except Exception:
        if not came:  # a start that failed because the signal reached its processes: the signal's end
            raise
    finally:
        for s, handler in before.items():
            signal.signal(s, handler)
    if came:
        handler = before[came[0]]
        if callable(handler):
            handler(came[0], None)
        elif handler == signal.SIG_DFL:
            os.kill(os.getpid(), came[0])
    return started


def _start_forkserver() -> None:
    """Start the fork server now, with SIGINT ignored while it is made: a process inherits an ignored
    signal, so Python installs no KeyboardInterrupt handler in it and a Ctrl-C while it imports its
    preload (seconds: torch) cannot print a traceback there (it ignores SIGINT for good after that)."""
    import dask

    if dask.config.get("distributed.worker.multiprocessing-method", None) != "forkserver":
        return
    from multiprocessing import forkserver

    if threading.current_thread() is not threading.main_thread():
        forkserver.ensure_running()
        return
    handler = signal.signal(signal.SIGINT, signal.SIG_IGN)
    try:
        forkserver.ensure_running()
    finally:
        signal.signal(signal.SIGINT, handler)


# modules the local workers' fork server imports once, so each worker starts with them loaded
# (worker_init first: the fork server and its workers ignore Ctrl-C from the start, even one that comes
# while the others are still being imported; the driver stops them)
PRELOAD = ["grokscope.engine.worker_init", "distributed", "numpy", "torch", "safetensors.torch", "xarray",
           "grokscope.engine.jobs", "grokscope.probes", "grokscope.models", "grokscope.datasets"]


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


def worker_environment() -> dict[str, str]:
    """The driver's environment as it is now, for the local CPU workers. They are forked from a server
    that may have started before the caller set a variable (a notebook cell, a test: credentials,
    ``TMPDIR`` where the fetch cache goes, ``GROKSCOPE_PROBES``, one the user's model code reads), so
    each cluster hands them the whole environment, as a spawned process would get it (a variable
    deleted since the server started stays set there)."""
    return dict(os.environ)


def _local_client(cfg: EngineConfig) -> Iterator[tuple[Any, int, str]]:
    from distributed import Client, LocalCluster

    cores = os.cpu_count() or 1
    if cfg.device.startswith("cuda"):
        gpus = local_gpus(cfg)

        def make() -> Any:
            return _gpu_cluster(gpus)
        threads = cfg.threads or max(1, cores // len(gpus))
        desc = f"local cluster, {len(gpus)} GPU worker(s)"
    else:
        n = cfg.workers or cores

        def make() -> Any:  # dashboard ":0": the scheduler's HTTP server on a free port (8787 may be taken)
            return LocalCluster(n_workers=n, threads_per_worker=1, processes=True, dashboard_address=":0",
                                silence_logs=logging.CRITICAL, env=worker_environment())
        threads = cfg.threads or max(1, cores // n)
        desc = f"local cluster, {n} worker process(es) x {threads} torch thread(s)"

    def start() -> tuple[Any, Any]:
        _start_forkserver()
        made = make()
        try:
            return made, Client(made)
        except BaseException:
            made.close()
            raise

    def stop(started: tuple[Any, Any]) -> None:
        started[1].close()
        started[0].close()

    cluster, client = start_deferring_signals(start, stop)
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
