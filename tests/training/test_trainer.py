"""The trainer on real (tiny) runs: files, determinism, resume, the update rule, logs, freezing."""

from __future__ import annotations

import json
import math
from pathlib import Path

import pytest
import torch

from grokscope import runs
from grokscope.datasets import load_dataset
from grokscope.losses import task_loss
from grokscope.models import build_model
from grokscope.probes.acc import loss_and_accuracy
from grokscope.training import trainer as T
from grokscope.training.config import TrainConfig, TrainConfigError
from grokscope.training.presets import preset_config
from grokscope.training.schedule import eval_schedule, parse_schedule


def tiny(**over) -> TrainConfig:
    """modadd-mlp shrunk: p = 13 (68 train pairs), width 32, 40 steps."""
    kw = dict(steps=40, save="every:10", eval_every="every:5", model_kwargs={"width": 32},
              dataset_kwargs={"p": 13})
    kw.update(over)
    return preset_config("modadd-mlp", **kw)


def ckpt_bytes(run_dir: Path) -> dict[int, bytes]:
    return {s: p.read_bytes() for s, p in runs.list_checkpoints(run_dir)}


def strip_wall(records: list[dict]) -> list[dict]:
    return [{k: v for k, v in r.items() if k != "wall"} for r in records]


def load_model(run_dir: Path, step: int) -> torch.nn.Module:
    from safetensors.torch import load_file

    doc = runs.read_run_json(run_dir)
    model = build_model(doc["model"])
    if doc["train"]["dtype"] == "float64":
        model = model.double()
    model.load_state_dict(load_file(str(runs.checkpoint_path(run_dir, step))))
    return model


def test_run_files_and_log(tmp_path: Path) -> None:
    cfg = tiny()
    out = T.train_run(cfg, tmp_path / "r", progress=False)
    doc = runs.read_run_json(out)
    assert doc["train"] == json.loads(json.dumps(cfg.hyperparameters()))
    assert doc["model"]["kwargs"] == {"depth": 2, "width": 32, "in_dim": 26, "out_dim": 13}
    assert doc["dataset"] == {"name": "modular", "seed": 0,
                              "kwargs": {"p": 13, "op": "add", "train_fraction": 0.6, "encoding": "onehot_concat"}}
    assert TrainConfig.from_run_json(doc).to_dict() == json.loads(json.dumps({**cfg.to_dict(), "model": doc["model"]}))
    assert [s for s, _ in runs.list_checkpoints(out)] == [0, 10, 20, 30, 40]
    log = runs.read_log(out)
    assert [r["step"] for r in log] == eval_schedule(parse_schedule("every:10", 40), "every:5", 40)
    for r in log:
        assert set(r) == {"step", "train_loss", "train_acc", "test_loss", "test_acc", "wall"}
    # the log is exactly what the acc probe's function gives on each saved checkpoint
    data = load_dataset(doc["dataset"])
    by_step = {r["step"]: r for r in log}
    for step, _ in runs.list_checkpoints(out):
        model = load_model(out, step)
        tl, ta = loss_and_accuracy(model, data.x_train, data.y_train, "ce")
        vl, va = loss_and_accuracy(model, data.x_test, data.y_test, "ce")
        assert (tl, ta, vl, va) == tuple(by_step[step][k] for k in ("train_loss", "train_acc", "test_loss", "test_acc"))
    # step 0 is the seeded initialisation; training moved the weights and lowered the loss
    torch.manual_seed(cfg.seed)
    init = build_model(doc["model"]).state_dict()
    assert all(torch.equal(init[k], v) for k, v in load_model(out, 0).state_dict().items())
    assert log[-1]["train_loss"] < log[0]["train_loss"]
    meta = runs.checkpoint_path(out, 40)
    from safetensors import safe_open
    with safe_open(str(meta), framework="pt") as f:
        assert f.metadata()["step"] == "40"
    assert T.state_path(out).is_file() and not list(out.rglob("*.tmp"))


def test_same_seed_same_bytes_other_seed_differs(tmp_path: Path) -> None:
    cfg = tiny(batch_size=16, steps=20, save="every:5", reg="noise:0.05")
    a = ckpt_bytes(T.train_run(cfg, tmp_path / "a", progress=False))
    b = ckpt_bytes(T.train_run(cfg, tmp_path / "b", progress=False))
    assert a == b and len(a) == 5
    c = ckpt_bytes(T.train_run(tiny(batch_size=16, steps=20, save="every:5", reg="noise:0.05", seed=1),
                               tmp_path / "c", progress=False))
    assert c[20] != a[20]


class Killed(BaseException):
    pass


