"""Regularisers: spec parsing, the GrokAlign penalty against exact Jacobian norms (value and gradient),
Grokfast's filter against a hand computation, and the noise levels."""

from __future__ import annotations

import io
import json

import numpy as np
import pytest
import torch
from torch import nn

from grokscope.models.mlp import mlp
from grokscope.models.modular import ModularMLP
from grokscope.training.regularisers import (
    REGULARISERS,
    GaussianNoise,
    GrokAlign,
    Grokfast,
    build_regulariser,
)

torch.set_num_threads(1)


@pytest.fixture(autouse=True)
def _seed():
    torch.manual_seed(0)


def exact_fro_mean(f, z: torch.Tensor) -> torch.Tensor:
    """Batch mean of ‖J‖_F with one full Jacobian per sample (torch.autograd.functional.jacobian,
    create_graph so the result is differentiable w.r.t. the parameters)."""
    norms = []
    for b in range(len(z)):
        J = torch.autograd.functional.jacobian(lambda v: f(v.unsqueeze(0))[0], z[b], create_graph=True)
        norms.append(J.pow(2).sum().sqrt())
    return torch.stack(norms).mean()


def tiny():
    return mlp(5, 3, depth=2, width=6, activation_name="gelu").double()


# ---------------------------------------------------------------- parsing
def test_registry_and_spec_parsing():
    assert {"grokalign", "grokfast", "noise"} <= set(REGULARISERS)
    assert build_regulariser(None) is None and build_regulariser("none") is None
    ce, mse = build_regulariser("grokalign", "ce"), build_regulariser("grokalign", "mse")
    assert (ce.lam, ce.n_proj, mse.lam) == (1e-3, 1, 1e-4)
    r = build_regulariser("grokalign:0.01,4", "ce", "tokens")
    assert r.describe() == {"name": "grokalign", "lambda": 0.01, "n_proj": 4, "jacobian_wrt": "embedding"}
    g = build_regulariser("grokfast")
    assert (g.alpha, g.lamb) == (0.98, 2.0)
    assert build_regulariser("grokfast:0.8,0.1").describe() == {"name": "grokfast", "alpha": 0.8, "lambda": 0.1}
    assert build_regulariser("noise:0.1").describe() == {"name": "noise", "sigma": 0.1}
    assert build_regulariser("noise:auto").describe()["sigma"] == "auto"
    json.dumps([build_regulariser(s).describe() for s in ("grokalign", "grokfast", "noise:auto")])


@pytest.mark.parametrize("spec,kind,match", [
    ("wd:1", "continuous", "unknown regulariser 'wd'"),
    ("grokalign:abc", "continuous", "lambda='abc' is not a number"),
    ("grokalign:1e-3,1.5", "continuous", "n_proj=1.5 must be an integer"),
    ("grokalign:1e-3,0", "continuous", "n_proj must be >= 1"),
    ("grokalign:1,2,3", "continuous", "too many arguments"),
    ("grokfast:1.5", "continuous", "α must be in"),
    ("noise", "continuous", "needs an argument"),
    ("noise:0.1", "tokens", "needs continuous inputs"),
])
def test_bad_specs_raise_clear_errors(spec, kind, match):
    with pytest.raises(ValueError, match=match):
        build_regulariser(spec, "ce", kind)


# ---------------------------------------------------------------- GrokAlign
def test_grokalign_penalty_converges_to_exact_mean_frobenius_norm():
    model = tiny()
    x = torch.randn(6, 5, dtype=torch.float64)
    exact = float(exact_fro_mean(model, x).detach())
    one = GrokAlign(lam=2.0, n_proj=1)
    err_one = abs(np.mean([float(one.penalty(model, x, None, None).detach()) / 2.0 for _ in range(200)]) - exact) / exact
    err_many = abs(float(GrokAlign(lam=2.0, n_proj=2000).penalty(model, x, None, None).detach()) / 2.0 - exact) / exact
    # one projection: sqrt of an unbiased estimate of the square is biased low; many: converges
    assert err_many < 0.01 and err_many < err_one
    # orthonormal projections with n_proj = C: the estimate is the exact value
    reg = GrokAlign(lam=1.0, n_proj=3, directions="orthogonal")
    assert float(reg.penalty(model, x, None, None).detach()) == pytest.approx(exact, rel=1e-12)


def _param_grads(model, loss):
    params = list(model.parameters())
    grads = torch.autograd.grad(loss, params, allow_unused=True)  # the output bias does not move J
    return torch.cat([(torch.zeros_like(p) if g is None else g).flatten() for p, g in zip(params, grads)])


