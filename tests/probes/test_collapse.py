"""The ``collapse`` probe: collapse fractions, margins and NLM cosines against per-sample slow
references, and facts (tiny logits never collapse, huge logits always do, Euler's identity for a
homogeneous net, StableMax saturates far later than softmax)."""

from __future__ import annotations

import copy
import math

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from torch import nn

from grokscope.datasets import load_dataset
from grokscope.losses import task_loss
from grokscope.models import build_model
from grokscope.probes import ProbeContext, ProbeError, get_probe
from grokscope.probes.collapse import collapse_flags, logit_margins, nlm_cosines
from grokscope.testing import check_probe

MODULAR = {"name": "modular", "kwargs": {"p": 7, "train_fraction": 0.6, "encoding": "onehot_concat"}, "seed": 0}


@pytest.fixture(scope="module")
def trained():
    """A 2x32 MLP on a + b mod 7 trained with Adam to 100 % train accuracy (float32)."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    data = load_dataset(MODULAR)
    torch.manual_seed(0)
    model = build_model({"arch": "mlp", "kwargs": {"in_dim": data.input_dim, "out_dim": 7, "depth": 2,
                                                   "width": 32}})
    opt = torch.optim.Adam(model.parameters(), lr=2e-2)
    x, y = data.split("train")
    for _ in range(150):
        opt.zero_grad()
        F.cross_entropy(model(x), y).backward()
        opt.step()
    model.eval()
    with torch.no_grad():
        assert float((model(x).argmax(1) == y).double().mean()) == 1.0
    yield model, data
    torch.set_num_threads(threads)


class Scaled(nn.Module):
    def __init__(self, inner: nn.Module, c: float):
        super().__init__()
        self.inner, self.c = inner, c

    def forward(self, x):
        return self.inner(x) * self.c


def slow_flags(logits: torch.Tensor, y: torch.Tensor) -> tuple[list[bool], list[bool]]:
    """One sample at a time: its own float32 CE and the autograd of it."""
    zl, zg = [], []
    for i in range(len(y)):
        z = logits[i:i + 1].detach().float().clone().requires_grad_(True)
        lo = F.cross_entropy(z, y[i:i + 1])
        (g,) = torch.autograd.grad(lo, z)
        zl.append(bool(lo == 0))
        zg.append(bool((g == 0).all()))
    return zl, zg


def test_conforms(trained):
    model, data = trained
    check_probe(get_probe("collapse"), model, data)


def test_flags_match_a_per_sample_loop_and_the_float32_thresholds():
    # margins either clearly below or clearly above float32's 1 + 2^-24 saturation (ln 2^24 ≈ 16.6)
    # and exp underflow (about −104); the float64 criterion is then unambiguous
    g = torch.Generator().manual_seed(0)
    n, C = 60, 5
    gaps = torch.tensor([2.0, 10.0, 13.0, 22.0, 30.0, 60.0, 90.0, 115.0, 150.0, -5.0])[torch.arange(n) % 10]
    y = torch.randint(0, C, (n,), generator=g)
    z = torch.randn(n, C, generator=g, dtype=torch.float64)
    z = z - z.gather(1, y[:, None])  # correct logit 0, others around 0 ...
    z = z - gaps[:, None].double()   # ... then pushed down by the gap
    z.scatter_(1, y[:, None], 0.0)
    zero_loss, zero_grad = collapse_flags(z, y, "ce", torch.float32)
    ref_l, ref_g = slow_flags(z, y)
    assert zero_loss.tolist() == ref_l and zero_grad.tolist() == ref_g
    others = z.scatter(1, y[:, None], float("-inf"))
    expected_l = (others.exp().sum(1) < 2.0 ** -24 * 0.9).tolist()
    expected_g = (others.amax(1) < -104).tolist()
    assert zero_loss.tolist() == expected_l and zero_grad.tolist() == expected_g
    assert 0 < sum(expected_g) < sum(expected_l) < n
    # the same logits in float64 are much further from collapse
    assert collapse_flags(z, y, "ce", torch.float64)[0].sum() < zero_loss.sum()


def test_margins_and_cosines_match_slow_references(trained):
    model, data = trained
    m64 = copy.deepcopy(model).double()
    x, y = data.split("test")
    x = x.double()
    with torch.no_grad():
        logits = m64(x)
    ref = []
    for row, label in zip(logits.tolist(), y.tolist()):
        ref.append(row[label] - max(v for j, v in enumerate(row) if j != label))
    np.testing.assert_allclose(logit_margins(logits, y).numpy(), ref, rtol=0, atol=1e-12)
    cos_w, cos_z = nlm_cosines(m64, x, y, "ce", batch_size=7)  # chunks: same as one full batch
    params = list(m64.parameters())
    total = [torch.zeros_like(p) for p in params]
    dot_z = nz = ng = 0.0
    for i in range(len(y)):
        zi = m64(x[i:i + 1])
        gi = torch.autograd.grad(F.cross_entropy(zi, y[i:i + 1]) / len(y), params + [zi])
        for t, gp in zip(total, gi[:-1]):
            t += gp
        zc = (zi - zi.mean()).detach()
        dot_z += float(-(gi[-1] * zc).sum())
        nz += float((zc ** 2).sum())
        ng += float((gi[-1] ** 2).sum())
    g = torch.cat([t.reshape(-1) for t in total])
    th = torch.cat([p.detach().reshape(-1) for p in params])
    assert math.isclose(cos_w, float(-(g @ th) / (g.norm() * th.norm())), rel_tol=1e-9)
    assert math.isclose(cos_z, dot_z / math.sqrt(nz * ng), rel_tol=1e-9)


def test_euler_identity_on_a_homogeneous_net():
    """Bias-free ReLU net with 3 linear layers: ⟨∇_θ L, θ⟩ = 3 ⟨∇_z L, z⟩ (and ⟨∇_z L, 1⟩ = 0)."""
    data = load_dataset(MODULAR)
    torch.manual_seed(3)
    model = build_model({"arch": "mlp", "kwargs": {"in_dim": data.input_dim, "out_dim": 7, "depth": 2,
                                                   "width": 16, "bias": False}}).double()
    x, y = data.split("train")
    x = x.double()
    cos_w, cos_z = nlm_cosines(model, x, y, "ce")
    logits = model(x)
    lo = task_loss(logits, y, "ce")
    *gp, gz = torch.autograd.grad(lo, list(model.parameters()) + [logits])
    g = torch.cat([t.reshape(-1) for t in gp])
    th = torch.cat([p.detach().reshape(-1) for p in model.parameters()])
    zc = logits.detach() - logits.detach().mean(1, keepdim=True)
    lhs = cos_w * float(g.norm() * th.norm())
    rhs = 3 * cos_z * float(gz.norm() * zc.norm())
    assert math.isclose(lhs, rhs, rel_tol=1e-9)


def test_tiny_logits_never_collapse_and_huge_logits_always_do(trained):
    model, data = trained
    probe, params = get_probe("collapse")(), get_probe("collapse").default_params()
    ctx = ProbeContext(step=0)
    small = probe.compute(Scaled(model, 1e-3), data, params, ctx)
    assert small.collapse_frac.values.tolist() == [0.0, 0.0]
    assert small.zero_grad_frac.values.tolist() == [0.0, 0.0]
    big = probe.compute(Scaled(model, 1e4), data, params, ctx)
    assert float(big.collapse_frac.sel(split="train")) == 1.0  # every training point is correct
    with torch.no_grad():
        xt, yt = data.split("test")
        test_acc = float((model(xt).argmax(1) == yt).double().mean())
    # on test points, only the correctly classified ones can reach a zero loss
    assert float(big.collapse_frac.sel(split="test")) <= test_acc
    base = probe.compute(model, data, params, ctx)
    assert float(base.collapse_frac.sel(split="train")) < 1.0
    np.testing.assert_allclose(big.margin.values, 1e4 * base.margin.values, rtol=1e-4)
    assert int(big.n_samples.sel(split="train")) == len(data.split("train")[0])


def test_stablemax_saturates_far_later_than_softmax():
    y = torch.tensor([0, 0, 0])
    z = torch.tensor([[30.0, 0.0, 0.0, 0.0], [1e3, -1.0, 0.0, -5.0], [1e9, -1e3, -1e3, -1e3]])
    ce = collapse_flags(z, y, "ce")[0].tolist()
    sm = collapse_flags(z, y, "stablemax")[0].tolist()
    assert ce == [True, True, True]
    assert sm == [False, False, True]  # (C − 1)/(z_y + 1) must fall below 2^-24


def test_auto_loss_follows_the_run_and_bad_params_fail(trained):
    model, data = trained
    cls = get_probe("collapse")
    ctx = ProbeContext(step=0, run_spec={"train": {"loss": "stablemax"}})
    out = cls().compute(model, data, cls.make_params({"splits": "train", "n_points": "20"}), ctx)
    assert out.attrs["loss"] == "stablemax" and out.n_samples.values.tolist() == [20]
    ctx = ProbeContext(step=0, run_spec={"train": {"loss": "mse"}})
    assert cls().compute(model, data, cls.make_params({"splits": "train"}), ctx).attrs["loss"] == "ce"
    with pytest.raises(ProbeError, match="collapse.precision must be one of"):
        cls.make_params({"precision": "float8"})
    with pytest.raises(ProbeError, match=r"collapse.quantiles must be numbers in \[0, 1\]"):
        cls.make_params({"quantiles": "0.5,2"})
