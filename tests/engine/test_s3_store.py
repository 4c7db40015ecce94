"""Stores on object storage, against a real S3 server on loopback (moto's server mode, the ``s3``
fixture): a probe into ``s3://…`` equals the same probe into a local folder; the storage options
never reach the store; one driver per store through the lock object (a live holder refuses the
second driver in one line, a stale one is taken over, and of two drivers taking over the same stale
lock exactly one wins); a missing bucket is named in one line."""

from __future__ import annotations

import json
import socket
import subprocess
import sys
import threading
import time

import pytest
import xarray as xr

from grokscope import open_store
from grokscope.engine.lock import StoreLocked, describe
from grokscope.engine.object_lock import ObjectStoreLock, pid_space
from grokscope.engine.storefs import store_fs
from grokscope.engine.store_view import load_group
from tests.engine.conftest import ROOT, subprocess_env
from tests.helpers import make_run

PROBES = "acc,spectral"


def _probe(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "grokscope.cli", "probe", *map(str, args), "-m", PROBES, "-q"],
                          env=subprocess_env(), cwd=ROOT, capture_output=True, text=True, timeout=300)


def test_probe_into_s3_equals_probe_into_a_folder(tmp_path, s3, cli):
    """train (a tiny run, locally) → ``probe --out s3://…`` (in-process; the store written from a cluster of
    workers with no shared disk: test_remote_series.py::test_cluster_without_shared_disk) →
    open the store from S3: every group identical to the same probe into a local folder; ``report``
    reads the same summaries from both and ``plot`` draws from S3; the endpoint given in
    --storage-options is in no object of the store."""
    run = make_run(tmp_path / "runs" / "a", [0, 1, 2, 3])
    url = s3.url("probes.zarr")
    options = json.dumps({"endpoint_url": s3.endpoint})
    r = cli("probe", run, "-o", url, "-m", PROBES, "-q", "--storage-options", options, "--scheduler", "sync",
            "--threads", "1")
    assert r.exit_code == 0, r.output[-3000:]
    local = tmp_path / "local.zarr"
    r = cli("probe", run, "-o", local, "-m", PROBES, "-q", "--scheduler", "sync", "--threads", "1")
    assert r.exit_code == 0, r.output[-3000:]
    for probe in PROBES.split(","):
        xr.testing.assert_identical(load_group(url, "a", probe), load_group(local, "a", probe))
    remote, here = open_store(url, {"endpoint_url": s3.endpoint}), open_store(local)
    assert sorted(n.path for n in remote.subtree) == sorted(n.path for n in here.subtree)
    for node in here.subtree:
        xr.testing.assert_identical(remote[node.path].to_dataset(), node.to_dataset())
    assert int(remote["a/acc"].done.sum()) == 4
    fs = store_fs(url)
    assert not fs.exists(".grokscope.lock")  # released
    for key in fs.files():
        assert s3.endpoint.encode() not in fs.read(key), key  # storage options are never stored
    assert s3.endpoint not in (run / "run.json").read_text()
    # a second run finds everything done: nothing recomputed (a dry run says so first)
    dry = cli("probe", run, "-o", url, "-m", PROBES, "--dry-run")
    assert dry.exit_code == 0 and "0 job(s) over 1 run(s) would be computed, 8 are done" in dry.output, dry.output
    again = cli("probe", run, "-o", url, "-m", PROBES, "--scheduler", "sync", "--json")
    assert again.exit_code == 0 and json.loads(again.stdout)["skipped"] == 8, again.output[-2000:]
    rep = cli("report", url, "--json")
    assert rep.exit_code == 0, rep.output[-2000:]
    assert json.loads(rep.stdout) == json.loads(cli("report", local, "--json").stdout)
    plots = cli("plot", url, "--out", tmp_path / "plots")
    assert plots.exit_code == 0 and (tmp_path / "plots" / "overview.png").stat().st_size > 1000, plots.output