def test_grokalign_gradient_matches_autograd_of_the_exact_value():
    model = tiny()
    x = torch.randn(4, 5, dtype=torch.float64)
    want = _param_grads(model, 1e-3 * exact_fro_mean(model, x))
    exact_reg = GrokAlign(lam=1e-3, n_proj=3, directions="orthogonal")
    got = _param_grads(model, exact_reg.penalty(model, x, None, model(x)))
    np.testing.assert_allclose(got.numpy(), want.numpy(), rtol=1e-9, atol=1e-14)
    # the paper's sphere estimator with many projections: close to it
    many = _param_grads(model, GrokAlign(lam=1e-3, n_proj=2000).penalty(model, x, None, None))
    assert float((many - want).norm() / want.norm()) < 0.05


def test_grokalign_on_token_models_differentiates_wrt_the_embedding_output():
    model = ModularMLP(5, width=7, depth=2, input="tokens", activation_name="gelu").double()
    x = torch.tensor([[0, 1, 5], [3, 4, 5], [2, 2, 5]])
    reg = build_regulariser("grokalign:1", "ce", "tokens")
    reg.n_proj, reg.directions = 5, "orthogonal"
    pen = reg.penalty(model, x, None, None)
    exact = exact_fro_mean(model.forward_embedded, model.embed(x))
    assert float(pen.detach()) == pytest.approx(float(exact.detach()), rel=1e-12)
    # the penalty reaches the embedding table through the embedding output (as in the authors' code)
    (g,) = torch.autograd.grad(pen, [model.embed_tokens.weight])
    (g_ref,) = torch.autograd.grad(exact, [model.embed_tokens.weight])
    assert g.abs().sum() > 0
    np.testing.assert_allclose(g.numpy(), g_ref.numpy(), rtol=1e-9, atol=1e-14)
    with pytest.raises(TypeError, match="embed"):
        GrokAlign(1.0, input_kind="tokens").penalty(nn.Linear(3, 2), x, None, None)


def test_grokalign_uses_fresh_directions_from_the_global_rng():
    model = tiny()
    x = torch.randn(3, 5, dtype=torch.float64)
    reg = GrokAlign(1.0)
    torch.manual_seed(7)
    a, b = float(reg.penalty(model, x, None, None).detach()), float(reg.penalty(model, x, None, None).detach())
    torch.manual_seed(7)
    assert a != b and float(reg.penalty(model, x, None, None).detach()) == a


# ---------------------------------------------------------------- Grokfast
def test_grokfast_filter_matches_hand_computation():
    model = nn.Linear(2, 1, bias=False)
    reg = Grokfast(alpha=0.8, lamb=0.1)
    g1, g2, g3 = torch.tensor([[1.0, -2.0]]), torch.tensor([[3.0, 0.5]]), torch.tensor([[-1.0, 4.0]])
    ema = None
    for g in (g1, g2, g3):
        model.weight.grad = g.clone()
        reg.after_backward(model)
        ema = g.clone() if ema is None else 0.8 * ema + 0.2 * g
        torch.testing.assert_close(model.weight.grad, g + 0.1 * ema)
    # by hand: ema3 = 0.8 (0.8 g1 + 0.2 g2) + 0.2 g3
    hand = 0.8 * (0.8 * g1 + 0.2 * g2) + 0.2 * g3
    torch.testing.assert_close(reg.ema["weight"], hand)
    # parameters without gradients are skipped; frozen ones too
    model.weight.grad = None
    reg.after_backward(model)
    torch.testing.assert_close(reg.ema["weight"], hand)


def test_grokfast_state_round_trips_through_a_weights_only_file():
    model = nn.Linear(3, 2)
    reg = Grokfast()
    for _ in range(2):
        for p in model.parameters():
            p.grad = torch.randn_like(p)
        reg.after_backward(model)
    buf = io.BytesIO()
    torch.save({"regulariser": reg.state_dict()}, buf)
    buf.seek(0)
    other = Grokfast()
    other.load_state_dict(torch.load(buf, weights_only=True)["regulariser"])
    for k in reg.ema:
        torch.testing.assert_close(other.ema[k], reg.ema[k])


# ---------------------------------------------------------------- noise
@pytest.mark.parametrize("acc,sigma", [(None, 0.06), (0.0, 0.06), (0.25, 0.045), (0.5, 0.03), (0.9, 0.03),
                                       (1.0, 0.03)])
