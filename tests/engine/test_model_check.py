"""The model check (grokscope/engine/model_check.py): each way a model can fail to fit its checkpoints
and data is one line naming the checkpoint; ``probe`` drops that run before any job and goes on."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from torch import nn

from grokscope import runs
from grokscope.engine.discovery import find_runs
from grokscope.engine.model_check import ModelCheckError, check_model, check_run
from grokscope.engine.store_view import load_group
from grokscope.trust import Trust
from tests.helpers import DIGITS, MLP, make_run

TRUST = Trust.of(["tests.engine.test_model_check"])


class _Wrapped(nn.Module):
    """An MLP whose forward returns something other than a logits tensor, as ``kind`` says."""

    def __init__(self, kind: str, **kw):
        super().__init__()
        from grokscope.models.mlp import mlp

        self.net, self.kind = mlp(**kw), kind

    def forward(self, x):
        out = self.net(x)
        return {"dict": lambda: {"logits": out}, "narrow": lambda: out[:, :3], "flat": lambda: out.reshape(-1),
                "int": lambda: out.argmax(1, keepdim=True).expand(-1, 10)}[self.kind]()


def wrapped(kind: str, **kw) -> nn.Module:
    return _Wrapped(kind, **kw)


def _spec(model: dict) -> dict:
    return {"model": model, "dataset": DIGITS, "train": {}}


def test_each_misfit_is_one_line_naming_the_checkpoint(tmp_path):
    run = make_run(tmp_path / "r", [0, 3])
    (found,) = find_runs(run)
    ck = found.checkpoints[0]
    ok = check_model(_spec(MLP), ck, TRUST, "run.json")
    assert (ok.shape, ok.dtype, ok.n_classes, ok.checkpoint) == ((2, 10), "float32", 10, ck.path)
    cases = {
        "dict": "returns a dict, not a tensor of logits",
        "narrow": "returns (2, 3) for 2 inputs; expected (2, n_classes) with n_classes >= 10",
        "flat": "returns (20,) for 2 inputs",
        "int": "returns torch.int64 outputs; expected floating-point logits",
    }
    for kind, words in cases.items():
        spec = _spec({"factory": "tests.engine.test_model_check:wrapped", "kwargs": {"kind": kind, **MLP["kwargs"]}})
        with pytest.raises(ModelCheckError) as e:
            check_model(spec, ck, TRUST, "run.json")
        assert words in str(e.value) and ck.path in str(e.value) and "\n" not in str(e.value), (kind, e.value)
    wider = {**MLP, "kwargs": {**MLP["kwargs"], "width": 13}}
    with pytest.raises(ModelCheckError, match=r"shape mismatch with the model .*checkpoint \(12, 64\) vs model \(13, 64\)"):
        check_model(_spec(wider), ck, TRUST, "run.json")
    deeper = {**MLP, "kwargs": {**MLP["kwargs"], "depth": 2}}
    with pytest.raises(ModelCheckError, match="state dict keys do not match the model: 2 missing"):
        check_model(_spec(deeper), ck, TRUST, "run.json")
    # an unreadable first checkpoint is left to its job: the next one is checked
    (tmp_path / "r" / "checkpoints" / "step-00000000.safetensors").write_bytes(b"broken")
    (found,) = find_runs(run)
    assert check_run(_spec(MLP), found.checkpoints, TRUST, "run.json").checkpoint == found.checkpoints[1].path


def test_probe_drops_only_the_run_whose_model_does_not_fit(tmp_path, cli):
    make_run(tmp_path / "runs" / "good", [0, 2])
    bad = make_run(tmp_path / "runs" / "bad", [0, 2, 5])
    doc = runs.read_run_json(bad)
    runs.write_run_json(bad, {**MLP, "kwargs": {**MLP["kwargs"], "width": 13}}, doc["dataset"], doc["train"])
    r = cli("probe", tmp_path / "runs", "--scheduler", "sync", "--json", "-q")
    assert r.exit_code == 1
    summary = json.loads(r.stdout)
    assert summary["completed"] == 2 and summary["jobs"] == 2 and len(summary["failures"]) == 1
    (f,) = summary["failures"]
    assert (f["run"], f["step"], f["probe"], f["file"]) == ("bad", None, "*", str(bad / "run.json"))
    assert f["reason"].startswith("model check failed, nothing computed for this run: ")
    assert "step-00000000.safetensors: shape mismatch with the model" in f["reason"]
    assert load_group(tmp_path / "runs" / "probes.zarr", "good", "acc").done.all()


def test_the_client_reads_the_first_checkpoint_once(tmp_path, monkeypatch):
    """The model check and the probes' checks (a declared template, lc's input-size check) share one read
    of each run's first checkpoint: with the in-process scheduler, the client reads it once and each
    job reads its own checkpoint once."""
    import grokscope
    from grokscope.engine import loading

    run = make_run(tmp_path / "r", [0, 5])
    reads: list[str] = []
    real = loading._safetensors_load

    def counted(path, *copy):
        reads.append(Path(path).name)
        return real(path, *copy)

    monkeypatch.setattr(loading, "_safetensors_load", counted)
    s = grokscope.probe(run, {"acc": {}, "lc": {"n_points": 8, "n_dirs": 4}}, out=tmp_path / "s.zarr",
                        scheduler="sync")
    assert not s.failures and s.completed == 4
    assert reads.count("step-00000000.safetensors") == 2  # one client read, one job
    assert reads.count("step-00000005.safetensors") == 1
