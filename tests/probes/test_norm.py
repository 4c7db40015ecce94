"""The ``norm`` probe: Jacobian maps against finite differences, CG against the explicit pseudo-inverse,
and the probe's numbers against direct computations on a tiny run."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from grokscope.datasets import load_dataset
from grokscope.models import build_model
from grokscope.probes import ProbeContext, ProbeError, get_probe
from grokscope.functional.krylov import conjugate_gradient, gauss_radau, lanczos
from grokscope.probes.norm import (
    JacobianOps, OutputMap, normal_projection_cg,
    normal_projection_explicit, project_to_zero_loss, summed_loss, tangent_split_lanczos, top_eigenvalue_jjt,
)

F64 = torch.float64


def tiny_map(n: int = 4, seed: int = 0) -> tuple[OutputMap, torch.Tensor]:
    """A 3→5→2 tanh-free ReLU MLP on ``n`` random inputs: ``km = 2n`` outputs, ``d = 32`` parameters."""
    torch.manual_seed(seed)
    model = build_model({"arch": "mlp", "kwargs": {"in_dim": 3, "out_dim": 2, "depth": 1, "width": 5}})
    x = torch.randn(n, 3, generator=torch.Generator().manual_seed(seed + 1))
    F = OutputMap(model, x)
    return F, F.theta


def finite_difference_jacobian(F: OutputMap, theta: torch.Tensor, h: float = 1e-6) -> torch.Tensor:
    cols = []
    for i in range(theta.numel()):
        e = torch.zeros_like(theta)
        e[i] = h
        cols.append((F(theta + e) - F(theta - e)) / (2 * h))
    return torch.stack(cols, dim=1)


def test_jvp_vjp_and_jacobian_match_finite_differences():
    F, theta = tiny_map()
    J_fd = finite_difference_jacobian(F, theta)
    assert J_fd.shape == (8, 32)
    torch.testing.assert_close(F.jacobian(theta), J_fd, atol=1e-7, rtol=0)
    v = torch.randn(32, dtype=F64, generator=torch.Generator().manual_seed(2))
    z = torch.randn(8, dtype=F64, generator=torch.Generator().manual_seed(3))
    torch.testing.assert_close(F.jv(theta, v), J_fd @ v, atol=1e-7, rtol=0)
    torch.testing.assert_close(F.vjp(theta)(z), J_fd.T @ z, atol=1e-7, rtol=0)


def test_conjugate_gradient_solves_an_spd_system():
    g = torch.Generator().manual_seed(0)
    M = torch.randn(20, 20, generator=g, dtype=F64)
    A = M @ M.T + 0.5 * torch.eye(20, dtype=F64)
    b = torch.randn(20, generator=g, dtype=F64)
    x, it, res = conjugate_gradient(lambda u: A @ u, b, iters=200, tol=1e-12)
    torch.testing.assert_close(x, torch.linalg.solve(A, b), atol=1e-9, rtol=0)
    assert res <= 1e-12 and 0 < it <= 200


def test_power_iteration_finds_the_top_singular_value():
    F, theta = tiny_map()
    s = torch.linalg.svdvals(F.jacobian(theta))
    assert top_eigenvalue_jjt(F, theta, iters=200) == pytest.approx(float(s[0]) ** 2, rel=1e-6)


def test_cg_tangent_projection_agrees_with_the_explicit_pseudo_inverse():
    F, theta = tiny_map()
    J = F.jacobian(theta)
    assert torch.linalg.matrix_rank(J) == 8  # full row rank: the pseudo-inverse projector is J⁺J
    v = -theta
    pinv = torch.linalg.pinv(J) @ (J @ v)
    torch.testing.assert_close(normal_projection_explicit(J, v, 0.0), pinv, atol=1e-10, rtol=0)
    # the same damped system solved two ways agrees to CG precision
    delta = 1e-3
    damped = J.T @ torch.linalg.solve(J @ J.T + delta * torch.eye(8, dtype=F64), J @ v)
    torch.testing.assert_close(normal_projection_explicit(J, v, delta), damped, atol=1e-10, rtol=0)
    pn_cg, info = normal_projection_cg(F, theta, v, delta, iters=100, tol=1e-13)
    torch.testing.assert_close(pn_cg, damped, atol=1e-9, rtol=0)
    # with a tiny damping, CG reproduces the undamped pseudo-inverse projection
    pn_cg0, info0 = normal_projection_cg(F, theta, v, 1e-12, iters=200, tol=1e-14)
    torch.testing.assert_close(pn_cg0, pinv, atol=1e-6, rtol=0)
    # the tangent part is orthogonal to every row of J; the two parts are orthogonal and add up to v
    pt = v - pn_cg0
    assert float((J @ pt).abs().max()) < 1e-6 * float(J.norm()) * float(v.norm())
    assert abs(float(pt @ pn_cg0)) < 1e-6 * float(v @ v)
    assert float(pt.norm() ** 2 + pn_cg0.norm() ** 2) == pytest.approx(float(v @ v), rel=1e-6)


def test_gd_projection_reduces_the_summed_loss():
    F, theta = tiny_map(n=4)
    y = torch.tensor([0, 1, 1, 0])
    lam = top_eigenvalue_jjt(F, theta)
    theta_p, before, after = project_to_zero_loss(F, theta, y, 2, "mse", iters=100, lr=0.5 / lam, momentum=0.9)
    assert after < 0.01 * before
    assert before == pytest.approx(float(((F(theta).reshape(4, 2) - torch.eye(2, dtype=F64)[y]) ** 2).sum()))
    assert after == pytest.approx(float(summed_loss(F(theta_p), y, 2, "mse")))


def _tiny_run():
    data = load_dataset({"name": "modular", "kwargs": {"p": 5, "encoding": "onehot_sum", "train_fraction": 0.7},
                         "seed": 0})
    torch.manual_seed(1)
    model = build_model({"arch": "modular_mlp", "kwargs": {"p": 5, "width": 6, "input": "onehot_sum"}})
    return data, model


def test_probe_numbers_match_direct_computations():
    data, model = _tiny_run()
    x, y = data.split("train")
    probe = get_probe("norm")
    spec = {"train": {"loss": "mse"}}
    prev_state = {k: v + 0.1 * torch.randn_like(v) for k, v in model.state_dict().items()}
    ctx = ProbeContext(step=20, previous_step=10, load_previous=lambda: prev_state, run_spec=spec)
    ds = probe().compute(model, data, probe.make_params({"method": "explicit"}), ctx)
    assert set(ds.data_vars) == set(probe.outputs)
    theta = torch.cat([p.detach().double().reshape(-1) for p in model.parameters()])
    assert float(ds.weight_sq) == pytest.approx(float(theta @ theta))
    assert float(ds.weight_sq_param.sel(param="unembed.weight")) == pytest.approx(
        float(model.unembed.weight.detach().double().pow(2).sum()))
    assert float(ds.update_spacing) == 10.0
    assert "zero-loss set" in ds.attrs["manifold"] and ds.attrs["method"] == "explicit"
    # recompute θ′ the probe's way, then the tangent part with the plain pseudo-inverse
    F = OutputMap(model, x)
    lam = top_eigenvalue_jjt(F, theta)
    theta_p, _, _ = project_to_zero_loss(F, theta, y, 5, "mse", 100, 0.5 / lam, 0.9)
    assert float(ds.dist_zero_loss) == pytest.approx(float((theta - theta_p).norm()), rel=1e-6)
    J = F.jacobian(theta_p)
    delta = float(ds.damping_abs)
    assert delta == pytest.approx(probe.default_params().damping * float(torch.linalg.matrix_norm(J, ord=2)) ** 2)
    eye = torch.eye(J.shape[0], dtype=F64)
    pt = -theta - J.T @ torch.linalg.solve(J @ J.T + delta * eye, J @ -theta)
    assert float(ds.wd_tangent_frac) == pytest.approx(float(pt.norm() / theta.norm()), rel=1e-6)
    assert float(ds.wd_tangent_frac) ** 2 + float(ds.wd_normal_frac) ** 2 == pytest.approx(1.0, abs=1e-3)
    prev = torch.cat([prev_state[n].double().reshape(-1) for n, _ in model.named_parameters()])
    d = theta - prev
    assert float(ds.update_cos) == pytest.approx(float(d @ pt / (d.norm() * pt.norm())), rel=1e-6)
    # matrix-free CG gives the same numbers
    ds_cg = probe().compute(model, data, probe.make_params({"method": "cg", "cg_tol": "1e-12",
                                                            "cg_iters": "500"}), ctx)
    for v in ("wd_tangent_frac", "wd_normal_frac", "update_cos", "grad_tangent_cos", "dist_zero_loss"):
        assert float(ds_cg[v]) == pytest.approx(float(ds[v]), rel=1e-4, abs=1e-7), v


def test_probe_first_checkpoint_ce_attrs_and_bad_params():
    data, model = _tiny_run()
    probe = get_probe("norm")
    ds = probe().compute(model, data, probe.make_params({"proj_iters": "5", "n_train": "8"}),
                         ProbeContext(step=0, run_spec={"train": {"loss": "ce"}}))
    assert math.isnan(float(ds.update_cos)) and math.isnan(float(ds.update_spacing))
    assert "level set" in ds.attrs["manifold"]
    assert int(ds.attrs["n_outputs"]) == 8 * 5
    assert np.isfinite(float(ds.wd_tangent_frac))
    with pytest.raises(ProbeError, match="method"):
        probe().compute(model, data, probe.make_params({"method": "svd"}), ProbeContext(step=0))
    bad_prev = ProbeContext(step=1, previous_step=0, load_previous=lambda: {"other": torch.zeros(1)})
    with pytest.raises(ProbeError, match="previous checkpoint lacks"):
        probe().compute(model, data, probe.default_params(), bad_prev)


def small_map(seed: int = 0) -> tuple[OutputMap, torch.Tensor]:
    """A 6→16→16→3 ReLU MLP on 20 random inputs: ``km = 60`` outputs, ``d = 435`` parameters, with a
    wide spread of singular values (weights scaled up)."""
    torch.manual_seed(seed)
    model = build_model({"arch": "mlp", "kwargs": {"in_dim": 6, "out_dim": 3, "depth": 2, "width": 16}})
    with torch.no_grad():
        for p in model.parameters():
            p.mul_(2.0)
    x = torch.randn(20, 6, generator=torch.Generator().manual_seed(seed + 1))
    return OutputMap(model, x), OutputMap(model, x).theta


def svd_split(J: torch.Tensor, v: torch.Tensor, delta: float) -> tuple[float, float]:
    """The reference: ``‖P_T v‖/‖v‖`` and ``‖P_N v‖/‖v‖`` for the damped projector, from ``J``'s SVD."""
    _, S, Vh = torch.linalg.svd(J, full_matrices=False)
    pn = Vh.T @ ((S ** 2 / (S ** 2 + delta)) * (Vh @ v))
    return float((v - pn).norm() / v.norm()), float(pn.norm() / v.norm())


