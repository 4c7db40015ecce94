"""Probe-engine benchmarks: per-job overhead, 1 → 2 worker speed-up, and a 10 000-job scale run.

    python benchmarks/bench_engine.py                 # everything (about 5-10 minutes on 2 cores)
    python benchmarks/bench_engine.py --skip-scale    # overhead and speed-up only
    python benchmarks/bench_engine.py --scale-runs 20 # a smaller sweep
    python benchmarks/bench_engine.py --only-speedup  # 1 -> 2 workers on 100 checkpoints of lc,align

1. **overhead**: ``acc`` on a tiny MLP with 10 train / 10 test digits (the probe itself takes well
   under a millisecond), 1 run x 200 checkpoints; per-job time of the steady state (first to last
   result) and of the whole command, in-process (``sync``) and on the default local cluster.
2. **speed-up**: real probes (``lc,align`` by default, ``--speedup-probes``; ``acc`` on a wide MLP
   when they are not installed) over 100 checkpoints (``--speedup-ckpts``) with 1 and 2 local worker
   processes; steady-state and whole-command ratios and the load average before and after.
3. **scale**: 100 runs x 100 tiny checkpoints (10 000 jobs) probed with ``acc``: a first attempt is
   SIGKILLed half-way, the rerun finishes the rest; wall time, jobs/s, the store's file count, and the
   per-job time against the 100-job case (1 run x 100 checkpoints), which must stay within 2x.
4. **integrity** (``--integrity``, on the scale sweep; ``--scale-runs`` to shrink it): the cost of
   re-hashing every done checkpoint on a rerun (``--recheck``, the default, against ``--no-recheck``),
   of the atomic growth of ``step`` (every group grown by one checkpoint; the committed-length
   marker's share of it) and of reading through the committed view (``load_group`` against plain
   ``xr.open_dataset``).

Numbers taken on a shared machine are contended: run under ``nice`` and read ratios, not absolutes.
"""

from __future__ import annotations

import argparse
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
TINY_DATA = {"name": "digits", "kwargs": {"n_train": 10, "n_test": 10}, "seed": 0}
TINY_MLP = {"arch": "mlp", "kwargs": {"in_dim": 64, "out_dim": 10, "depth": 1, "width": 4}}


def make_runs(root: Path, n_runs: int, n_ckpts: int, model: dict, data: dict) -> Path:
    """``n_runs`` grokscope runs of ``n_ckpts`` checkpoints each (random weights, seeded).

    Files are written with ``safetensors.torch.save_file`` and the metadata ``save_checkpoint`` writes,
    without its per-file fsync (10 000 fsyncs on a shared disk dominate the set-up otherwise).
    """
    from safetensors.torch import save_file

    from grokscope import runs
    from grokscope.models import build_model

    for r in range(n_runs):
        run = root / f"run{r:03d}"
        runs.write_run_json(run, model, data, {"loss": "ce"})
        torch.manual_seed(r)
        net = build_model(model)
        for s in range(n_ckpts):
            with torch.no_grad():
                for p in net.parameters():
                    p.add_(0.01 * torch.randn_like(p))
            path = runs.checkpoint_path(run, s)
            path.parent.mkdir(parents=True, exist_ok=True)
            save_file({k: v.contiguous() for k, v in net.state_dict().items()}, str(path),
                      metadata={"step": str(s), "format": "grokscope"})
    return root


def probe(path: Path, out: Path, metric: str = "acc", **kw) -> dict:
    """Run the engine in-process; the summary plus steady-state timing (first → last result)."""
    from grokscope.engine.driver import EngineConfig, probe_runs
    from grokscope.engine.jobs import ProbeRequest
    from grokscope.probes import get_probe

    cfg = EngineConfig(probes=[ProbeRequest(m, get_probe(m).make_params()) for m in metric.split(",")],
                       out=out, **kw)
    marks: dict[str, float] = {}
    t0 = time.perf_counter()

    def progress(n: int, done: int, failed: int, rate: float) -> None:
        now = time.perf_counter() - t0
        marks.setdefault("first", now)
        marks["first_n"] = marks.get("first_n", n)
        marks["last"] = now

    s = probe_runs(path, cfg, progress=progress)
    jobs = s.completed + len(s.failures)
    steady = (marks["last"] - marks["first"]) / max(jobs - marks["first_n"], 1) if marks else float("nan")
    return {"jobs": jobs, "failed": len(s.failures), "wall": s.seconds, "per_job": s.seconds / max(jobs, 1),
            "steady_per_job": steady, "probe_per_job": s.probe_seconds / max(jobs, 1),
            "scheduler": s.scheduler}


def files_in(path: Path) -> int:
    return sum(len(fs) for _, _, fs in os.walk(path))


