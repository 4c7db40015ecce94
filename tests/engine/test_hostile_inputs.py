"""Hostile and damaged inputs (issue 34): every layout is built here, by the test, and each check
asserts one line per refusal, no traceback, nothing outside the probed folder opened (a file outside
whose content or access time would show it), and the other runs done.

1. hub caches confined to their repository folder (refs holding ``..``, links out of the repository);
2. run folders reached through links (out of the probed path, loops, second names);
3. deep nesting (run.json, logs, safetensors headers) and oversized JSON;
4. integer and bool tensors where the model holds floats.
"""

from __future__ import annotations

import json
import os
import re
import signal
import struct
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

from tests.helpers import DIGITS, MLP, make_run

SECRET = "SECRET-TOKEN-31337"
SPEC_FLAGS = ("--model", "mlp", "--model-kwargs", json.dumps({"depth": 1, "width": 12}),
              "--dataset", "digits", "--dataset-kwargs", json.dumps(DIGITS["kwargs"]))


# -- helpers --------------------------------------------------------------------------------------

def _mlp_state(seed: int = 0) -> dict[str, torch.Tensor]:
    from grokscope.models import build_model

    torch.manual_seed(seed)
    return {k: v.detach().clone() for k, v in build_model(MLP).state_dict().items()}


def _safetensors_bytes(state: dict[str, torch.Tensor]) -> bytes:
    from safetensors.torch import save

    return save({k: v.contiguous() for k, v in state.items()})


def _outside_file(path: Path, text: str = SECRET + "\n") -> Path:
    """A file outside the probed folder whose access time is set before its modification time, so any
    read of it (under atime or relatime mounts) moves its access time."""
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text) if isinstance(text, str) else path.write_bytes(text)
    st = path.stat()
    os.utime(path, (st.st_mtime - 1000, st.st_mtime))
    return path


def _untouched(*paths: Path) -> None:
    """Assert no file of ``paths`` was read since :func:`_outside_file` (when this filesystem records
    reads at all: a probe read of a scratch file shows whether it does)."""
    probe = _outside_file(paths[0].parent / ".atime-probe")
    before = probe.stat().st_atime
    probe.read_bytes()
    if probe.stat().st_atime == before:
        pytest.skip("this filesystem does not record access times (noatime)")
    for p in paths:
        st = p.stat()
        assert st.st_atime < st.st_mtime, f"{p} was read"


def _one_line_each(text: str) -> None:
    assert "Traceback" not in text and "RecursionError" not in text, text
    assert SECRET not in text, text


# -- 1. hub caches --------------------------------------------------------------------------------

def _hub(root: Path, outside: Path) -> tuple[Path, dict[str, Path]]:
    """``root/models--org--net``: revision step100 as huggingface_hub lays it out (a blob, a relative
    snapshot link to it, a ref holding the commit), and hostile revisions around it."""
    repo = root / "models--org--net"
    for sub in ("blobs", "refs", "snapshots"):
        (repo / sub).mkdir(parents=True)
    blob = repo / "blobs" / ("b" * 64)
    blob.write_bytes(_safetensors_bytes(_mlp_state(0)))
    good = repo / "snapshots" / ("1" * 40)
    good.mkdir()
    (good / "model.safetensors").symlink_to(Path("..") / ".." / "blobs" / blob.name)
    (repo / "refs" / "step100").write_text("1" * 40)
    # a whole checkpoint folder outside, reached by a ref holding ../../../outside_secret
    secret_dir = outside / "outside_secret"
    secret_dir.mkdir(parents=True)
    secret_ckpt = _outside_file(secret_dir / "model.safetensors", _safetensors_bytes(_mlp_state(1)))
    rel = os.path.relpath(secret_dir, repo / "snapshots")
    (repo / "refs" / "step200").write_text(rel)
    # a ref that is a link to a file outside (its content must never be echoed)
    hostname = _outside_file(outside / "hostname")
    (repo / "refs" / "step300").symlink_to(hostname)
    # a snapshot whose weights are an absolute link to another checkpoint outside
    other = _outside_file(outside / "other" / "model.safetensors", _safetensors_bytes(_mlp_state(2)))
    snap = repo / "snapshots" / ("4" * 40)
    snap.mkdir()
    (snap / "model.safetensors").symlink_to(other)
    (repo / "refs" / "step400").write_text("4" * 40)
    # a snapshot whose weights are a link to a text file outside (/etc/passwd in the report)
    passwd = _outside_file(outside / "passwd", "root:x:0:0:" + SECRET + "\n")
    snap = repo / "snapshots" / ("5" * 40)
    snap.mkdir()
    (snap / "model.safetensors").symlink_to(passwd)
    (repo / "refs" / "step500").write_text("5" * 40)
    # a snapshot folder that is itself a link out of the repository
    (repo / "snapshots" / ("6" * 40)).symlink_to(outside / "other")
    (repo / "refs" / "step600").write_text("6" * 40)
    return repo, {"secret": secret_ckpt, "hostname": hostname, "other": other, "passwd": passwd}


