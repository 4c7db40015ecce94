"""``grokscope scan``: gaps, duplicates, out-of-order writes, drift, unreadable and skipped files,
steps logged twice, and the compact step list of its table."""

from __future__ import annotations

import json
import os

import torch

from grokscope import runs
from grokscope.training.schedule import parse_schedule
from grokscope.engine.scan import compact_steps, find_gaps
from tests.helpers import MLP, make_run


def test_find_gaps():
    assert find_gaps([0, 10, 20, 40, 50]) == [{"after": 20, "before": 40, "missing": [30]}]
    assert find_gaps([0, 10, 20, 30]) == []
    log = [0, 1, 2, 4, 8, 16, 32, 64, 128, 256, 1024, 2048]
    assert find_gaps(log) == [{"after": 256, "before": 1024, "missing": None}]
    assert find_gaps([1, 2, 4, 8, 16, 32, 64, 128]) == []
    assert find_gaps([0, 1, 2, 5, 9], expected=[0, 1, 2, 3, 4, 5, 9, 12]) == [
        {"after": 2, "before": 5, "missing": [3, 4]}]


def test_scan_reports_every_kind_of_finding(tmp_path, cli):
    run = make_run(tmp_path / "runs" / "a", [0, 10, 20, 30, 40, 60, 70, 80, 90])
    ck = lambda s: runs.checkpoint_path(run, s)  # noqa: E731
    # duplicate: step 70 holds the weights of step 60
    ck(70).write_bytes(b"")
    runs.save_checkpoint(ck(70), {k: v for k, v in _load(ck(60)).items()}, 70)
    # drift: step 80 saved in float16
    runs.save_checkpoint(ck(80), {k: v.half() for k, v in _load(ck(80)).items()}, 80)
    # unreadable: step 90 truncated
    ck(90).write_bytes(ck(90).read_bytes()[:100])
    # out of order: step 30's file was written last (after step 80, the highest readable step)
    last = max(os.stat(p).st_mtime for p in (run / "checkpoints").iterdir())
    os.utime(ck(30), (last + 5, last + 5))
    # non-finite: step 40 has NaNs in one tensor and an Inf in another
    bad = _load(ck(40))
    names = sorted(bad)
    bad[names[0]] = bad[names[0]].clone()
    bad[names[0]].view(-1)[:3] = float("nan")
    bad[names[1]] = bad[names[1]].clone()
    bad[names[1]].view(-1)[0] = float("-inf")
    runs.save_checkpoint(ck(40), bad, 40)
    os.utime(ck(40), (os.stat(ck(20)).st_mtime,) * 2)  # not out of order
    # a file without a step
    torch.save({"w": torch.zeros(1)}, run / "checkpoints" / "final.pt")
    make_run(tmp_path / "runs" / "b", [0, 1, 2])
    r = cli("scan", tmp_path / "runs", "--json")
    assert r.exit_code == 0, r.output
    rep = {x["run"]: x for x in json.loads(r.stdout)}
    a = rep["a"]
    assert a["checkpoints"] == 9 and (a["first_step"], a["last_step"]) == (0, 90) and a["readable"] == 8
    assert a["gaps"] == [{"after": 40, "before": 60, "missing": [50]}]
    assert [d["steps"] for d in a["duplicates"]] == [[60, 70]]
    assert a["out_of_order"] == [{"step": 30, "written_after_step": 80,
                                  "file": "checkpoints/step-00000030.safetensors"}]
    assert [d["to_step"] for d in a["drift"]] == [80]
    assert "1.weight dtype float32 -> float16" in a["drift"][0]["changes"]
    assert a["unreadable"][0]["step"] == 90 and "unreadable safetensors" in a["unreadable"][0]["reason"]
    assert a["skipped"][0]["file"].endswith("final.pt")
    assert a["nonfinite"] == [{"step": 40, "file": "checkpoints/step-00000040.safetensors",
                               "tensors": [f"{names[0]} (3 NaN)", f"{names[1]} (1 Inf)"]}]
    b = rep["b"]
    assert (b["gaps"], b["duplicates"], b["out_of_order"], b["drift"], b["unreadable"], b["nonfinite"]) == \
        ([], [], [], [], [], [])
    text = cli("scan", tmp_path / "runs").stdout
    header, row_a = text.splitlines()[:2]
    assert header.split() == ["run", "ckpts", "steps", "gaps", "dups", "order", "drift", "nonfinite",
                              "unreadable", "skipped", "logdups"]
    assert row_a.split() == ["a", "9", "0..40/10,60..90/10", "1", "1", "1", "1", "1", "1", "1", "0"]
    assert f"non-finite weights at step 40 (checkpoints/step-00000040.safetensors): {names[0]} (3 NaN)" in text
    assert "gap 40 -> 60: missing 50" in text and "duplicate weights at steps 60, 70" in text


