"""Series on object storage (issue 28, the run side): run folders, third-party layouts and hub caches
at an ``s3://`` URL on a real S3 server on loopback (moto's server mode, ``s3`` fixture), discovered
from one listing, scanned from headers, probed by workers that fetch each checkpoint under a disk
budget; values equal to the same series probed from local disk."""

from __future__ import annotations

import json
import logging
import os
import re
import shutil
import threading
import time
from pathlib import Path

import pytest
import xarray as xr

from grokscope.engine.store_view import load_group
from tests.helpers import make_run


def _grokscope(*args: object):
    from click.testing import CliRunner

    from grokscope.cli import main

    return CliRunner().invoke(main, [str(a) for a in args], catch_exceptions=False)


def _upload(s3, local: Path, *key: str) -> str:
    url = s3.url(*key)
    s3.fs().put(str(local), url, recursive=True)
    return url


def assert_same_values(a: Path, b: Path, runs: list[str], probe: str = "acc") -> None:
    """The stores' groups hold equal values (their attributes name different run paths)."""
    for run in runs:
        ga, gb = load_group(a, run, probe), load_group(b, run, probe)
        for name in ("accuracy", "loss", "done"):
            xr.testing.assert_equal(ga[name], gb[name])
        assert list(ga.step.values) == list(gb.step.values)


class Requests(logging.Handler):
    """The S3 server's own request log (werkzeug's line per request: ``"GET /bucket/key HTTP/1.1"``)."""

    def __init__(self):
        super().__init__(logging.INFO)
        self.lines: list[str] = []

    def emit(self, record: logging.LogRecord) -> None:
        self.lines.append(re.sub(r"\x1b\[[0-9;]*m", "", record.getMessage()))  # 206s come coloured

    def gets(self, suffix: str) -> list[str]:
        return [ln for ln in self.lines if '"GET ' in ln and suffix in ln.split('"')[1].split("?")[0]]

    def keys_got(self, suffix: str) -> list[str]:
        """The object keys of those GETs, sorted (``runs/a/checkpoints/step-00000000.safetensors``)."""
        return sorted(ln.split('"')[1].split()[1].split("/", 2)[2].split("?")[0] for ln in self.gets(suffix))


@pytest.fixture
def requests_log():
    log = logging.getLogger("werkzeug")
    handler, level, disabled = Requests(), log.level, log.disabled
    log.addHandler(handler)
    log.setLevel(logging.INFO)
    log.disabled = False  # importing distributed configures logging, disabling loggers it does not name
    yield handler
    log.removeHandler(handler)
    log.setLevel(level)
    log.disabled = disabled


def test_probe_s3_series_equals_local_and_holds_nothing_after(s3, tmp_path, monkeypatch):
    """train -> upload -> ``probe s3://…/runs`` under a budget of two checkpoints: the values equal a
    local run's, the workers' fetch cache is the one under ``$TMPDIR`` and empty afterwards, and its
    size never went over the budget (sampled every millisecond while the run goes; each file lives a few
    milliseconds, so a sample may see none; that the workers' cache follows ``$TMPDIR`` is checked
    exactly by ``test_local_workers_get_the_environment_set_after_their_server_started``)."""
    for i, name in enumerate("ab"):
        make_run(tmp_path / "runs" / name, [0, 1, 2, 3, 5, 8], seed=i)
    url = _upload(s3, tmp_path / "runs", "runs")
    size = (tmp_path / "runs/a/checkpoints/step-00000000.safetensors").stat().st_size
    cache = tmp_path / "tmp"
    cache.mkdir()
    monkeypatch.setenv("TMPDIR", str(cache))  # the fetch cache of the workers (and the client)
    peak, stop = [0], threading.Event()

    def watch():
        while not stop.is_set():
            held = 0
            for top, _, files in os.walk(cache):  # files come and go while walking
                for f in files:
                    try:
                        held += os.stat(os.path.join(top, f)).st_size if f.endswith(".safetensors") else 0
                    except OSError:
                        pass
            peak[0] = max(peak[0], held)
            time.sleep(0.001)

    watcher = threading.Thread(target=watch)
    watcher.start()
    try:
        r = _grokscope("probe", url, "-o", tmp_path / "remote.zarr", "--json", "-q", "--workers", "2",
                       "--cache-budget", str(2 * size))
    finally:
        stop.set()
        watcher.join()
    assert r.exit_code == 0, r.output
    assert json.loads(r.stdout)["completed"] == 12
    r = _grokscope("probe", tmp_path / "runs", "-o", tmp_path / "local.zarr", "--json", "-q", "--scheduler", "sync")
    assert r.exit_code == 0, r.output
    assert_same_values(tmp_path / "remote.zarr", tmp_path / "local.zarr", ["a", "b"])
    assert peak[0] <= 2 * size, peak[0]
    assert (cache / f"grokscope-fetch-{os.getuid()}" / "ledger.lock").is_file(), list(cache.rglob("*"))
    assert not list(cache.rglob("*.safetensors")) and not list(cache.rglob("ck-*"))
    # rerun: everything is in the store, nothing is fetched again
    r = _grokscope("probe", url, "-o", tmp_path / "remote.zarr", "--json", "-q", "--workers", "1", "--no-recheck")
    assert r.exit_code == 0 and json.loads(r.stdout)["skipped"] == 12, r.output