def test_hub_cache_never_leaves_its_repository(tmp_path, cli):
    from grokscope.engine.discovery import find_runs
    from grokscope.engine.store_view import load_group

    hub, outside = tmp_path / "hub", tmp_path / "outside"
    repo, files = _hub(hub, outside)
    run = find_runs(hub)[0]
    assert run.steps == [100]
    reasons = {re.search(r"step\d+", p.path + p.reason).group(): p.reason for p in run.problems}
    assert len(reasons) == len(run.problems) == 5
    assert reasons["step200"] == "revision step200: the ref does not hold a commit name; skipped"
    assert reasons["step300"] == f"a link to {files['hostname']}, outside {repo}; refused (not opened)"
    assert ", outside " in reasons["step400"] and str(files["other"]) in reasons["step400"]
    assert ", outside " in reasons["step500"] and str(files["passwd"]) in reasons["step500"]
    assert ", outside " in reasons["step600"]
    for p in run.problems:
        assert "\n" not in p.reason and SECRET not in p.reason and "outside_secret" not in p.reason
    r = cli("probe", hub, *SPEC_FLAGS, "--scheduler", "sync", "-q")
    assert r.exit_code == 0, r.output
    _one_line_each(r.output)
    warned = [ln for ln in r.stderr.splitlines() if ln.startswith("warning:")]
    assert sum(", outside " in ln for ln in warned) == 4 and sum("step300" in ln for ln in warned) == 1
    assert "1 job(s) done, 0 failed" in r.stderr
    acc = load_group(hub / "probes.zarr", "models--org--net", "acc")
    assert acc.step.values.tolist() == [100] and bool(acc.done.values.all())
    r = cli("scan", hub)
    assert r.exit_code == 0, r.output
    _one_line_each(r.output)
    _untouched(*files.values())


def test_hub_config_link_out_of_the_folder_is_refused(tmp_path, cli):
    """``--model hf`` reads the snapshot's config.json: one that links outside is named, not parsed."""
    hub, outside = tmp_path / "hub", tmp_path / "outside"
    repo, _ = _hub(hub, outside)
    cfg = _outside_file(outside / "config.json", json.dumps({"model_type": "gpt2", "note": SECRET}))
    (repo / "snapshots" / ("1" * 40) / "config.json").symlink_to(cfg)
    r = cli("init", repo, "--model", "hf", "--dataset", "modular", "--dataset-kwargs", '{"p": 5}')
    assert r.exit_code != 0
    _one_line_each(r.output)
    assert f"config.json: a link to {cfg}" in r.output and ", outside " in r.output
    _untouched(cfg)


# -- 2. run folders reached through links ---------------------------------------------------------

