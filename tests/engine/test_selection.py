"""Checkpoint selection (``grokscope probe --steps``), probing a run while it is being written
(``probe_runs(..., follow=...)``; ``grokscope probe --follow`` beside a real trainer holding its run
folder's lock), the store's few-writes commit and the local workers' environment."""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import numpy as np
import pytest

from grokscope import runs
from grokscope.engine.driver import EngineConfig, dask_client, probe_runs
from grokscope.engine.jobs import ProbeRequest
from grokscope.engine.selection import SelectionError, parse_selection, select_steps
from grokscope.engine.store import ProbeStore
from grokscope.engine.store_view import load_group
from grokscope.probes import get_probe
from grokscope.training.schedule import parse_schedule
from tests.helpers import make_run

LOG100 = parse_schedule("log:100", 6000)  # the default preset's checkpoints


def test_selection_specs():
    steps = [0, 10, 20, 30, 40, 50, 60, 70, 80, 90, 100]
    assert select_steps(None, steps) == (steps, []) and select_steps("all", steps) == (steps, [])
    assert select_steps("100,0, 35,20", steps) == ([0, 20, 100], [35])  # exact steps; the rest reported
    assert select_steps("every:30", steps) == ([0, 30, 60, 90, 100], [])  # 0, 30, 60, 90 and the last
    assert select_steps("every:25", steps)[0] == [0, 20, 50, 70, 100]  # nearest to 0, 25, 50, 75, 100
    # log:N on a dense log-spaced schedule: N checkpoints, the first and last included, evenly spread in
    # log(1 + step) (no gap wider than twice the even spacing)
    chosen, missing = select_steps("log:10", LOG100)
    assert len(chosen) == 10 and chosen[0] == 0 and chosen[-1] == 6000 and not missing
    gaps = np.diff(np.log1p(chosen))
    assert gaps.max() < 2 * np.log1p(6000) / 9
    # sparse checkpoints: nearest ones, duplicates dropped; log spacing starts at the first checkpoint
    assert select_steps("log:5", [500, 1000, 2000, 5000, 10000])[0] == [500, 1000, 10000]
    assert select_steps("log:4", [7])[0] == [7] and select_steps("log:4", []) == ([], [])
    for bad in ("log:x", "log:1", "every:0", "first:3", "-3", "a,b", "1,,x"):
        with pytest.raises(SelectionError, match="--steps"):
            parse_selection(bad)


def test_steps_per_probe_then_the_rest(tmp_path, cli, monkeypatch):
    from tests.helpers import TEST_PROBES

    monkeypatch.setenv("GROKSCOPE_PROBES", TEST_PROBES)
    run = make_run(tmp_path / "r", [0, 1, 2, 4, 8, 16, 32])
    r = cli("probe", run, "--scheduler", "sync", "-m", "delta,acc", "--steps", "delta=0,8,32,33",
            "--steps", "every:16", "--json", "-q")
    assert r.exit_code == 0, r.output
    s = json.loads(r.stdout)
    # acc: every:16 -> 0, 16, 32; delta: 0, 8, 32 (33 has no checkpoint: a warning)
    assert (s["jobs"], s["completed"], s["excluded"]) == (6, 6, 8)
    assert s["warnings"] == ["r: delta --steps 0,8,32,33: no checkpoint at step(s) 33"]
    delta = load_group(run / "probes.zarr", "r", "delta")
    acc = load_group(run / "probes.zarr", "r", "acc")
    assert list(delta.step.values) == [0, 1, 2, 4, 8, 16, 32]  # the group spans every checkpoint...
    assert list(delta.step.values[delta.done.values]) == [0, 8, 32]  # ...done where selected
    assert list(acc.step.values[acc.done.values]) == [0, 16, 32]
    assert np.isnan(acc.accuracy.values[~acc.done.values]).all()
    # the previous checkpoint of a selected one is the run's previous checkpoint, not the previous selected
    assert list(delta.previous_step.values[delta.done.values]) == [-1, 4, 16]
    # again without --steps: only what is missing is computed
    r = cli("probe", run, "--scheduler", "sync", "-m", "delta,acc", "--json", "-q")
    s = json.loads(r.stdout)
    assert (s["jobs"], s["skipped"], s["excluded"]) == (8, 6, 0)
    assert load_group(run / "probes.zarr", "r", "delta").done.all()