def test_checkpoint_larger_than_the_budget_is_one_error(s3, tmp_path):
    make_run(tmp_path / "run", [0, 1])
    url = _upload(s3, tmp_path / "run", "run")
    r = _grokscope("probe", url, "-o", tmp_path / "p.zarr", "--cache-budget", "1kB")
    assert r.exit_code != 0
    line = r.output.strip().splitlines()[-1]
    assert "step-00000000.safetensors" in line and "larger than the whole --cache-budget 1.0 kB" in line, r.output
    assert not (tmp_path / "p.zarr").exists()
    r = _grokscope("probe", url, "-o", tmp_path / "p.zarr", "--cache-budget", "lots")
    assert r.exit_code == 2 and "'lots' is not a size" in r.output


def test_a_remote_series_costs_one_client_read_before_the_cluster(s3, tmp_path, requests_log):
    """``probe --dry-run`` is everything the client does before the cluster starts (discovery, the
    model check of each run, each probe's check): one recursive listing, one GET of each run.json and
    one of each run's first checkpoint (the model check and the probes' checks share it)."""
    for name in ("a", "b"):
        make_run(tmp_path / "runs" / name, [0, 10, 20, 30])
    url = _upload(s3, tmp_path / "runs", "runs")
    requests_log.lines.clear()
    r = _grokscope("probe", url, "-o", tmp_path / "p.zarr", "-m", "acc,lc", "--dry-run", "--json", "-q")
    assert r.exit_code == 0, r.output
    weights = requests_log.keys_got(".safetensors")
    assert weights == ["runs/a/checkpoints/step-00000000.safetensors",
                       "runs/b/checkpoints/step-00000000.safetensors"], requests_log.lines
    assert len(requests_log.gets("run.json")) == 2, requests_log.lines
    listings = [ln for ln in requests_log.lines if "list-type=2" in ln and "delimiter=&" in ln]
    assert len(listings) == 1, requests_log.lines


def test_scan_reads_headers_not_weights(s3, tmp_path, requests_log):
    """``scan s3://…`` gives the local scan's audit (steps, gaps, signatures, duplicates) from the
    listing and the safetensors headers: the bytes it reads are a small part of the series."""
    run = make_run(tmp_path / "runs" / "a", [0, 1, 2, 4, 5])
    shutil.copy(run / "checkpoints/step-00000002.safetensors", run / "checkpoints/step-00000006.safetensors")
    url = _upload(s3, tmp_path / "runs", "runs")
    requests_log.lines.clear()
    r = _grokscope("scan", url, "--json")
    assert r.exit_code == 0, r.output
    remote = json.loads(r.stdout)
    local = json.loads(_grokscope("scan", tmp_path / "runs", "--json").stdout)
    (rr,), (lr,) = remote, local
    for key in ("checkpoints", "readable", "steps", "gaps", "drift", "bytes", "first_step", "last_step"):
        assert rr[key] == lr[key], key
    assert [d["steps"] for d in rr["duplicates"]] == [d["steps"] for d in lr["duplicates"]] == [[2, 6]]
    assert rr["remote"] and lr["remote"] is None
    whole = [ln for ln in requests_log.gets(".safetensors")]
    from grokscope.sources import as_path

    src = as_path(url).source
    assert src.bytes_read < 0.2 * rr["bytes"], (src.bytes_read, rr["bytes"])
    assert len(whole) == 2 * 6, requests_log.lines  # two range reads (length, header) per file
    assert "remote series: audited from the listing" in _grokscope("scan", url).output