def test_linked_run_folders_stay_inside_the_probed_path(tmp_path, cli):
    from grokscope.engine.discovery import Problem, find_runs
    from grokscope.engine.store_view import load_group

    runs = tmp_path / "runs"
    make_run(runs / "a", [0, 5])
    elsewhere = make_run(tmp_path / "elsewhere" / "ext", [0, 5], seed=1)
    ext_ckpts = sorted((elsewhere / "checkpoints").iterdir())
    for p in ext_ckpts:
        st = p.stat()
        os.utime(p, (st.st_mtime - 1000, st.st_mtime))
    (runs / "ext").symlink_to(elsewhere)  # a run folder outside
    (runs / "nest").mkdir()
    (runs / "nest" / "up").symlink_to("..")  # a loop: runs/nest/up/nest/up/...
    (runs / "again").symlink_to(runs / "a")  # a second name of a run already found
    b = runs / "b"
    b.mkdir()
    (b / "run.json").write_text((runs / "a" / "run.json").read_text())
    (b / "checkpoints").symlink_to(elsewhere / "checkpoints")  # a run whose checkpoints/ leads out
    skipped: list[Problem] = []
    found = find_runs(runs, skipped)
    assert [r.name for r in found] == ["a", "b"]
    assert found[0].steps == [0, 5] and found[1].steps == []
    assert ", outside " in found[1].problems[0].reason
    why = {Path(p.path).name: p.reason for p in skipped}
    assert set(why) == {"ext", "up", "again"}
    assert str(elsewhere) in why["ext"] and ", outside " in why["ext"]
    assert "already searched" in why["up"] and "already searched" in why["again"]
    r = cli("probe", runs, "--scheduler", "sync", "-q")
    assert r.exit_code == 0, r.output
    _one_line_each(r.output)
    assert "2 job(s) done, 0 failed" in r.stderr and "over 1 run(s)" in r.stderr
    assert sum(ln.startswith(f"warning: {runs / 'ext'}: a link to") for ln in r.stderr.splitlines()) == 1
    assert load_group(runs / "probes.zarr", "a", "acc").done.values.all()
    r = cli("scan", runs)
    assert r.exit_code == 0, r.output
    _one_line_each(r.output)
    assert sum(ln.startswith("warning: ") for ln in r.stderr.splitlines()) == 3
    assert not (elsewhere / "probes.zarr").exists()
    _untouched(*ext_ckpts)


def test_folder_that_only_links_outside_is_one_line(tmp_path, cli):
    runs = tmp_path / "runs"
    runs.mkdir()
    (runs / "ext").symlink_to(make_run(tmp_path / "elsewhere", [0]))
    for cmd in ("probe", "scan"):
        r = cli(cmd, runs)
        assert r.exit_code == 1
        _one_line_each(r.output)
        assert "no checkpoints found" in r.output and ", outside " in r.output


# -- 3. deep nesting ------------------------------------------------------------------------------

def _deep_header_file(path: Path, depth: int) -> Path:
    header = b'{"__metadata__":{"x":' + b"[" * depth + b"]" * depth + b"}}"
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(struct.pack("<Q", len(header)) + header)
    return path


def test_deep_nesting_fails_one_run_in_one_line(tmp_path, cli):
    from grokscope.engine.discovery import find_runs
    from grokscope.engine.store_view import load_group

    runs = tmp_path / "runs"
    make_run(runs / "good", [0, 5])
    brackets = make_run(runs / "brackets", [0])
    (brackets / "run.json").write_text("[" * 10**6)
    deep = make_run(runs / "deep_train", [0])
    doc = json.loads((deep / "run.json").read_text())
    nest: list = []
    for _ in range(900):
        nest = [nest]
    doc["train"]["schedule"] = nest
    (deep / "run.json").write_text(json.dumps(doc))
    kw = make_run(runs / "deep_kwargs", [0])
    doc = json.loads((kw / "run.json").read_text())
    doc["model"]["kwargs"]["extra"] = nest
    (kw / "run.json").write_text(json.dumps(doc))
    header = make_run(runs / "deep_header", [0])
    _deep_header_file(header / "checkpoints" / "weights.safetensors", 100_000)  # step from its header
    _deep_header_file(header / "checkpoints" / "step-00000007.safetensors", 100_000)  # step from its name
    with open(runs / "good" / "log.jsonl", "a") as f:
        f.write("[" * 100_000 + "\n")
    found = {r.name: r for r in find_runs(runs)}
    for name in ("brackets", "deep_train", "deep_kwargs"):
        assert found[name].spec_error and "\n" not in found[name].spec_error
        assert str(runs / name / "run.json") in found[name].spec_error
    assert "nested 903 deep" in found["deep_train"].spec_error
    assert "nested 1000000 deep" in found["brackets"].spec_error
    assert any("weights.safetensors" in p.path and "nested 100002 deep" in p.reason
               for p in found["deep_header"].problems)
    r = cli("probe", runs, "--scheduler", "sync", "-q")
    assert r.exit_code == 1
    _one_line_each(r.output)
    failed = [ln for ln in r.stderr.splitlines() if ln.startswith("  ")]
    assert any("brackets" in ln and "nested 1000000 deep" in ln for ln in failed)
    assert any("deep_header step 7" in ln and "step-00000007.safetensors" in ln for ln in failed)
    assert load_group(runs / "probes.zarr", "good", "acc").done.values.all()
    assert load_group(runs / "probes.zarr", "deep_header", "acc").done.values.tolist() == [True, False]
    r = cli("scan", runs)
    assert r.exit_code == 0
    _one_line_each(r.output)
    assert "nested 903 deep" in r.output


