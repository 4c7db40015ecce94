"""The store: template, fills per dtype, region writes, growth, drift checks, shards, the lock."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import numpy as np
import pytest
import xarray as xr
import zarr

from grokscope.engine.jobs import Outcome
from grokscope.engine.lock import StoreLock, StoreLocked
from grokscope.engine.store import ProbeStore
from grokscope.engine.store_schema import fill_value, shard_steps
from grokscope.engine.store_view import load_group, open_store
from tests.engine.conftest import subprocess_env
from tests.helpers import make_run


def _result(step: int, n_layer: int = 3) -> xr.Dataset:
    return xr.Dataset(
        {"density": (("layer", "split"), np.full((n_layer, 2), step + 0.5, dtype=np.float32)),
         "count": (("layer",), np.arange(n_layer, dtype=np.int32) + step),
         "flag": ((), np.bool_(step % 20 == 0)),
         "label": ((), f"s{step}")},
        coords={"layer": [f"l{i}" for i in range(n_layer)], "split": ["train", "test"], "radius": 0.1})


def _ok(step: int, **kw) -> Outcome:
    return Outcome(run="r", step=step, probe="p", label=f"step-{step}", result=_result(step, **kw),
                   checkpoint_hash=f"h{step}")


def test_template_fills_writes_and_growth(tmp_path):
    store = ProbeStore(tmp_path / "s.zarr")
    steps = [0, 10, 20, 30]
    info = store.create_group("r", "p", steps, {"params": {"a": 1}}, _result(0))
    store.write(info, [(10, _ok(10)), (0, _ok(0)),
                       (30, Outcome(run="r", step=30, probe="p", label="x", error="boom"))])
    ds = load_group(tmp_path / "s.zarr", "r", "p")
    assert list(ds.step.values) == steps and ds.density.dims == ("step", "layer", "split")
    assert ds.density.dtype == np.float32 and float(ds.density[1, 0, 0]) == 10.5
    assert np.isnan(ds.density.values[2]).all() and np.isnan(ds.density.values[3]).all()
    assert np.isnan(ds["count"].values[2:]).all()  # ints: masked to NaN by xarray (see the docs)
    np.testing.assert_array_equal(ds["count"].values[:2], [[0, 1, 2], [10, 11, 12]])
    assert list(ds.flag.values) == [True, False, False, False]
    assert list(ds.label.values) == ["s0", "s10", "", ""]
    assert list(ds.done.values) == [True, True, False, False]
    assert list(ds.error.values) == ["", "", "", "boom"]
    assert list(ds.checkpoint_hash.values) == ["h0", "h10", "", ""]
    assert float(ds.radius) == 0.1 and ds.attrs["params"] == {"a": 1}
    with xr.open_dataset(tmp_path / "s.zarr", group="r/p", engine="zarr", consolidated=False,
                         mask_and_scale=False) as raw:
        assert raw["count"].dtype == np.int64 and raw["count"].values[2, 0] == np.iinfo(np.int64).min
    # growth: only the driver resizes; old cells keep their values
    info = store.grow(info, [0, 10, 20, 30, 40, 50])
    store.write(info, [(50, _ok(50)), (20, _ok(20))])
    ds2 = load_group(tmp_path / "s.zarr", "r", "p")
    assert list(ds2.step.values) == [0, 10, 20, 30, 40, 50]
    assert list(ds2.done.values) == [True, True, True, False, False, True]
    xr.testing.assert_identical(ds2.isel(step=[0, 1]), ds.isel(step=[0, 1]))
    # a reopened store sees the same state
    again = ProbeStore(tmp_path / "s.zarr").group("r", "p")
    assert again.steps == [0, 10, 20, 30, 40, 50] and list(again.done) == list(ds2.done.values)
    assert again.data_vars == {"density", "count", "flag", "label"}


def test_copied_templates_equal_written_ones(tmp_path):
    """A group whose template is copied from an earlier one (same steps and outputs, other attrs)
    reads back exactly like one xarray wrote from scratch, and takes writes the same way."""
    steps = [0, 10, 20, 30]
    store = ProbeStore(tmp_path / "a.zarr")
    first = store.create_group("r0", "p", steps, {"params": {"a": 1}, "run": "r0"}, _result(0))
    copied = store.create_group("r1", "p", steps, {"params": {"a": 1}, "run": "r1"}, _result(0))
    assert len(store.templates) == 1  # the second group reused the first one's template
    store.create_group("r2", "p", [0, 10], {"run": "r2"}, _result(0))
    store.create_group("r3", "p", steps, {"run": "r3"}, _result(0, n_layer=4))
    assert len(store.templates) == 3  # other steps or other shapes: written by xarray
    fresh = ProbeStore(tmp_path / "b.zarr")
    direct = fresh.create_group("r1", "p", steps, {"params": {"a": 1}, "run": "r1"}, _result(0))
    for s, info in ((store, copied), (fresh, direct)):
        s.write(info, [(10, _ok(10)), (30, _ok(30))])
    a = load_group(tmp_path / "a.zarr", "r1", "p")
    b = load_group(tmp_path / "b.zarr", "r1", "p")
    xr.testing.assert_identical(a, b)
    assert a.attrs["run"] == "r1" and load_group(tmp_path / "a.zarr", "r0", "p").attrs["run"] == "r0"
    assert list(a.done.values) == [False, True, False, True] and first.steps == steps
    assert not (tmp_path / "a.zarr" / ".grokscope-tmp").exists()


_KILLED_WRITER = """
import os, signal, sys
import numpy as np, xarray as xr
from grokscope.engine.store import ProbeStore
store = ProbeStore(sys.argv[1])
first = xr.Dataset({"v": (("k",), np.zeros(3, dtype=np.float32))})
store.create_group(sys.argv[2], "p", [0, 10], {}, first)
print(os.getpid(), flush=True)
if sys.argv[3] == "kill":
    os.kill(os.getpid(), signal.SIGKILL)
