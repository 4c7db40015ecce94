"""The ``fourier`` probe against brute-force loops and facts that must hold."""

from __future__ import annotations

import cmath
import math

import numpy as np
import pytest
import torch
from torch import nn

from grokscope.datasets import load_dataset
from grokscope.datasets.base import Data
from grokscope.models import build_model
from grokscope.probes import ProbeContext, ProbeError, get_probe
from grokscope.probes.fourier import (
    all_pairs_logits, circle_geometry, excluded_loss, find_embedding, find_neuron_module, find_readout,
    fourier_basis, fourier_norms, freq_component, gini, gini_fft_raw, key_frequencies,
    locate_embedding, logit_fourier_coefficients, musat_fourier, neuron_frequencies, restricted_loss,
)

F64 = torch.float64


def sinusoid_embedding(p: int, k: int, d: int = 6, seed: int = 0) -> torch.Tensor:
    """Rows ``E_j = cos(2πkj/p) u + sin(2πkj/p) w`` for random ``u, w``: a circle at frequency k."""
    g = torch.Generator().manual_seed(seed)
    u, w = torch.randn(d, generator=g, dtype=F64), torch.randn(d, generator=g, dtype=F64)
    j = torch.arange(p, dtype=F64)[:, None]
    return torch.cos(2 * math.pi * k * j / p) * u + torch.sin(2 * math.pi * k * j / p) * w


@pytest.mark.parametrize("p", [2, 7, 8, 11, 13])
def test_basis_is_orthonormal_with_the_documented_rows(p):
    B = fourier_basis(p)
    assert B.shape == (p, p)
    torch.testing.assert_close(B @ B.T, torch.eye(p, dtype=F64), atol=1e-12, rtol=0)
    x = torch.arange(p, dtype=F64)
    assert torch.allclose(B[0], torch.full((p,), 1 / math.sqrt(p), dtype=F64))
    if p >= 5:  # row 3 = cos of frequency 2, row 4 = sin of frequency 2, up to a positive scale
        c, s = torch.cos(4 * math.pi * x / p), torch.sin(4 * math.pi * x / p)
        torch.testing.assert_close(B[3], c / c.norm())
        torch.testing.assert_close(B[4], s / s.norm())


@pytest.mark.parametrize("k", [1, 3, 5])
def test_pure_sinusoid_puts_all_fourier_norm_at_its_frequency(k):
    p = 11
    E = sinusoid_embedding(p, k)
    n = fourier_norms(E)
    assert n.shape == (5,)
    assert n[k - 1] > 1.0
    others = torch.cat([n[:k - 1], n[k:]])
    assert float(others.abs().max()) < 1e-12
    torch.testing.assert_close(n[k - 1] ** 2, (E ** 2).sum())  # no constant part: all energy at k
    assert key_frequencies(n, 1).tolist() == [k]
    assert gini(n) == pytest.approx((5 - 1) / 5)  # a single non-zero value: the maximum Gini
    F = musat_fourier(E)
    assert float(torch.cat([F[:k - 1], F[k:]]).abs().max()) < 1e-12
    assert float(F[k - 1].abs().max()) > 0.1


def test_fourier_norms_match_a_direct_projection_loop():
    p, d = 13, 4
    E = torch.randn(p, d, dtype=F64, generator=torch.Generator().manual_seed(1))
    n = fourier_norms(E)
    for k in range(1, 7):
        c = torch.tensor([math.cos(2 * math.pi * k * j / p) for j in range(p)], dtype=F64)
        s = torch.tensor([math.sin(2 * math.pi * k * j / p) for j in range(p)], dtype=F64)
        c, s = c / c.norm(), s / s.norm()
        expected = math.sqrt(sum(float(c @ E[:, i]) ** 2 + float(s @ E[:, i]) ** 2 for i in range(d)))
        assert float(n[k - 1]) == pytest.approx(expected, rel=1e-12)


def test_musat_fourier_matches_the_direct_sum():
    p, d = 11, 5
    E = torch.randn(p, d, dtype=F64, generator=torch.Generator().manual_seed(2))
    F = musat_fourier(E)
    assert F.shape == (5, d) and F.is_complex()
    for k in range(1, 6):
        for i in range(d):
            direct = sum(cmath.exp(-2j * math.pi * j * k / p) * float(E[j, i]) for j in range(p)) / p
            assert complex(F[k - 1, i]) == pytest.approx(direct, abs=1e-13)


