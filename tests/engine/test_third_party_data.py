"""`grokscope init` with a third party's data and log: the log found in the folder (HF
trainer_state.json, Lightning metrics.csv) or given is imported, bad input is one line, an input shape
the model rejects is caught on the first checkpoint, and the stores say which data and split."""

from __future__ import annotations

import json

import numpy as np

from grokscope import runs
from grokscope.engine.store_view import open_store
from grokscope.runlog import import_log
from tests.helpers import DIGITS, MLP, make_run

DIGITS_ARGS = ["--dataset", "digits", "--dataset-kwargs", json.dumps(DIGITS["kwargs"])]
MLP_ARGS = ["--model", "mlp", "--model-kwargs", json.dumps({k: MLP["kwargs"][k] for k in ("depth", "width")})]


def _bare(tmp_path, name):
    run = make_run(tmp_path / name, [0, 3])
    (run / "run.json").unlink()
    return run


def test_init_imports_hf_and_lightning_logs(tmp_path, cli):
    run = _bare(tmp_path, "hf")
    state = {"log_history": [{"step": 0, "eval_accuracy": 0.1}, {"step": 3, "loss": 2.0},
                             {"step": 3, "eval_accuracy": 0.2, "eval_loss": 2.1}]}
    (run / "checkpoints" / "checkpoint-3").mkdir()
    (run / "checkpoints" / "checkpoint-3" / "trainer_state.json").write_text(json.dumps(state))
    r = cli("init", run, *MLP_ARGS, *DIGITS_ARGS)
    assert r.exit_code == 0, r.output
    assert "imported 2 evaluation record(s)" in r.stderr and "trainer_state.json" in r.stderr
    assert runs.read_log(run) == [{"step": 0, "test_acc": 0.1},
                                  {"step": 3, "train_loss": 2.0, "test_acc": 0.2, "test_loss": 2.1}]
    # the split check then compares acc with it: these numbers are not the model's
    r = cli("probe", run, "--scheduler", "sync", "-q")
    assert r.exit_code == 0 and "SPLIT CHECK FAILED for run hf" in r.stderr
    report = cli("report", run / "probes.zarr", "--json")
    assert report.exit_code == 0, report.output
    assert "SPLIT CHECK FAILED for run hf" in report.stdout

    light = _bare(tmp_path, "light")
    v = light / "lightning_logs" / "version_0"
    v.mkdir(parents=True)
    (v / "metrics.csv").write_text("epoch,step,train_acc_epoch,val_acc\n0,0,0.5,\n0,0,,0.4\n0,3,0.9,0.8\n")
    r = cli("init", light, *MLP_ARGS, *DIGITS_ARGS)
    assert r.exit_code == 0, r.output
    # Lightning logs a validation during fit at global_step - 1: its numbers go to the step after
    assert runs.read_log(light) == [{"step": 0, "train_acc": 0.5}, {"step": 1, "test_acc": 0.4},
                                    {"step": 3, "train_acc": 0.9}, {"step": 4, "test_acc": 0.8}]
    bad = tmp_path / "bad.jsonl"
    bad.write_text('{"step": 1, "acc": 0.5}\nnot json\n')
    r = cli("init", light, "--force", *MLP_ARGS, *DIGITS_ARGS, "--log", bad)
    assert r.exit_code == 1 and f"{bad}: line 2 is not JSON" in r.output
    good = tmp_path / "good.jsonl"
    good.write_text('{"step": 1, "acc": 0.5}\n')
    r = cli("init", light, "--force", *MLP_ARGS, *DIGITS_ARGS, "--log", good, "--log-columns", "test_acc=acc")
    assert r.exit_code == 0, r.output
    assert runs.read_log(light) == [{"step": 1, "test_acc": 0.5}] == import_log(good, columns={"test_acc": "acc"})


def test_input_shape_the_model_rejects_is_caught_by_init(tmp_path, cli):
    run = _bare(tmp_path, "r")
    np.savez(tmp_path / "d.npz", x_train=np.zeros((4, 7), np.float32), y_train=np.zeros(4, int),
             x_test=np.zeros((2, 7), np.float32), y_test=np.zeros(2, int))
    r = cli("init", run, "--model", "mlp", "--model-kwargs", json.dumps(MLP["kwargs"]),
            "--dataset", f"file:{tmp_path / 'd.npz'}")
    assert r.exit_code == 1
    assert "the model loaded from" in r.output and "rejects its inputs of shape (7,)" in r.output
    assert not (run / "run.json").exists()


def test_store_says_which_data_and_split(tmp_path, cli):
    run = make_run(tmp_path / "r", [0])
    runs.write_run_json(run, MLP, {**DIGITS, "kwargs": {**DIGITS["kwargs"], "split": "first:300"}})
    assert cli("probe", run, "--scheduler", "sync", "-q").exit_code == 0
    tree = open_store(run / "probes.zarr")
    assert tree["r"].attrs["data"] == "digits (n_train=300), split first:300"
    r = cli("scan", run)
    assert "data: digits (n_train=300), split first:300" in r.output
