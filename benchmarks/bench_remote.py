"""A series on object storage against the same series on local disk (issue 28, the run side).

    python benchmarks/bench_remote.py [--ckpts 100] [--workers 2] [--budget-ckpts 3]

One run of ``--ckpts`` small checkpoints (the tests' digits MLP, widened to ``--hidden`` units) is
probed with ``acc`` by ``grokscope probe`` (a subprocess, the default local cluster) twice: from a
local folder, and from a loopback S3 server (moto's server mode, real HTTP, as in the tests) under
``--cache-budget`` = ``--budget-ckpts`` checkpoints. Printed:

* the wall time of each command and their ratio (remote / local);
* bytes fetched / bytes of the checkpoints, from the S3 server's own request log (each full GET of a
  checkpoint counts its size; range reads are counted apart);
* the peak bytes of checkpoint files held in the workers' fetch cache (sampled every millisecond)
  against the budget;
* whether the two stores hold equal values.

Numbers on a shared machine are contended: read the ratios, and say the load.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import re
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))


class _Requests(logging.Handler):
    def __init__(self):
        super().__init__(logging.INFO)
        self.lines: list[str] = []

    def emit(self, record: logging.LogRecord) -> None:
        self.lines.append(re.sub(r"\x1b\[[0-9;]*m", "", record.getMessage()))


def _peak(folder: Path, stop: threading.Event, out: list[int]) -> None:
    while not stop.is_set():
        held = 0
        for top, _, files in os.walk(folder):
            for f in files:
                if f.endswith(".safetensors"):
                    try:
                        held += os.stat(os.path.join(top, f)).st_size
                    except OSError:
                        pass
        out[0] = max(out[0], held)
        time.sleep(0.001)


def _probe(path: str, out: Path, env: dict[str, str], workers: int, *extra: str) -> tuple[float, dict]:
    cmd = [str(Path(sys.executable).parent / "grokscope"), "probe", path, "-o", str(out), "--json", "-q",
           "--workers", str(workers), *extra]
    t0 = time.perf_counter()
    r = subprocess.run(cmd, env=env, capture_output=True, text=True)
    seconds = time.perf_counter() - t0
    if r.returncode != 0:
        raise SystemExit(f"{' '.join(cmd)} failed:\n{r.stderr[-3000:]}")
    return seconds, json.loads(r.stdout)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--ckpts", type=int, default=100)
    ap.add_argument("--workers", type=int, default=2)
    ap.add_argument("--hidden", type=int, default=256, help="width of the MLP's hidden layer (checkpoint size)")
    ap.add_argument("--budget-ckpts", type=int, default=3, help="--cache-budget in checkpoints")
    args = ap.parse_args()

    import s3fs

    from tests.helpers import MLP, make_run
    from tests.s3_server import environment, new_bucket, start_server

    log = logging.getLogger("werkzeug")
    requests = _Requests()
    server, endpoint = start_server()
    log.addHandler(requests)
    log.setLevel(logging.INFO)
    log.disabled = False
    try:
        os.environ.update(environment(endpoint))
        s3 = new_bucket(endpoint)
        work = Path(tempfile.mkdtemp(prefix="bench-remote-"))
        spec = {**MLP, "kwargs": {**MLP.get("kwargs", {}), "width": args.hidden}}
        make_run(work / "runs" / "r", list(range(args.ckpts)), model=spec)
        files = sorted((work / "runs" / "r" / "checkpoints").glob("*.safetensors"))
        total = sum(f.stat().st_size for f in files)
        size = max(f.stat().st_size for f in files)
        fs = s3fs.S3FileSystem(endpoint_url=endpoint, use_listings_cache=False, skip_instance_cache=True)
        fs.put(str(work / "runs"), s3.url("runs"), recursive=True)
        env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(ROOT), os.environ.get("PYTHONPATH", "")]),
               "OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1"}
        print(f"machine: {os.cpu_count()} cores, load average {os.getloadavg()[0]:.2f}; series: {len(files)} "
              f"checkpoints of {size} bytes ({total / 1e6:.1f} MB), {args.workers} worker process(es)", flush=True)

        local_s, local = _probe(str(work / "runs"), work / "local.zarr", env, args.workers)
        budget = args.budget_ckpts * size
        cache = work / "tmp"
        cache.mkdir()
        requests.lines.clear()
        peak, stop = [0], threading.Event()
        watcher = threading.Thread(target=_peak, args=(cache, stop, peak))
        watcher.start()
        try:
            remote_s, remote = _probe(s3.url("runs"), work / "remote.zarr", {**env, "TMPDIR": str(cache)},
                                      args.workers, "--cache-budget", str(budget))
        finally:
            stop.set()
            watcher.join()
        full = [ln for ln in requests.lines if '"GET ' in ln and ".safetensors" in ln and '" 200' in ln]
        ranged = [ln for ln in requests.lines if '"GET ' in ln and ".safetensors" in ln and '" 206' in ln]
        fetched = 0
        sizes = {f.name: f.stat().st_size for f in files}
        for ln in full:
            name = ln.split('"')[1].split()[1].rsplit("/", 1)[-1]
            fetched += sizes.get(name, 0)

        import xarray as xr

        from grokscope.engine.store_view import load_group

        a, b = load_group(work / "local.zarr", "r", "acc"), load_group(work / "remote.zarr", "r", "acc")
        same = all(a[v].equals(b[v]) for v in ("accuracy", "loss", "done"))
        del xr
        print(f"local:  {local_s:.1f} s wall ({local['completed']} jobs)")
        print(f"remote: {remote_s:.1f} s wall ({remote['completed']} jobs); ratio remote/local {remote_s / local_s:.2f}")
        print(f"bytes fetched / bytes of the checkpoints: {fetched} / {total} = {fetched / total:.3f} "
              f"({len(full)} full GETs of checkpoints, {len(ranged)} range reads)")
        print(f"peak local bytes held: {peak[0]} of --cache-budget {budget} ({peak[0] / budget:.2f}; "
              f"{peak[0] / size:.1f} checkpoints)")
        print(f"values equal: {same}")
        return 0 if same and peak[0] <= budget else 1
    finally:
        server.stop()


if __name__ == "__main__":
    sys.exit(main())