def test_bad_steps_options(tmp_path, cli):
    run = make_run(tmp_path / "r", [0, 1])
    r = cli("probe", run, "--scheduler", "sync", "-m", "acc", "--steps", "norm=log:3")
    assert r.exit_code == 2 and "probe 'norm' is not among --metrics (acc)" in r.output
    r = cli("probe", run, "--scheduler", "sync", "-m", "acc", "--steps", "log:x")
    assert r.exit_code == 2 and "--steps 'log:x': 'x' is not an integer" in r.output
    assert not (run / "probes.zarr").exists()


def _writer(src: Path, dst: Path, pause: float) -> threading.Thread:
    """Copy ``src``'s checkpoints into the run ``dst`` one by one (run.json and the first at once), as a
    training run writes them; returns the started thread."""
    ckpts = sorted((src / runs.CHECKPOINT_DIR).iterdir())
    (dst / runs.CHECKPOINT_DIR).mkdir(parents=True)
    shutil.copy(src / runs.RUN_JSON, dst / runs.RUN_JSON)
    shutil.copy(ckpts[0], dst / runs.CHECKPOINT_DIR / ckpts[0].name)

    def copy_rest() -> None:
        for c in ckpts[1:]:
            time.sleep(pause)
            runs.atomic_write_bytes(dst / runs.CHECKPOINT_DIR / c.name, c.read_bytes())

    t = threading.Thread(target=copy_rest)
    t.start()
    return t


def _acc_cfg(out: Path, steps: str | None = None, **kw) -> EngineConfig:
    return EngineConfig(probes=[ProbeRequest("acc", get_probe("acc").make_params(), steps)], out=out, **kw)


STEPS = [0, 1, 3, 6, 10, 15, 21, 28]


def test_follow_probes_checkpoints_as_they_are_written(tmp_path):
    src = make_run(tmp_path / "src", STEPS)
    run = tmp_path / "live"
    writer = _writer(src, run, pause=0.15)
    s = probe_runs(run, _acc_cfg(tmp_path / "s.zarr", scheduler="sync"), follow=writer.is_alive, poll=0.05)
    writer.join()
    assert s.ok and (s.jobs, s.completed) == (len(STEPS), len(STEPS))
    ds = load_group(tmp_path / "s.zarr", "live", "acc")
    assert list(ds.step.values) == STEPS and ds.done.all()  # grown in step order, every job once
    ref = load_group(*_probe_all(src, tmp_path / "ref.zarr"))
    np.testing.assert_array_equal(ds.accuracy.values, ref.accuracy.values)


def test_probe_follow_reads_a_run_its_trainer_holds(tmp_path, cli):
    """A real trainer subprocess holds its run folder's lock; it is stopped (alive) when
    ``probe --follow`` starts and continued a little later: the probe run reads the locked folder,
    follows the trainer until it exits and ends with every checkpoint probed once."""
    from grokscope.engine.lock import LOCK_NAME, live_holder

    run = tmp_path / "training"
    args = ["--preset", "modadd-mlp", "--steps", "400", "--save", "every:20", "--eval-every", "none",
            "--model-kwargs", '{"width": 32}', "--dataset-kwargs", '{"p": 13}', "--quiet", "--threads", "1"]
    trainer = subprocess.Popen([sys.executable, "-m", "grokscope.cli", "train", *args, "--out", str(run)],
                               env={**os.environ, "OMP_NUM_THREADS": "1"}, stderr=subprocess.PIPE)
    resume = threading.Timer(1.5, lambda: trainer.send_signal(signal.SIGCONT))
    try:
        deadline = time.monotonic() + 120
        while len(runs.list_checkpoints(run)) < 3 or not (run / runs.RUN_JSON).is_file():
            assert trainer.poll() is None and time.monotonic() < deadline, trainer.communicate()
            time.sleep(0.01)
        trainer.send_signal(signal.SIGSTOP)
        at_start = len(runs.list_checkpoints(run))
        assert live_holder(run)["pid"] == trainer.pid and at_start < 21
        resume.start()
        r = cli("probe", run, "--follow", "-m", "acc", "--scheduler", "sync", "-q")
        assert trainer.wait(timeout=120) == 0, trainer.communicate()
    finally:
        resume.cancel()
        trainer.kill()
        trainer.wait()
    assert r.exit_code == 0, r.output
    assert not (run / LOCK_NAME).exists() and live_holder(run) is None
    ds = load_group(run / "probes.zarr", run.name, "acc")
    assert list(ds.step.values) == list(range(0, 401, 20)) and ds.done.all()
    assert "21 job(s) done, 0 failed" in r.output


