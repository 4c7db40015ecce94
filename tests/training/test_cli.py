"""``grokscope train`` through click: errors, presets, resume, summaries (the demo: tests/test_demo.py)."""

from __future__ import annotations

from pathlib import Path

import pytest
from click.testing import CliRunner

from grokscope import runs
from grokscope.cli import main
from grokscope.demo import summarise_log
from grokscope.training.presets import PRESETS, preset_config


def invoke(*args: str, env: dict | None = None):
    return CliRunner().invoke(main, list(args), env=env, catch_exceptions=False)


SMALL = ["--model-kwargs", '{"width": 16}', "--dataset-kwargs", '{"p": 11}', "--quiet"]


@pytest.mark.parametrize("args,names", [
    (["--preset", "nope"], sorted(PRESETS)),
    (["--dataset", "nope"], ["modular", "digits", "mnist"]),
    (["--model", "nope"], ["mlp", "modular_mlp", "transformer"]),
    (["--reg", "nope"], ["grokalign", "grokfast", "noise"]),
])
def test_unknown_names_list_the_valid_ones(tmp_path: Path, args: list[str], names: list[str]) -> None:
    res = invoke("train", *args, "--out", str(tmp_path / "r"), "--steps", "2")
    assert res.exit_code == 1
    assert "nope" in res.stderr and "Traceback" not in res.output
    for n in names:
        assert n in res.stderr
    assert not (tmp_path / "r" / "checkpoints").exists()


def test_bad_arguments_are_named(tmp_path: Path) -> None:
    res = invoke("train", "--model-kwargs", "{width: 3}", "--out", str(tmp_path / "a"))
    assert res.exit_code == 2 and "not valid JSON" in res.stderr
    res = invoke("train", "--model-kwargs", '{"nope": 1}', "--out", str(tmp_path / "b"), "--steps", "2")
    assert res.exit_code == 1 and "bad arguments for model 'mlp'" in res.stderr and "nope" in res.stderr
    res = invoke("train", "--dataset-kwargs", '{"p": 12}', "--out", str(tmp_path / "c"), "--steps", "2")
    assert res.exit_code == 1 and "p must be prime, got 12" in res.stderr
    res = invoke("train", "--batch-size", "many", "--out", str(tmp_path / "d"))
    assert res.exit_code == 1 and "--batch-size 'many'" in res.stderr


def test_list_presets() -> None:
    res = invoke("train", "--list-presets")
    assert res.exit_code == 0
    assert [line.split()[0] for line in res.stdout.splitlines()] == sorted(PRESETS)


@pytest.mark.parametrize("name", ["modadd-mlp", "modadd-transformer", "digits-mlp", "musat-2layer", "induction"])
def test_offline_presets_train(tmp_path: Path, name: str) -> None:
    out = tmp_path / name
    res = invoke("train", "--preset", name, "--steps", "3", "--save", "every:1", "--out", str(out), "--quiet")
    assert res.exit_code == 0, res.output
    assert [s for s, _ in runs.list_checkpoints(out)] == [0, 1, 2, 3]
    doc = runs.read_run_json(out)
    assert doc["model"]["arch"] == PRESETS[name]["model"]["arch"]
    assert doc["train"]["steps"] == 3 and doc["train"]["lr"] == PRESETS[name]["lr"]
    log = runs.read_log(out)
    assert [r["step"] for r in log] == [0, 1, 2, 3]
    assert all(0 <= r["test_acc"] <= 1 for r in log)


@pytest.mark.parametrize("name", ["mnist-mlp", "grokalign-mnist"])
def test_mnist_presets_fail_clearly_without_data(tmp_path: Path, name: str) -> None:
    cfg = preset_config(name)
    assert cfg.validate() is cfg
    res = invoke("train", "--preset", name, "--out", str(tmp_path / "r"),
                 env={"GROKSCOPE_DATA": str(tmp_path / "data")})
    assert res.exit_code == 1
    assert str(tmp_path / "data") in res.stderr and "IDX" in res.stderr


