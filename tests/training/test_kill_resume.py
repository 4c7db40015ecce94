"""Crash safety with real failures: a write that fails mid-file, a trainer process killed with
SIGKILL then resumed by the CLI (its stale lock taken over; checkpoints bit-identical to an
uninterrupted run), and a second trainer process on a live run folder (refused; the folder intact)."""

from __future__ import annotations

import os
import resource
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
from click.testing import CliRunner

from grokscope import runs
from grokscope.cli import main
from grokscope.engine.lock import LOCK_NAME, read_holder
from grokscope.training import trainer as T
from grokscope.training.presets import preset_config


def test_failing_write_leaves_old_checkpoint_and_no_temp_file(tmp_path: Path) -> None:
    """The file-size limit makes the kernel refuse the write half-way (EFBIG): a real failed write."""
    path = tmp_path / "ck" / "step-00000001.safetensors"
    runs.save_checkpoint(path, {"w": torch.zeros(10)}, step=1)
    old = path.read_bytes()
    big = {"w": torch.ones(200_000)}  # 800 kB, far above the limit below
    soft, hard = resource.getrlimit(resource.RLIMIT_FSIZE)
    handler = signal.signal(signal.SIGXFSZ, signal.SIG_IGN)
    try:
        resource.setrlimit(resource.RLIMIT_FSIZE, (64 * 1024, hard))
        with pytest.raises(OSError):
            runs.save_checkpoint(path, big, step=2)
    finally:
        resource.setrlimit(resource.RLIMIT_FSIZE, (soft, hard))
        signal.signal(signal.SIGXFSZ, handler)
    assert path.read_bytes() == old
    assert sorted(p.name for p in path.parent.iterdir()) == [path.name]


def test_leftover_temp_files_are_cleaned_on_resume(tmp_path: Path) -> None:
    cfg = preset_config("modadd-mlp", steps=4, save="every:2", model_kwargs={"width": 8},
                        dataset_kwargs={"p": 7})
    out = T.train_run(cfg, tmp_path / "r", progress=False)
    stale = [out / "checkpoints" / ".step-00000004.safetensors.abc.tmp", out / "state" / ".last.pt.x.tmp"]
    for p in stale:
        p.write_bytes(b"partial")
    T.train_run(cfg, out, resume=True, progress=False)
    assert not any(p.exists() for p in stale)


STEPS, EVERY = 800, 20
ARGS = ["--preset", "modadd-mlp", "--steps", str(STEPS), "--save", f"every:{EVERY}", "--eval-every", "none",
        "--model-kwargs", '{"width": 48}', "--dataset-kwargs", '{"p": 23}', "--quiet"]


def _cli(*args: str) -> list[str]:
    return [sys.executable, "-m", "grokscope.cli", "train", *args]


def _reference_cfg():
    return preset_config("modadd-mlp", steps=STEPS, save=f"every:{EVERY}", eval_every=None,
                         model_kwargs={"width": 48}, dataset_kwargs={"p": 23})


@pytest.fixture(scope="module")
def reference(tmp_path_factory) -> Path:
    """The uninterrupted run of ARGS (in this process, one thread, as the subprocesses)."""
    n = torch.get_num_threads()
    try:
        torch.set_num_threads(1)
        return T.train_run(_reference_cfg(), tmp_path_factory.mktemp("ref") / "ref", progress=False)
    finally:
        torch.set_num_threads(n)


def _same_run(got: Path, want: Path) -> None:
    """``got`` holds exactly ``want``'s checkpoints (bytes) and log (wall times aside), no leftovers."""
    a = {s: p.read_bytes() for s, p in runs.list_checkpoints(got)}
    b = {s: p.read_bytes() for s, p in runs.list_checkpoints(want)}
    assert sorted(a) == list(range(0, STEPS + 1, EVERY))
    assert a == b
    strip = lambda recs: [{k: v for k, v in r.items() if k != "wall"} for r in recs]  # noqa: E731
    assert strip(runs.read_log(got)) == strip(runs.read_log(want))
    assert not list(got.rglob("*.tmp"))
    assert not (got / LOCK_NAME).exists()  # released at the end


def _wait_for_checkpoints(proc: subprocess.Popen, run_dir: Path, n: int) -> None:
    deadline = time.monotonic() + 120
    while len(runs.list_checkpoints(run_dir)) < n:
        assert proc.poll() is None, proc.communicate()
        assert time.monotonic() < deadline, "trainer subprocess made no progress"
        time.sleep(0.01)


def test_sigkill_mid_run_then_cli_resume_is_bit_identical(tmp_path: Path, reference: Path) -> None:
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    run_dir = tmp_path / "killed"
    proc = subprocess.Popen(_cli(*ARGS, "--out", str(run_dir), "--threads", "1"), env=env,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    try:
        _wait_for_checkpoints(proc, run_dir, 12)  # 12 of the 41 checkpoints: about step 220
        proc.send_signal(signal.SIGKILL)
    finally:
        proc.kill()
        proc.wait()
    assert proc.returncode == -signal.SIGKILL
    killed_at = torch.load(T.state_path(run_dir), weights_only=True)["step"]
    assert 0 < killed_at < STEPS, "the kill must land mid-run"
    assert len(runs.list_checkpoints(run_dir)) < STEPS // EVERY + 1
    assert read_holder(run_dir / LOCK_NAME)["pid"] == proc.pid  # the dead trainer's lock is left behind

    n = torch.get_num_threads()
    try:
        # resume through the CLI (in this process, same single thread) with nothing but the folder:
        # run.json supplies the configuration; the stale lock is taken over
        res = CliRunner().invoke(main, ["train", "--out", str(run_dir), "--resume", "--quiet", "--threads", "1"])
        assert res.exit_code == 0, res.output
    finally:
        torch.set_num_threads(n)
    assert f"took over the stale lock of {run_dir} left by pid {proc.pid} " in res.output
    _same_run(run_dir, reference)


def test_second_trainer_on_a_live_run_is_refused_and_the_folder_stays_intact(tmp_path: Path,
                                                                              reference: Path) -> None:
    """Trainer A is stopped (SIGSTOP: alive, holding its lock) mid-run; trainers B with and without
    --resume on A's folder are refused with one line naming A and change nothing; A then finishes
    with the same bytes as an uninterrupted run."""
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    run_dir = tmp_path / "live"
    a = subprocess.Popen(_cli(*ARGS, "--out", str(run_dir), "--threads", "1"), env=env,
                         stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    try:
        _wait_for_checkpoints(a, run_dir, 8)
        a.send_signal(signal.SIGSTOP)
        before = {p: p.read_bytes() for p in run_dir.rglob("*") if p.is_file()}
        for extra in (["--resume"], [*ARGS]):
            b = subprocess.run(_cli("--out", str(run_dir), "--threads", "1", "--quiet", *extra), env=env,
                               capture_output=True, text=True, timeout=120)
            assert b.returncode == 1, b.stderr
            lines = b.stderr.strip().splitlines()
            assert len(lines) == 1, b.stderr
            assert lines[0].startswith(f"Error: run folder {run_dir} is being trained by pid {a.pid} on ")
            assert "one trainer per run folder" in lines[0]
            assert {p: p.read_bytes() for p in run_dir.rglob("*") if p.is_file()} == before
        a.send_signal(signal.SIGCONT)
        _, err = a.communicate(timeout=120)
        assert a.returncode == 0, err
    finally:
        a.kill()
        a.wait()
    _same_run(run_dir, reference)
    log_steps = [r["step"] for r in runs.read_log(run_dir)]
    assert len(log_steps) == len(set(log_steps))  # no step written twice