def test_circle_geometry_matches_loops():
    p, d = 11, 7
    E = torch.randn(p, d, dtype=F64, generator=torch.Generator().manual_seed(3))
    geo = circle_geometry(E)
    F = musat_fourier(E).numpy()
    K = 5
    vecs = []
    for k in range(K):
        re, im = F[k].real, F[k].imag
        assert geo["norm_re"][k] == pytest.approx(np.linalg.norm(re))
        assert geo["norm_im"][k] == pytest.approx(np.linalg.norm(im))
        lo, hi = sorted([np.linalg.norm(re), np.linalg.norm(im)])
        assert geo["aspect"][k] == pytest.approx(lo / hi)
        assert geo["cos_re_im"][k] == pytest.approx(abs(re @ im) / (np.linalg.norm(re) * np.linalg.norm(im)))
        vecs += [np.abs(re), np.abs(im)]

    def cos(a, b):
        return a @ b / (np.linalg.norm(a) * np.linalg.norm(b))

    same = np.mean([cos(vecs[2 * k], vecs[2 * k + 1]) for k in range(K)])
    cross = np.mean([cos(vecs[i], vecs[j]) for i in range(2 * K) for j in range(2 * K) if i // 2 != j // 2])
    assert float(geo["abs_cos_same"]) == pytest.approx(same)
    assert float(geo["abs_cos_cross"]) == pytest.approx(cross)
    assert float(geo["abs_cos"][1, 0, 3, 1]) == pytest.approx(cos(vecs[2], vecs[7]))
    norms = np.array([np.linalg.norm(v) for v in vecs])
    assert float(geo["norm_spread"]) == pytest.approx((norms.max() - norms.min()) / norms.mean())


def test_gini_reference_range_and_extremes():
    g = torch.Generator().manual_seed(4)
    for _ in range(5):
        a = torch.rand(9, generator=g, dtype=F64)
        mean_abs_diff = float((a[:, None] - a[None, :]).abs().sum()) / (2 * 9 ** 2 * float(a.mean()))
        assert gini(a) == pytest.approx(mean_abs_diff, rel=1e-12)
        assert 0.0 <= gini(a) <= 1.0
    assert gini(torch.full((6,), 2.5)) == pytest.approx(0.0, abs=1e-15)
    assert math.isnan(gini(torch.zeros(4)))
    assert gini(torch.tensor([0.0, 0.0, 0.0, 3.0])) == pytest.approx(0.75)


def test_gini_fft_raw_matches_a_numpy_dft():
    M = torch.randn(8, 3, dtype=F64, generator=torch.Generator().manual_seed(5))
    bins = np.array([np.linalg.norm([sum(np.exp(-2j * np.pi * j * k / 8) * M[j, i].item() for j in range(8))
                                     for i in range(3)]) for k in range(8)])
    assert gini_fft_raw(M) == pytest.approx(gini(torch.tensor(bins)), rel=1e-12)


def test_find_embedding_for_each_encoding_and_model():
    p = 7
    tr = build_model({"arch": "transformer", "kwargs": {"p": p, "d_model": 8, "n_heads": 2, "d_head": 4,
                                                         "d_mlp": 16}})
    torch.testing.assert_close(find_embedding(tr, p), tr.embed_tokens.weight[:p].detach().double())
    assert "'=' dropped" in locate_embedding(tr, p).note
    assert locate_embedding(tr, p).full.shape == (p + 1, 8)
    s = build_model({"arch": "modular_mlp", "kwargs": {"p": p, "width": 10, "input": "onehot_sum"}})
    torch.testing.assert_close(find_embedding(s, p), s.embed_linear.weight.T.detach().double())
    c = build_model({"arch": "modular_mlp", "kwargs": {"p": p, "width": 10, "input": "onehot_concat"}})
    torch.testing.assert_close(find_embedding(c, p), c.embed_linear.weight[:, :p].T.detach().double())
    assert "operand a" in locate_embedding(c, p).note
    m = build_model({"arch": "mlp", "kwargs": {"in_dim": 2 * p, "out_dim": p, "depth": 2, "width": 12}})
    assert find_embedding(m, p).shape == (p, 12)
    with pytest.raises(ProbeError, match="in_features=5"):
        find_embedding(nn.Sequential(nn.Linear(5, 3)), p)
    # readouts: the transformer's W_L = W_U W_out, the MLP's unembed
    torch.testing.assert_close(find_readout(tr, p), (tr.unembed.weight @ tr.mlp_out.weight).detach().double())
    assert find_readout(s, p).shape == (p, 10)
    assert find_neuron_module(tr)[0] == "act"


def _circuit_logits(p: int, k: int, scale: float = 6.0) -> torch.Tensor:
    """Logits ``scale·cos(w_k(a + b − c))`` over all pairs (a-major rows, c columns): one circuit."""
    a, b = torch.meshgrid(torch.arange(p), torch.arange(p), indexing="ij")
    s = (a + b).reshape(-1, 1).double() - torch.arange(p).double()[None, :]
    return scale * torch.cos(2 * math.pi * k * s / p)


def test_restricted_and_excluded_loss_on_a_single_circuit():
    p, k = 11, 3
    L = _circuit_logits(p, k)
    y = ((torch.arange(p)[:, None] + torch.arange(p)[None, :]) % p).reshape(-1)
    full = float(torch.nn.functional.cross_entropy(L, y))
    assert restricted_loss(L, p, [k], "ce") == pytest.approx(full, rel=1e-10)
    assert restricted_loss(L, p, [k, 1], "ce") == pytest.approx(full, rel=1e-10)
    rows = torch.arange(0, p * p, 3)
    # removing the circuit leaves constant logits: the loss of a uniform guess
    assert excluded_loss(L, p, [k], rows, "ce") == pytest.approx(math.log(p), rel=1e-10)
    # removing another frequency changes nothing
    assert excluded_loss(L, p, [2], rows, "ce") == pytest.approx(
        float(torch.nn.functional.cross_entropy(L[rows], y[rows])), rel=1e-10)
    # a different kept frequency loses everything
    assert restricted_loss(L, p, [2], "ce") == pytest.approx(math.log(p), rel=1e-10)
    coef = logit_fourier_coefficients(L, p)
    assert float(coef[k - 1]) == pytest.approx(6.0 * math.sqrt(p ** 3 / 2), rel=1e-10)
    assert float(torch.cat([coef[:k - 1], coef[k:]]).abs().max()) < 1e-9


def test_freq_component_is_the_least_squares_projection():
    p = 7
    L = torch.randn(p * p, p, dtype=F64, generator=torch.Generator().manual_seed(6))
    a, b = torch.meshgrid(torch.arange(p), torch.arange(p), indexing="ij")
    s = (a + b).reshape(-1).double()
    comp = freq_component(L, p, [2])
    X = torch.stack([torch.cos(2 * math.pi * 2 * s / p), torch.sin(2 * math.pi * 2 * s / p)], dim=1)
    coef = torch.linalg.lstsq(X, L).solution
    torch.testing.assert_close(comp, X @ coef, atol=1e-12, rtol=0)


def test_neuron_frequencies_of_a_known_neuron():
    p, k = 11, 4
    a = torch.arange(p, dtype=F64)[:, None]
    b = torch.arange(p, dtype=F64)[None, :]
    w = 2 * math.pi * k / p
    n0 = torch.cos(w * a) + 0.5 * torch.sin(w * b) + torch.cos(w * (a + b)) + 3.0
    n1 = torch.cos(w * a) + torch.cos(2 * math.pi * 2 * b / p)  # half at k, half at 2
    frac = neuron_frequencies(torch.stack([n0, n1], dim=2))
    assert frac.shape == (2, 5)
    assert float(frac[0, k - 1]) == pytest.approx(1.0)
    assert float(frac[1, k - 1]) == pytest.approx(0.5)
    assert float(frac[1, 1]) == pytest.approx(0.5)
    torch.testing.assert_close(frac.sum(dim=1), torch.ones(2, dtype=F64))  # separable: no cross terms


def test_probe_on_a_transformer_matches_the_functions_and_declares_its_outputs():
    data = load_dataset({"name": "modular", "kwargs": {"p": 7, "train_fraction": 0.5}, "seed": 0})
    torch.manual_seed(0)
    model = build_model({"arch": "transformer", "kwargs": {"p": 7, "d_model": 8, "n_heads": 2, "d_head": 4,
                                                           "d_mlp": 16}})
    probe = get_probe("fourier")
    params = probe.make_params({"n_key": "2"})
    ds = probe().compute(model, data, params, ProbeContext(step=0, run_spec={"train": {"loss": "ce"}}))
    assert set(ds.data_vars) == set(probe.outputs)
    for name, dims in probe.outputs.items():
        assert ds[name].dims == dims, name
    np.testing.assert_allclose(ds.fourier_norms.values, fourier_norms(find_embedding(model, 7)).numpy())
    assert ds.key_freq.shape == (2,)
    logits = all_pairs_logits(model, 7, "tokens")
    y = ((torch.arange(7)[:, None] + torch.arange(7)[None, :]) % 7).reshape(-1)
    assert float(ds.full_loss) == pytest.approx(float(torch.nn.functional.cross_entropy(logits, y)), rel=1e-6)
    assert ds.neuron_freq.shape == (16,) and int(ds.neurons_per_freq.sum()) <= 16
    assert 0 <= float(ds.gini_real) <= 1 and 0 <= float(ds.gini_fft_raw) <= 1


def test_probe_refuses_a_non_modular_dataset():
    z = torch.zeros(4, 3)
    data = Data(name="digits", x_train=z, y_train=torch.zeros(4, dtype=torch.long), x_test=z,
                y_test=torch.zeros(4, dtype=torch.long), n_classes=3, box_low=z[0], box_high=z[0] + 1)
    probe = get_probe("fourier")
    with pytest.raises(ProbeError, match="modular-arithmetic dataset"):
        probe().compute(nn.Linear(3, 3), data, probe.default_params(), ProbeContext(step=0))


def test_a_non_modular_run_is_refused_once_before_any_job(tmp_path):
    """``probe -m acc,fourier`` on a digits run: one line naming fourier and the dataset, nothing computed."""
    from click.testing import CliRunner

    from grokscope.cli import main
    from tests.helpers import make_run

    run = make_run(tmp_path / "r", [0, 1, 2])
    r = CliRunner().invoke(main, ["probe", str(run), "-m", "acc,fourier", "--scheduler", "sync"])
    assert r.exit_code == 1
    lines = [ln for ln in r.output.splitlines() if ln.strip()]
    assert len(lines) == 1 and "'fourier' needs a modular-arithmetic dataset" in lines[0] and "'digits'" in lines[0]
    assert "nothing was computed" in lines[0] and not (run / "probes.zarr" / "r").exists()
