"""Checkpoint discovery: step parsing for every naming convention, run layouts, problems."""

from __future__ import annotations

import json

import pytest
import torch
from safetensors.torch import save_file

from grokscope import runs
from grokscope.engine.discovery import (DiscoveryError, find_runs, parse_epoch, parse_step,
                                        safetensors_metadata, sanitise_name)

SD = {"w": torch.arange(6.0).reshape(2, 3), "b": torch.zeros(2)}


@pytest.mark.parametrize("name, step", [
    ("step-500.safetensors", 500), ("step_500.pt", 500), ("step500.pth", 500),
    ("step-00001234.safetensors", 1234), ("global_step=77.ckpt", 77),
    ("epoch=3-step=1200.ckpt", 1200), ("checkpoint-500", 500), ("checkpoint_42", 42),
    ("ckpt_12.bin", 12), ("iter_9.pt", 9), ("model_500.pt", 500), ("model-500.pth", 500),
    ("500.pt", 500), ("weights.step=3.safetensors", 3),
    ("epoch=3.ckpt", None), ("last.ckpt", None), ("model.safetensors", None), ("model-v2.ckpt", None),
])
def test_parse_step(name, step):
    assert parse_step(name) == step


def test_parse_epoch():
    assert parse_epoch("epoch=3-step=1200.ckpt") == 3
    assert parse_epoch("step-5.pt") is None


def test_sanitise_name():
    assert sanitise_name("sweep/lr 0.1/seed=0") == "sweep__lr_0.1__seed=0"
    assert sanitise_name("__x") == "run__x"
    assert sanitise_name(".") == "run"


def test_grokscope_run_and_folder_of_runs(tmp_path):
    for name in ("b", "a/x"):
        d = tmp_path / name
        runs.write_run_json(d, {"arch": "mlp"}, {"name": "digits"})
        for s in (0, 10, 100):
            runs.save_checkpoint(runs.checkpoint_path(d, s), SD, s)
    (tmp_path / "a" / "x" / "state").mkdir()
    torch.save({"step": 1}, tmp_path / "a" / "x" / "state" / "last.pt")  # trainer state: ignored
    found = find_runs(tmp_path)
    assert [r.name for r in found] == ["a__x", "b"]
    assert all(r.steps == [0, 10, 100] for r in found)
    assert all(r.spec["model"] == {"arch": "mlp"} for r in found)
    single = find_runs(tmp_path / "b")
    assert [r.name for r in single] == ["b"] and single[0].rel == "."
    # the store folder is never searched
    (tmp_path / "probes.zarr" / "c").mkdir(parents=True)
    save_file(SD, str(tmp_path / "probes.zarr" / "c" / "step-1.safetensors"))
    assert [r.name for r in find_runs(tmp_path)] == ["a__x", "b"]


def test_bare_files_all_formats_and_problems(tmp_path):
    save_file(SD, str(tmp_path / "step-100.safetensors"))
    save_file(SD, str(tmp_path / "weights.safetensors"), metadata={"step": "250"})  # step in metadata
    torch.save(SD, tmp_path / "model_300.pt")
    torch.save(SD, tmp_path / "step_400.pth")
    torch.save(SD, tmp_path / "ckpt-500.bin")
    torch.save({"state_dict": SD}, tmp_path / "epoch=1-step=600.ckpt")
    torch.save({"state_dict": SD}, tmp_path / "last.ckpt")  # no step: skipped with a reason
    torch.save(SD, tmp_path / "step-100.pt")  # duplicate step 100
    torch.save({}, tmp_path / "optimizer.pt")  # trainer side file: ignored
    (found,) = find_runs(tmp_path)
    assert found.steps == [100, 250, 300, 400, 500, 600]
    by_step = {c.step: c for c in found.checkpoints}
    assert by_step[250].step_source == "metadata" and by_step[100].step_source == "name"
    assert by_step[100].label == "step-100.pt"  # the first by name is kept
    assert by_step[600].kind == "torch" and by_step[100].kind == "torch"
    reasons = {p.path.rsplit("/", 1)[-1]: p.reason for p in found.problems}
    assert set(reasons) == {"last.ckpt", "step-100.safetensors"}
    assert "no step" in reasons["last.ckpt"] and "duplicate step 100" in reasons["step-100.safetensors"]
    assert found.spec is None


def test_hf_folders_and_sharded_index(tmp_path):
    for step in (10, 20):
        d = tmp_path / f"checkpoint-{step}"
        d.mkdir()
        save_file(SD, str(d / "model.safetensors"))
        torch.save({}, d / "optimizer.pt")
        torch.save({}, d / "rng_state.pth")
    d = tmp_path / "checkpoint-30"
    d.mkdir()
    save_file({"w": SD["w"]}, str(d / "model-00001-of-00002.safetensors"))
    save_file({"b": SD["b"]}, str(d / "model-00002-of-00002.safetensors"))
    (d / "model.safetensors.index.json").write_text(json.dumps(
        {"metadata": {}, "weight_map": {"w": "model-00001-of-00002.safetensors",
                                        "b": "model-00002-of-00002.safetensors"}}))
    d = tmp_path / "checkpoint-40"
    d.mkdir()
    torch.save(SD, d / "pytorch_model.bin")
    (found,) = find_runs(tmp_path)
    assert found.steps == [10, 20, 30, 40]
    c30 = found.checkpoints[2]
    assert c30.sharded and len(c30.files) == 2 and c30.label == "checkpoint-30/model.safetensors.index.json"
    assert found.checkpoints[3].kind == "torch"
    # pointing at one HF folder: its name gives the step
    (one,) = find_runs(tmp_path / "checkpoint-20")
    assert one.steps == [20]


def test_lightning_layout_names_the_run_after_its_parent(tmp_path):
    ck = tmp_path / "lightning_logs" / "version_0" / "checkpoints"
    ck.mkdir(parents=True)
    for step in (5, 10):
        torch.save({"state_dict": SD, "global_step": step}, ck / f"epoch=0-step={step}.ckpt")
    (found,) = find_runs(tmp_path)
    assert found.name == "lightning_logs__version_0" and found.steps == [5, 10]
    assert found.checkpoint_dir == ck


def test_safetensors_metadata_and_truncation(tmp_path):
    p = tmp_path / "x.safetensors"
    save_file(SD, str(p), metadata={"step": "7"})
    assert safetensors_metadata(p)["step"] == "7"
    p.write_bytes(p.read_bytes()[:20])
    with pytest.raises(ValueError, match="truncated"):
        safetensors_metadata(p)


def test_no_checkpoints_is_an_error(tmp_path):
    (tmp_path / "empty").mkdir()
    with pytest.raises(DiscoveryError, match="no checkpoints found"):
        find_runs(tmp_path)
    with pytest.raises(DiscoveryError, match="no such"):
        find_runs(tmp_path / "nope")