def _hub_layout(root: Path, src: Path) -> Path:
    """A hub-cache repository (``models--org--tiny``: refs/stepN -> snapshots/<commit>/) holding the
    checkpoints of run ``src``, as ``aws s3 sync`` leaves one on object storage (no links)."""
    repo = root / "models--org--tiny"
    for ck in sorted((src / "checkpoints").iterdir()):
        step = int(ck.stem.split("-")[1])
        commit = f"{step:040x}"
        (repo / "snapshots" / commit).mkdir(parents=True)
        shutil.copy(ck, repo / "snapshots" / commit / "model.safetensors")
        (repo / "refs").mkdir(exist_ok=True)
        (repo / "refs" / f"step{step}").write_text(commit)
    (repo / "refs" / "main").write_text(f"{2:040x}")
    return repo


def test_layouts_on_s3_are_found_as_on_disk(s3, tmp_path):
    """One discovery for both: a folder of runs, HF ``checkpoint-N/`` folders, a sharded checkpoint and
    a hub cache, uploaded, are found with the steps and problems the local copy gives."""
    from grokscope.engine.discovery import find_runs
    from grokscope.engine.loading import read_state_dict

    src = make_run(tmp_path / "src", [0, 3, 7])
    tree = tmp_path / "tree"
    make_run(tree / "ours", [0, 1])
    _hub_layout(tree / "hub", src)
    for step in (0, 3, 7):  # trainer folders, one with side files and no step in the weights' name
        d = tree / "hf" / f"checkpoint-{step}"
        d.mkdir(parents=True)
        shutil.copy(src / f"checkpoints/step-{step:08d}.safetensors", d / "model.safetensors")
        (d / "optimizer.pt").write_bytes(b"x")
    (tree / "hf" / "notes.txt").write_text("no step")
    url = _upload(s3, tree, "tree")
    local = {r.rel: r for r in find_runs(tree)}
    remote = {r.rel: r for r in find_runs(url)}
    assert sorted(local) == sorted(remote) == ["hf", "hub/models--org--tiny", "ours"]
    for rel in local:
        assert remote[rel].steps == local[rel].steps, rel
        assert remote[rel].name == local[rel].name
        assert [p.reason for p in remote[rel].problems] == [p.reason for p in local[rel].problems]
    ck = remote["hub/models--org--tiny"].checkpoints[1]
    assert ck.path.startswith("s3://") and ck.label.startswith("step3: snapshots/")
    want = read_state_dict(local["hub/models--org--tiny"].checkpoints[1])
    got = read_state_dict(ck)  # fetched, read, deleted
    assert sorted(got) == sorted(want) and all(got[k].equal(want[k]) for k in want)


def test_fetch_budget_is_per_machine_and_waits(tmp_path):
    """Two holders of one cache: a reservation that does not fit waits until the first is released,
    one larger than the budget is refused, and a dead process's reservation does not count."""
    from grokscope.engine.fetch import FetchError, FetchSettings, held, reserve

    s = FetchSettings(budget=100, cache_dir=str(tmp_path / "cache"))
    order: list[str] = []

    def second():
        with reserve(60, s, "second"):
            order.append("second in")

    with reserve(60, s, "first"):
        t = threading.Thread(target=second)
        t.start()
        time.sleep(0.3)
        order.append("first out")
        assert held(tmp_path / "cache") == 60
    t.join(10)
    assert order == ["first out", "second in"] and held(tmp_path / "cache") == 0
    with pytest.raises(FetchError, match=r"big: 101 B \(101 bytes\), larger than the whole --cache-budget"):
        with reserve(101, s, "big"):
            pass
    (tmp_path / "cache" / "reservations" / "999999999-dead").write_text("90")
    (tmp_path / "cache" / "ck-999999999-x").mkdir()
    with reserve(60, s, "after a killed worker"):  # the dead one's 90 bytes do not count
        assert held(tmp_path / "cache") == 60
    assert not (tmp_path / "cache" / "reservations" / "999999999-dead").exists()
    assert not (tmp_path / "cache" / "ck-999999999-x").exists()


