"""The engine with real processes: SIGKILL half-way then resume, and an external Dask cluster
(``dask scheduler`` + two ``dask worker`` on loopback), both compared with the default local run."""

from __future__ import annotations

import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import xarray as xr

from grokscope.engine.store import load_group
from tests.engine.conftest import ROOT, subprocess_env
from tests.helpers import make_run

N_STEPS = 40
RUNS = ("a", "b")
BIN = Path(sys.executable).parent


def _grokscope(*args: object):
    """``grokscope ARGS`` in this process (the CLI as a user calls it; saves a Python start-up)."""
    from click.testing import CliRunner

    from grokscope.cli import main

    return CliRunner().invoke(main, [str(a) for a in args], catch_exceptions=False)


def _done(store: Path) -> int:
    """Jobs marked done, read with plain xarray (works while the store is being written)."""
    import warnings

    if not (store / "zarr.json").exists():
        return 0
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        dt = xr.open_datatree(store, engine="zarr")
    return sum(int(dt[f"{run}/acc"].done.sum()) for run in RUNS if f"/{run}/acc" in {n.path for n in dt.subtree})


def assert_same_store(a: Path, b: Path) -> None:
    for run in RUNS:
        xr.testing.assert_identical(load_group(a, run, "acc"), load_group(b, run, "acc"))


@pytest.fixture(scope="module")
def sweep(tmp_path_factory):
    """Two runs of 60 checkpoints and the store of the default run (local cluster, 2 processes)."""
    root = tmp_path_factory.mktemp("sweep")
    for i, name in enumerate(RUNS):
        make_run(root / "runs" / name, list(range(N_STEPS)), seed=i)
    ref = root / "ref.zarr"
    r = _grokscope("probe", root / "runs", "-o", ref, "--json", "-q", "--workers", "2")
    assert r.exit_code == 0, r.output
    summary = json.loads(r.stdout)
    assert summary["completed"] == len(RUNS) * N_STEPS and "local cluster" in summary["scheduler"]
    return root


def test_sigkill_half_way_then_resume(sweep):
    store = sweep / "killed.zarr"
    log = open(sweep / "killed.log", "w")
    proc = subprocess.Popen([str(BIN / "grokscope"), "probe", str(sweep / "runs"), "-o", str(store),
                             "--workers", "1", "--flush-interval", "0", "-q"],
                            env=subprocess_env(), cwd=ROOT, stdout=log, stderr=log, start_new_session=True)
    total = len(RUNS) * N_STEPS
    deadline = time.monotonic() + 240
    try:
        while time.monotonic() < deadline and proc.poll() is None:
            if _done(store) >= 10:  # reading the store while it is being written
                break
            time.sleep(0.05)
    finally:
        os.killpg(proc.pid, signal.SIGKILL)  # the driver and its worker processes, no clean-up
        proc.wait()
    assert proc.returncode == -signal.SIGKILL
    killed_at = _done(store)
    assert 10 <= killed_at < total, (killed_at, (sweep / "killed.log").read_text())
    holder = json.loads((store / ".grokscope.lock").read_text())
    assert holder["pid"] == proc.pid  # the dead process's lock is still there...
    r = _grokscope("probe", sweep / "runs", "-o", store, "--json", "-q")
    assert r.exit_code == 0, r.output
    summary = json.loads(r.stdout)
    assert summary["took_over_lock"]["pid"] == proc.pid  # ...and is taken over as stale
    assert summary["skipped"] == killed_at and summary["jobs"] == total - killed_at
    assert summary["completed"] == total - killed_at
    assert_same_store(store, sweep / "ref.zarr")


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_external_dask_cluster_gives_the_same_store(sweep):
    port = _free_port()
    address = f"tcp://127.0.0.1:{port}"
    env = subprocess_env()
    logs = open(sweep / "cluster.log", "w")
    procs = [subprocess.Popen([str(BIN / "dask"), "scheduler", "--host", "127.0.0.1", "--port", str(port),
                               "--no-dashboard"], env=env, cwd=ROOT, stdout=logs, stderr=logs,
                              start_new_session=True)]
    try:
        for _ in range(2):
            procs.append(subprocess.Popen(
                [str(BIN / "dask"), "worker", address, "--nthreads", "1", "--no-dashboard",
                 "--memory-limit", "0", "--host", "127.0.0.1"],
                env=env, cwd=ROOT, stdout=logs, stderr=logs, start_new_session=True))
        from distributed import Client

        with Client(address, timeout="60s") as client:
            client.wait_for_workers(2, timeout=120)
        store = sweep / "cluster.zarr"
        r = _grokscope("probe", sweep / "runs", "-o", store, "--scheduler", address, "--json", "-q")
        assert r.exit_code == 0, r.output
        summary = json.loads(r.stdout)
        assert summary["scheduler"] == f"{address} (2 worker(s))"
        assert summary["completed"] == len(RUNS) * N_STEPS
        assert_same_store(store, sweep / "ref.zarr")
    finally:
        for p in reversed(procs):
            if p.poll() is None:
                os.killpg(p.pid, signal.SIGTERM)
        for p in procs:
            try:
                p.wait(timeout=20)
            except subprocess.TimeoutExpired:
                os.killpg(p.pid, signal.SIGKILL)
                p.wait()
    shutil.rmtree(store, ignore_errors=True)