def test_jacobian_ops_match_the_explicit_jacobian():
    F, theta = small_map()
    J = F.jacobian(theta)
    ops = JacobianOps(F, theta)
    g = torch.Generator().manual_seed(5)
    u, z = torch.randn(F.dim, generator=g, dtype=F64), torch.randn(60, generator=g, dtype=F64)
    torch.testing.assert_close(ops.jv(u), J @ u, atol=1e-10, rtol=1e-12)
    torch.testing.assert_close(ops.jtv(z), J.T @ z, atol=1e-10, rtol=1e-12)


def test_lanczos_tridiagonal_has_the_spectrum_and_quadrature_brackets_the_exact_form():
    g = torch.Generator().manual_seed(0)
    M = torch.randn(30, 30, generator=g, dtype=F64)
    A = M @ M.T
    b = torch.randn(30, generator=g, dtype=F64)
    Q, a, be = lanczos(lambda u: A @ u, b, 30)
    T = torch.diag(a) + torch.diag(be[:-1], 1) + torch.diag(be[:-1], -1)
    torch.testing.assert_close(Q @ Q.T, torch.eye(Q.shape[0], dtype=F64), atol=1e-10, rtol=0)
    torch.testing.assert_close(torch.linalg.eigvalsh(T), torch.linalg.eigvalsh(A), atol=1e-8, rtol=1e-10)
    ev, U = torch.linalg.eigh(A)
    for delta in (1e-3, 1e-1, 10.0):
        exact = float((U.T @ b) ** 2 @ (1 / (ev.clamp(min=0) + delta))) / float(b @ b)
        for k in (3, 6, 10):
            _, [(gauss, radau)] = gauss_radau(a[:k], be[:k], lambda lam, d=delta: [lambda e: 1 / (e + d)])
            assert gauss <= exact * (1 + 1e-10) and exact <= radau * (1 + 1e-10), (delta, k)
        _, [(gauss, radau)] = gauss_radau(a, be, lambda lam, d=delta: [lambda e: 1 / (e + d)])
        assert gauss == pytest.approx(exact, rel=1e-8)