def test_cluster_without_shared_disk(s3, tmp_path, monkeypatch):
    """``dask scheduler`` and ``dask worker`` started as processes in their own folders (working
    folder, TMPDIR, HOME), and the series only on S3: the driver's local copy is deleted before the
    run, so a job that reached for a driver path would fail. The worker fetches into its own cache;
    the values equal a local run's, and the store is written on S3 too (the driver its only writer)."""
    import subprocess
    import sys

    from tests.engine.conftest import subprocess_env
    from tests.engine.test_distributed import _free_port

    for i, name in enumerate("ab"):
        make_run(tmp_path / "runs" / name, [0, 1, 2, 4], seed=i)
    url = _upload(s3, tmp_path / "runs", "runs")
    r = _grokscope("probe", tmp_path / "runs", "-o", tmp_path / "local.zarr", "--json", "-q", "--scheduler", "sync")
    assert r.exit_code == 0, r.output
    shutil.rmtree(tmp_path / "runs")  # the series is on S3 only now
    port = _free_port()
    address = f"tcp://127.0.0.1:{port}"
    bin_dir = Path(sys.executable).parent
    homes = {}
    for who in ("scheduler", "worker"):
        homes[who] = tmp_path / who
        (homes[who] / "tmp").mkdir(parents=True)
    procs, logs = [], open(tmp_path / "cluster.log", "w")
    try:
        for who, cmd in (("scheduler", ["scheduler", "--host", "127.0.0.1", "--port", str(port), "--no-dashboard"]),
                         ("worker", ["worker", address, "--nthreads", "1", "--no-dashboard", "--memory-limit", "0",
                                     "--host", "127.0.0.1"])):
            env = {**subprocess_env(), "HOME": str(homes[who]), "TMPDIR": str(homes[who] / "tmp")}
            procs.append(subprocess.Popen([str(bin_dir / "dask"), *cmd], env=env, cwd=homes[who], stdout=logs,
                                          stderr=logs, start_new_session=True))
        from distributed import Client

        with Client(address, timeout="60s") as client:
            client.wait_for_workers(1, timeout=120)
        driver = tmp_path / "driver"
        driver.mkdir()
        monkeypatch.chdir(driver)
        store = s3.url("probes.zarr")
        r = _grokscope("probe", url, "-o", store, "--scheduler", address, "--json", "-q",
                       "--cache-budget", "10MB")
        assert r.exit_code == 0, r.output + (tmp_path / "cluster.log").read_text()[-3000:]
        summary = json.loads(r.stdout)
        assert summary["completed"] == 8 and summary["failed"] == 0
        assert_same_values(store, tmp_path / "local.zarr", ["a", "b"])
        assert not list(driver.iterdir())  # nothing written on the driver's disk
        # the worker fetched into its own disk: its ledger is there, its fetch folders are gone
        fetched = homes["worker"] / "tmp" / f"grokscope-fetch-{os.getuid()}"
        assert (fetched / "ledger.lock").exists() and not list(fetched.glob("ck-*"))
    finally:
        for p in reversed(procs):
            p.terminate()
        for p in procs:
            try:
                p.wait(30)
            except subprocess.TimeoutExpired:
                p.kill()