@pytest.mark.parametrize("over", [
    dict(batch_size=16, reg="noise:auto"),               # mini-batch order + RNG-driven regulariser
    dict(reg="grokfast:0.9,2", save="log:12", eval_every="every:3"),  # stateful regulariser, log schedule
    dict(optimizer="sgd", momentum=0.9, lr=0.5, warmup_steps=7, dtype="float64", loss="mse"),
])
def test_resume_is_bit_identical(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, over: dict) -> None:
    cfg = tiny(**over)
    ref = T.train_run(cfg, tmp_path / "ref", progress=False)

    calls = {"n": 0}
    real_update = T._update

    def dying_update(*args, **kwargs):  # the process "dies" in the middle of update 27
        calls["n"] += 1
        if calls["n"] == 28:
            raise Killed()
        return real_update(*args, **kwargs)

    monkeypatch.setattr(T, "_update", dying_update)
    with pytest.raises(Killed):
        T.train_run(cfg, tmp_path / "run", progress=False)
    monkeypatch.setattr(T, "_update", real_update)
    killed_at = torch.load(T.state_path(tmp_path / "run"), weights_only=True)["step"]
    assert 0 < killed_at < 28
    with pytest.raises(T.TrainingError, match="--resume"):
        T.train_run(cfg, tmp_path / "run", progress=False)
    T.train_run(cfg, tmp_path / "run", resume=True, progress=False)
    assert ckpt_bytes(tmp_path / "run") == ckpt_bytes(ref)
    assert strip_wall(runs.read_log(tmp_path / "run")) == strip_wall(runs.read_log(ref))
    # resuming a finished run changes nothing
    T.train_run(cfg, tmp_path / "run", resume=True, progress=False)
    assert ckpt_bytes(tmp_path / "run") == ckpt_bytes(ref)


def test_penalty_is_logged_as_reg(tmp_path: Path) -> None:
    run_dir = T.train_run(tiny(steps=6, save="every:3", eval_every=None, reg="grokalign:1e-3"),
                          tmp_path / "r", progress=False)
    log = runs.read_log(run_dir)
    train = runs.read_run_json(run_dir)["train"]
    # the spec string and its resolved parameters (n_proj's default filled in)
    assert train["reg"] == "grokalign:1e-3"
    assert train["reg_params"] == {"name": "grokalign", "lambda": 1e-3, "n_proj": 1, "jacobian_wrt": "input"}
    assert [r["step"] for r in log] == [0, 3, 6]
    assert "reg" not in log[0]  # no update before step 0
    assert all(r["reg"] > 0 and math.isfinite(r["reg"]) for r in log[1:])


def test_resume_refuses_other_config(tmp_path: Path) -> None:
    T.train_run(tiny(steps=10), tmp_path / "r", progress=False)
    with pytest.raises(T.TrainingError, match=r"lr: 0\.006 \(run\.json\) vs 0\.01"):
        T.train_run(tiny(steps=10, lr=0.01), tmp_path / "r", resume=True, progress=False)


@pytest.mark.parametrize("opt", ["sgd", "adamw"])
def test_updates_match_a_hand_written_optimiser(tmp_path: Path, opt: str) -> None:
    """Three updates (warm-up, gradient-norm clip, weight decay, momentum / Adam moments) against a
    plain-loop reimplementation in float64."""
    cfg = tiny(optimizer=opt, lr=0.3 if opt == "sgd" else 0.01, weight_decay=0.1, momentum=0.8,
               betas=(0.8, 0.9), warmup_steps=2, grad_clip=0.05, loss="mse", dtype="float64",
               steps=3, save="every:1")
    out = T.train_run(cfg, tmp_path / "r", progress=False)
    doc = runs.read_run_json(out)
    data = load_dataset(doc["dataset"])
    x, y = data.x_train.double(), data.y_train
    torch.manual_seed(cfg.seed)
    model = build_model(doc["model"]).double()
    params = list(model.parameters())
    buf = [torch.zeros_like(p) for p in params]
    m = [torch.zeros_like(p) for p in params]
    v = [torch.zeros_like(p) for p in params]
    b1, b2 = cfg.betas
    for t in range(3):
        lr = cfg.lr * min(1.0, (t + 1) / 2)
        grads = torch.autograd.grad(task_loss(model(x), y, "mse"), params)
        norm = math.sqrt(sum(float((g ** 2).sum()) for g in grads))
        coef = min(1.0, cfg.grad_clip / (norm + 1e-6))
        with torch.no_grad():
            for i, (p, g) in enumerate(zip(params, grads)):
                g = g * coef
                if opt == "sgd":
                    d = g + cfg.weight_decay * p
                    buf[i] = d if t == 0 else cfg.momentum * buf[i] + d
                    p -= lr * buf[i]
                else:
                    p *= 1 - lr * cfg.weight_decay
                    m[i] = b1 * m[i] + (1 - b1) * g
                    v[i] = b2 * v[i] + (1 - b2) * g * g
                    mh, vh = m[i] / (1 - b1 ** (t + 1)), v[i] / (1 - b2 ** (t + 1))
                    p -= lr * mh / (vh.sqrt() + 1e-8)
        saved = load_model(out, t + 1).state_dict()
        for k, val in model.state_dict().items():
            assert saved[k].dtype == torch.float64
            torch.testing.assert_close(saved[k], val, rtol=1e-10, atol=1e-12)