def _probe_all(run: Path, out: Path) -> tuple[Path, str, str]:
    probe_runs(run, _acc_cfg(out, scheduler="sync"))
    return out, run.name, "acc"


def test_local_workers_and_follow_on_a_cluster(tmp_path):
    """The local cluster's workers run without Dask's MALLOC_TRIM_THRESHOLD_ (it made probes ~1.7x
    slower) and without the profiler; probe_runs follows a run on that cluster (the Dask path)."""
    src = make_run(tmp_path / "src", STEPS)
    with dask_client(_acc_cfg(tmp_path / "unused.zarr", workers=1)) as (client, threads, _):
        env = client.run(lambda: (os.environ.get("MALLOC_TRIM_THRESHOLD_"), __import__("dask").config.get(
            "distributed.worker.profile.enabled")))
        assert list(env.values()) == [(None, False)] and threads >= 1
        run = tmp_path / "live"
        writer = _writer(src, run, pause=0.15)
        cfg = _acc_cfg(tmp_path / "s.zarr", steps=",".join(map(str, STEPS[::2])),
                       scheduler=client.scheduler.address)
        s = probe_runs(run, cfg, follow=writer.is_alive, poll=0.05)
        writer.join()
    assert s.ok and (s.jobs, s.completed, s.excluded) == (4, 4, 4)
    ds = load_group(tmp_path / "s.zarr", "live", "acc")
    assert list(ds.step.values) == STEPS and list(ds.step.values[ds.done.values]) == STEPS[::2]


def test_commits_scattered_rows_in_few_writes(tmp_path, monkeypatch):
    """Rows of one commit that are not contiguous are merged (with the cells between them) into few
    writes; values, gaps and done flags are as if written one by one. Shards are sized per variable."""
    import xarray as xr

    from grokscope.engine.jobs import Outcome

    def result(step: int) -> xr.Dataset:
        return xr.Dataset({"big": (("a", "b"), np.full((300, 200), float(step))),  # 480 kB a step
                           "small": ((), np.float64(step) + 0.5), "name": ((), f"s{step}")})

    steps = list(range(40))
    store = ProbeStore(tmp_path / "s.zarr")
    info = store.create_group("r", "p", steps, {}, result(0))
    assert info.arrays["small"].shards[0] == 64 and info.arrays["big"].shards[0] == 2
    chosen = [0, 1, 2, 5, 9, 20, 21, 39]
    writes = {"n": 0}
    real_setitem = type(info.arrays["small"]).__setitem__

    def counting(self, key, value):  # every zarr write of this commit, all arrays
        writes["n"] += 1
        return real_setitem(self, key, value)

    monkeypatch.setattr(type(info.arrays["small"]), "__setitem__", counting)
    store.write(info, [(s, Outcome("r", s, "p", f"step-{s}", result=result(s), checkpoint_hash=f"h{s}"))
                       for s in chosen])
    monkeypatch.undo()
    # small/name/hash/etag/error/done (one 64-step shard): 0-2 with 5 and 9 (short gaps); 20-21; 39 -> 3
    # writes each; big (2-step shards): 0-2 (contiguous), 5, 9, 20-21, 39 -> 5 writes (one a row: 8)
    assert writes["n"] == 6 * 3 + 5
    ds = load_group(tmp_path / "s.zarr", "r", "p")
    done = np.isin(steps, chosen)
    assert (ds.done.values == done).all()
    np.testing.assert_array_equal(ds.small.values[done], np.array(chosen) + 0.5)
    assert np.isnan(ds.small.values[~done]).all() and np.isnan(ds.big.values[~done]).all()
    assert (ds.big.values[done] == np.array(chosen, dtype=float)[:, None, None]).all()
    assert list(ds.name.values[done]) == [f"s{s}" for s in chosen] and set(ds.name.values[~done]) == {""}
    assert list(ds.checkpoint_hash.values[done]) == [f"h{s}" for s in chosen]
