"""``spectral``: the power-law fit against a brute-force Clauset–Shalizi–Newman loop, stable rank and
spectral norm against numpy's norms, correlation traps on planted large elements, the convolution
reading, WeightWatcher's α on the same matrices, and a real engine run on a run with no data."""

from __future__ import annotations

import json
import math

import numpy as np
import pytest
import torch
from torch import nn

from grokscope.engine.driver import EngineConfig, probe_runs
from grokscope.engine.jobs import ProbeRequest
from grokscope.engine.store_view import load_group
from grokscope.probes import ProbeError, get_probe
from grokscope.probes.base import ProbeContext
from grokscope.probes.spectral import correlation_traps, esd, fit_alpha, mp_trap_threshold, weight_matrices
from grokscope.testing import check_probe
from tests.helpers import make_run

pytest.importorskip("powerlaw")


def _brute_alpha(evals: np.ndarray) -> tuple[float, float, float]:
    """Clauset et al. by hand: for every candidate xmin (each distinct value but the largest), the
    continuous MLE α = 1 + n / Σ log(x/xmin) over the tail and its KS distance to the fitted CDF
    (the empirical CDF at the i-th of n tail points taken as i/n, powerlaw's convention);
    the xmin of the smallest distance among α > 1. Returns (α, D, xmin)."""
    x = np.sort(np.asarray(evals, dtype=np.float64))
    best = (math.inf, math.nan, math.nan)
    for xmin in np.unique(x)[:-1]:
        tail = x[x >= xmin]
        n = len(tail)
        alpha = 1 + n / sum(math.log(t / xmin) for t in tail)
        if not alpha > 1:
            continue
        d = 0.0
        for i, t in enumerate(tail):  # the empirical CDF as powerlaw counts it: i/n at the i-th point
            d = max(d, abs(1 - (t / xmin) ** (1 - alpha) - i / n))
        if d < best[0]:
            best = (d, alpha, xmin)
    return best[1], best[0], best[2]


def _heavy(shape, df=3.0, seed=0):
    return np.random.default_rng(seed).standard_t(df, size=shape)


@pytest.mark.parametrize("shape,seed", [((120, 60), 0), ((80, 80), 1), ((40, 100), 2)])
def test_alpha_matches_a_brute_force_clauset_fit(shape, seed):
    ev = esd([_heavy(shape, seed=seed)])
    got = fit_alpha(ev)
    alpha, d, xmin = _brute_alpha(ev)
    assert got["alpha"] == pytest.approx(alpha, rel=1e-9)
    assert got["xmin"] == pytest.approx(xmin, rel=1e-12)
    assert got["alpha_ks"] == pytest.approx(d, rel=1e-9)
    assert got["n_tail"] == (ev >= xmin).sum()
    assert got["alpha_sigma"] == pytest.approx((alpha - 1) / math.sqrt(got["n_tail"]))


def test_alpha_recovers_a_known_power_law_and_is_scale_free():
    rng = np.random.default_rng(0)
    x = (1 - rng.random(1500)) ** (-1 / (2.5 - 1))  # Pareto, α = 2.5, xmin = 1
    fit = fit_alpha(x)
    assert abs(fit["alpha"] - 2.5) < 3 * fit["alpha_sigma"] + 0.05
    assert fit_alpha(1e3 * x)["alpha"] == pytest.approx(fit["alpha"], rel=1e-9)
    assert math.isnan(fit_alpha(x[:10], min_evals=20)["alpha"])  # too few eigenvalues: NaN, not a guess


def test_stable_rank_and_spectral_norm_match_numpy_norms():
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(30, 50), nn.ReLU(), nn.Linear(50, 7), nn.Embedding(11, 5))
    ds = get_probe("spectral")().compute(model, None, get_probe("spectral").make_params({}), ProbeContext(0))
    assert list(ds.layer.values) == ["0", "2", "3"]
    for name, w in [("0", model[0].weight), ("2", model[2].weight), ("3", model[3].weight)]:
        a = w.detach().double().numpy()
        two, fro = np.linalg.norm(a, 2), np.linalg.norm(a, "fro")
        assert float(ds.spectral_norm.sel(layer=name)) == pytest.approx(two, rel=1e-10)
        assert float(ds.stable_rank.sel(layer=name)) == pytest.approx(fro ** 2 / two ** 2, rel=1e-10)
        assert float(ds.n_evals.sel(layer=name)) == min(a.shape)
    assert math.isnan(float(ds.alpha.sel(layer="3")))  # 5 eigenvalues < min_evals
    assert float(ds.alpha.sel(layer="0")) == pytest.approx(fit_alpha(esd([model[0].weight.detach().double().numpy()]))["alpha"])


