"""``align`` probe: Jacobians, centroids and alignment scores against float64 finite differences and a
slow per-sample numpy reference, plus the facts that must hold (homogeneity, J = c xᵀ)."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from torch import nn

from grokscope.datasets.base import Data
from grokscope.models.mlp import mlp
from grokscope.models.modular import ModularMLP
from grokscope.models.transformer import OneLayerTransformer
from grokscope.probes import ProbeContext, get_probe
from grokscope.probes.align import (
    AlignProbe,
    batched_jacobian,
    centroid,
    jacobian_alignment,
    jacobian_sq_norm_estimate,
    leading_linear,
    random_directions,
)

torch.set_num_threads(1)


# ---------------------------------------------------------------- slow references
def fd_jacobian(f, x: torch.Tensor, h: float = 1e-6) -> np.ndarray:
    """Central finite differences, one sample and one coordinate at a time: ``(n, C, d)``."""
    n, d = x.shape[0], x[0].numel()
    out = []
    with torch.no_grad():
        for b in range(n):
            xb = x[b:b + 1].reshape(1, -1)
            cols = []
            for j in range(d):
                e = torch.zeros_like(xb)
                e[0, j] = h
                fp = f((xb + e).reshape(x[b:b + 1].shape))[0]
                fm = f((xb - e).reshape(x[b:b + 1].shape))[0]
                cols.append(((fp - fm) / (2 * h)).numpy())
            out.append(np.stack(cols, axis=1))
    return np.stack(out)


def reference_measures(J: np.ndarray, x: np.ndarray) -> dict[str, np.ndarray]:
    """Every measure from explicit Jacobians, with loops and numpy's SVD (independent of the code)."""
    res = {k: [] for k in ("centroid_cos", "centroid_inner", "centroid_norm", "row_cos", "jac_fro",
                           "pc1", "jac_align")}
    for Jb, xb in zip(J, x.reshape(len(x), -1)):
        mu = Jb.sum(axis=0)
        xn = np.linalg.norm(xb)
        res["centroid_inner"].append(mu @ xb)
        res["centroid_norm"].append(np.linalg.norm(mu))
        res["centroid_cos"].append(mu @ xb / max(np.linalg.norm(mu) * xn, 1e-8))
        res["row_cos"].append([r @ xb / max(np.linalg.norm(r) * xn, 1e-8) for r in Jb])
        s = np.linalg.svd(Jb, compute_uv=False)
        res["jac_fro"].append(np.sqrt((s ** 2).sum()))
        res["pc1"].append(s[0] ** 2 / (s ** 2).sum())
        res["jac_align"].append(np.linalg.norm(Jb @ xb) / (np.linalg.norm(Jb) * xn))
    return {k: np.asarray(v) for k, v in res.items()}


def assert_measures_close(got: dict, ref: dict, rtol=1e-6, atol=1e-8):
    for k, v in ref.items():
        np.testing.assert_allclose(got[k], v, rtol=rtol, atol=atol, err_msg=k)


# ---------------------------------------------------------------- models
class SmallCNN(nn.Module):
    def __init__(self, bias: bool = True):
        super().__init__()
        self.net = nn.Sequential(
            nn.Conv2d(2, 3, 3, bias=bias), nn.ReLU(), nn.Conv2d(3, 4, 3, stride=2, bias=bias), nn.ReLU(),
            nn.Flatten(), nn.Linear(16, 5, bias=bias))

    def forward(self, x):
        return self.net(x)


class RankOne(nn.Module):
    """``f(x) = c · ‖x‖²/2``, so ``J_x = c xᵀ`` exactly (Jacobian-aligned everywhere)."""

    def __init__(self, c: torch.Tensor):
        super().__init__()
        self.c = nn.Parameter(c)

    def forward(self, x):
        return 0.5 * (x.flatten(1) ** 2).sum(dim=1, keepdim=True) * self.c


def gelu_mlp():
    return mlp(6, 4, depth=2, width=9, activation_name="gelu")


@pytest.fixture(autouse=True)
def _seed():
    torch.manual_seed(0)