def test_overrides_reach_run_json(tmp_path: Path) -> None:
    out = tmp_path / "r"
    res = invoke("train", "--out", str(out), "--steps", "4", "--lr", "0.02", "--wd", "0.5", "--seed", "3",
                 "--save", "2,3", "--loss", "mse", "--optimizer", "sgd", "--momentum", "0.9", "--warmup", "2",
                 "--batch-size", "8", "--grad-clip", "1.5", "--dtype", "float64", "--dataset-seed", "4",
                 "--freeze", "1.", *SMALL)
    assert res.exit_code == 0, res.output
    doc = runs.read_run_json(out)
    t = doc["train"]
    assert (t["steps"], t["lr"], t["weight_decay"], t["seed"], t["save"], t["loss"], t["optimizer"],
            t["momentum"], t["warmup_steps"], t["batch_size"], t["grad_clip"], t["dtype"], t["freeze"]) == (
        4, 0.02, 0.5, 3, "2,3", "mse", "sgd", 0.9, 2, 8, 1.5, "float64", ["1."])
    assert doc["dataset"]["seed"] == 4 and doc["dataset"]["kwargs"]["p"] == 11
    assert doc["model"]["kwargs"]["width"] == 16 and doc["model"]["kwargs"]["in_dim"] == 22
    assert [s for s, _ in runs.list_checkpoints(out)] == [0, 2, 3, 4]


def test_cli_resume_and_refusals(tmp_path: Path) -> None:
    out = tmp_path / "r"
    res = invoke("train", "--out", str(out), "--steps", "6", "--save", "every:3", *SMALL[:-1])
    assert res.exit_code == 0
    assert "steps/s" in res.stderr and "test acc" in res.stderr  # progress goes to stderr
    assert "3 checkpoints" in res.stdout
    res = invoke("train", "--out", str(out), "--steps", "6", *SMALL)
    assert res.exit_code == 1 and "--resume" in res.stderr
    res = invoke("train", "--out", str(out), "--resume", "--steps", "8", "--quiet")
    assert res.exit_code == 1 and "steps: 6 (run.json) vs 8 (now)" in res.stderr
    before = {s: p.read_bytes() for s, p in runs.list_checkpoints(out)}
    res = invoke("train", "--out", str(out), "--resume", "--quiet")
    assert res.exit_code == 0, res.output
    assert {s: p.read_bytes() for s, p in runs.list_checkpoints(out)} == before


def test_summarise_log() -> None:
    recs = [{"step": s, "train_acc": min(1.0, s / 10), "test_acc": 0.96 if s >= 120 else 0.1, "wall": s / 100}
            for s in range(0, 201, 10)]
    s = summarise_log(list(reversed(recs)))
    assert (s["t_mem"], s["t_grok"], s["steps"], s["grokked"]) == (10, 120, 200, True)
    assert (s["mem"], s["grok"]) == (0.99, 0.95)
    assert summarise_log(recs, grok=0.99)["t_grok"] is None
    assert s["ratio"] == 12.0 and s["final_test_acc"] == 0.96 and s["wall_s"] == 2.0
    s = summarise_log([{"step": 0, "train_acc": 0.5, "test_acc": 0.5}, {"step": 5, "train_acc": 1.0, "test_acc": 0.97}])
    assert (s["t_mem"], s["t_grok"], s["ratio"], s["grokked"]) == (5, 5, 1.0, False)
    s = summarise_log([{"step": 0, "train_acc": 0.2, "test_acc": 0.1}])
    assert s["t_mem"] is None and s["ratio"] is None and not s["grokked"]
    assert summarise_log([])["steps"] is None


def test_third_party_factory_model(tmp_path: Path) -> None:
    """A model named by an import path gets its data-derived kwargs filled in like a built-in."""
    out = tmp_path / "r"
    res = invoke("train", "--model", "grokscope.models.mlp:mlp", "--model-kwargs", '{"depth": 1, "width": 8}',
                 "--dataset-kwargs", '{"p": 7}', "--steps", "2", "--out", str(out), "--quiet")
    assert res.exit_code == 0, res.output
    assert runs.read_run_json(out)["model"] == {"factory": "grokscope.models.mlp:mlp",
                                                "kwargs": {"depth": 1, "width": 8, "in_dim": 14, "out_dim": 7}}
    res = invoke("train", "--model", "nowhere.mod:fn", "--steps", "2", "--out", str(tmp_path / "s"))
    assert res.exit_code == 1 and "cannot import module 'nowhere.mod'" in res.stderr


def test_no_shuffle_flag_is_stored_and_kept_on_resume(tmp_path: Path) -> None:
    out = tmp_path / "r"
    res = invoke("train", "--out", str(out), "--steps", "4", "--batch-size", "16", "--no-shuffle", *SMALL)
    assert res.exit_code == 0, res.output
    assert runs.read_run_json(out)["train"]["shuffle"] is False
    res = invoke("train", "--out", str(out), "--resume", "--shuffle", "--quiet")
    assert res.exit_code == 1 and "shuffle: False (run.json) vs True (now)" in res.stderr
    assert invoke("train", "--out", str(out), "--resume", "--quiet").exit_code == 0