"""


@pytest.mark.parametrize("remote", [False, True], ids=["local", "s3"])
def test_a_killed_writers_scratch_is_swept_by_the_next(tmp_path, remote, request):
    """The local scratch of a store handle (pristine templates; on object storage, templates being
    uploaded) is removed when the handle goes, and what a SIGKILLed writer left is removed by the next
    writer on the machine: nothing piles up in the temporary folder."""
    machine_tmp = tmp_path / "machine-tmp"
    machine_tmp.mkdir()
    store = request.getfixturevalue("s3").url("s.zarr") if remote else str(tmp_path / "s.zarr")
    env = {**subprocess_env(), "TMPDIR": str(machine_tmp)}  # the S3 server's address included

    def writer(run: str, how: str) -> int:
        r = subprocess.run([sys.executable, "-c", _KILLED_WRITER, store, run, how], env=env,
                           capture_output=True, text=True, timeout=120)
        assert r.returncode == (-9 if how == "kill" else 0), r.stderr[-2000:]
        return int(r.stdout.split()[0])

    dead = writer("r0", "kill")
    assert [d.name.split("-")[2] for d in machine_tmp.glob("grokscope-store-*")] == [str(dead)]
    writer("r1", "exit")
    assert list(machine_tmp.glob("grokscope-store-*")) == []
    assert ProbeStore(store, read_only=True).group("r1", "p").steps == [0, 10]


def test_variables_added_after_a_failed_first_job(tmp_path):
    store = ProbeStore(tmp_path / "s.zarr")
    info = store.create_group("r", "p", [0, 1, 2], {"probe": "p"})  # the first outcome was an error
    store.write(info, [(0, Outcome(run="r", step=0, probe="p", label="x", error="unreadable"))])
    info = store.add_data_vars(info, _result(1))
    store.write(info, [(1, _ok(1)), (2, _ok(2))])
    ds = load_group(tmp_path / "s.zarr", "r", "p")
    assert list(ds.done.values) == [False, True, True] and list(ds.error.values) == ["unreadable", "", ""]
    assert np.isnan(ds.density.values[0]).all() and float(ds.density[2, 0, 0]) == 2.5
    assert list(ds.layer.values) == ["l0", "l1", "l2"] and ds.attrs["probe"] == "p"


def test_drift_is_detected(tmp_path):
    store = ProbeStore(tmp_path / "s.zarr")
    info = store.create_group("r", "p", [0, 1], {}, _result(0))
    assert store.check_result(info, _result(1)) == ""
    assert "shape" in store.check_result(info, _result(1, n_layer=4))
    moved = _result(1).assign_coords(layer=["a", "b", "c"])
    assert "coordinate 'layer' differs" in store.check_result(info, moved)


def test_shards_keep_the_file_count_small(tmp_path):
    store = ProbeStore(tmp_path / "s.zarr")
    steps = list(range(300))
    info = store.create_group("r", "p", steps, {}, _result(0))
    store.write(info, [(s, _ok(s)) for s in steps])
    files = [f for _, _, fs in os.walk(tmp_path / "s.zarr" / "r" / "p" / "density") for f in fs]
    assert len(files) == 2  # zarr.json + one shard holding 300 chunks of one step each
    arr = zarr.open_array(str(tmp_path / "s.zarr" / "r" / "p" / "density"), mode="r")
    assert arr.chunks == (1, 3, 2) and arr.shards == (512, 3, 2)
    assert float(load_group(tmp_path / "s.zarr", "r", "p").density[299, 0, 0]) == 299.5
    assert shard_steps(10_000, 8) == 1024 and shard_steps(10, 8) == 16 and shard_steps(100, 1 << 20) == 1
    assert np.isnan(fill_value(np.float32)) and fill_value(np.int16) == -(2 ** 15)


def test_open_store_shows_every_run_and_probe(tmp_path):
    store = ProbeStore(tmp_path / "s.zarr")
    for run in ("a", "b"):
        store.set_run_attrs(run, {"path": run})
        for probe in ("p", "q"):
            store.create_group(run, probe, [0], {}, _result(0))
    dt = open_store(tmp_path / "s.zarr")
    assert {n.path for n in dt.subtree} == {"/", "/a", "/b", "/a/p", "/a/q", "/b/p", "/b/q"}
    assert dt["a"].attrs["path"] == "a"


def test_lock_refuses_a_live_holder_and_takes_over_a_dead_one(tmp_path, cli):
    run = make_run(tmp_path / "r", [0])
    store = tmp_path / "s.zarr"
    code = ("import sys, time; from grokscope.engine.lock import StoreLock; StoreLock(sys.argv[1]).acquire(); "
            "print('ok', flush=True); time.sleep(120)")
    holder = subprocess.Popen([sys.executable, "-c", code, str(store)], stdout=subprocess.PIPE,
                              env=subprocess_env())
    try:
        assert holder.stdout.readline().strip() == b"ok"
        r = cli("probe", run, "-o", store, "--scheduler", "sync")
        assert r.exit_code == 1
        assert f"is being written by pid {holder.pid} on" in r.output and "one probe run per store" in r.output
    finally:
        holder.kill()
        holder.wait()
    r = cli("probe", run, "-o", store, "--scheduler", "sync", "--threads", "1")
    assert r.exit_code == 0, r.output
    assert f"took over a stale lock of {holder.pid}" in r.stderr
    assert not (store / ".grokscope.lock").exists()  # released at the end


def test_lock_without_flock_checks_the_pid(tmp_path, monkeypatch):
    """On filesystems without flock the holder's pid decides (same host)."""
    import fcntl
    import socket

    def no_flock(*a):
        raise OSError(37, "No locks available")

    monkeypatch.setattr(fcntl, "flock", no_flock)
    (tmp_path / "s").mkdir()
    lock_file = tmp_path / "s" / ".grokscope.lock"
    dead = subprocess.Popen([sys.executable, "-c", "pass"])
    dead.wait()
    lock_file.write_text(json.dumps({"pid": dead.pid, "host": socket.gethostname()}))
    with StoreLock(tmp_path / "s") as lock:
        assert lock.took_over["pid"] == dead.pid
    lock_file.write_text(json.dumps({"pid": os.getppid(), "host": socket.gethostname()}))
    with pytest.raises(StoreLocked, match=f"pid {os.getppid()}"):
        StoreLock(tmp_path / "s").acquire()
    lock_file.write_text(json.dumps({"pid": dead.pid, "host": "another-host"}))
    with pytest.raises(StoreLocked, match="another-host"):
        StoreLock(tmp_path / "s").acquire()