# ---------------------------------------------------------------- Jacobians and centroids
@pytest.mark.parametrize("make,shape", [
    (lambda: mlp(6, 4, depth=2, width=9), (5, 6)),            # ReLU, first layer wider: generic path
    (gelu_mlp, (5, 6)),                                        # smooth
    (lambda: mlp(12, 3, depth=2, width=5), (4, 12)),           # first layer narrower: folded path
    (lambda: SmallCNN(), (3, 2, 7, 7)),
])
def test_jacobian_and_measures_match_finite_differences(make, shape):
    model = make().double().eval()
    x = torch.randn(*shape, dtype=torch.float64)
    J_fd = fd_jacobian(model, x)
    for mode in ("rev", "fwd"):
        J = batched_jacobian(model, x, mode=mode)
        np.testing.assert_allclose(J.numpy(), J_fd, rtol=1e-6, atol=1e-8, err_msg=mode)
    np.testing.assert_allclose(centroid(model, x).reshape(len(x), -1).numpy(), J_fd.sum(axis=1),
                               rtol=1e-6, atol=1e-8)
    got = jacobian_alignment(model, x)
    assert bool(got["jac_fro_exact"])
    assert_measures_close(got, reference_measures(J_fd, x.numpy()))
    assert_measures_close(jacobian_alignment(model, x, mode="rev"), reference_measures(J_fd, x.numpy()))


def test_folded_path_is_used_and_chunking_does_not_change_results():
    model = mlp(40, 3, depth=2, width=7).double()
    x = torch.rand(50, 40, dtype=torch.float64)
    assert leading_linear(model, x) is not None
    assert leading_linear(mlp(4, 3, depth=2, width=7), torch.rand(2, 4)) is None  # wider first layer
    whole = jacobian_alignment(model, x)
    tiny = jacobian_alignment(model, x, memory_mb=1e-3)  # one sample per chunk
    generic = jacobian_alignment(model, x, mode="rev")
    for k in whole:
        np.testing.assert_allclose(tiny[k], whole[k], rtol=1e-12, atol=1e-14, err_msg=k)
        np.testing.assert_allclose(generic[k], whole[k], rtol=1e-10, atol=1e-12, err_msg=k)
    # third-party style: in-place ReLU right after the folded layer
    inplace = nn.Sequential(nn.Linear(40, 7), nn.ReLU(inplace=True), nn.Linear(7, 3)).double()
    a, b = jacobian_alignment(inplace, x), jacobian_alignment(inplace, x, mode="rev")
    np.testing.assert_allclose(a["pc1"], b["pc1"], rtol=1e-10)


def test_model_mode_and_requires_grad_are_restored():
    model = mlp(6, 4, depth=1, width=5)
    model.train()
    jacobian_alignment(model, torch.rand(3, 6))
    assert model.training
    assert all(p.requires_grad for p in model.parameters())


# ---------------------------------------------------------------- facts that must hold
@pytest.mark.parametrize("make,shape", [
    (lambda: mlp(8, 5, depth=3, width=11, bias=False), (7, 8)),
    (lambda: mlp(30, 5, depth=2, width=6, bias=False), (7, 30)),   # folded path
    (lambda: SmallCNN(bias=False), (4, 2, 7, 7)),
])
def test_bias_free_relu_inner_product_equals_sum_of_logits(make, shape):
    model = make().double().eval()
    x = torch.randn(*shape, dtype=torch.float64)
    got = jacobian_alignment(model, x)
    with torch.no_grad():
        np.testing.assert_allclose(got["centroid_inner"], model(x).sum(dim=1).numpy(), rtol=1e-10, atol=1e-12)
    # with biases the identity fails (a test that could not fail would be worthless)
    biased = mlp(8, 5, depth=3, width=11, bias=True).double().eval()
    xb = torch.randn(7, 8, dtype=torch.float64)
    with torch.no_grad():
        assert not np.allclose(jacobian_alignment(biased, xb)["centroid_inner"], biased(xb).sum(1).numpy())


