"""``--workspace DIR``: grokscope's run.json, imported log and store for a third party's checkpoints
live in DIR; the checkpoint folder (read-only here) is only read."""

from __future__ import annotations

import json
import os
import stat
from pathlib import Path

import numpy as np
import torch

from grokscope import runs
from grokscope.engine.store_view import load_group
from tests.helpers import DIGITS, TinyNet, sgd_snapshots

DIGITS_ARGS = ["--dataset", "digits", "--dataset-kwargs", json.dumps(DIGITS["kwargs"])]


def _tree(root: Path) -> dict[str, tuple[int, int]]:
    """Every file and folder under ``root`` (itself included: a file made and removed there changes
    its modification time) with its size and modification time."""
    out = {".": (0, root.stat().st_mtime_ns)}
    for dirpath, dirs, files in os.walk(root):
        for name in dirs + files:
            p = Path(dirpath) / name
            st = p.lstat()
            out[str(p.relative_to(root))] = (st.st_size, st.st_mtime_ns)
    return out


def _read_only(root: Path) -> None:
    for dirpath, dirs, files in os.walk(root):
        for name in files:
            os.chmod(Path(dirpath) / name, stat.S_IRUSR | stat.S_IRGRP | stat.S_IROTH)
    for dirpath, dirs, files in sorted(os.walk(root), reverse=True):
        os.chmod(dirpath, stat.S_IRUSR | stat.S_IXUSR | stat.S_IRGRP | stat.S_IXGRP | stat.S_IROTH | stat.S_IXOTH)


def _writable(root: Path) -> None:
    for dirpath, dirs, files in os.walk(root):
        os.chmod(dirpath, stat.S_IRWXU)
        for name in files:
            os.chmod(Path(dirpath) / name, stat.S_IRUSR | stat.S_IWUSR)


def test_init_and_probe_write_nothing_into_a_read_only_checkpoint_folder(tmp_path, cli):
    theirs = tmp_path / "shared" / "their_run"
    theirs.mkdir(parents=True)
    torch.manual_seed(0)
    for step, sd in sgd_snapshots(TinyNet(), [0, 4, 12]):
        torch.save(sd, theirs / f"ckpt_{step}.pth")
    (theirs / "eval.jsonl").write_text("".join(json.dumps({"step": s, "test_acc": 0.5}) + "\n" for s in (0, 4, 12)))
    before = _tree(theirs)
    ws = tmp_path / "mine" / "ws"
    _read_only(theirs)
    try:
        r = cli("init", theirs, "--model", "tests.helpers:tiny_net", *DIGITS_ARGS, "--log",
                theirs / "eval.jsonl", "--workspace", ws)
        assert r.exit_code == 0, r.output
        assert f"wrote {ws / 'run.json'}: 3 checkpoints" in r.stderr
        spec = runs.read_run_json(ws)
        assert spec["checkpoints"] == str(theirs) and len(runs.read_log(ws)) == 3
        r = cli("probe", theirs, "--workspace", ws, "--scheduler", "sync", "--json", "-q")
        assert r.exit_code == 0, r.output
        assert json.loads(r.stdout)["store"] == str(ws / "probes.zarr")
        ds = load_group(ws / "probes.zarr", "ws", "acc")
        assert list(ds.step.values) == [0, 4, 12] and ds.done.all()
        # the workspace is a run folder of its own: probing it is the same run (everything done)
        r = cli("probe", ws, "--scheduler", "sync", "--json", "-q")
        assert r.exit_code == 0 and json.loads(r.stdout)["skipped"] == 3, r.output
        r = cli("scan", ws, "--json")
        assert r.exit_code == 0, r.output
        (audit,) = json.loads(r.stdout)
        assert audit["run"] == "ws" and audit["checkpoints"] == 3
        assert _tree(theirs) == before  # nothing written, nothing touched
        # a workspace holds one run's files: another checkpoint folder is refused
        other = tmp_path / "other"
        other.mkdir()
        torch.save(TinyNet().state_dict(), other / "ckpt_1.pth")
        r = cli("probe", other, "--workspace", ws, "--scheduler", "sync")
        assert r.exit_code == 2 and f"its run.json is for the checkpoints in {theirs}, not {other}" in r.output
    finally:
        _writable(theirs)
    # without init: the command line's spec, the store in the workspace
    ws2 = tmp_path / "ws2"
    r = cli("probe", theirs, "--workspace", ws2, "--model", "tests.helpers:tiny_net", *DIGITS_ARGS,
            "--scheduler", "sync", "-q")
    assert r.exit_code == 0, r.output
    np.testing.assert_array_equal(load_group(ws2 / "probes.zarr", "their_run", "acc").accuracy.values,
                                  ds.accuracy.values)
    assert _tree(theirs) == before
