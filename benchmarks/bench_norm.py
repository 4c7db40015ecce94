"""``norm`` per checkpoint on the demo model (the default preset: a + b mod 59, 2x128 MLP, 256 training
points: J is 15 104 x 39 355), before (CG, 200 iterations: the old default) and after (Lanczos with
Gauss/Radau bounds, float32 products: the new default), with the accuracy of each against a tight
reference.

* time: CPU seconds of one thread (``time.process_time``; on a shared machine wall time mostly
  measures the other jobs) and wall seconds, min over ``--repeat``; ratio before / after;
* accuracy at 256 points: against float64 Lanczos run to a certified bracket of 1e-7
  (the explicit Jacobian would be 4.7 GB and its SVD hours on 2 cores);
* accuracy at ``--small`` points (944 outputs): the same three against the explicit float64 Jacobian and
  its SVD.

    python benchmarks/bench_norm.py [--run DIR] [--steps 1917,6000] [--repeat 3] [--small 16]

Without ``--run`` it trains the default preset for 3000 steps into a temporary folder (~1-3 min).
Run it under ``nice`` on a shared machine and say so with the numbers (they are then contended).
"""

from __future__ import annotations

import argparse
import dataclasses
import os
import tempfile
import time
from pathlib import Path

import torch

from grokscope.datasets import load_dataset, seeded_subset
from grokscope.engine.loading import load_into, read_state_dict
from grokscope.models import build_model
from grokscope.probes.norm import NormParams, norm_measures
from grokscope.runs import list_checkpoints, read_run_json

KEYS = ("wd_tangent_frac", "wd_normal_frac", "grad_tangent_cos", "dist_zero_loss", "lambda_max")


def best(fn, repeat: int):
    cpu, wall, out = float("inf"), float("inf"), None
    for _ in range(repeat):
        c, w = time.process_time(), time.perf_counter()
        out = fn()
        cpu, wall = min(cpu, time.process_time() - c), min(wall, time.perf_counter() - w)
    return cpu, wall, out


def errors(m: dict, ref: dict) -> str:
    parts = []
    for k in KEYS:
        d = abs(m[k] - ref[k]) / (abs(ref[k]) if k == "lambda_max" else 1.0)
        parts.append(f"{k} {d:.1e}{' (rel)' if k == 'lambda_max' else ''}")
    return ", ".join(parts)


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--run", type=Path, default=None)
    ap.add_argument("--steps", default="", help="checkpoint steps (default: the middle and the last)")
    ap.add_argument("--repeat", type=int, default=3)
    ap.add_argument("--small", type=int, default=16, help="training points of the explicit-SVD check")
    args = ap.parse_args()
    torch.set_num_threads(1)
    tmp = None
    run = args.run
    if run is None:
        from grokscope.training import preset_config, train_run
        tmp = tempfile.TemporaryDirectory()
        run = Path(tmp.name) / "demo"
        train_run(preset_config(steps=3000), run, progress=False)
    spec = read_run_json(run)
    data = load_dataset(spec["dataset"])
    ckpts = dict(list_checkpoints(run))
    steps = [int(s) for s in args.steps.split(",")] if args.steps else [sorted(ckpts)[len(ckpts) // 2],
                                                                        max(ckpts)]
    x_all, y_all = data.split("train")
    print(f"load average {' / '.join(f'{v:.2f}' for v in os.getloadavg())}; torch threads 1")
    before = dataclasses.replace(NormParams(), method="cg")
    after = NormParams()
    tight = dataclasses.replace(NormParams(), method="lanczos", lanczos_dtype="float64", lanczos_tol=1e-7,
                                lanczos_iters=1000)
    for step in steps:
        model = build_model(spec["model"])
        load_into(model, read_state_dict(ckpts[step]), str(ckpts[step]))
        idx = seeded_subset(len(y_all), 256, 0)
        x, y = x_all[idx], y_all[idx]
        C = int(data.n_classes)
        norm_measures(model, x, y, C, after, "ce")  # warm-up (imports)
        cb, wb, mb = best(lambda: norm_measures(model, x, y, C, before, "ce"), args.repeat)
        ca, wa, ma = best(lambda: norm_measures(model, x, y, C, after, "ce"), args.repeat)
        _, _, mr = best(lambda: norm_measures(model, x, y, C, tight, "ce"), 1)
        print(f"\nstep {step}: 256 points, J {len(y) * C} x {int(ma['n_params'])}")
        print(f"  before (cg, {int(mb['cg_iters'])} it): {cb:.2f} s CPU, {wb:.2f} s wall")
        print(f"  after  (lanczos, {int(ma['cg_iters'])} it): {ca:.2f} s CPU, {wa:.2f} s wall; "
              f"ratio before/after {cb / ca:.1f}x CPU, {wb / wa:.1f}x wall")
        print(f"  reference: float64 Lanczos, {int(mr['cg_iters'])} it, wd_tangent_frac "
              f"{mr['wd_tangent_frac']:.6f} +- {mr['wd_tangent_frac_err']:.1e}")
        print(f"  |before - ref|: {errors(mb, mr)}")
        print(f"  |after - ref|:  {errors(ma, mr)}; certified bound on wd_tangent_frac "
              f"{ma['wd_tangent_frac_err']:.1e}")
        curve = ", ".join(f"{g:g}: {t:.4f}+-{e:.1e}" for g, t, e in zip(after.damping_grid,
                          ma["wd_tangent_frac_curve"], ma["wd_tangent_frac_curve_err"]))
        print(f"  tangent fraction by relative damping: {curve}")
        # explicit float64 Jacobian + SVD on a small subset
        idx = seeded_subset(len(y_all), args.small, 0)
        xs, ys = x_all[idx], y_all[idx]
        ex = dataclasses.replace(NormParams(), method="explicit")
        me = norm_measures(model, xs, ys, C, ex, "ce")
        ms = norm_measures(model, xs, ys, C, after, "ce")
        mc = norm_measures(model, xs, ys, C, before, "ce")
        print(f"  {args.small} points (J {len(ys) * C} x {int(me['n_params'])}), against explicit J + SVD: "
              f"after {errors(ms, me)}; before {errors(mc, me)}")
    if tmp is not None:
        tmp.cleanup()


if __name__ == "__main__":
    main()