@pytest.mark.parametrize("c,sign", [([0.5, -2.0, 3.0], 1.0), ([1.0, -4.0], -1.0)])
def test_jacobian_aligned_model_scores_one(c, sign):
    model = RankOne(torch.tensor(c, dtype=torch.float64))
    x = torch.randn(6, 5, dtype=torch.float64)
    got = jacobian_alignment(model, x)
    np.testing.assert_allclose(got["centroid_cos"], sign, atol=1e-12)
    np.testing.assert_allclose(got["pc1"], 1.0, atol=1e-12)
    np.testing.assert_allclose(got["jac_align"], 1.0, atol=1e-12)
    np.testing.assert_allclose(got["row_cos"], np.sign(c)[None].repeat(6, 0), atol=1e-12)
    np.testing.assert_allclose(got["jac_fro"], np.linalg.norm(c) * x.norm(dim=1).numpy(), rtol=1e-12)
    # a generic network is not aligned
    other = jacobian_alignment(gelu_mlp().double(), torch.randn(6, 6, dtype=torch.float64))
    assert other["pc1"].max() < 1 - 1e-3 and other["jac_align"].max() < 1 - 1e-3


# ---------------------------------------------------------------- Hutchinson
def test_hutchinson_square_is_unbiased_and_converges():
    model = gelu_mlp().double().eval()
    x = torch.randn(4, 6, dtype=torch.float64)
    exact_sq = (batched_jacobian(model, x) ** 2).sum(dim=(1, 2))
    gen = torch.Generator().manual_seed(1)
    # 3000 independent single-projection draws per point: the batch repeated (samples are independent)
    draws = jacobian_sq_norm_estimate(model, x.repeat(3000, 1), 1, generator=gen).view(3000, len(x))
    # unbiased for the square: mean of single-projection estimates within 4 standard errors
    se = draws.std(dim=0) / np.sqrt(len(draws))
    assert ((draws.mean(dim=0) - exact_sq).abs() < 4 * se).all()
    # the error of sqrt(estimate) shrinks as n_proj grows
    errs = []
    for n_proj in (2, 2000):
        est = jacobian_alignment(model, x, n_proj=n_proj, seed=3)
        assert not bool(est["jac_fro_exact"])
        errs.append(np.abs(est["jac_fro"] / exact_sq.sqrt().numpy() - 1).max())
    assert errs[1] < 0.05 and errs[1] < errs[0]
    # orthonormal directions with n_proj = C are exact
    orth = jacobian_sq_norm_estimate(model, x, 4, directions="orthogonal", generator=gen)
    np.testing.assert_allclose(orth.numpy(), exact_sq.numpy(), rtol=1e-12)


def test_estimated_path_keeps_the_exact_measures():
    model = gelu_mlp().double()
    x = torch.randn(5, 6, dtype=torch.float64)
    exact = jacobian_alignment(model, x)
    est = jacobian_alignment(model, x, n_proj=4000, seed=0)
    for k in ("centroid_cos", "centroid_inner", "centroid_norm"):
        np.testing.assert_allclose(est[k], exact[k], rtol=1e-10, err_msg=k)
    np.testing.assert_allclose(est["jac_align"], exact["jac_align"], rtol=0.05)
    assert np.isnan(est["pc1"]).all() and np.isnan(est["row_cos"]).all()
    # above max_rows the estimate is used automatically
    assert not bool(jacobian_alignment(model, x, max_rows=3)["jac_fro_exact"])


def test_random_directions_are_unit_and_orthonormal():
    v = random_directions(3, 10, 5, "sphere", torch.Generator().manual_seed(0), torch.float64)
    np.testing.assert_allclose(v.norm(dim=-1).numpy(), 1.0, rtol=1e-12)
    q = random_directions(5, 4, 5, "orthogonal", torch.Generator().manual_seed(0), torch.float64)
    gram = torch.einsum("inc,jnc->nij", q, q)
    np.testing.assert_allclose(gram.numpy(), np.eye(5)[None].repeat(4, 0), atol=1e-12)
    with pytest.raises(ValueError, match="n_proj <= C"):
        random_directions(6, 1, 5, "orthogonal")


