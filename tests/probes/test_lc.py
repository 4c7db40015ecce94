"""Local complexity (``probes/lc.py``) against a slow, obviously-right reference and facts that must hold."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from torch import nn

from grokscope.probes import ProbeContext, get_probe
from grokscope.probes.lc import (
    PAD, LCProbe, cross_polytope_frame, decision_boundary_points, local_complexity, predict)

# kink values per activation class, restated here (not imported) so the reference is independent
REF_KINKS = {nn.ReLU: lambda m: (0.0,), nn.GELU: lambda m: (0.0,), nn.LeakyReLU: lambda m: (0.0,),
             nn.ELU: lambda m: (0.0,), nn.Hardtanh: lambda m: (m.min_val, m.max_val)}


def reference_lc(model: nn.Module, x: torch.Tensor, r: float, frame: torch.Tensor, forward=None
                 ) -> list[list[int]]:
    """Slow LC: each vertex forwarded alone; every neuron's signs compared in a Python loop.

    Captures the input of each activation module listed in REF_KINKS at every call.
    Returns ``counts[point][layer]``.
    """
    forward = forward or model
    model.eval()
    captured: list[tuple[torch.Tensor, tuple]] = []
    handles = []
    for m in model.modules():
        for cls, kinks in REF_KINKS.items():
            if type(m) is cls or (cls is nn.Hardtanh and isinstance(m, nn.Hardtanh)):
                handles.append(m.register_forward_pre_hook(
                    lambda mod, args, k=kinks(m): captured.append((args[0].detach().clone(), k))))
                break
    out = []
    try:
        for i in range(len(x)):
            per_vertex = []
            for sgn in (1.0, -1.0):
                for p in range(frame.shape[0]):
                    v = x[i] + sgn * r * frame[p].reshape(x[i].shape)
                    captured.clear()
                    with torch.no_grad():
                        forward(v.unsqueeze(0))
                    per_vertex.append([(t.flatten().tolist(), k) for t, k in captured])
            counts = []
            for layer in range(len(per_vertex[0])):
                k = per_vertex[0][layer][1]
                n_neurons = len(per_vertex[0][layer][0])
                c = 0
                for neuron in range(n_neurons):
                    values = [pv[layer][0][neuron] for pv in per_vertex]
                    crossed = False
                    for b in k:
                        signs = {(val > b) - (val < b) for val in values}
                        if len(signs) > 1:
                            crossed = True
                    c += crossed
                counts.append(c)
            out.append(counts)
    finally:
        for h in handles:
            h.remove()
    return out


def _mlp(act: type[nn.Module], d: int = 6, h: int = 7, seed: int = 0, bias: bool = True) -> nn.Sequential:
    torch.manual_seed(seed)
    return nn.Sequential(nn.Flatten(), nn.Linear(d, h, bias=bias), act(), nn.Linear(h, h, bias=bias), act(),
                         nn.Linear(h, 3, bias=bias)).double()


class Residual(nn.Module):
    """One activation module used twice, plus a skip connection (like torchvision's BasicBlock)."""

    def __init__(self):
        super().__init__()
        self.inp = nn.Linear(5, 6)
        self.a = nn.Linear(6, 6)
        self.relu = nn.ReLU()
        self.out = nn.Linear(6, 2)

    def forward(self, x):
        h = self.relu(self.inp(x))
        h = self.relu(h + self.a(h))
        return self.out(h)


@pytest.mark.parametrize("act", [nn.ReLU, nn.LeakyReLU, nn.GELU, nn.Hardtanh])
def test_mlp_matches_reference(act):
    model = _mlp(act, seed=1)
    x = torch.randn(5, 6, dtype=torch.float64) * 2.0
    frame = cross_polytope_frame(6, 3, seed=4, dtype=torch.float64)
    for fast in (True, False):
        res = local_complexity(model, x, radius=(0.3, 1.0), n_dirs=3, seed=4, fast=fast,
                               max_rows=12)
        assert res.layers == ["2", "4"] and res.neurons == [7, 7]
        for k, r in enumerate((0.3, 1.0)):
            assert res.counts[:, k].tolist() == reference_lc(model, x, r, frame)
    assert res.counts[:, 1].sum() > 0  # the comparison is not vacuous


def test_fast_path_mixed_regions_matches_plain_and_reference():
    """Points that stay linear and points that cross mix; a GELU after the ReLUs forces the merge."""
    torch.manual_seed(4)
    model = nn.Sequential(nn.Flatten(), nn.Linear(6, 12), nn.ReLU(), nn.Dropout(0.5), nn.Linear(12, 12),
                          nn.LeakyReLU(0.1), nn.Linear(12, 12), nn.GELU(), nn.Linear(12, 3)).double()
    x = torch.randn(12, 1, 2, 3, dtype=torch.float64)
    radii = (0.02, 0.2, 1.0)
    fast = local_complexity(model, x, radius=radii, n_dirs=3, seed=1, include_output=True, max_rows=18)
    plain = local_complexity(model, x, radius=radii, n_dirs=3, seed=1, include_output=True, fast=False)
    assert torch.equal(fast.counts, plain.counts)
    first = fast.counts[:, 1, 0]
    assert (first == 0).any() and (first > 0).any()  # both kinds of points in one chunk
    frame = cross_polytope_frame(6, 3, seed=1, dtype=torch.float64)
    for k, r in enumerate(radii):
        assert fast.counts[:, k, :3].tolist() == reference_lc(model, x, r, frame)


def test_cnn_with_batchnorm_matches_reference():
    torch.manual_seed(2)
    model = nn.Sequential(nn.Conv2d(1, 3, 3), nn.ReLU(), nn.Conv2d(3, 2, 3, padding=1),
                          nn.BatchNorm2d(2), nn.ReLU(inplace=True), nn.Flatten(), nn.Linear(32, 3)).double()
    model[3].running_mean.uniform_(-0.2, 0.2)
    model[3].running_var.uniform_(0.5, 2.0)
    model.train()  # lc must switch to eval (running statistics) and switch back
    x = torch.rand(3, 1, 6, 6, dtype=torch.float64)
    res = local_complexity(model, x, radius=0.4, n_dirs=4, seed=1, max_rows=16)
    assert model.training
    assert res.neurons == [3 * 4 * 4, 2 * 4 * 4]
    frame = cross_polytope_frame(36, 4, seed=1, dtype=torch.float64)
    assert res.counts[:, 0].tolist() == reference_lc(model, x, 0.4, frame)
    assert res.counts.sum() > 0


def test_reused_activation_module_counts_each_call():
    torch.manual_seed(3)
    model = Residual().double()
    x = torch.randn(4, 5, dtype=torch.float64)
    res = local_complexity(model, x, radius=0.8, n_dirs=2, seed=0)
    assert res.layers == ["relu", "relu#1"]
    frame = cross_polytope_frame(5, 2, seed=0, dtype=torch.float64)
    assert res.counts[:, 0].tolist() == reference_lc(model, x, 0.8, frame)


def test_transformer_in_embedding_space_matches_reference():
    from grokscope.models.transformer import transformer

    torch.manual_seed(0)
    model = transformer(p=7, d_model=8, n_heads=2, d_head=4, d_mlp=10).double()
    tokens = torch.tensor([[1, 2, 7], [3, 5, 7]])
    res = local_complexity(model, tokens, radius=0.5, n_dirs=3, seed=2, input_kind="tokens")
    assert res.layers == ["act"] and res.neurons == [3 * 10]
    z = model.embed(tokens).detach()
    frame = cross_polytope_frame(3 * 8, 3, seed=2, dtype=torch.float64)
    assert res.counts[:, 0].tolist() == reference_lc(model, z, 0.5, frame, forward=model.forward_embedded)


def test_first_layer_closed_form():
    """A hyperplane w·x+b=0 meets the cross-polytope iff |w·x+b| <= r max_p |w·v_p|."""
    torch.manual_seed(5)
    d, h, p, r = 20, 64, 5, 0.3
    model = nn.Sequential(nn.Linear(d, h), nn.ReLU(), nn.Linear(h, 2)).double()
    x = torch.randn(40, d, dtype=torch.float64) * 0.3
    frame = cross_polytope_frame(d, p, seed=9, dtype=torch.float64)
    w, b = model[0].weight, model[0].bias
    expected = ((x @ w.T + b).abs() <= r * (frame @ w.T).abs().amax(dim=0)).sum(dim=1)
    for fast in (True, False):
        res = local_complexity(model, x, radius=r, n_dirs=p, seed=9, fast=fast)
        assert torch.equal(res.counts[:, 0, 0], expected)
    assert 0 < expected.sum() < 40 * h


def test_radius_monotone_and_linear_model_zero():
    model = _mlp(nn.ReLU, d=10, h=30, seed=6)
    x = torch.randn(30, 10, dtype=torch.float64)
    radii = (0.01, 0.1, 0.5, 2.0)
    res = local_complexity(model, x, radius=radii, n_dirs=4)
    first = res.counts[:, :, 0]
    assert (first[:, 1:] >= first[:, :-1]).all()  # exact at the first layer, point by point
    mean_total = res.total.double().mean(dim=0)
    assert (mean_total[1:] > mean_total[:-1]).all()
    linear = nn.Sequential(nn.Linear(10, 30), nn.Identity(), nn.Linear(30, 3)).double()
    with pytest.warns(UserWarning, match="LC is 0"):
        lin = local_complexity(linear, x, radius=radii, n_dirs=4)
    assert lin.counts.shape == (30, 4, 0) and lin.total.eq(0).all()


def test_bias_free_relu_homogeneity_and_far_points():
    """Bias-free ReLU nets are positively homogeneous: LC(c x, r) = LC(x, r / c) exactly for c = 2^k,
    and far from every hyperplane through the origin LC is 0."""
    model = _mlp(nn.ReLU, d=8, h=16, seed=7, bias=False)
    x = torch.randn(20, 8, dtype=torch.float64)
    a = local_complexity(model, 1024 * x, radius=4.0, n_dirs=5)
    b = local_complexity(model, x, radius=4.0 / 1024, n_dirs=5)
    assert torch.equal(a.counts, b.counts)
    w = model[1].weight
    dist = ((x @ w.T).abs() / w.norm(dim=1)).amin(dim=1)  # distance to the nearest first-layer plane
    far = local_complexity(model, x, radius=0.5 * dist.min().item(), n_dirs=5, layers=["1"])
    assert far.counts.eq(0).all()
    big = local_complexity(model, 2.0 ** 20 * x, radius=0.005, n_dirs=5)
    assert big.counts.eq(0).all()
    assert local_complexity(model, x, radius=2.0, n_dirs=5).counts.sum() > 0


def test_frame_is_the_authors_recipe_and_rng_untouched():
    from torch.nn.utils.parametrizations import orthogonal

    torch.manual_seed(123)
    state = torch.get_rng_state()
    frames = {dt: cross_polytope_frame(50, 7, seed=0, dtype=dt) for dt in (torch.float32, torch.float64)}
    assert torch.equal(torch.get_rng_state(), state)  # the global RNG is untouched
    for dt, frame in frames.items():
        assert frame.dtype == dt and frame.shape == (7, 50)
        eye = torch.eye(7, dtype=dt)
        assert torch.allclose(frame @ frame.T, eye, atol=10 * torch.finfo(dt).eps)
        with torch.random.fork_rng(devices=[]):  # H-code: orthogonal parametrization of nn.Linear(D, P)
            torch.manual_seed(0)
            authors = orthogonal(nn.Linear(50, 7, dtype=dt), use_trivialization=False).weight.detach()
        assert torch.allclose(frame, authors, atol=10 * torch.finfo(dt).eps, rtol=0)
    # the frame depends on the dtype (RNG draws differ), as in the authors' code
    assert (frames[torch.float32].double() - frames[torch.float64]).abs().max() > 1e-3
    model, x = _mlp(nn.ReLU, seed=0), torch.randn(3, 6, dtype=torch.float64)
    state = torch.get_rng_state()
    local_complexity(model, x, n_dirs=3)
    assert torch.equal(torch.get_rng_state(), state)
    with pytest.raises(ValueError, match="orthonormal"):
        cross_polytope_frame(4, 5)


def test_batching_dtype_and_layer_options():
    model = _mlp(nn.ReLU, d=12, h=20, seed=8).float()
    x = torch.rand(37, 12)
    one = local_complexity(model, x, radius=0.2, n_dirs=6, max_rows=12)  # one point per forward
    many = local_complexity(model, x, radius=0.2, n_dirs=6, max_rows=10_000)
    assert torch.equal(one.counts, many.counts) and one.dtype == torch.float32
    wide = local_complexity(model, x, radius=0.2, n_dirs=6, dtype=torch.float64)
    assert wide.dtype == torch.float64 and next(model.parameters()).dtype == torch.float32
    out = local_complexity(model, x, radius=0.2, n_dirs=6, include_output=True)
    assert out.layers == ["2", "4", "output"] and out.neurons[-1] == 3
    assert torch.equal(out.counts[..., :2], one.counts)
    named = local_complexity(model, x, radius=0.2, n_dirs=6, layers=["1", "3", "5"])
    assert named.layers == ["1", "3", "5"]
    assert torch.equal(named.counts[..., :2], one.counts)  # Linear outputs = ReLU inputs
    assert torch.equal(named.counts[..., 2], out.counts[..., 2])
    slow = local_complexity(model, x, radius=0.2, n_dirs=6, layers=["1", "3", "5"], fast=False)
    assert torch.equal(slow.counts, named.counts)
    with pytest.raises(ValueError, match="not modules"):
        local_complexity(model, x, layers=["nope"])


def test_boundary_points_lie_on_the_decision_boundary():
    model = _mlp(nn.ReLU, d=6, h=16, seed=9)
    x = torch.randn(60, 6, dtype=torch.float64)
    pts, pairs = decision_boundary_points(model, x, n=20, seed=1, n_bisect=45)
    again, pairs2 = decision_boundary_points(model, x, n=20, seed=1, n_bisect=45)
    assert torch.equal(pairs, pairs2) and torch.equal(pts, again)
    assert 0 < len(pts) <= 20
    a, b = x[pairs[:, 0]], x[pairs[:, 1]]
    d = b - a
    t = ((pts - a) * d).sum(1) / (d * d).sum(1)
    assert torch.allclose(a + t[:, None] * d, pts)  # on the segment
    pa, pb = predict(model, a), predict(model, b)
    assert (pa != pb).all()
    before = predict(model, a + (t - 1e-7)[:, None] * d)
    after = predict(model, a + (t + 1e-7)[:, None] * d)
    assert (before == pa).all() and (after != pa).all()


def test_probe_on_digits_mlp():
    from grokscope.datasets import load_dataset
    from grokscope.models.mlp import mlp

    data = load_dataset({"name": "digits", "kwargs": {"n_train": 300}, "seed": 0})
    torch.manual_seed(0)
    model = mlp(64, 10, depth=2, width=32)
    probe = get_probe("lc")
    assert probe is LCProbe
    params = probe.make_params({"n_points": "40", "radius": "0.005,0.05", "n_dirs": "8"})
    ds = probe().compute(model, data, params, ProbeContext(step=0))
    assert ds["lc"].dims == ("split", "sample", "radius", "layer")
    assert list(ds.split.values) == ["train", "test", "random", "boundary"]
    assert ds.sizes == {"split": 4, "sample": 40, "radius": 2, "layer": 2}
    assert ds["lc"].dtype == np.int32 and list(ds["neurons"].values) == [32, 32]
    n = ds["n_samples"].values
    assert list(n[:3]) == [40, 40, 40] and 0 <= n[3] < 40  # an untrained net: few boundary pairs
    lc = ds["lc"].values
    assert (lc[3, n[3]:] == PAD).all() and (lc[:, : min(n)] >= 0).all()
    # the means are over the real points of each split and match the functional API
    x = data.x_train[torch.randperm(300, generator=torch.Generator().manual_seed(0))[:40]]
    direct = local_complexity(model, x, radius=(0.005, 0.05), n_dirs=8)
    assert np.array_equal(lc[0], direct.counts.numpy())
    assert np.allclose(ds["lc_mean"].values[0], direct.counts.double().mean(0).numpy())
    assert np.allclose(ds["lc_total_mean"].values, ds["lc_mean"].values.sum(-1), equal_nan=True)
    random = ds["lc"].sel(split="random").values
    assert random.shape == (40, 2, 2) and (random >= 0).all()
    assert not math.isnan(ds["lc_total_mean"].values[0, 0])
