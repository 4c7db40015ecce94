"""A new user's first hour (issue 32): a read-only checkpoint folder without ``--workspace`` (one line
naming the fix, never "rerun"), files written with the user's umask, a failing dataset callable of one
run (one line, the other runs go on)."""

from __future__ import annotations

import json
import os
import stat
import subprocess

import pytest
from click.testing import CliRunner

from grokscope.cli import main
from tests.engine.conftest import tmpfs
from tests.helpers import MLP, make_run

MLP_FLAGS = ["--model", "mlp", "--model-kwargs", json.dumps(MLP["kwargs"]), "--dataset", "digits",
             "--dataset-kwargs", '{"n_train": 300, "n_test": 200}']


@pytest.fixture
def read_only_folder(tmp_path):
    """A tmpfs at ``tmp_path/fs`` holding a third party's checkpoints (no run.json), remounted
    read-only (needs root; skipped otherwise): root ignores file modes, a read-only mount does not."""
    with tmpfs(tmp_path / "fs", "8m") as mnt:
        make_run(mnt / "ckpts", [0, 1, 2])
        (mnt / "ckpts" / "run.json").unlink()
        subprocess.run(["mount", "-o", "remount,ro", str(mnt)], check=True)
        yield mnt / "ckpts"


def test_read_only_folder_without_workspace_is_one_line_naming_it(read_only_folder, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    r = CliRunner().invoke(main, ["init", str(read_only_folder), *MLP_FLAGS])
    assert r.exit_code == 1 and "Traceback" not in r.output, r.output
    lines = r.output.strip().splitlines()
    assert len(lines) == 1, r.output
    assert "cannot write grokscope's run.json there (Read-only file system)" in lines[0]
    assert f"grokscope init {read_only_folder} --workspace DIR" in lines[0]
    r = CliRunner().invoke(main, ["probe", str(read_only_folder), *MLP_FLAGS, "-m", "acc", "--scheduler", "sync"])
    assert r.exit_code == 1 and "Traceback" not in r.output, r.output
    errors = [ln for ln in r.output.splitlines() if ln.startswith("Error")]
    assert len(errors) == 1 and "Read-only file system" in errors[0], r.output
    assert "rerun the same command" not in errors[0] and "--workspace DIR" in errors[0] and "--out" in errors[0]
    # the fix the lines name works
    ws = tmp_path / "ws"
    assert CliRunner().invoke(main, ["init", str(read_only_folder), *MLP_FLAGS, "--workspace", str(ws)]).exit_code == 0
    r = CliRunner().invoke(main, ["probe", str(ws), "-m", "acc", "--scheduler", "sync", "-q"])
    assert r.exit_code == 0, r.output


def test_run_json_and_log_follow_the_users_umask(tmp_path):
    from grokscope import runs

    old = os.umask(0o022)
    try:
        r = CliRunner().invoke(main, ["train", "--preset", "modadd-mlp", "--steps", "3", "--save", "every:3",
                                      "--out", str(tmp_path / "run"), "--threads", "1"])
        assert r.exit_code == 0, r.output
        for name in (runs.RUN_JSON, runs.LOG_JSONL):
            assert stat.S_IMODE((tmp_path / "run" / name).stat().st_mode) == 0o644, name
        ckpt = next((tmp_path / "run" / "checkpoints").iterdir())
        assert stat.S_IMODE(ckpt.stat().st_mode) == 0o644
        os.umask(0o077)  # a private umask gives private files
        runs.atomic_write_bytes(tmp_path / "private.json", b"{}")
        assert stat.S_IMODE((tmp_path / "private.json").stat().st_mode) == 0o600
        os.umask(0o002)
        runs.atomic_write_bytes(tmp_path / "group.json", b"{}")
        assert stat.S_IMODE((tmp_path / "group.json").stat().st_mode) == 0o664
    finally:
        os.umask(old)


BAD_DATA = '''
import numpy as np


def load(seed=0):
    z = np.load("./data.npz")  # relative: the folder it was written in, not the one it runs in
    return {"x": z["x"], "y": z["y"], "train_idx": z["train_idx"], "test_idx": z["test_idx"]}
'''


def test_a_failing_dataset_callable_is_one_line_and_the_other_runs_go_on(tmp_path, monkeypatch):
    from grokscope import runs
    from grokscope.engine.store_view import load_group

    code = tmp_path / "code"
    code.mkdir()
    (code / "baddata.py").write_text(BAD_DATA)
    monkeypatch.syspath_prepend(str(code))
    monkeypatch.setenv("PYTHONPATH", f"{code}{os.pathsep}{os.environ.get('PYTHONPATH', '')}")
    make_run(tmp_path / "runs" / "good", [0, 1])
    bad = make_run(tmp_path / "runs" / "bad", [0, 1])
    runs.write_run_json(bad, MLP, {"name": "baddata:load", "kwargs": {}, "seed": 0}, {"loss": "ce"})
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    monkeypatch.chdir(elsewhere)
    r = CliRunner().invoke(main, ["probe", str(tmp_path / "runs"), "-m", "acc", "--scheduler", "sync",
                                  "--trust-code", "baddata"])
    assert "Traceback" not in r.output, r.output
    assert r.exit_code == 1, r.output
    bad_lines = [ln for ln in r.output.splitlines() if "baddata" in ln]
    assert len(bad_lines) == 1, r.output
    assert "dataset 'baddata:load' raised FileNotFoundError" in bad_lines[0]
    assert f"the relative path './data.npz' is opened from the working directory {elsewhere}" in bad_lines[0]
    assert "Path(__file__).parent" in bad_lines[0]
    assert bool(load_group(tmp_path / "runs" / "probes.zarr", "good", "acc").done.all())  # the other run went on
    sys_modules_drop("baddata")


def sys_modules_drop(name: str) -> None:
    import sys

    sys.modules.pop(name, None)


def test_training_threads_are_chosen_and_stated(tmp_path):
    from grokscope.training.threads import MIN_STEP_FLOPS, choose_threads

    # modadd-mlp (0.5 GFLOP a step): 2 threads on an idle 2-core machine, 1 when the load takes a core
    assert choose_threads(40_000, 2_000, cores=2, load=0.2)[0] == 2
    assert choose_threads(40_000, 2_000, cores=2, load=1.6)[0] == 1
    assert choose_threads(1_000, 100, cores=2, load=0.0)[0] == 1  # 0.0006 GFLOP: too small to split
    assert choose_threads(10**7, 1_000, cores=8, load=0.5)[0] == 8  # large, 7.5 cores free
    n, why = choose_threads(10**7, 1_000, cores=2, load=4.4)
    assert n == 1 and "load average 4.4 on 2 cores" in why
    assert choose_threads(10**7, 1_000, cores=1, load=0.0) == (1, "one core")
    assert 6 * 10**7 * 1_000 > MIN_STEP_FLOPS
    import torch

    before = torch.get_num_threads()
    try:
        _train_twice(tmp_path)
    finally:
        torch.set_num_threads(before)


def _train_twice(tmp_path):
    r = CliRunner().invoke(main, ["train", "--preset", "modadd-mlp", "--steps", "2", "--save", "every:2",
                                  "--out", str(tmp_path / "run")])
    assert r.exit_code == 0, r.output
    first = r.output.splitlines()[0]
    import re

    assert re.match(re.escape(f"training into {tmp_path / 'run'} (new run) with ") + r"[12] torch thread\(s\) "
                    r"\(chosen: a step is 0\.\d+ GFLOP", first), first
    assert "--threads N to choose" in first
    r = CliRunner().invoke(main, ["train", "--preset", "modadd-mlp", "--steps", "2", "--save", "every:2",
                                  "--out", str(tmp_path / "run2"), "--threads", "2"])
    assert r.exit_code == 0 and "with 2 torch thread(s) (--threads)" in r.output.splitlines()[0], r.output


def test_a_printed_log_is_read_through_a_pattern(tmp_path):
    """A script that printed its accuracy to stdout: `init --log train.out --log-pattern REGEX`."""
    from grokscope import runs
    from grokscope.runlog import LogError, import_log

    run = make_run(tmp_path / "ckpts", [0, 2])
    (run / "run.json").unlink()
    out = tmp_path / "train.out"
    out.write_text("starting\nstep 0 | loss 2.31 | train acc 9.5% | test acc 10.0%\nnoise line\n"
                   "step 2 | loss 2.10 | train acc 31.0% | test acc 27.5%\ndone\n")
    pattern = r"step (?P<step>\d+) .*train acc (?P<train_acc>[\d.]+%) .*test acc (?P<test_acc>[\d.]+%)"
    assert import_log(out, pattern=pattern) == [
        {"step": 0, "train_acc": 0.095, "test_acc": 0.1}, {"step": 2, "train_acc": 0.31, "test_acc": 0.275}]
    with pytest.raises(LogError, match="no line matches"):
        import_log(out, pattern=r"epoch (?P<step>\d+)")
    with pytest.raises(LogError, match="no named groups"):
        import_log(out, pattern=r"step \d+")
    r = CliRunner().invoke(main, ["init", str(run), *MLP_FLAGS, "--log", str(out), "--log-pattern", pattern])
    assert r.exit_code == 0, r.output
    assert "imported 2 evaluation record(s)" in r.output
    assert runs.read_log(run)[1]["test_acc"] == pytest.approx(0.275)


def test_epoch_named_checkpoints_are_said_and_mapped_to_steps(tmp_path):
    """`ckpt_{epoch}.pth`: init says the numbers may be epochs; --steps-per-epoch maps them to steps
    for init, discovery and probe."""
    import torch

    from grokscope.engine.discovery import find_runs
    from grokscope.engine.store_view import load_group
    from grokscope.models import build_model

    folder = tmp_path / "ckpts"
    folder.mkdir()
    net = build_model(MLP)
    for epoch in range(4):
        torch.save(net.state_dict(), folder / f"ckpt_{epoch}.pth")
    r = CliRunner().invoke(main, ["init", str(folder), *MLP_FLAGS])
    assert r.exit_code == 0, r.output
    assert "steps 0..3 are the numbers in the names, one apart: if they count epochs" in r.output
    assert "--steps-per-epoch N" in r.output
    r = CliRunner().invoke(main, ["init", str(folder), *MLP_FLAGS, "--force", "--steps-per-epoch", "25"])
    assert r.exit_code == 0, r.output
    assert "steps 0..75" in r.output and "epochs of 25 steps" in r.output
    (run,) = find_runs(folder)
    assert [c.step for c in run.checkpoints] == [0, 25, 50, 75]
    r = CliRunner().invoke(main, ["probe", str(folder), "-m", "acc", "--scheduler", "sync", "-q"])
    assert r.exit_code == 0, r.output
    assert list(load_group(folder / "probes.zarr", "ckpts", "acc").step.values) == [0, 25, 50, 75]


def test_probe_is_not_silent_when_stderr_is_not_a_terminal(tmp_path, monkeypatch):
    from grokscope.cli import probe as cli_probe

    monkeypatch.setattr(cli_probe._Bar, "LINE_EVERY", 0.0)  # a line per finished task
    make_run(tmp_path / "r", [0, 1, 2])
    r = CliRunner().invoke(main, ["probe", str(tmp_path / "r"), "-m", "acc", "--scheduler", "sync"])
    assert r.exit_code == 0, r.output
    lines = [ln for ln in r.output.splitlines() if ln.startswith("probing: ")]
    assert lines and lines[-1].startswith("probing: 3/3 job(s) done, 0 failed"), r.output