def test_init_a_remote_folder_into_a_workspace(s3, tmp_path):
    """``init s3://…/ckpts --workspace ws``: run.json in the local workspace names the URL, the model
    check reads the first checkpoint from S3, and ``probe ws`` probes the remote checkpoints; a
    remote folder without --workspace is one line."""
    run = make_run(tmp_path / "third", [0, 5, 10])
    url = _upload(s3, run / "checkpoints", "ckpts")  # bare checkpoints, no run.json
    r = _grokscope("init", url, "--model", "mlp", "--model-kwargs", '{"depth": 1, "width": 12}',
                   "--dataset", "digits", "--dataset-kwargs", '{"n_train": 300, "n_test": 200}')
    assert r.exit_code == 2 and "is at a URL: init writes run.json into a local folder" in r.output
    r = _grokscope("init", url, "--workspace", tmp_path / "ws", "--model", "mlp", "--model-kwargs",
                   '{"depth": 1, "width": 12}', "--dataset", "digits", "--dataset-kwargs", '{"n_train": 300, "n_test": 200}')
    assert r.exit_code == 0, r.output
    assert json.loads((tmp_path / "ws" / "run.json").read_text())["checkpoints"] == url
    r = _grokscope("probe", tmp_path / "ws", "--json", "-q", "--scheduler", "sync")
    assert r.exit_code == 0 and json.loads(r.stdout)["completed"] == 3, r.output
    r = _grokscope("probe", run, "-o", tmp_path / "local.zarr", "--json", "-q", "--scheduler", "sync")
    assert r.exit_code == 0, r.output
    ws, local = load_group(tmp_path / "ws" / "probes.zarr", "ws", "acc"), load_group(tmp_path / "local.zarr", "third", "acc")
    xr.testing.assert_equal(ws["accuracy"], local["accuracy"])


@pytest.mark.slow  # about 90 s on 2 contended cores
def test_sigkill_half_way_through_a_remote_series_then_resume(s3, tmp_path, monkeypatch):
    """SIGKILL the driver and its workers half-way through a remote series: the rerun computes only
    what was not committed (at most the jobs in flight are lost), clears what the killed workers left
    in the fetch cache, and the store equals a clean local run's."""
    import signal
    import subprocess
    import sys

    from tests.engine.conftest import ROOT, subprocess_env
    from tests.helpers import TEST_PROBES

    make_run(tmp_path / "runs" / "a", list(range(16)))
    url = _upload(s3, tmp_path / "runs", "runs")
    cache, marks = tmp_path / "tmp", tmp_path / "marks"
    cache.mkdir()
    marks.mkdir()
    env = {**subprocess_env(), "GROKSCOPE_PROBES": TEST_PROBES, "TMPDIR": str(cache),
           "GROKSCOPE_TEST_MARKS": str(marks)}
    store = tmp_path / "remote.zarr"
    proc = subprocess.Popen([str(Path(sys.executable).parent / "grokscope"), "probe", url, "-o", str(store),
                             "-m", "acc,slow", "--workers", "1", "--flush-interval", "0", "-q"],
                            env=env, cwd=ROOT, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                            start_new_session=True)
    deadline = time.monotonic() + 240
    try:
        while time.monotonic() < deadline and proc.poll() is None and len(list(marks.iterdir())) < 5:
            time.sleep(0.02)
    finally:
        os.killpg(proc.pid, signal.SIGKILL)
        proc.wait()
    assert proc.returncode == -signal.SIGKILL
    done = int(load_group(store, "a", "acc").done.sum())
    assert 1 <= done < 16, done
    monkeypatch.setenv("TMPDIR", str(cache))  # the rerun's workers use the killed ones' cache
    r = _grokscope("probe", url, "-o", store, "--json", "-q", "--workers", "1", "--no-recheck")  # acc
    assert r.exit_code == 0, r.output
    summary = json.loads(r.stdout)
    assert summary["skipped"] == done and summary["completed"] == 16 - done, summary
    r = _grokscope("probe", tmp_path / "runs", "-o", tmp_path / "local.zarr", "--json", "-q", "--scheduler", "sync")
    assert r.exit_code == 0, r.output
    assert_same_values(store, tmp_path / "local.zarr", ["a"])
    assert not list(cache.rglob("ck-*")) and not list(cache.rglob("*.safetensors"))