def test_bad_inputs_raise_clear_errors():
    model = gelu_mlp()
    with pytest.raises(ValueError, match="n_proj"):
        jacobian_alignment(model, torch.rand(2, 6), n_proj=0)
    with pytest.raises(ValueError, match=r"\(n, C\)"):
        jacobian_alignment(lambda z: z.sum(), torch.rand(2, 6))


# ---------------------------------------------------------------- the probe
def _data(input_kind="continuous", n_train=9, n_test=5, d=6, p=5):
    if input_kind == "tokens":
        def toks(n):
            a = torch.randint(0, p, (n, 2))
            return torch.cat([a, torch.full((n, 1), p)], dim=1)
        xtr, xte = toks(n_train), toks(n_test)
        lo, hi = torch.zeros(3), torch.full((3,), float(p))
    else:
        xtr, xte = torch.rand(n_train, d), torch.rand(n_test, d)
        lo, hi = torch.zeros(d), torch.ones(d)
    return Data("t", xtr, torch.zeros(n_train, dtype=torch.long), xte, torch.zeros(n_test, dtype=torch.long),
                p, lo, hi, input_kind=input_kind)


def test_probe_dataset_layout_padding_and_summaries():
    assert get_probe("align") is AlignProbe
    model = gelu_mlp()
    data = _data()
    params = AlignProbe.make_params({"n_points": "7"})
    ds = AlignProbe().compute(model, data, params, ProbeContext(step=0))
    assert set(AlignProbe.outputs) == set(ds.data_vars)
    for v, dims in AlignProbe.outputs.items():
        assert ds[v].dims == dims, v
    assert list(ds.split.values) == ["train", "test"] and ds.sizes["sample"] == 7 and ds.sizes["output"] == 4
    # train: the first 7 points; test has only 5 → 2 NaN pads
    ref = jacobian_alignment(model, data.x_train[:7])
    np.testing.assert_allclose(ds["centroid_cos"].sel(split="train").values, ref["centroid_cos"], rtol=1e-5)
    test_cos = ds["centroid_cos"].sel(split="test").values
    assert np.isfinite(test_cos[:5]).all() and np.isnan(test_cos[5:]).all()
    np.testing.assert_allclose(ds["centroid_cos_mean"].sel(split="test"), np.nanmean(test_cos), rtol=1e-6)
    np.testing.assert_allclose(ds["jac_fro_max"].values, np.nanmax(ds["jac_fro"].values, axis=1), rtol=1e-6)
    np.testing.assert_allclose(ds["row_cos_min"].values,
                               np.nanmin(ds["row_cos"].values.reshape(2, -1), axis=1), rtol=1e-6)
    assert float(ds["jac_fro_exact"]) == 1.0
    # seeded random selection is reproducible and differs from "first"
    rnd = AlignProbe.make_params({"n_points": "4", "selection": "random", "seed": "2"})
    a = AlignProbe().compute(model, data, rnd, ProbeContext(step=0))
    b = AlignProbe().compute(model, data, rnd, ProbeContext(step=5))
    np.testing.assert_array_equal(a["jac_fro"].values, b["jac_fro"].values)


@pytest.mark.parametrize("make", [
    lambda: ModularMLP(5, width=8, depth=1, input="tokens"),
    lambda: OneLayerTransformer(5, d_model=8, n_heads=2, d_head=4, d_mlp=16),
])
def test_probe_on_token_models_uses_the_embedding_output(make):
    model = make().double()
    data = _data("tokens")
    ds = AlignProbe().compute(model, data, AlignProbe.make_params({"n_points": "4"}), ProbeContext(step=0))
    z = model.embed(data.x_train[:4]).detach()
    ref = reference_measures(fd_jacobian(model.forward_embedded, z), z.numpy())
    for k in ("centroid_cos", "jac_fro", "pc1", "jac_align"):
        np.testing.assert_allclose(ds[k].sel(split="train").values[:4], ref[k], rtol=1e-6, atol=1e-9, err_msg=k)
    assert ds.sizes["output"] == 5