def section_overhead(work: Path) -> None:
    print("\n== engine overhead per job (acc on a tiny MLP, 10+10 digits; 1 run x 200 checkpoints)")
    runs = make_runs(work / "overhead", 1, 200, TINY_MLP, TINY_DATA)
    sync = probe(runs, work / "ov-sync.zarr", scheduler="sync", threads=1)
    local = probe(runs, work / "ov-local.zarr", workers=2)
    for name, r in (("sync (in-process)", sync), ("local cluster, 2 workers", local)):
        print(f"  {name:26s} whole command {1e3 * r['per_job']:7.2f} ms/job   steady state "
              f"{1e3 * r['steady_per_job']:7.2f} ms/job   inside the probe {1e3 * r['probe_per_job']:6.3f} ms/job")
    print(f"  ratio local/sync steady-state per job: {local['steady_per_job'] / sync['steady_per_job']:.2f}")


def section_speedup(work: Path, metrics: str = "lc,align", n_ckpts: int = 100) -> None:
    from grokscope.probes import available_probes

    if all(m in available_probes() for m in metrics.split(",")):
        metric, model, data = metrics, {"arch": "mlp", "kwargs": {"in_dim": 64, "out_dim": 10, "depth": 3,
                                                                  "width": 64}}, \
            {"name": "digits", "kwargs": {"n_train": 300, "n_test": 200}, "seed": 0}
    else:
        metric, model, data = "acc", {"arch": "mlp", "kwargs": {"in_dim": 64, "out_dim": 10, "depth": 3,
                                                                "width": 1024}}, \
            {"name": "digits", "kwargs": {"n_train": 1500}, "seed": 0}
    print(f"\n== speed-up from 1 to 2 worker processes ({metric} on {model['kwargs']}, 1 run x {n_ckpts} "
          f"checkpoints); load average before: {' / '.join(f'{v:.2f}' for v in os.getloadavg())}")
    runs = make_runs(work / "speedup", 1, n_ckpts, model, data)
    one = probe(runs, work / "sp1.zarr", metric=metric, workers=1, threads=1)
    two = probe(runs, work / "sp2.zarr", metric=metric, workers=2, threads=1)
    for name, r in (("1 worker", one), ("2 workers", two)):
        print(f"  {name:10s} whole command {r['wall']:6.1f} s   steady state {1e3 * r['steady_per_job']:7.1f} "
              f"ms/job   inside the probe {1e3 * r['probe_per_job']:7.1f} ms/job")
    print(f"  speed-up 1 -> 2 workers: steady state x{one['steady_per_job'] / two['steady_per_job']:.2f}, "
          f"whole command x{one['wall'] / two['wall']:.2f} (ideal x2.00 on 2 free cores); load average "
          f"after: {' / '.join(f'{v:.2f}' for v in os.getloadavg())}")


def _done(store: Path) -> int:
    import numpy as np
    import zarr

    n = 0
    for d in store.glob("run*/acc/done"):
        try:
            n += int(np.asarray(zarr.open_array(str(d), mode="r")[:]).sum())
        except Exception:  # noqa: BLE001 - being created
            pass
    return n


def section_scale(work: Path, n_runs: int, n_ckpts: int) -> None:
    total = n_runs * n_ckpts
    print(f"\n== scale: {n_runs} runs x {n_ckpts} checkpoints = {total} jobs (acc, tiny MLP)")
    t = time.perf_counter()
    sweep = make_runs(work / "sweep", n_runs, n_ckpts, TINY_MLP, TINY_DATA)
    print(f"  generated {total} checkpoints in {time.perf_counter() - t:.1f} s")
    small = probe(make_runs(work / "small", 1, n_ckpts, TINY_MLP, TINY_DATA), work / "small.zarr")
    # the sweep: a real `grokscope probe` SIGKILLed half-way, then resumed to the end
    store = work / "sweep.zarr"
    env = dict(os.environ, PYTHONPATH=str(ROOT))
    log = open(work / "killed.log", "w")
    t = time.perf_counter()
    proc = subprocess.Popen([str(Path(sys.executable).parent / "grokscope"), "probe", str(sweep), "-o",
                             str(store), "-q"], env=env, stdout=log, stderr=log, start_new_session=True)
    while proc.poll() is None and _done(store) < total // 2 and time.perf_counter() - t < 400:
        time.sleep(1.0)
    os.killpg(proc.pid, signal.SIGKILL)
    proc.wait()
    first_wall = time.perf_counter() - t
    killed_at = _done(store)
    print(f"  first attempt SIGKILLed after {first_wall:.1f} s with {killed_at} jobs done "
          f"({killed_at / first_wall:.1f} jobs/s incl. start-up)")
    big = probe(sweep, store)
    done = _done(store)
    n_files = files_in(store)
    wall = first_wall + big["wall"]
    print(f"  resumed: the other {big['jobs']} jobs in {big['wall']:.1f} s ({big['jobs'] / big['wall']:.1f} jobs/s, "
          f"steady {1e3 * big['steady_per_job']:.2f} ms/job), {big['failed']} failed; {done}/{total} done")
    print(f"  all {total} jobs: {wall:.1f} s wall over both attempts = {total / wall:.1f} jobs/s; store: "
          f"{n_files} files ({n_files / total:.3f} per job, {n_runs} run groups)")
    print(f"  100-job case (1 run x {n_ckpts}): {small['wall']:.1f} s, steady {1e3 * small['steady_per_job']:.2f} "
          f"ms/job, whole command {1e3 * small['per_job']:.1f} ms/job")
    ratio = big["steady_per_job"] / small["steady_per_job"]
    print(f"  per-job overhead at scale vs the 100-job case (steady state): x{ratio:.2f} "
          f"({'within' if ratio <= 2 else 'OVER'} the 2x budget); whole command per job: "
          f"x{(wall / total) / small['per_job']:.2f} (the 100-job case pays a cluster start-up for 100 jobs)")
    assert done == total, f"resume left {total - done} jobs undone"


