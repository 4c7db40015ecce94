"""Crash safety with real failures: a write that fails mid-file, and a trainer process killed with
SIGKILL then resumed by the CLI (checkpoints bit-identical to an uninterrupted run)."""

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


def test_sigkill_mid_run_then_cli_resume_is_bit_identical(tmp_path: Path) -> None:
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    run_dir = tmp_path / "killed"
    proc = subprocess.Popen(_cli(*ARGS, "--out", str(run_dir), "--threads", "1"), env=env,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    try:
        deadline = time.monotonic() + 120
        while len(runs.list_checkpoints(run_dir)) < 12:  # 12 of the 41 checkpoints: about step 220
            assert proc.poll() is None, proc.communicate()
            assert time.monotonic() < deadline, "trainer subprocess made no progress"
            time.sleep(0.01)
        proc.send_signal(signal.SIGKILL)
    finally:
        proc.kill()
        proc.wait()
    assert proc.returncode == -signal.SIGKILL
    killed_at = torch.load(T.state_path(run_dir), weights_only=True)["step"]
    assert 0 < killed_at < STEPS, "the kill must land mid-run"
    assert len(runs.list_checkpoints(run_dir)) < STEPS // EVERY + 1

    n = torch.get_num_threads()
    try:
        # resume through the CLI (in this process, same single thread) with nothing but the folder:
        # run.json supplies the configuration
        res = CliRunner().invoke(main, ["train", "--out", str(run_dir), "--resume", "--quiet", "--threads", "1"])
        assert res.exit_code == 0, res.output
        # the uninterrupted reference
        cfg = preset_config("modadd-mlp", steps=STEPS, save=f"every:{EVERY}", eval_every=None,
                            model_kwargs={"width": 48}, dataset_kwargs={"p": 23})
        ref = T.train_run(cfg, tmp_path / "ref", progress=False)
    finally:
        torch.set_num_threads(n)
    got = {s: p.read_bytes() for s, p in runs.list_checkpoints(run_dir)}
    want = {s: p.read_bytes() for s, p in runs.list_checkpoints(ref)}
    assert sorted(got) == list(range(0, STEPS + 1, EVERY))
    assert got == want
    strip = lambda recs: [{k: v for k, v in r.items() if k != "wall"} for r in recs]  # noqa: E731
    assert strip(runs.read_log(run_dir)) == strip(runs.read_log(ref))
    assert not list(run_dir.rglob("*.tmp"))