def test_bounded_json_reader(tmp_path):
    from grokscope.jsonbounds import JSONBoundsError, depth, loads, read_json

    assert depth('{"a": "[[[{{", "b": [[1], {"c": "]]\\"["}]}') == 3
    assert loads("[[1]]", "x") == [[1]]
    with pytest.raises(JSONBoundsError, match=r"^f\.json: JSON nested 65 deep"):
        loads("[" * 65 + "]" * 65, "f.json")
    big = tmp_path / "big.json"
    big.write_text('"' + "x" * 2000 + '"')
    with pytest.raises(JSONBoundsError, match="larger than 1000 bytes"):
        read_json(big, max_bytes=1000)
    assert read_json(big) == "x" * 2000


# -- 4. integer and bool tensors ------------------------------------------------------------------

def test_integer_and_bool_checkpoints_are_not_weights(tmp_path, cli):
    """The first checkpoint (the one the model check loads) and a later one hold int64 and bool
    tensors: each of those steps fails with the dtypes named, the float step between them is done."""
    from safetensors.torch import load_file

    from grokscope import runs as runfmt
    from grokscope.engine.store_view import load_group

    run = make_run(tmp_path / "run", [0, 5, 10])
    for step, dtype in ((0, torch.int64), (10, torch.bool)):
        path = runfmt.checkpoint_path(run, step)
        sd = {k: (v * 100).to(dtype) for k, v in load_file(path).items()}
        path.unlink()
        runfmt.save_checkpoint(path, sd, step)
    r = cli("probe", run, "--scheduler", "sync", "-q")
    assert r.exit_code == 1
    _one_line_each(r.output)
    failed = [ln for ln in r.stderr.splitlines() if ln.startswith("  ")]
    assert len(failed) == 2
    assert "step 0" in failed[0] and "checkpoint int64 vs model float32" in failed[0]
    assert "step 10" in failed[1] and "checkpoint bool vs model float32" in failed[1]
    acc = load_group(run / "probes.zarr", "run", "acc")
    assert acc.done.values.tolist() == [False, True, False]
    assert "dtype mismatch" in str(acc.error.values[0]) and "dtype mismatch" in str(acc.error.values[2])
    r = cli("init", run, *SPEC_FLAGS, "--force")  # init loads step 0: one line
    assert r.exit_code == 1 and "dtype mismatch" in r.output
    _one_line_each(r.output)


# -- 6. parameters bounded up front ---------------------------------------------------------------

@pytest.mark.parametrize("param, words", [
    ("acc.batch_size=-4", "acc.batch_size must be >= 1, got -4"),
    ("acc.batch_size=0", "acc.batch_size must be >= 1, got 0"),
    ("lc.radius=inf", "lc.radius must be finite, got inf"),
    ("lc.seed=" + str(10**23), "lc.seed must be an integer in 0..2**63-1"),
    ("lc.seed=-1", "lc.seed must be an integer in 0..2**63-1, got -1"),
    ("lc.n_points=" + str(10**13), "more than this machine's memory"),
    ("lc.n_bisect=" + str(10**8), "lc.n_bisect must be <= 64"),
    ("pgd.eps=0.1,nan", "pgd.eps must be finite, got nan"),
    ("regions.resolution=" + str(10**7), "more than this machine's memory"),
])
def test_impossible_parameters_are_refused_before_the_store(tmp_path, cli, param, words):
    run = make_run(tmp_path / "run", [0])
    r = cli("probe", run, "-m", param.split(".")[0], "--param", param, "--scheduler", "sync")
    assert r.exit_code == 2
    _one_line_each(r.output)
    assert words in r.output and len([ln for ln in r.output.splitlines() if "Error" in ln]) == 1
    assert not (run / "probes.zarr").exists()