@pytest.mark.parametrize("damping", [1e-6, 1e-4, 1e-2])
def test_lanczos_split_is_within_its_bound_of_the_svd_reference(damping):
    F, theta = small_map()
    J = F.jacobian(theta)
    lam = float(torch.linalg.matrix_norm(J, ord=2)) ** 2
    v = -theta
    ref_t, ref_n = svd_split(J, v, damping * lam)
    for iters, tol in ((5, 1e-12), (15, 1e-12), (400, 1e-9)):
        r = tangent_split_lanczos(F, theta, v, damping, (), iters=iters, tol=tol)
        assert r["tangent_err"] >= 0 and r["normal_err"] >= 0
        assert abs(r["tangent_frac"] - ref_t) <= r["tangent_err"] + 1e-9, iters
        assert abs(r["normal_frac"] - ref_n) <= r["normal_err"] + 1e-9, iters
    # run to convergence: the certified values and the vector P_N v agree with the SVD
    assert r["lambda_max"] == pytest.approx(lam, rel=1e-9)
    assert r["tangent_frac"] == pytest.approx(ref_t, abs=2e-9)
    pn_ref = normal_projection_explicit(J, v, damping * lam)
    torch.testing.assert_close(r["pn"], pn_ref, atol=1e-6 * float(v.norm()), rtol=0)