def test_noise_auto_sigma(acc, sigma):
    assert GaussianNoise.auto_sigma(acc) == pytest.approx(sigma)
    reg = build_regulariser("noise:auto")
    x = torch.zeros(20000, 5)
    noise = reg.transform_input(x, {"train_acc": acc})
    assert float(noise.std()) == pytest.approx(sigma, rel=0.03)
    assert float(noise.mean()).__abs__() < 4 * sigma / np.sqrt(x.numel())


def test_noise_fixed_sigma_and_zero():
    x = torch.rand(10000, 4)
    out = build_regulariser("noise:0.2").transform_input(x, {"train_acc": 0.99})
    assert float((out - x).std()) == pytest.approx(0.2, rel=0.03)
    assert torch.equal(build_regulariser("noise:0").transform_input(x, {}), x)


# ---------------------------------------------------------------- in the trainer
@pytest.mark.parametrize("spec", ["grokalign:1e-3", "grokfast:0.8,0.1", "noise:auto"])
def test_regularisers_run_in_the_trainer(tmp_path, spec):
    from grokscope.runs import read_log
    from grokscope.training.config import TrainConfig
    from grokscope.training.trainer import train_run

    cfg = TrainConfig(model={"arch": "mlp", "kwargs": {"depth": 1, "width": 16}},
                      dataset={"name": "modular", "kwargs": {"p": 7, "train_fraction": 0.5,
                                                             "encoding": "onehot_concat"}, "seed": 0},
                      steps=4, save="0,4", eval_every="every:2", reg=spec, weight_decay=1.0)
    run = train_run(cfg, tmp_path / "run", progress=False)
    log = read_log(run)
    assert [r["step"] for r in log] == [0, 2, 4]
    assert all(np.isfinite(r["train_loss"]) for r in log)
    if spec.startswith("grokalign"):
        assert all(r["reg"] > 0 for r in log[1:])  # the penalty's value is logged


@pytest.mark.parametrize("n_proj", [1, 4])
def test_grokalign_reusing_the_loss_forward_pass_gives_the_same_value_and_gradient(n_proj):
    """The trainer's path (batch requires grad, the loss's logits reused, all projections in one batched
    VJP) against a fresh forward pass per penalty (the earlier implementation), same seeds."""
    from grokscope.losses import task_loss
    from grokscope.models import build_model

    torch.manual_seed(0)
    model = build_model({"arch": "mlp", "kwargs": {"in_dim": 12, "out_dim": 5, "depth": 2, "width": 9}}).double()
    x, y = torch.randn(16, 12, dtype=torch.float64), torch.randint(0, 5, (16,))
    params = list(model.parameters())
    reg = GrokAlign(lam=0.3, n_proj=n_proj)
    assert reg.wants_input_grad

    def earlier_penalty(xb: torch.Tensor) -> torch.Tensor:
        """The implementation before the reuse: a fresh forward pass, one VJP per projection."""
        from grokscope.probes.align import random_directions

        z = xb.detach().clone().requires_grad_(True)
        out = model(z)
        v = random_directions(n_proj, out.shape[0], out.shape[1], "sphere", None, out.dtype)
        total = out.new_zeros(out.shape[0])
        for i in range(n_proj):
            (g,) = torch.autograd.grad(out, z, grad_outputs=v[i], create_graph=True)
            total = total + g.pow(2).sum(dim=1)
        return 0.3 * (total * (out.shape[1] / n_proj)).clamp_min(1e-8).sqrt().mean()

    def total_grad(reuse: bool) -> tuple[float, torch.Tensor]:
        torch.manual_seed(11)
        xb = x.detach().requires_grad_(True) if reuse else x
        logits = model(xb)
        pen = reg.penalty(model, xb, y, logits) if reuse else earlier_penalty(xb)
        loss = task_loss(logits, y, "ce") + pen
        return float(pen.detach()), torch.cat([g.flatten() for g in torch.autograd.grad(loss, params)])

    (v_fresh, g_fresh), (v_reuse, g_reuse) = total_grad(False), total_grad(True)
    assert v_reuse == pytest.approx(v_fresh, rel=1e-12)
    np.testing.assert_allclose(g_reuse.numpy(), g_fresh.numpy(), rtol=1e-10, atol=1e-14)
    torch.manual_seed(12)  # different directions give a different penalty: the comparison can fail
    assert float(reg.penalty(model, x.detach().requires_grad_(True), y, None).detach()) != v_fresh
