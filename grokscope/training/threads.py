"""How many torch threads ``grokscope train`` uses when ``--threads`` is not given.

Measured with ``benchmarks/bench_train_threads.py`` (300 steps, 2 cores shared with other users at a
load average of 4.3-8.8; "contended" adds 2 spinning processes): ``modadd-mlp`` 10.0 s at 1 thread,
77.7 s at 2 (47.8 s and 245.4 s contended); ``mnist-mlp`` (on ``mnist5k``) 16.1 s and 46.6 s (52.2 s
and 618.7 s contended). The issue that asked for this measured 23.9 s at 1 thread and 86.9-132.1 s at
torch's default (all cores) for 1 000 steps of ``modadd-mlp`` at load 4.5. No idle machine was at
hand to measure the case where 2 threads could win. Threads pay off only when a step is large enough
to split and the cores are free: a thread that waits for a core held by another process stalls every
other thread of each matrix product.
"""

from __future__ import annotations

import os

# below this many floating-point operations per step (6 × parameters × rows of a batch), one thread
MIN_STEP_FLOPS = 2e9
MAX_THREADS = 8


def available_cores() -> int:
    """The cores this process may run on (its affinity mask where the system has one)."""
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # not Linux
        return os.cpu_count() or 1


def choose_threads(n_params: int, rows: int, cores: int | None = None, load: float | None = None
                   ) -> tuple[int, str]:
    """``(threads, why)`` for a training step of a model of ``n_params`` parameters on ``rows`` inputs:
    1 on one core, for a step under :data:`MIN_STEP_FLOPS`, or when the load average leaves fewer
    than 2 cores free; otherwise the free cores (at most :data:`MAX_THREADS`)."""
    cores = available_cores() if cores is None else cores
    if load is None:
        try:
            load = os.getloadavg()[0]
        except OSError:
            load = 0.0
    flops = 6.0 * n_params * rows
    size = f"a step is {flops / 1e9:.2g} GFLOP"
    if cores <= 1:
        return 1, "one core"
    if flops < MIN_STEP_FLOPS:
        return 1, f"{size}, too small to split well"
    free = cores - load
    if free < 2:
        return 1, f"{size}, but the load average {load:.1f} on {cores} cores leaves under 2 free"
    n = max(1, min(int(free), MAX_THREADS))
    return n, f"{size}, {free:.1f} of {cores} cores free"