def test_the_engine_checks_parameters_given_from_python(tmp_path):
    """A request built in Python (no command line) gets the same up-front check: no store written."""
    from grokscope.engine.config import EngineConfig, EngineError
    from grokscope.engine.driver import probe_runs
    from grokscope.engine.jobs import ProbeRequest
    from grokscope.probes.acc import AccParams

    run = make_run(tmp_path / "run", [0])
    cfg = EngineConfig(probes=[ProbeRequest("acc", AccParams(batch_size=-4))], out=run / "probes.zarr",
                       scheduler="sync")
    with pytest.raises(EngineError, match=r"^acc\.batch_size must be >= 1, got -4$"):
        probe_runs(run, cfg)
    assert not (run / "probes.zarr").exists()


def test_check_bounds_covers_every_builtin_default():
    from grokscope.probes import BUILTIN, get_probe, validate_params

    for name in BUILTIN:
        cls = get_probe(name)
        validate_params(cls, cls.default_params())  # the defaults are in bounds


# -- 8. a dry run only reads ----------------------------------------------------------------------

def test_dry_run_reads_a_read_only_store_and_takes_no_lock(tmp_path, cli, small_fs):
    import subprocess

    run = make_run(tmp_path / "r", [0, 1])
    store = small_fs / "s.zarr"
    assert cli("probe", run, "-o", store, "--scheduler", "sync", "-q").exit_code == 0
    make_run(tmp_path / "r2", [0, 1, 2])
    os.replace(tmp_path / "r2" / "checkpoints" / "step-00000002.safetensors",
               run / "checkpoints" / "step-00000002.safetensors")
    subprocess.run(["mount", "-o", "remount,ro", str(small_fs)], check=True)
    r = cli("probe", run, "-o", store, "--dry-run")
    assert r.exit_code == 0, r.output
    _one_line_each(r.output)
    assert "dry run: 1 job(s) over 1 run(s) would be computed, 2 are done" in r.stderr


def test_dry_run_creates_nothing(tmp_path, cli):
    run = make_run(tmp_path / "r", [0, 1])
    r = cli("probe", run, "--dry-run", "-m", "acc,lc")
    assert r.exit_code == 0, r.output
    assert "dry run: 4 job(s) over 1 run(s) would be computed, 0 are done" in r.stderr
    assert not (run / "probes.zarr").exists()


# -- 5. a damaged store file ----------------------------------------------------------------------

