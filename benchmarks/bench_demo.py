"""The demo's phases: ``grokscope demo`` from an empty folder, then each probe's cost on its own.

    python benchmarks/bench_demo.py                # the demo (~2 min on 2 idle cores) + per-probe costs
    python benchmarks/bench_demo.py --train-alone  # also train the preset alone on one thread (~40 s)
    python benchmarks/bench_demo.py --demo-dir runs/demo --skip-demo   # costs on an existing demo run

1. **demo**: ``grokscope demo DIR`` in a subprocess, as after a fresh clone (the venv install is not
   timed): wall time of the command, and the phases it records in ``DIR/demo_timing.json`` — training
   (probing runs beside it), when the last probe job finished, worker seconds per probe, the driver's
   CPU seconds, figures (beside the onset summary) and report and the load average before and after.
2. **per probe**: each probe alone, in this process on one thread, over a log-spaced sample of the
   demo run's checkpoints, with the demo's parameters and, where they differ, the defaults:
   seconds per checkpoint x the checkpoints the demo gives it = its CPU seconds in the demo.
3. **training alone** (``--train-alone``): the preset trained in this process on one thread.

The sum of the CPU seconds over two cores is the lower bound of the demo's wall time; the printed
efficiency is that bound over the measured wall time. The machine is shared: quote the load average.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from grokscope.demo import load_average

ROOT = Path(__file__).resolve().parents[1]


def run_demo(directory: Path) -> tuple[float, dict]:
    """``grokscope demo DIRECTORY`` as a subprocess: (wall seconds, its demo_timing.json)."""
    from grokscope.demo import TIMING_FILE

    exe = Path(sys.executable).with_name("grokscope")
    cmd = [str(exe)] if exe.exists() else [sys.executable, "-m", "grokscope.cli"]
    t = time.perf_counter()
    proc = subprocess.run(cmd + ["demo", str(directory), "--quiet"], cwd=ROOT, capture_output=True, text=True)
    wall = time.perf_counter() - t
    if proc.returncode != 0:
        sys.exit(f"grokscope demo failed ({proc.returncode}):\n{proc.stdout}\n{proc.stderr}")
    print(proc.stdout.rstrip())
    return wall, json.loads((directory / TIMING_FILE).read_text())


def probe_costs(run_dir: Path, sample: int) -> list[dict]:
    """Per probe (demo parameters and, where the demo changes them, the defaults): seconds per
    checkpoint over ``sample`` log-spaced checkpoints of ``run_dir``, one thread, in this process."""
    import torch

    from grokscope import runs
    from grokscope.cli.demo import probe_selections
    from grokscope.demo import DEMO_PARAMS, DEMO_PROBES, DEMO_STEPS
    from grokscope.engine.discovery import find_runs
    from grokscope.engine.jobs import ProbeRequest, Task, run_task
    from grokscope.engine.selection import select_steps
    from grokscope.probes import get_probe

    torch.set_num_threads(1)
    run = find_runs(run_dir)[0]
    spec = runs.read_run_json(run_dir)
    steps, _ = select_steps(f"log:{sample}", run.steps)
    by_step = {c.step: c for c in run.checkpoints}
    prev = {c.step: p for p, c in zip([None] + run.checkpoints[:-1], run.checkpoints)}
    selections = probe_selections(list(DEMO_PROBES), DEMO_STEPS, run.steps)
    rows = []
    for name in DEMO_PROBES:
        variants = [("demo", DEMO_PARAMS.get(name))] + ([("default", None)] if name in DEMO_PARAMS else [])
        n_ckpts = len(run.steps) if selections[name] is None else len(selections[name].split(","))
        for label, overrides in variants:
            req = ProbeRequest(name, get_probe(name).make_params(overrides))
            tasks = [Task(run=run.name, spec=spec, checkpoint=by_step[s], previous=prev[s], probes=(req,))
                     for s in steps]
            run_task(tasks[0])  # warm-up: caches, first-call costs
            seconds = 0.0
            for t in tasks:
                (o,) = run_task(t)
                if not o.ok:
                    sys.exit(f"{name} failed at step {o.step}: {o.error}")
                seconds += o.seconds
            per = seconds / len(tasks)
            rows.append({"probe": name, "params": label, "overrides": overrides or {}, "s_per_ckpt": per,
                         "checkpoints": n_ckpts, "cpu_s": per * n_ckpts})
    return rows


def train_alone(directory: Path) -> float:
    from grokscope.cli.train import run
    from grokscope.training.presets import DEFAULT_PRESET, preset_config

    t = time.perf_counter()
    run(preset_config(DEFAULT_PRESET), directory, threads=1, progress=False)
    return time.perf_counter() - t


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--demo-dir", type=Path, default=None, help="Demo folder (default: a temporary one).")
    ap.add_argument("--skip-demo", action="store_true", help="Use the finished demo run in --demo-dir.")
    ap.add_argument("--sample", type=int, default=10, help="Checkpoints per probe for the per-probe costs.")
    ap.add_argument("--train-alone", action="store_true", help="Also time training alone (one thread).")
    args = ap.parse_args()
    tmp = Path(tempfile.mkdtemp(prefix="bench-demo-"))
    directory = args.demo_dir or tmp / "demo"
    try:
        print(f"machine: {os.cpu_count()} cores, load average {load_average()}", flush=True)
        timing: dict = {}
        wall = None
        if not args.skip_demo:
            if directory.exists():
                sys.exit(f"{directory} exists; the demo is timed from an empty folder (or pass --skip-demo)")
            wall, timing = run_demo(directory)
            print(f"\n[demo] grokscope demo: {wall:.1f} s wall (load average {timing['load_average_start']} -> "
                  f"{timing['load_average_end']})")
            for key, what in (("training_s", "training (probing beside it)"),
                              ("probing_done_s", "last probe job done at"),
                              ("driver_cpu_s", "driver CPU (scheduler, store writes, imports)"),
                              ("summary_s", "onset summary"), ("figures_s", "figures (second process)"),
                              ("report_s", "report"), ("figures_and_report_s", "figures + report"),
                              ("total_s", "total inside the command")):
                if key in timing:
                    print(f"  {what:48s} {timing[key]:7.1f} s")
            for name, s in sorted(timing.get("probe_seconds", {}).items(), key=lambda kv: -kv[1]):
                print(f"  worker seconds {name:33s} {s:7.1f} s")
        print(f"\n[per probe] one thread, {args.sample} log-spaced checkpoints each (load average {load_average()})")
        rows = probe_costs(directory, args.sample)
        print(f"  {'probe':8s} {'params':26s} {'s/ckpt':>7s} {'ckpts':>6s} {'CPU s':>7s}")
        for r in rows:
            params = r["params"] + (" " + ",".join(f"{k}={v}" for k, v in r["overrides"].items())
                                    if r["overrides"] else "")
            print(f"  {r['probe']:8s} {params:26s} {r['s_per_ckpt']:7.3f} {r['checkpoints']:6d} {r['cpu_s']:7.1f}")
        demo_cpu = sum(r["cpu_s"] for r in rows if r["params"] == "demo")
        default_cpu = sum(r["cpu_s"] for r in rows if r["params"] == "default" or r["probe"] not in
                          {x["probe"] for x in rows if x["params"] == "default"})
        print(f"  probes' CPU seconds: {demo_cpu:.0f} with the demo's parameters, {default_cpu:.0f} with the "
              f"defaults ({default_cpu / demo_cpu:.2f}x)")
        train_s = timing.get("training_s")
        if args.train_alone:
            train_s = train_alone(tmp / "train-alone")
            print(f"\n[training alone] {train_s:.1f} s on one thread (load average {load_average()})")
        if wall is not None and train_s:
            bound = (demo_cpu + train_s) / 2
            print(f"\n[demo] lower bound on 2 cores (training + probes, no overhead): {bound:.0f} s; "
                  f"measured {wall:.0f} s (efficiency {bound / wall:.0%}"
                  f"{'' if args.train_alone else ', training time as measured inside the demo'})")
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