def test_second_driver_is_refused_in_one_line_naming_the_holder(tmp_path, s3):
    run = make_run(tmp_path / "a", [0, 1])
    url = s3.url("p.zarr")
    holder = ObjectStoreLock(store_fs(url)).acquire()
    try:
        with pytest.raises(StoreLocked, match=f"pid {holder._me['pid']} on {socket.gethostname()}"):
            ObjectStoreLock(store_fs(url)).acquire()
        r = _probe(run, "-o", url, "--scheduler", "sync")
        assert r.returncode == 1, r.stderr
        line = r.stderr.strip().splitlines()[-1]
        assert line == (f"Error: store {url} is being written by {describe(holder._me)}; "
                        f"one probe run per store at a time (wait for it, or use another --out). The lock is "
                        f"{url}/.grokscope.lock."), r.stderr
        assert not store_fs(url).exists("zarr.json")  # refused before anything was written
    finally:
        holder.release()
    assert not store_fs(url).exists(".grokscope.lock")


def _stale(fs, **record) -> dict:
    rec = {"id": "x", "pid": 1, "host": "elsewhere", "started": None, "time": "2020-01-01T00:00:00",
           "command": "grokscope probe old", "heartbeat": time.time() - 3600, "stale_after": 60.0, **record}
    fs.write(".grokscope.lock", json.dumps(rec).encode())
    return rec


def test_stale_lock_is_taken_over_and_a_live_one_is_kept(s3):
    fs = store_fs(s3.url("p.zarr"))
    old = _stale(fs)
    lock = ObjectStoreLock(fs, heartbeat=0.2).acquire()
    try:
        assert lock.took_over == old
        before = json.loads(fs.read(".grokscope.lock"))["heartbeat"]
        time.sleep(0.8)
        assert json.loads(fs.read(".grokscope.lock"))["heartbeat"] > before  # the heartbeat refreshes it
        lock.check()
        # another driver finds a fresh heartbeat from another host: live, refused
        fresh = _stale(store_fs(s3.url("q.zarr")), heartbeat=time.time())
        with pytest.raises(StoreLocked, match="pid 1 on elsewhere"):
            ObjectStoreLock(store_fs(s3.url("q.zarr"))).acquire()
        assert json.loads(store_fs(s3.url("q.zarr")).read(".grokscope.lock")) == fresh
        # this driver stalls, another takes its lock over: the next commit is refused
        rec = json.loads(fs.read(".grokscope.lock"))
        lock._stop.set()
        lock._thread.join()
        fs.write(".grokscope.lock", json.dumps({**rec, "id": "thief", "host": "elsewhere"}).encode())
        lock._stop.clear()
        lock._start()
        time.sleep(0.8)
        with pytest.raises(StoreLocked, match="lost its lock to pid"):
            lock.check()
    finally:
        lock.release()
    assert json.loads(fs.read(".grokscope.lock"))["id"] == "thief"  # not ours: left alone


def test_a_dead_holder_on_this_host_is_stale_at_once(s3):
    fs = store_fs(s3.url("p.zarr"))
    dead = subprocess.Popen([sys.executable, "-c", "pass"])
    dead.wait()
    _stale(fs, pid=dead.pid, host=socket.gethostname(), heartbeat=time.time(), pid_space=pid_space())
    lock = ObjectStoreLock(fs).acquire()
    assert lock.took_over["pid"] == dead.pid
    lock.release()
    assert fs.files() == []  # lock and claim both gone
    # the same host name in another pid space (another container): its pid cannot be checked here
    _stale(fs, pid=dead.pid, host=socket.gethostname(), heartbeat=time.time(), pid_space="other")
    with pytest.raises(StoreLocked, match=f"pid {dead.pid} on {socket.gethostname()}"):
        ObjectStoreLock(fs).acquire()


def test_of_two_drivers_taking_over_one_stale_lock_exactly_one_wins(s3):
    for round_ in range(4):
        url = s3.url(f"race{round_}.zarr")
        _stale(store_fs(url))
        barrier = threading.Barrier(2)
        won, refused = [], []

        def take() -> None:
            lock = ObjectStoreLock(store_fs(url))
            barrier.wait()
            try:
                won.append(lock.acquire())
            except StoreLocked as e:
                refused.append(str(e))

        threads = [threading.Thread(target=take) for _ in range(2)]
        for t in threads:
            t.start()
        for t in threads:
            t.join(60)
        assert len(won) == 1 and len(refused) == 1, (won, refused)
        assert f"pid {won[0]._me['pid']}" in refused[0]
        assert json.loads(store_fs(url).read(".grokscope.lock"))["id"] == won[0]._me["id"]
        won[0].release()


