"""PGD (``probes/pgd.py``): closed-form optima of a linear classifier, constraints, clean accuracy."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from torch import nn

from grokscope.probes import ProbeContext, get_probe
from grokscope.probes.pgd import PGDProbe, pgd_attack, pgd_perturb


def linear_binary(d: int = 10, seed: int = 0):
    """Logits ``(w·x + b, -(w·x + b))``: class 0 iff ``w·x + b > 0``."""
    g = torch.Generator().manual_seed(seed)
    w = torch.randn(d, generator=g, dtype=torch.float64) * 0.3
    b = 0.1
    lin = nn.Linear(d, 2).double()
    with torch.no_grad():
        lin.weight.copy_(torch.stack([w, -w]))
        lin.bias.copy_(torch.tensor([b, -b]))
    return lin, w, b


def _data(d: int, n: int, w, b, seed: int = 1):
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(n, d, generator=g, dtype=torch.float64)
    y = (x @ w + b < 0).long()  # labels = the model's own predictions: every point correct
    s = 1.0 - 2.0 * y           # +1 for class 0, -1 for class 1
    margin = s * (x @ w + b)    # > 0
    return x, y, s, margin


@pytest.mark.parametrize("random_start", [True, False])
def test_linf_optimum_of_linear_classifier(random_start):
    d, n = 10, 64
    lin, w, b = linear_binary(d)
    x, y, s, margin = _data(d, n, w, b)
    eps = [0.05, 0.2, 0.5]
    alpha = 0.05
    steps = int(2 * max(eps) / alpha) + 2  # enough to cross the whole ball from any start
    adv = pgd_perturb(lin, x, y, eps, alpha, steps, "linf", restarts=2, random_start=random_start,
                      seed=3)
    assert adv.shape == (3, 2, n, d)
    for k, e in enumerate(eps):
        optimum = x - e * s[:, None] * torch.sign(w)[None]  # x − ε·sign(w)·y with y = ±1
        assert torch.allclose(adv[k, 0], optimum, atol=1e-12) and torch.allclose(adv[k, 1], optimum, atol=1e-12)
    correct = pgd_attack(lin, x, y, eps, alpha, steps, "linf", restarts=2, seed=3)
    for k, e in enumerate(eps):
        expected = margin > e * w.abs().sum()
        assert torch.equal(correct[k], expected)
    assert 0 < correct[1].sum() < n  # some points fall, some survive


def test_l2_optimum_of_linear_classifier():
    d, n = 8, 50
    lin, w, b = linear_binary(d, seed=2)
    x, y, s, margin = _data(d, n, w, b, seed=4)
    eps = [0.1, 0.4]
    u = w / w.norm()
    adv = pgd_perturb(lin, x, y, eps, alpha=0.05, steps=20, norm="l2", random_start=False)
    for k, e in enumerate(eps):
        assert torch.allclose(adv[k, 0], x - e * s[:, None] * u[None], atol=1e-12)
    adv = pgd_perturb(lin, x, y, eps, alpha=0.4, steps=80, norm="l2", random_start=True, seed=5)
    for k, e in enumerate(eps):  # from a random start the off-axis part shrinks geometrically
        assert torch.allclose(adv[k, 0], x - e * s[:, None] * u[None], atol=1e-8)
    correct = pgd_attack(lin, x, y, eps, alpha=0.05, steps=20, norm="l2", random_start=False)
    for k, e in enumerate(eps):
        assert torch.equal(correct[k], margin > e * w.norm())


@pytest.mark.parametrize("norm", ["linf", "l2"])
def test_iterates_stay_in_ball_and_box(norm):
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(6, 16), nn.ReLU(), nn.Linear(16, 3)).double()
    low, high = torch.full((6,), -0.5, dtype=torch.float64), torch.linspace(0.2, 1.5, 6, dtype=torch.float64)
    g = torch.Generator().manual_seed(1)
    x = low + (high - low) * torch.rand(30, 6, generator=g, dtype=torch.float64)
    y = torch.randint(0, 3, (30,), generator=g)
    eps = [0.0, 0.1, 0.7]
    for steps in range(5):  # the last iterate of a t-step run is the t-th iterate (same seed)
        adv = pgd_perturb(model, x, y, eps, alpha=0.3, steps=steps, norm=norm, restarts=2, low=low, high=high,
                          seed=7)
        assert ((adv >= low - 1e-12) & (adv <= high + 1e-12)).all()
        delta = adv - x
        size = delta.abs().amax(-1) if norm == "linf" else delta.norm(dim=-1)
        for k, e in enumerate(eps):
            assert (size[k] <= e + 1e-12).all()
        if steps:
            assert (size[2] > 0.05).any()  # the attack moves


def test_eps_zero_is_clean_accuracy_and_robustness_decreases():
    torch.manual_seed(1)
    model = nn.Sequential(nn.Linear(5, 20), nn.ReLU(), nn.Linear(20, 4))
    x = torch.rand(200, 5)
    y = torch.randint(0, 4, (200,))
    correct = pgd_attack(model, x, y, [0.0, 0.05, 0.2], alpha=0.02, steps=10, restarts=3, low=0.0, high=1.0,
                         batch_size=64)
    clean = model(x).argmax(-1) == y
    assert torch.equal(correct[0], clean)
    assert (correct[1] <= correct[0]).all() and correct[2].sum() < correct[0].sum()
    again = pgd_attack(model, x, y, [0.0, 0.05, 0.2], alpha=0.02, steps=10, restarts=3, low=0.0, high=1.0,
                       batch_size=200)  # starts do not depend on the batching
    assert torch.equal(correct, again)
    with pytest.raises(ValueError, match="norm"):
        pgd_attack(model, x, y, [0.1], 0.01, 1, norm="l1")


def test_restarts_count_robust_only_if_all_restarts_correct():
    torch.manual_seed(2)
    model = nn.Sequential(nn.Linear(4, 32), nn.ReLU(), nn.Linear(32, 3)).double()
    x = torch.rand(100, 4, dtype=torch.float64)
    y = model(x).argmax(-1)
    adv = pgd_perturb(model, x, y, [0.15], alpha=0.01, steps=3, restarts=4, seed=9)
    per_restart = model(adv.reshape(-1, 4)).argmax(-1).view(1, 4, 100) == y
    correct = pgd_attack(model, x, y, [0.15], alpha=0.01, steps=3, restarts=4, seed=9)
    assert torch.equal(correct, per_restart.all(dim=1))
    assert (per_restart.any(dim=1) & ~per_restart.all(dim=1)).any()  # restarts disagree somewhere


def test_probe_on_digits_and_tokens():
    from grokscope.datasets import load_dataset
    from grokscope.models import build_model
    from grokscope.models.mlp import mlp

    data = load_dataset({"name": "digits", "kwargs": {"n_train": 300}, "seed": 0})
    torch.manual_seed(0)
    model = mlp(64, 10, depth=1, width=32)
    probe = get_probe("pgd")
    assert probe is PGDProbe
    params = probe.make_params({"eps": "0,0.1", "steps": "3", "n_points": "100", "splits": "train,test"})
    ds = probe().compute(model, data, params, ProbeContext(step=0))
    assert ds["robust_acc"].dims == ("split", "eps") and ds["correct"].dtype == np.int8
    assert list(ds["n_samples"].values) == [100, 100]
    idx = torch.randperm(300, generator=torch.Generator().manual_seed(0))[:100]
    clean = (model(data.x_train[idx]).argmax(-1) == data.y_train[idx]).double().mean().item()
    assert ds["robust_acc"].sel(split="train", eps=0.0).item() == pytest.approx(clean)
    assert np.allclose(ds["robust_acc"].values, (ds["correct"].values == 1).mean(-1))

    mod = load_dataset({"name": "modular", "kwargs": {"p": 7}, "seed": 0})
    tm = build_model({"arch": "transformer", "kwargs": {"p": 7, "d_model": 8, "n_heads": 2, "d_head": 4,
                                                        "d_mlp": 16}})
    ds = probe().compute(tm, mod, probe.make_params({"eps": "0,1.0", "steps": "3"}), ProbeContext(step=0))
    assert ds["correct"].shape == (1, 2, len(mod.x_test))
    clean = (tm(mod.x_test).argmax(-1) == mod.y_test).double().mean().item()
    assert ds["robust_acc"].values[0, 0] == pytest.approx(clean)


def test_default_step_scales_with_eps_and_reaches_every_radius():
    """Default ``alpha=0``: α = 2.5 ε / steps per radius, so 10 steps reach the L∞ optimum of a linear
    classifier at ε = 0.16 and 0.20 too; the old fixed α = 0.0156 stops at ‖δ‖∞ = 0.156 < ε there."""
    from grokscope.probes.pgd import step_sizes

    d, n = 10, 64
    lin, w, b = linear_binary(d)
    x, y, s, margin = _data(d, n, w, b)
    eps = [0.03, 0.16, 0.20]
    params = PGDProbe.make_params({"eps": "0.03,0.16,0.20", "random_start": "false"})
    assert params.alpha == 0 and params.steps == 10
    assert step_sizes(eps, params.alpha, params.steps) == pytest.approx([0.0075, 0.04, 0.05])
    adv = pgd_perturb(lin, x, y, eps, params.alpha_scale / params.steps, params.steps, "linf",
                      random_start=False, alpha_relative=True)
    for k, e in enumerate(eps):
        assert torch.allclose(adv[k, 0], x - e * s[:, None] * torch.sign(w)[None], atol=1e-12)
    fixed = pgd_perturb(lin, x, y, eps, 0.0156, 10, "linf", random_start=False)
    reach = (fixed - x).abs().flatten(2).amax(-1)[:, 0]
    assert reach[1:].tolist() == pytest.approx([0.156, 0.156])  # the two largest radii coincide

    class Data:  # a box-free continuous dataset for the probe
        input_kind = "continuous"
        box_low, box_high = torch.full((d,), -10.0, dtype=torch.float64), torch.full((d,), 10.0, dtype=torch.float64)

        def split(self, name):
            return x, y

    ds = PGDProbe().compute(lin, Data(), params, ProbeContext(step=0))
    expected = [(margin > e * w.abs().sum()).double().mean().item() for e in eps]
    assert ds["robust_acc"].sel(split="test").values.tolist() == pytest.approx(expected)
    assert ds.attrs["alpha_per_eps"] == pytest.approx([0.0075, 0.04, 0.05])