def test_estimate_and_aliases_of_a_remote_series(s3, tmp_path):
    """``probe --estimate`` of a remote series counts the bytes the listing gives (those of the local
    copy), and an alias without a step (``last.safetensors``) is left out with a line, not downloaded."""
    run = make_run(tmp_path / "runs" / "a", [0, 1, 2])
    from safetensors.torch import load_file, save_file

    save_file(load_file(run / "checkpoints/step-00000002.safetensors"), run / "checkpoints/last.safetensors")  # no step
    url = _upload(s3, tmp_path / "runs", "runs")
    local = json.loads(_grokscope("probe", tmp_path / "runs", "-o", tmp_path / "l.zarr", "--estimate", "--json").stdout)
    remote = json.loads(_grokscope("probe", url, "-o", tmp_path / "r.zarr", "--estimate", "--json").stdout)
    assert remote["jobs"] == local["jobs"] == 3
    assert remote["read_bytes"] == local["read_bytes"] > 0
    r = _grokscope("scan", url, "--json")
    (report,) = json.loads(r.stdout)
    assert [s["reason"] for s in report["skipped"]] == [
        "last.safetensors: an alias (no step in its name) in a remote series; not opened (resolving it "
        "would download the series); skipped"]


def test_hub_revisions_read_at_their_commit_and_offline_is_one_line(monkeypatch):
    """A hub repository (``hf://ORG/NAME``) is listed as a hub cache (needs the network: not tested
    here beyond this): each snapshot file is read from the hub at its commit, a pure function of the
    URL that workers apply without a listing; offline, listing it is one line naming the URL."""
    from grokscope.locations import LocationError
    from grokscope.sources import open_source, real_url

    commit = "a" * 40
    assert real_url(f"hf://EleutherAI/pythia-160m/models--EleutherAI--pythia-160m/snapshots/{commit}/model.safetensors") \
        == f"hf://EleutherAI/pythia-160m@{commit}/model.safetensors"
    assert real_url("s3://b/runs/a/checkpoints/step-1.safetensors") == "s3://b/runs/a/checkpoints/step-1.safetensors"
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")  # and a hub endpoint that refuses at once (port 9, loopback)
    with pytest.raises(LocationError, match=r"^hf://org/tiny: cannot list the repository's revisions \(") as e:
        open_source("hf://org/tiny", {"endpoint": "http://127.0.0.1:9"})
    assert "\n" not in str(e.value)


WORKERS_STARTED_EARLIER = '''
import os, sys
from pathlib import Path


def main():
    saved = {k: os.environ.pop(k) for k in list(os.environ) if k.startswith("AWS_")}
    import dask
    from grokscope.engine.cluster import _start_forkserver, dask_client
    from grokscope.engine.config import EngineConfig
    with dask.config.set({"distributed.worker.multiprocessing-method": "forkserver"}):
        _start_forkserver()  # the server the local workers fork from: started without credentials
    os.environ.update(saved)  # the user sets them afterwards (a notebook cell, a test fixture)
    os.environ["TMPDIR"] = sys.argv[3]  # and a temporary folder of their own, and probes of their own
    os.environ["GROKSCOPE_PROBES"] = "delta=tests.helpers:DeltaProbe"
    os.environ["MY_MODEL_SETTING"] = "late"  # one a user's own code reads
    import grokscope
    s = grokscope.probe(sys.argv[1], "acc,delta", out=Path(sys.argv[2]), workers=1, threads=1)
    print("FAILURES", len(s.failures), s.failures[0].reason if s.failures else "")
    from grokscope.engine.scratch import temp_root
    with dask_client(EngineConfig(probes=[], out=Path(sys.argv[2]), workers=2, threads=1)) as (client, _, _):
        print("WORKER TMP", sorted(set(map(str, client.run(temp_root).values()))))
        print("WORKER SETTING", sorted(set(client.run(os.environ.get, "MY_MODEL_SETTING").values())))


if __name__ == "__main__":
    main()
'''