def test_a_damaged_store_file_is_named_with_what_to_do(tmp_path, cli):
    from grokscope.engine.store_view import DamagedStore, load_group

    run = make_run(tmp_path / "run", [0, 5])
    other = make_run(tmp_path / "other", [0, 5], seed=1)
    store = tmp_path / "s.zarr"
    for r in (run, other):
        assert cli("probe", r, "-o", store, "--scheduler", "sync", "-q").exit_code == 0
        (r / "log.jsonl").write_text(json.dumps({"step": 5, "train_acc": 0.5, "test_acc": 0.5}) + "\n")
    chunk = store / "run" / "acc" / "accuracy" / "c" / "0" / "0"
    os.truncate(chunk, chunk.stat().st_size // 2)
    with pytest.raises(DamagedStore, match=rf"^{re.escape(str(chunk))}: damaged store file \(ValueError: Stored "
                                           "and computed checksum do not match\\); recompute that group"):
        load_group(store, "run", "acc")
    load_group(store, "other", "acc")  # the other run's group reads
    r = cli("probe", run, "-o", store, "--scheduler", "sync", "-q")  # the split check reads the group
    assert r.exit_code == 0, r.output
    _one_line_each(r.output)
    assert f"warning: split check of run run not done: {chunk}: damaged store file" in r.stderr
    for cmd in (("report", store), ("report", "--json", store), ("plot", store)):
        r = cli(*cmd)
        assert r.exit_code == 1, r.output
        _one_line_each(r.output)
        errors = [ln for ln in r.output.splitlines() if ln.startswith("Error")]
        assert len(errors) == 1 and f"{chunk}: damaged store file" in errors[0]
        assert "-m acc --overwrite" in errors[0] and "fresh store" in errors[0]
    done = store / "run" / "acc" / "done" / "c" / "0"
    os.truncate(done, done.stat().st_size - 3)  # the driver reads done: the probe run stops in one line
    r = cli("probe", run, "-o", store, "--scheduler", "sync", "-q")
    assert r.exit_code == 1
    _one_line_each(r.output)
    assert str(done) in r.output or str(chunk) in r.output
    r = cli("probe", run, "-o", store, "--scheduler", "sync", "-q", "--overwrite")  # the advice works
    assert r.exit_code == 0, r.output
    assert load_group(store, "run", "acc").done.values.all()
    assert cli("report", store).exit_code == 0


# -- 7. scheduler addresses and signals -----------------------------------------------------------

@pytest.fixture
def stranger():
    """A loopback TCP service that is not Dask: ``stranger(talks)`` gives its address; it answers every
    connection with an SSH-like banner and bytes (``talks``) or accepts and never says anything."""
    import socket
    import threading

    socks: list[socket.socket] = []

    def serve(talks: bool) -> str:
        srv = socket.socket()
        srv.bind(("127.0.0.1", 0))
        srv.listen()
        socks.append(srv)

        def loop() -> None:
            while True:
                try:
                    conn, _ = srv.accept()
                except OSError:
                    return
                socks.append(conn)
                if talks:
                    conn.sendall(b"SSH-2.0-OpenSSH_9.6\r\n" + b"\xff" * 64)

        threading.Thread(target=loop, daemon=True).start()
        return f"tcp://127.0.0.1:{srv.getsockname()[1]}"

    yield serve
    for s in socks:
        s.close()


@pytest.mark.parametrize("talks", [True, False])
def test_an_address_that_is_not_dask_is_one_line(tmp_path, cli, stranger, monkeypatch, talks):
    from grokscope.engine import cluster

    monkeypatch.setattr(cluster, "SCHEDULER_TIMEOUT", 2.0)
    run = make_run(tmp_path / "r", [0])
    address = stranger(talks)
    r = cli("probe", run, "--scheduler", address)
    assert r.exit_code == 1
    _one_line_each(r.output)
    lines = [ln for ln in r.output.splitlines() if ln.strip()]
    assert len(lines) == 1 and lines[0].startswith(f"Error: cannot connect to the Dask scheduler '{address}'")
    assert ("not a Dask scheduler" if talks else "no answer to Dask's handshake within 2 s") in lines[0]
    assert not (run / "probes.zarr").exists()  # checked before the store is touched


def _probe_process(run: Path, marks: Path, *args: str) -> subprocess.Popen:
    from tests.engine.conftest import ROOT, subprocess_env
    from tests.helpers import TEST_PROBES

    marks.mkdir()
    env = {**subprocess_env(), "GROKSCOPE_PROBES": TEST_PROBES, "GROKSCOPE_TEST_MARKS": str(marks)}
    return subprocess.Popen([str(Path(sys.executable).parent / "grokscope"), "probe", str(run), "-m", "acc,slow",
                             "-q", *args], env=env, cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                            text=True, start_new_session=True, preexec_fn=_default_signals)


def _default_signals() -> None:
    """In the child before exec: SIGINT and SIGTERM at their defaults and unblocked, as in a terminal."""
    for s in (signal.SIGINT, signal.SIGTERM):
        signal.signal(s, signal.SIG_DFL)
    signal.pthread_sigmask(signal.SIG_UNBLOCK, {signal.SIGINT, signal.SIGTERM})


def _wait(proc: subprocess.Popen, ready, limit: float = 180) -> None:
    deadline = time.monotonic() + limit
    while time.monotonic() < deadline and proc.poll() is None and not ready():
        time.sleep(0.02)
    assert proc.poll() is None, proc.communicate()


def _finish(proc: subprocess.Popen) -> tuple[int, list[str]]:
    try:
        _, err = proc.communicate(timeout=120)
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()
    return proc.returncode, [ln for ln in err.splitlines() if ln.strip()]


def test_sigterm_commits_what_finished_in_one_line(tmp_path):
    """SIGTERM (a batch system's stop) ends the run as Ctrl-C does: the jobs that finished are committed
    (here none would be before the end: --flush-interval 1000), one line, exit 143, lock released."""
    from grokscope.engine.store_view import load_group

    run = make_run(tmp_path / "run", list(range(12)))
    marks = tmp_path / "marks"
    proc = _probe_process(run, marks, "--scheduler", "sync", "--flush-interval", "1000")
    # a job's mark comes before its outcome is collected: at the fourth mark, three jobs are surely done
    _wait(proc, lambda: len(list(marks.iterdir())) >= 4)
    os.kill(proc.pid, signal.SIGTERM)
    code, lines = _finish(proc)
    assert code == 143, lines
    assert len(lines) == 1 and "stopped by SIGTERM;" in lines[0] and "rerun the same command" in lines[0], lines
    done = int(load_group(run / "probes.zarr", "run", "slow").done.sum())
    assert done >= 3 and f"{2 * done} job(s) of this run committed" in lines[0]
    assert not (run / "probes.zarr" / ".grokscope.lock").exists()


def _children(pid: int) -> list[str]:
    return subprocess.run(["pgrep", "-P", str(pid)], capture_output=True, text=True).stdout.split()


@pytest.mark.parametrize("sig, code, words", [
    (signal.SIGINT, 130, "interrupted;"),
    pytest.param(signal.SIGTERM, 143, "stopped by SIGTERM;", marks=pytest.mark.slow),
])
def test_a_signal_while_the_local_cluster_starts_is_one_line(tmp_path, sig, code, words):
    """The signal reaches the whole process group while the local cluster's fork server is importing
    torch & co. (its first child process has just appeared): one line, no traceback from any process."""
    run = make_run(tmp_path / "run", list(range(4)))
    proc = _probe_process(run, tmp_path / "marks", "--workers", "1")
    _wait(proc, lambda: bool(_children(proc.pid)))
    time.sleep(0.3)
    os.killpg(proc.pid, sig)
    code_, lines = _finish(proc)
    assert code_ == code, lines
    assert len(lines) == 1 and words in lines[0] and "rerun the same command" in lines[0], lines
    assert not (run / "probes.zarr" / ".grokscope.lock").exists()


@pytest.mark.slow
def test_a_lost_scheduler_is_one_line_and_keeps_what_finished(tmp_path):
    """``dask scheduler`` killed half-way: the run ends in one line, the jobs collected before are
    committed (none is recorded as failed), the lock released; the rerun on a local cluster finishes."""
    import socket

    from grokscope.engine.store_view import load_group
    from tests.engine.conftest import ROOT, subprocess_env
    from tests.helpers import TEST_PROBES

    run = make_run(tmp_path / "run", list(range(30)))
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    address = f"tcp://127.0.0.1:{port}"
    bin_ = Path(sys.executable).parent
    log = open(tmp_path / "cluster.log", "w")
    cluster = [subprocess.Popen([str(bin_ / "dask"), "scheduler", "--host", "127.0.0.1", "--port", str(port),
                                 "--no-dashboard"], env=subprocess_env(), stdout=log, stderr=log,
                                start_new_session=True)]
    try:
        cluster.append(subprocess.Popen([str(bin_ / "dask"), "worker", address, "--nthreads", "1", "--no-dashboard",
                                         "--memory-limit", "0", "--host", "127.0.0.1"],
                                        env={**subprocess_env(), "GROKSCOPE_PROBES": TEST_PROBES,
                                             "GROKSCOPE_TEST_MARKS": str(tmp_path / "marks")},
                                        cwd=ROOT, stdout=log, stderr=log, start_new_session=True))
        marks = tmp_path / "marks"
        proc = _probe_process(run, marks, "--scheduler", address, "--flush-interval", "0")
        _wait(proc, lambda: marks.exists() and len(list(marks.iterdir())) >= 3)
        os.killpg(cluster[0].pid, signal.SIGKILL)
        code, lines = _finish(proc)
    finally:
        for p in cluster:
            if p.poll() is None:
                os.killpg(p.pid, signal.SIGKILL)
                p.wait()
    assert code == 1, lines
    assert len(lines) == 1 and f"lost the Dask scheduler {address}" in lines[0], lines
    acc = load_group(run / "probes.zarr", "run", "acc")
    assert not any(str(e) for e in acc.error.values)  # no job was blamed for the scheduler
    assert not (run / "probes.zarr" / ".grokscope.lock").exists()