def test_a_convolution_is_one_matrix_per_kernel_position():
    torch.manual_seed(0)
    conv = nn.Conv2d(6, 10, (3, 2))
    (mats,) = weight_matrices(conv).values()
    w = conv.weight.detach().double().numpy()
    assert len(mats) == 6
    slices = [w[:, :, i, j] for i in range(3) for j in range(2)]
    for m, s in zip(mats, slices):
        np.testing.assert_array_equal(m, s)
    pooled = sorted(float(v) ** 2 for s in slices for v in np.linalg.svd(s, compute_uv=False))
    np.testing.assert_allclose(esd(mats), pooled, rtol=1e-12)


def test_correlation_traps_count_planted_large_elements_and_no_gaussian_ones():
    rng = np.random.default_rng(0)
    gauss = rng.standard_normal((200, 100))
    assert correlation_traps([gauss], n_shuffles=5, rng=np.random.default_rng(1)) == 0
    planted = gauss.copy()
    planted[[3, 50, 120], [7, 40, 90]] = 60.0  # three elements far outside the bulk
    assert correlation_traps([planted], n_shuffles=5, rng=np.random.default_rng(1)) == 3
    # the same count by hand: shuffle the centred matrix with the same generator, eigvalsh of CᵀC
    c = planted - planted.mean()
    r = np.random.default_rng(1)
    edge = mp_trap_threshold(200, 100, float((c * c).mean()), 4.0)
    counts = [int((np.linalg.eigvalsh(s.T @ s) > edge).sum())
              for s in (r.permutation(c.ravel()).reshape(c.shape) for _ in range(5))]
    assert counts == [3] * 5
    # the correlations of the unshuffled matrix do not count: a rank-one spike is no trap
    spike = gauss + 5 * np.outer(rng.standard_normal(200), rng.standard_normal(100)) / 10
    assert correlation_traps([spike], rng=np.random.default_rng(1)) == 0


def test_conforms_and_bad_parameters_fail():
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(40, 30), nn.ReLU(), nn.Linear(30, 25))
    cls = get_probe("spectral")
    out = check_probe(cls, model, None, cls.make_params({}))
    assert set(out.data_vars) == set(cls.outputs) and not cls.needs_data
    for bad in ({"min_evals": "2"}, {"n_shuffles": "0"}, {"trap_tw": "-1"}):
        with pytest.raises(ProbeError, match="spectral."):
            cls.make_params(bad)
    with pytest.raises(ProbeError, match="spectral.layers: nope.*valid: 0, 2"):
        cls().check(model, None, cls.make_params({"layers": "nope"}))


def test_alpha_agrees_with_weightwatcher_on_the_same_matrices():
    ww = pytest.importorskip("weightwatcher")
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(118, 128), nn.ReLU(), nn.Linear(128, 128), nn.ReLU(), nn.Linear(128, 59))
    with torch.no_grad():  # heavy-tailed weights, as training makes them
        for m in model[::2]:
            m.weight.copy_(torch.from_numpy(_heavy(tuple(m.weight.shape), df=2.5)) * 0.05)
    cls = get_probe("spectral")
    ds = cls().compute(model, None, cls.make_params({}), ProbeContext(0))
    details = ww.WeightWatcher(model=model).analyze(plot=False, randomize=False, mp_fit=False)
    theirs = dict(zip(details["name"], details["alpha"]))
    for layer in ds.layer.values:
        assert float(ds.alpha.sel(layer=layer)) == pytest.approx(theirs[str(layer)], rel=1e-9), layer
        assert float(ds.stable_rank.sel(layer=layer)) == pytest.approx(
            float(details.set_index("name").loc[str(layer), "stable_rank"]), rel=1e-9)


def test_probes_a_run_whose_dataset_cannot_be_loaded(tmp_path):
    """No data needed: a run whose run.json names a dataset that is not installed still gets its spectra."""
    run = make_run(tmp_path / "r", [0, 5, 20], model={"arch": "mlp", "kwargs": {"in_dim": 64, "out_dim": 10,
                                                                                  "depth": 1, "width": 40}})
    spec = json.loads((run / "run.json").read_text())
    spec["dataset"] = {"name": "some_private_corpus", "kwargs": {}, "seed": 0}
    (run / "run.json").write_text(json.dumps(spec))
    store = tmp_path / "p.zarr"
    req = ProbeRequest("spectral", get_probe("spectral").make_params({}), None)
    summary = probe_runs(run, EngineConfig(probes=[req], out=store, scheduler="sync"))
    assert summary.ok, summary.failures
    g = load_group(store, "r", "spectral")
    assert list(g.step.values) == [0, 5, 20] and g.done.values.all()
    first = g.layer.values[0]
    assert len(g.layer) == 2 and np.isfinite(g.alpha.sel(layer=first).values).all()
    # training moved the first layer's spectrum
    assert g.spectral_norm.sel(layer=first).values[-1] != g.spectral_norm.sel(layer=first).values[0]