def test_missing_bucket_and_missing_store_are_one_line(tmp_path, s3, cli):
    from grokscope.reading import StoreReadError

    with pytest.raises(StoreReadError, match=r"^s3://no-such-bucket-zz/p\.zarr: the bucket 'no-such-bucket-zz' "
                                             r"does not exist"):
        open_store("s3://no-such-bucket-zz/p.zarr")
    with pytest.raises(StoreReadError, match=r": no such store$"):
        open_store(s3.url("absent.zarr"))
    run = make_run(tmp_path / "a", [0])
    r = cli("probe", run, "-o", "s3://no-such-bucket-zz/p.zarr", "--scheduler", "sync", "-q")
    assert r.exit_code == 1 and r.output.strip().splitlines() == [
        "Error: s3://no-such-bucket-zz/p.zarr: the bucket 'no-such-bucket-zz' does not exist (create it first, "
        "or check the URL and AWS_ENDPOINT_URL)"], r.output
    for command in (("probe", run, "-o", s3.url("p.zarr")), ("report", s3.url("p.zarr")), ("plot", s3.url("p.zarr"))):
        bad = cli(*command, "--storage-options", "[1]")
        assert bad.exit_code == 2 and "--storage-options: must be a JSON object" in bad.output, (command, bad.output)
    gone = cli("report", "s3://no-such-bucket-zz/p.zarr")
    assert gone.exit_code == 1 and "the bucket 'no-such-bucket-zz' does not exist" in gone.output, gone.output


def test_local_stores_import_no_s3fs_and_a_url_without_it_names_the_extra(tmp_path):
    """Writing and reading a store in a local folder imports no s3fs; with s3fs missing, a store at
    ``s3://…`` is refused in one line that names the extra to install."""
    script = f"""
import sys
import grokscope
from tests.engine import store_scenario
store_scenario.run({str(tmp_path / "p.zarr")!r})
grokscope.open_store({str(tmp_path / "p.zarr")!r})
print("s3fs imported:", "s3fs" in sys.modules)
sys.modules["s3fs"] = None  # as if not installed
for url in ("s3://bucket/p.zarr",):
    try:
        grokscope.open_store(url)
    except Exception as e:
        print(type(e).__name__, e)
    try:
        store_scenario.run(url)
    except Exception as e:
        print(type(e).__name__, e)
"""
    r = subprocess.run([sys.executable, "-c", script], env=subprocess_env(), cwd=ROOT, capture_output=True,
                       text=True, timeout=300)
    lines = r.stdout.strip().splitlines()
    assert lines[0] == "s3fs imported: False", (r.stdout, r.stderr[-2000:])
    need = "s3://bucket/p.zarr: reading s3:// needs s3fs (pip install 'grokscope[remote]' or pip install s3fs)"
    assert lines[1].startswith(f"StoreReadError {need}") and lines[2].startswith(f"LocationError {need}"), lines
    assert len(lines) == 3


def test_a_lost_lock_stops_the_next_commit(tmp_path, s3):
    """The driver's writer asks the lock before each commit: once another driver took the lock over,
    the buffered results are not written and the run ends with the lock's one line."""
    from grokscope.engine.commit import Writer
    from grokscope.engine.outcomes import Summary
    from grokscope.engine.store import ProbeStore
    from tests.engine import store_scenario as scenario

    url = s3.url("p.zarr")
    store = ProbeStore(url)
    store.create_group("r", "p", [0, 10], scenario.ATTRS, scenario.result(0))
    lock = ObjectStoreLock(store_fs(url))
    lock.lost = {"pid": 7, "host": "elsewhere", "time": "now", "command": "grokscope probe"}
    writer = Writer(store, None, 0.0, Summary(store=url))
    writer.guard = lock.check
    writer.buffer[("r", "p")].append((0, scenario.outcome(0), "step-0"))
    with pytest.raises(StoreLocked, match="this run lost its lock to pid 7 on elsewhere"):
        writer.flush()
    assert not load_group(url, "r", "p").done.values.any()  # nothing written after the loss
