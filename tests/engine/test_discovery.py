"""Checkpoint discovery: step parsing for every naming convention, run layouts, problems."""

from __future__ import annotations

import json

import pytest
import torch
from safetensors.torch import save_file

from grokscope import runs
from grokscope.engine.checkpoints import parse_epoch, parse_step, safetensors_metadata
from grokscope.engine.discovery import DiscoveryError, find_runs, sanitise_name

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
    torch.save({"state_dict": SD}, tmp_path / "last.ckpt")  # an alias of equal weights: skipped, saying so
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
    assert "duplicate step 100" in reasons["step-100.safetensors"]
    assert reasons["last.ckpt"] == ("last.ckpt holds the same weights as epoch=1-step=600.ckpt (step 600); "
                                    "skipped, an alias")
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


def _sd(seed: int) -> dict[str, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    return {"w": torch.randn(3, 2, generator=g), "b": torch.randn(3, generator=g)}


def test_aliases_are_placed_at_their_step_or_left_out_saying_why(tmp_path):
    """last.ckpt / best.pt / model_best.pth: global_step inside, a link, equal weights, or none of these."""
    for s in (10, 20):
        torch.save({"global_step": s, "state_dict": _sd(s)}, tmp_path / f"epoch=0-step={s}.ckpt")
    torch.save({"global_step": 20, "state_dict": _sd(20)}, tmp_path / "last.ckpt")  # repeats step 20
    torch.save({"global_step": 25, "state_dict": _sd(25)}, tmp_path / "last-v1.ckpt")  # a step of its own
    torch.save(_sd(10), tmp_path / "model_best.pth")  # no global_step: step 10's weights
    torch.save(_sd(99), tmp_path / "best.pt")  # no step anywhere and weights of no stepped file
    (tmp_path / "final.ckpt").symlink_to(tmp_path / "epoch=0-step=10.ckpt")
    (tmp_path / "latest.pt").write_bytes(b"not a pickle")
    (found,) = find_runs(tmp_path)
    assert found.steps == [10, 20, 25]
    by_step = {c.step: c for c in found.checkpoints}
    assert by_step[25].label == "last-v1.ckpt" and by_step[25].step_source == "global_step"
    reasons = {p.path.rsplit("/", 1)[-1]: p.reason for p in found.problems}
    assert reasons["last.ckpt"] == ("last.ckpt is global_step 20 (inside it), the step of epoch=0-step=20.ckpt; "
                                    "skipped, an alias")
    assert reasons["model_best.pth"] == ("model_best.pth holds the same weights as epoch=0-step=10.ckpt "
                                         "(step 10); skipped, an alias")
    assert reasons["best.pt"].startswith("best.pt: an alias with no step in its name, no global_step inside")
    assert reasons["final.ckpt"] == "final.ckpt is a link to epoch=0-step=10.ckpt (step 10); skipped, an alias"
    assert reasons["latest.pt"].startswith("latest.pt: an alias (no step in its name) that cannot be read")
    assert set(reasons) == {"last.ckpt", "model_best.pth", "best.pt", "final.ckpt", "latest.pt"}
