"""``grokscope simulate musat``: eq. 20 against autograd, and the run it writes against the run format."""

from __future__ import annotations

import json
import math

import pytest
import torch
from click.testing import CliRunner
from safetensors.torch import load_file

from grokscope.cli import main
from grokscope.datasets import load_dataset
from grokscope.models import build_model
from grokscope.probes.acc import loss_and_accuracy
from grokscope.runs import list_checkpoints, read_log, read_run_json
from grokscope.simulate import (
    SimulateError, musat_objective, musat_readout, musat_update, simulate_musat,
)

F64 = torch.float64


def _problem(p: int = 7, h: int = 40, seed: int = 0):
    data = load_dataset({"name": "modular", "kwargs": {"p": p, "encoding": "onehot_sum", "train_fraction": 0.7},
                         "seed": seed})
    X = data.x_train.to(F64)
    Y = torch.nn.functional.one_hot(data.y_train, p).to(F64)
    E = torch.randn(p, h, generator=torch.Generator().manual_seed(seed), dtype=F64) / math.sqrt(p)
    return E, X, Y


@pytest.mark.parametrize("lam", [1.0, 1e-3])
def test_eq20_is_minus_the_gradient_of_R_over_2_lambda(lam):
    E, X, Y = _problem()
    E = E.clone().requires_grad_(True)
    (grad,) = torch.autograd.grad(musat_objective(E, X, Y, lam), E)
    delta = musat_update(E.detach(), X, Y)
    torch.testing.assert_close(delta, -grad / (2 * lam), atol=1e-9, rtol=1e-9)
    assert float(delta.abs().max()) > 1e-3  # not trivially zero


def test_readout_is_the_min_norm_interpolant():
    E, X, Y = _problem()
    W = musat_readout(E, X, Y)
    H = torch.relu(X @ E)
    torch.testing.assert_close(H @ W, Y, atol=1e-9, rtol=0)
    torch.testing.assert_close(W, torch.linalg.pinv(H) @ Y, atol=1e-8, rtol=0)


def test_simulate_writes_a_run_that_the_probes_can_load(tmp_path):
    out = tmp_path / "musat"
    runner = CliRunner()
    res = runner.invoke(main, ["simulate", "musat", "--p", "7", "--hidden", "32", "--lr", "0.01",
                               "--steps", "30", "--save", "log:6", "--eval-every", "every:10",
                               "--out", str(out), "--quiet"])
    assert res.exit_code == 0, res.output
    doc = read_run_json(out)
    assert doc["model"] == {"arch": "modular_mlp", "kwargs": {"p": 7, "width": 32, "depth": 1, "input": "onehot_sum",
                                                               "activation_name": "relu", "bias": False}}
    assert doc["dataset"]["kwargs"]["train_fraction"] == 0.7 and doc["train"]["loss"] == "mse"
    data = load_dataset(doc["dataset"])
    model = build_model(doc["model"])
    ckpts = list_checkpoints(out)
    steps = [s for s, _ in ckpts]
    assert steps[0] == 0 and steps[-1] == 30 and len(steps) == 6
    log = {r["step"]: r for r in read_log(out)}
    assert {0, 10, 20, 30} <= set(log) and set(steps) <= set(log)

    # the first checkpoint is the seeded init E and its min-norm readout, on the dataset's own split
    E0, X, Y = _problem(7, 32, 0)
    state0 = load_file(ckpts[0][1])
    torch.testing.assert_close(state0["embed_linear.weight"], E0.T.float())
    torch.testing.assert_close(state0["unembed.weight"], musat_readout(E0, X, Y).T.float(), atol=1e-5, rtol=1e-5)
    # one step later: E + lr·ΔE
    if steps[1] == 1:
        E1 = E0 + 0.01 * musat_update(E0, X, Y)
        torch.testing.assert_close(load_file(ckpts[1][1])["embed_linear.weight"], E1.T.float())

    for step, path in ckpts:
        model.load_state_dict(load_file(path), strict=True)
        for split in ("train", "test"):
            lo, ac = loss_and_accuracy(model, *data.split(split), loss="mse")
            assert log[step][f"{split}_acc"] == ac and log[step][f"{split}_loss"] == pytest.approx(lo)
        assert log[step]["train_acc"] == 1.0  # the readout interpolates the training set

    # an existing run is not overwritten unless asked
    res = runner.invoke(main, ["simulate", "musat", "--p", "7", "--hidden", "32", "--steps", "2",
                               "--out", str(out), "--quiet"])
    assert res.exit_code != 0 and "--overwrite" in res.output
    res = runner.invoke(main, ["simulate", "musat", "--p", "7", "--hidden", "32", "--steps", "2", "--save",
                               "every:2", "--out", str(out), "--overwrite"])
    assert res.exit_code == 0, res.output
    assert [s for s, _ in list_checkpoints(out)] == [0, 2]
    assert json.loads(res.stdout.strip().splitlines()[-1]) == {"run": str(out)}


def test_simulate_rejects_bad_settings(tmp_path):
    with pytest.raises(SimulateError, match="--hidden 8 must be at least"):
        simulate_musat(tmp_path / "a", p=7, hidden=8, steps=1)
    with pytest.raises(SimulateError, match="--lr"):
        simulate_musat(tmp_path / "b", p=7, hidden=32, lr=-1.0, steps=1)
    with pytest.raises(SimulateError, match="schedule"):
        simulate_musat(tmp_path / "c", p=7, hidden=32, steps=10, save="log:x")
    res = CliRunner().invoke(main, ["simulate", "musat", "--p", "9", "--out", str(tmp_path / "d")])
    assert res.exit_code != 0 and "prime" in res.output


@pytest.mark.slow
def test_default_setting_groks(tmp_path):
    """The default (p=23, h=256, lr 2e-3, 2000 steps): train acc 1 throughout, test acc at chance early
    and 1.0 at the end (about 10 s)."""
    out = simulate_musat(tmp_path / "run")
    log = read_log(out)
    assert all(r["train_acc"] == 1.0 for r in log)
    assert max(r["test_acc"] for r in log if r["step"] <= 100) < 0.1
    assert log[-1]["test_acc"] == 1.0
