"""How many torch threads ``grokscope train`` uses when ``--threads`` is not given.

Measured with ``benchmarks/bench_train_threads.py`` (300 steps; the seconds include the ~3.5 s start of
the command). Idle 2-core machine (load 0.2-1.6): ``modadd-mlp`` (0.49 GFLOP a step) 8.8 s at 1
thread, 6.1 s at 2; ``mnist-mlp`` on ``mnist5k`` (0.34 GFLOP) 6.6 s and 5.9 s — two threads win.
Contended by 2 spinning processes: 11.9 s and 17.6 s; 10.8 s and 16.7 s — one thread wins. On the
same machine shared with other users (load 4-15): 10.0 s at 1 thread, 77.7 s at 2 (``modadd-mlp``). A
thread that waits for a core held by another process stalls every other thread of each matrix
product, so the rule is: the cores the load average leaves free (rounded; at least 1), and one
thread for a step too small to split (none measured yet below :data:`MIN_STEP_FLOPS`).
"""

from __future__ import annotations

import os

# below this many floating-point operations per step (6 × parameters × rows of a batch), one thread
MIN_STEP_FLOPS = 1e8
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
    1 on one core or for a step under :data:`MIN_STEP_FLOPS`; otherwise the cores the load average
    leaves free, rounded (at least 1, at most :data:`MAX_THREADS`)."""
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
    n = max(1, min(int(free + 0.5), cores, MAX_THREADS))
    if n == 1:
        return 1, f"{size}, but the load average {load:.1f} on {cores} cores leaves about one free"
    return n, f"{size}, {free:.1f} of {cores} cores free"