def test_local_workers_get_the_environment_set_after_their_server_started(s3, tmp_path):
    """Local worker processes fork from a server that may predate the credentials, ``TMPDIR``,
    ``GROKSCOPE_PROBES`` and the user's own variables in the environment: the driver hands its whole
    environment to the workers it starts, so they read the store, find the probes, put their fetch cache
    and scratch folders where the user said, and the user's code sees its settings."""
    import subprocess
    import sys

    from tests.engine.conftest import ROOT, subprocess_env

    make_run(tmp_path / "runs" / "a", [0, 1])
    url = _upload(s3, tmp_path / "runs", "runs")
    script = tmp_path / "late_env.py"
    script.write_text(WORKERS_STARTED_EARLIER)
    env = {**subprocess_env(), **{k: v for k, v in os.environ.items() if k.startswith("AWS_")}}
    late_tmp = tmp_path / "late-tmp"
    late_tmp.mkdir()
    r = subprocess.run([sys.executable, str(script), url, str(tmp_path / "s.zarr"), str(late_tmp)], env=env,
                       cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert "FAILURES 0" in r.stdout, (r.stdout, r.stderr[-2000:])
    assert f"WORKER TMP {[str(late_tmp)]}" in r.stdout, (r.stdout, r.stderr[-2000:])
    assert "WORKER SETTING ['late']" in r.stdout, (r.stdout, r.stderr[-2000:])
    assert int(load_group(tmp_path / "s.zarr", "a", "acc").done.sum()) == 2
    assert int(load_group(tmp_path / "s.zarr", "a", "delta").done.sum()) == 2


def test_recheck_of_a_remote_series_fetches_only_what_its_listing_says_changed(s3, tmp_path, requests_log):
    """A rerun's ``--recheck`` compares each done remote checkpoint's listed ETags and sizes with those
    it was probed with (``checkpoint_etag``): unchanged files are not fetched again; a file replaced in
    place (a new ETag) is fetched, found changed and recomputed, and ``--estimate`` counts its bytes
    only."""
    make_run(tmp_path / "runs" / "a", [0, 1, 2, 3])
    make_run(tmp_path / "other", [2], seed=7)
    url = _upload(s3, tmp_path / "runs", "runs")
    out = tmp_path / "p.zarr"
    probe = ("probe", url, "-o", out, "--scheduler", "sync", "--json", "-q")
    r = _grokscope(*probe)
    assert r.exit_code == 0 and json.loads(r.stdout)["completed"] == 4, r.output
    etags = [str(e) for e in load_group(out, "a", "acc").checkpoint_etag.values]
    assert all(etags) and len(set(etags)) == 4, etags

    requests_log.lines.clear()
    r = _grokscope(*probe)
    assert r.exit_code == 0 and json.loads(r.stdout)["skipped"] == 4, r.output
    assert requests_log.keys_got(".safetensors") == [], requests_log.lines  # the listing and run.json only

    replaced = tmp_path / "other/checkpoints/step-00000002.safetensors"
    s3.fs().put(str(replaced), s3.url("runs/a/checkpoints/step-00000002.safetensors"))
    r = _grokscope("probe", url, "-o", out, "--estimate", "--json")
    assert r.exit_code == 0 and json.loads(r.stdout)["recheck_bytes"] == replaced.stat().st_size, r.output
    requests_log.lines.clear()
    r = _grokscope(*probe)
    s = json.loads(r.stdout)
    assert r.exit_code == 0 and s["completed"] == 1 and s["skipped"] == 3, r.output
    assert any("a step 2" in w and "checkpoint changed since it was probed" in w for w in s["warnings"]), s
    changed = "runs/a/checkpoints/step-00000002.safetensors"
    assert requests_log.keys_got(".safetensors") == [changed, changed], requests_log.lines  # hashed, then probed
    ds = load_group(out, "a", "acc")
    assert str(ds.checkpoint_etag.values[2]) not in etags and [str(e) for e in ds.checkpoint_etag.values[[0, 1, 3]]] \
        == [etags[i] for i in (0, 1, 3)]
    r = _grokscope("probe", tmp_path / "other", "-o", tmp_path / "other.zarr", "--scheduler", "sync", "-q")
    assert r.exit_code == 0, r.output
    xr.testing.assert_equal(ds.accuracy.sel(step=2), load_group(tmp_path / "other.zarr", "other", "acc").accuracy.sel(step=2))