def _expand(text: str) -> list[int]:
    """The steps a compact list names (an independent reading of its notation)."""
    out = []
    for item in text.split(","):
        lo, dots, rest = item.partition("..")
        if not dots:
            out.append(int(item))
            continue
        hi, _, k = rest.partition("/")
        out.extend(range(int(lo), int(hi) + 1, int(k or 1)))
    return out


def test_compact_steps():
    assert compact_steps([0, 1, 2, 3, 10, 20, 30, 45]) == "0..3,10..30/10,45"
    assert compact_steps([]) == "" and compact_steps([7]) == "7" and compact_steps([5, 6]) == "5,6"
    assert compact_steps(list(range(0, 801, 20))) == "0..800/20"
    for steps in (parse_schedule("log:100", 6000), [0, 1, 2, 4, 8, 16, 17, 18, 30, 40, 50, 51], [3, 5]):
        assert _expand(compact_steps(steps)) == steps


def test_scan_reports_steps_logged_twice_and_lists_long_step_lists(tmp_path, cli):
    steps = parse_schedule("log:30", 1000)
    run = make_run(tmp_path / "r", steps)
    for rec in [{"step": s, "train_acc": 1.0} for s in (0, 20, 40, 20, 40, 40)]:
        runs.append_log(run, rec)
    (rep,) = json.loads(cli("scan", run, "--json").stdout)
    assert rep["log_duplicates"] == [{"step": 20, "count": 2}, {"step": 40, "count": 3}]
    assert rep["steps"] == steps
    text = cli("scan", run).stdout
    row = text.splitlines()[1].split()
    assert row[-1] == "2" and row[2].endswith(",...") and len(row[2]) <= 40
    assert f"steps: {compact_steps(steps)}" in text
    assert "log.jsonl: 2 step(s) logged more than once (20,40): more than one trainer wrote this run" in text


def test_scan_uses_the_runs_own_schedule(tmp_path, cli):
    run = make_run(tmp_path / "r", [0, 1, 2, 3, 5, 8, 13])
    spec = runs.read_run_json(run)
    runs.write_run_json(run, spec["model"], spec["dataset"], {"save": "0,1,2,3,5,8,13,21", "steps": 21})
    r = cli("scan", run, "--json")
    (rep,) = json.loads(r.stdout)
    assert rep["schedule"] == "run.json" and rep["gaps"] == []
    runs.checkpoint_path(run, 5).unlink()
    (rep,) = json.loads(cli("scan", run, "--json").stdout)
    assert rep["gaps"] == [{"after": 3, "before": 8, "missing": [5]}]


def _load(path):
    from safetensors.torch import load_file

    return load_file(str(path))


def test_scan_of_a_third_party_folder_needs_no_model(tmp_path, cli):
    from tests.helpers import tiny_net

    net = tiny_net()
    for step in (100, 200, 300):
        torch.save({"state_dict": {f"model.{k}": v for k, v in net.state_dict().items()}},
                   tmp_path / f"epoch=0-step={step}.ckpt")
    r = cli("scan", tmp_path)
    assert r.exit_code == 0 and "100..300" in r.stdout
    # the Lightning layout (keys under "model.") hashes like the plain state dict of the same weights
    (rep,) = json.loads(cli("scan", tmp_path, "--json").stdout)
    from grokscope.engine.hashing import state_dict_hash

    assert {f["hash"] for f in rep["files"]} == {state_dict_hash(net.state_dict())}
    assert MLP  # the helper spec is importable (used above through make_run)