def test_lanczos_damping_curve_and_float32_products_match_the_svd_reference():
    F, theta = small_map(seed=3)
    J = F.jacobian(theta)
    lam = float(torch.linalg.matrix_norm(J, ord=2)) ** 2
    grid = (1e-5, 1e-3, 1e-1)
    for dtype, slack in ((None, 1e-9), (torch.float32, 1e-4)):
        r = tangent_split_lanczos(F, theta, -theta, 1e-3, grid, iters=400, tol=1e-6, matvec_dtype=dtype)
        for g, (t, err) in zip(grid, r["curve"]):
            assert abs(t - svd_split(J, -theta, g * lam)[0]) <= err + slack, (dtype, g)
        assert r["tangent_err"] <= 1e-6


def test_probe_lanczos_agrees_with_explicit_and_stores_the_damping_curve():
    data, model = _tiny_run()
    probe = get_probe("norm")
    ctx = ProbeContext(step=3, run_spec={"train": {"loss": "mse"}})
    ex = probe().compute(model, data, probe.make_params({"method": "explicit"}), ctx)
    lz = probe().compute(model, data, probe.make_params({"method": "lanczos", "lanczos_tol": "1e-6",
                                                         "lanczos_dtype": "float64"}), ctx)
    assert lz.attrs["method"] == "lanczos" and list(lz.damping.values) == list(probe.default_params().damping_grid)
    assert float(ex.wd_tangent_frac_err) == 0.0 and float(lz.wd_tangent_frac_err) <= 1e-6
    for v in ("wd_tangent_frac", "wd_normal_frac", "grad_tangent_cos", "lambda_max", "dist_zero_loss"):
        assert float(lz[v]) == pytest.approx(float(ex[v]), rel=1e-5, abs=1e-6), v
    err = lz.wd_tangent_frac_curve_err.values
    assert np.all(np.abs(lz.wd_tangent_frac_curve.values - ex.wd_tangent_frac_curve.values) <= err + 1e-6)
    i = list(lz.damping.values).index(1e-5)
    assert float(ex.wd_tangent_frac_curve[i]) == pytest.approx(float(ex.wd_tangent_frac), abs=1e-12)
    with pytest.raises(ProbeError, match="damping_grid"):
        probe.make_params({"damping_grid": "0,1e-5"})