def test_freeze_keeps_parameters_fixed(tmp_path: Path) -> None:
    out = T.train_run(tiny(steps=10, freeze=["1."]), tmp_path / "r", progress=False)
    first, last = load_model(out, 0).state_dict(), load_model(out, 10).state_dict()
    assert torch.equal(first["1.weight"], last["1.weight"]) and torch.equal(first["1.bias"], last["1.bias"])
    assert not torch.equal(first["3.weight"], last["3.weight"])
    with pytest.raises(TrainConfigError, match=r"matches no parameter; parameters: 1\.weight"):
        T.train_run(tiny(steps=10, freeze=["embed_tokens"]), tmp_path / "s", progress=False)
    assert not (tmp_path / "s").exists()  # the folder it created for its lock is removed again


def test_bad_config_fields_are_named(tmp_path: Path) -> None:
    for over, pat in [(dict(optimizer="lion"), "optimizer='lion'.*adamw, sgd"),
                      (dict(loss="hinge"), "loss='hinge'.*ce, mse"),
                      (dict(lr=-1.0), "lr=-1.0"),
                      (dict(save="log:1"), "log:N needs N >= 2"),
                      (dict(reg="nosuchreg"), "reg='nosuchreg'.*unknown regulariser")]:
        with pytest.raises(TrainConfigError, match=pat):
            T.train_run(tiny(**over), tmp_path / "x", progress=False)
    assert not (tmp_path / "x").exists()  # nothing was written for a bad config


def test_no_shuffle_takes_the_training_order_every_epoch(tmp_path: Path) -> None:
    """``shuffle=False``: batch k of every epoch is rows [16k, 16k + 16) of the training set (101 rows:
    six batches, the last 5 rows dropped), checked over two epochs against a hand-written SGD loop."""
    cfg = tiny(optimizer="sgd", lr=0.5, weight_decay=0.0, batch_size=16, shuffle=False, dtype="float64",
               loss="mse", steps=9, save="every:9", eval_every=None)
    out = T.train_run(cfg, tmp_path / "fixed", progress=False)
    doc = runs.read_run_json(out)
    assert doc["train"]["shuffle"] is False
    data = load_dataset(doc["dataset"])
    x, y = data.x_train.double(), data.y_train
    torch.manual_seed(cfg.seed)
    model = build_model(doc["model"]).double()
    assert len(x) == 101
    for t in range(9):
        rows = slice(16 * (t % 6), 16 * (t % 6) + 16)
        model.zero_grad()
        task_loss(model(x[rows]), y[rows], "mse").backward()
        with torch.no_grad():
            for p in model.parameters():
                p -= cfg.lr * p.grad
    trained = load_model(out, 9).state_dict()
    for name, w in model.state_dict().items():
        torch.testing.assert_close(trained[name], w, rtol=1e-12, atol=1e-12)
    shuffled = T.train_run(tiny(**{**{k: getattr(cfg, k) for k in ("optimizer", "lr", "weight_decay", "batch_size", "dtype",
                                                                     "loss", "steps", "save", "eval_every")},
                                  "shuffle": True}), tmp_path / "shuffled", progress=False)
    assert ckpt_bytes(shuffled)[9] != ckpt_bytes(out)[9]


def test_run_json_without_shuffle_resumes_as_shuffled(tmp_path: Path) -> None:
    """A run written before ``shuffle`` existed was shuffled: it resumes with the default and is
    refused with ``shuffle=False``, naming the field."""
    cfg = tiny(batch_size=16, steps=10)
    run_dir = T.train_run(cfg, tmp_path / "r", progress=False)
    doc = json.loads((run_dir / runs.RUN_JSON).read_text())
    del doc["train"]["shuffle"]
    (run_dir / runs.RUN_JSON).write_text(json.dumps(doc))
    T.train_run(cfg, run_dir, resume=True, progress=False)
    with pytest.raises(T.TrainingError, match=r"shuffle: True \(run\.json\) vs False"):
        T.train_run(tiny(batch_size=16, steps=10, shuffle=False), run_dir, resume=True, progress=False)


def test_shuffle_must_be_a_bool() -> None:
    with pytest.raises(TrainConfigError, match="shuffle='no'"):
        tiny(shuffle="no").validate()