def section_integrity(work: Path, n_runs: int, n_ckpts: int) -> None:
    import xarray as xr

    from grokscope.engine.store import ProbeStore
    from grokscope.engine.store_schema import COMMITTED
    from grokscope.engine.store_view import load_group

    total = n_runs * n_ckpts
    print(f"\n== integrity: {n_runs} runs x {n_ckpts} checkpoints = {total} jobs (acc, tiny MLP)")
    sweep = work / "sweep"
    if not (work / "sweep.zarr").exists():
        make_runs(sweep, n_runs, n_ckpts, TINY_MLP, TINY_DATA)
        first = probe(sweep, work / "sweep.zarr")
        print(f"  probed {first['jobs']} jobs in {first['wall']:.1f} s")
    store = work / "sweep.zarr"
    trust = probe(sweep, store, recheck=False)
    check = probe(sweep, store, recheck=True)
    extra = check["wall"] - trust["wall"]
    print(f"  rerun of the complete store: --no-recheck {trust['wall']:.2f} s, --recheck {check['wall']:.2f} s "
          f"(+{extra:.2f} s = {1e3 * extra / total:.2f} ms per checkpoint re-hashed, cluster start-up included)")
    # atomic growth: every group grown by one step; the marker written last is its commit
    ps = ProbeStore(store)
    grow_s = marker_s = 0.0
    for r in range(n_runs):
        info = ps.group(f"run{r:03d}", "acc")
        t = time.perf_counter()
        info = ps.grow(info, info.steps + [n_ckpts])
        grow_s += time.perf_counter() - t
        t = time.perf_counter()
        info.zgroup.attrs.update({COMMITTED: len(info.steps)})  # the marker alone, written again
        marker_s += time.perf_counter() - t
    print(f"  growth of {n_runs} groups by one step: {1e3 * grow_s / n_runs:.1f} ms per group, of which the "
          f"committed-length marker {1e3 * marker_s / n_runs:.1f} ms ({100 * marker_s / grow_s:.0f} %)")
    t = time.perf_counter()
    for r in range(min(n_runs, 20)):
        load_group(store, f"run{r:03d}", "acc")
    view = (time.perf_counter() - t) / min(n_runs, 20)
    t = time.perf_counter()
    for r in range(min(n_runs, 20)):
        with xr.open_dataset(store, group=f"run{r:03d}/acc", engine="zarr", consolidated=False) as ds:
            ds.load()
    plain = (time.perf_counter() - t) / min(n_runs, 20)
    print(f"  reading one group: load_group (committed view) {1e3 * view:.1f} ms, plain xr.open_dataset "
          f"{1e3 * plain:.1f} ms (x{view / plain:.2f})")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--skip-scale", action="store_true")
    ap.add_argument("--only-scale", action="store_true")
    ap.add_argument("--integrity", action="store_true", help="only the integrity section (see above)")
    ap.add_argument("--scale-runs", type=int, default=100)
    ap.add_argument("--scale-ckpts", type=int, default=100)
    ap.add_argument("--only-speedup", action="store_true")
    ap.add_argument("--speedup-probes", default="lc,align")
    ap.add_argument("--speedup-ckpts", type=int, default=100)
    ap.add_argument("--workdir", type=Path, default=None)
    args = ap.parse_args()
    torch.set_num_threads(1)
    work = Path(args.workdir or tempfile.mkdtemp(prefix="grokscope-bench-"))
    work.mkdir(parents=True, exist_ok=True)
    print(f"grokscope engine benchmark in {work} ({os.cpu_count()} cores, load "
          f"{', '.join(f'{x:.1f}' for x in os.getloadavg())})")
    try:
        if args.integrity:
            section_integrity(work, args.scale_runs, args.scale_ckpts)
            return
        if not args.only_scale:
            if not args.only_speedup:
                section_overhead(work)
            section_speedup(work, args.speedup_probes, args.speedup_ckpts)
        if not args.skip_scale and not args.only_speedup:
            section_scale(work, args.scale_runs, args.scale_ckpts)
            section_integrity(work, args.scale_runs, args.scale_ckpts)
    finally:
        if args.workdir is None:
            shutil.rmtree(work, ignore_errors=True)
    print(f"\nload at the end: {', '.join(f'{x:.1f}' for x in os.getloadavg())}")


if __name__ == "__main__":
    main()
