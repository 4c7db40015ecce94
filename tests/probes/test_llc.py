"""``llc``: the estimate against models whose learning coefficient is known, the batched chains against a
plain one-chain-at-a-time reference, the diagnostics and warnings, the probe through the engine, and
``grokscope llc-sweep``."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from torch import nn

from grokscope.datasets import load_dataset
from grokscope.engine.store_view import load_group
from grokscope.models import build_model
from grokscope.probes import ProbeError, get_probe
from grokscope.probes.llc import (FlatModel, LLCProbe, chain_seed, estimate_llc, sgld_chains, split_rhat,
                                  trace_drift)
from grokscope.testing import check_probe
from tests.helpers import DIGITS as RUN_DIGITS, MLP as RUN_MLP, make_run

F64 = torch.float64


@pytest.fixture(autouse=True, scope="module")
def one_thread():
    """These problems are tiny: one torch thread is fastest and does not fight other processes."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


def mse(out: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
    return ((out.reshape(-1) - t) ** 2).mean()


# ------------------------------------------------------------------ a regular model: lambda = d/2
def ols_model(n: int = 1000, D: int = 9, seed: int = 0) -> tuple[nn.Linear, torch.Tensor, torch.Tensor, torch.Tensor]:
    """Linear regression with D inputs and a bias (d = D + 1 parameters) at its least-squares solution."""
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(n, D, generator=g, dtype=F64)
    y = x @ torch.linspace(-1, 1, D, dtype=F64) + 0.3 + 0.5 * torch.randn(n, generator=g, dtype=F64)
    X1 = torch.cat([x, torch.ones(n, 1, dtype=F64)], 1)
    sol = torch.linalg.lstsq(X1, y[:, None]).solution[:, 0]
    model = nn.Linear(D, 1).double()
    with torch.no_grad():
        model.weight.copy_(sol[:D][None])
        model.bias.copy_(sol[D:])
    return model, x, y, X1


def discrete_sgld_llc(H: torch.Tensor, nbeta: float, gamma: float, lr: float) -> float:
    """E[nβ (L − L*)] under the stationary law of full-batch SGLD on L = L* + ½ δᵀHδ.

    With A = nβH + γI the update is δ ← (I − εA/2) δ + √ε ξ, whose stationary covariance is
    Σ = (A (I − εA/4))⁻¹ (A commutes with everything here), so E[nβ ½ δᵀHδ] = ½ Σ_i nβ h_i / (a_i (1 − ε a_i/4)).
    As ε → 0 and γ → 0 this is d/2."""
    h = torch.linalg.eigvalsh(H)
    a = nbeta * h + gamma
    return float(0.5 * (nbeta * h / (a * (1 - lr * a / 4))).sum())


def test_linear_regression_gives_d_over_2():
    model, x, y, X1 = ols_model()
    n, d = len(x), X1.shape[1]
    nbeta = n / math.log(n)
    H = 2 * X1.T @ X1 / n  # Hessian of the mean squared error
    lr, gamma, chains = 5e-4, 1.0, 16
    m = estimate_llc(model, x, y, mse, lr=lr, gamma=gamma, n_chains=chains, n_draws=800, n_burnin=100)
    se = m["llc_std"] / math.sqrt(chains)
    exact = discrete_sgld_llc(H, nbeta, gamma, lr)
    assert m["nbeta"] == pytest.approx(nbeta) and m["n_params"] == d
    # The exact expectation of this sampler (step size and γ included): within 4 standard errors of the
    # chains' mean. The standard error (expected ≈ 1.5 % of d/2 here: 16 chains x 800 draws, autocorrelation
    # time 2/(ε·a) ≈ 14 steps) is checked to be small, so the test can fail.
    assert se < 0.025 * d / 2
    assert abs(m["llc"] - exact) < 4 * se, (m["llc"], exact, se)
    # The learning coefficient itself, d/2: the step size (ε·a/4 ≈ 4 %) and γ shift the sampler's
    # expectation by (exact − d/2) < 8 %; with 4 standard errors (≈ 6 %) the tolerance is 15 %.
    assert abs(exact - d / 2) < 0.08 * d / 2
    assert abs(m["llc"] - d / 2) < 0.15 * d / 2
    assert m["warnings"] == [] and m["rhat"] < 1.1 and np.all(m["frac_below"] == 0)
    assert float(np.asarray(m["loss_trace"]).min()) >= m["loss_init"]  # w* is the global minimum


def test_rmsprop_sampler_on_linear_regression():
    """RMSProp-SGLD (no Γ correction term, as in Li et al. and devinterp) samples the posterior only
    approximately, the preconditioner drifting with V; on this quadratic its estimate must still be
    near d/2: tolerance 15 % (4 standard errors ≈ 6 %, the step-size bias ε·G·a/4 ≈ 5 % with G ≈ 4.5
    here, and an unknown bias of the slowly varying G)."""
    model, x, y, X1 = ols_model()
    d = X1.shape[1]
    m = estimate_llc(model, x, y, mse, lr=1e-4, gamma=1.0, n_chains=16, n_draws=800, n_burnin=100,
                     sampler="rmsprop")
    assert m["llc_std"] / 4 < 0.025 * d / 2
    assert abs(m["llc"] - d / 2) < 0.15 * d / 2, m["llc"]


# ------------------------------------------------------------------ a degenerate model: y = a·b·x
class Product(nn.Module):
    """``f(x) = a·b·x``: two parameters, one function of their product."""

    def __init__(self, a: float, b: float):
        super().__init__()
        self.a = nn.Parameter(torch.tensor(a, dtype=F64))
        self.b = nn.Parameter(torch.tensor(b, dtype=F64))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.a * self.b * x


def posterior_expectation_2d(x: torch.Tensor, y: torch.Tensor, a0: float, b0: float, nbeta: float, gamma: float,
                             half_width: float, points: int = 1601) -> float:
    """E[nβ (L(a, b) − L(a0, b0))] under ∝ exp(−nβ L − γ/2 ‖(a, b) − (a0, b0)‖²), by quadrature on a grid
    (the independent slow reference: no sampling at all)."""
    sxx, sxy, syy = float((x * x).mean()), float((x * y).mean()), float((y * y).mean())
    a = np.linspace(a0 - half_width, a0 + half_width, points)
    A, B = np.meshgrid(a, a - a0 + b0, indexing="ij")
    P = A * B

    def loss(p):
        return syy - 2 * p * sxy + p * p * sxx
    excess = nbeta * (loss(P) - loss(a0 * b0))
    logw = -excess - 0.5 * gamma * ((A - a0) ** 2 + (B - b0) ** 2)
    w = np.exp(logw - logw.max())
    return float((w * excess).sum() / w.sum())


def test_product_model_has_learning_coefficient_one_half():
    """``y = a·b·x`` at a point of the minimum set {ab = c}, c ≠ 0. The loss depends on (a, b) only through
    ab, so K(a, b) = E[x²] (ab − c)²: one direction of curvature, one flat direction along the hyperbola.
    Its learning coefficient is 1/2 < d/2 = 1 (Watanabe 2009, the regular case in the normal direction;
    Lau et al. 2025 use the same kind of example)."""
    g = torch.Generator().manual_seed(1)
    n = 1000
    x = torch.randn(n, generator=g, dtype=F64)
    y = 1.0 * x + 0.5 * torch.randn(n, generator=g, dtype=F64)
    c = float((x * y).sum() / (x * x).sum())  # the least-squares product
    a0 = b0 = math.sqrt(c)
    nbeta, gamma, lr, chains = n / math.log(n), 10.0, 3e-4, 16
    m = estimate_llc(Product(a0, b0), x, y, mse, lr=lr, gamma=gamma, n_chains=chains, n_draws=2000,
                     n_burnin=200)
    ref = posterior_expectation_2d(x, y, a0, b0, nbeta, gamma, half_width=2.0)
    # The step size inflates the variance across the valley by 1/(1 − ε·a/4), a = the curvature there
    # (nβ·2·E[x²]·(a0² + b0²) + γ; ε·a/4 ≈ 4.5 %), and the excess loss with it.
    a_n = nbeta * 2 * float((x * x).mean()) * (a0 ** 2 + b0 ** 2) + gamma
    expected = ref / (1 - lr * a_n / 4)
    se = m["llc_std"] / math.sqrt(chains)
    # The exact posterior expectation (finite nβ and γ) is close to 1/2; the chains match the sampler's
    # expectation within 4 standard errors (expected ≈ 0.013: 16 chains x 2000 draws, autocorrelation
    # time ≈ 11 steps) plus 1 % for the curvature changing along the valley.
    assert abs(ref - 0.5) < 0.03
    assert se < 0.02
    assert abs(m["llc"] - expected) < 4 * se + 0.01 * expected, (m["llc"], expected, se)
    assert m["llc"] < 0.75  # clearly below the regular count d/2 = 1


# ------------------------------------------------------------------ batched == one chain at a time
def reference_chain(model: nn.Module, x: torch.Tensor, y: torch.Tensor, chain: int, *, lr: float, gamma: float,
                    nbeta: float, steps: int, batch_size: int, sampler: str, seed: int,
                    rms_alpha: float = 0.99, rms_eps: float = 0.1) -> list[float]:
    """One chain the plain way: a copy of the model, loss.backward(), parameter tensors updated in place;
    the same generators (seeded by ``chain_seed``) and the same order of draws as the probe."""
    import copy

    net = copy.deepcopy(model)
    params = [p for p in net.parameters() if p.requires_grad]
    w_star = [p.detach().clone() for p in params]
    V = [torch.zeros_like(p) for p in params]
    noise_gen = torch.Generator().manual_seed(chain_seed(seed, chain, 0))
    batch_gen = torch.Generator().manual_seed(chain_seed(seed, chain, 1))
    losses = []
    for _ in range(steps):
        if 0 < batch_size < len(x):
            idx = torch.randperm(len(x), generator=batch_gen)[:batch_size]
            xb, yb = x[idx], y[idx]
        else:
            xb, yb = x, y
        for p in params:
            p.grad = None
        loss = nn.functional.cross_entropy(net(xb), yb)
        loss.backward()
        losses.append(float(loss.detach()))
        xi = torch.randn(sum(p.numel() for p in params), generator=noise_gen, dtype=F64)
        offset = 0
        with torch.no_grad():
            for p, p0, v in zip(params, w_star, V):
                k = p.numel()
                noise = xi[offset:offset + k].view_as(p)
                offset += k
                drift = nbeta * p.grad + gamma * (p - p0)
                if sampler == "rmsprop":
                    v.mul_(rms_alpha).add_((1 - rms_alpha) * p.grad * p.grad)
                    G = 1.0 / (v.sqrt() + rms_eps)
                    p.add_(-0.5 * lr * G * drift + (lr * G).sqrt() * noise)
                else:
                    p.add_(-0.5 * lr * drift + math.sqrt(lr) * noise)
    return losses


@pytest.mark.parametrize("sampler, batch_size", [("sgld", 0), ("sgld", 16), ("rmsprop", 0)])
def test_batched_chains_equal_the_one_chain_loop(sampler, batch_size):
    torch.manual_seed(0)
    model = build_model({"arch": "mlp", "kwargs": {"in_dim": 64, "out_dim": 10, "depth": 2, "width": 8}}).double()
    data = load_dataset({"name": "digits", "kwargs": {"n_train": 40, "n_test": 10}, "seed": 0})
    x, y = data.x_train.double(), data.y_train
    kw = dict(lr=1e-3, gamma=50.0, nbeta=40 / math.log(40), batch_size=batch_size, sampler=sampler, seed=3)
    flat = FlatModel(model, nn.functional.cross_entropy)
    batched = sgld_chains(flat, x, y, chains=[0, 1, 2], n_draws=25, **kw)
    alone = sgld_chains(flat, x, y, chains=[2], n_draws=25, **kw)
    for c in range(3):
        ref = reference_chain(model, x, y, c, steps=25, **kw)
        np.testing.assert_allclose(batched.loss[c], ref, rtol=1e-10, atol=0)
    np.testing.assert_allclose(alone.loss[0], batched.loss[2], rtol=1e-12, atol=0)
    assert not np.allclose(batched.loss[0], batched.loss[1])  # the chains are not copies of each other


# ------------------------------------------------------------------ diagnostics and warnings
def test_rhat_and_drift_tell_stationary_from_drifting_traces():
    rng = np.random.default_rng(0)
    flat = rng.normal(size=(4, 400))
    assert abs(split_rhat(flat) - 1) < 0.02 and np.all(np.abs(trace_drift(flat)) < 0.3)
    rising = flat + np.linspace(0, 3, 400)
    assert split_rhat(rising) > 1.1 and np.all(trace_drift(rising) > 1)
    # the textbook formula on one case, written out: chains split in halves of m draws
    t = rng.normal(size=(2, 10)) + np.array([[0.0], [1.0]])
    h = np.concatenate([t[:, :5], t[:, 5:]])
    W, B = h.var(axis=1, ddof=1).mean(), 5 * h.mean(axis=1).var(ddof=1)
    assert split_rhat(t) == pytest.approx(math.sqrt(((4 / 5) * W + B / 5) / W))


def test_warnings_name_a_bad_step_size_and_gamma():
    model, x, y, _ = ols_model(n=300, D=3)
    nbeta = 300 / math.log(300)
    kw = dict(n_chains=2, n_draws=40, n_burnin=20)
    # |1 − ε·a/2| ≈ 25 per step: float64 overflows within 240 steps
    diverged = estimate_llc(model, x, y, mse, lr=0.5, gamma=1.0, **{**kw, "n_burnin": 200})
    assert diverged["warnings"] and diverged["warnings"][0].startswith("diverged")
    # nβ ≈ 52.6 and H ≈ 2I, so a ≈ 106: ε = 1.5e-2 gives ε·a/4 ≈ 0.4, a step-to-noise ratio ≈ 0.8
    large = estimate_llc(model, x, y, mse, lr=1.5e-2, gamma=1.0, **kw)
    assert any(w.startswith("step size too large") for w in large["warnings"])
    # γ = 600, ε = 2e-3: localisation-to-noise ratio² = εγ²/(4a(1 − εa/4)) ≈ 0.4
    stiff = estimate_llc(model, x, y, mse, lr=2e-3, gamma=600.0, **kw)
    assert any(w.startswith("gamma too large") for w in stiff["warnings"])
    slow = estimate_llc(model, x, y, mse, lr=1e-6, gamma=1.0, **{**kw, "n_burnin": 0})  # still climbing
    assert any(w.startswith("not stationary") for w in slow["warnings"])
    with torch.no_grad():  # w* off the minimum and no localisation: the chains slide below L(w*)
        model.bias.add_(1.0)
    downhill = estimate_llc(model, x, y, mse, lr=1e-4, gamma=0.0, **kw)
    assert downhill["llc"] < 0 and any(w.startswith("negative LLC") for w in downhill["warnings"])
    assert np.all(downhill["frac_below"] > 0.9)
    fresh, xh, yh, _ = ols_model(n=300, D=3)  # at its minimum; ε·a/4 ≈ 0.05, autocorrelation ≈ 10 steps
    healthy = estimate_llc(fresh, xh, yh, mse, lr=2e-3, gamma=1.0, n_burnin=100, n_chains=4, n_draws=200)
    assert healthy["warnings"] == [], healthy["warnings"]
    assert nbeta == pytest.approx(healthy["nbeta"])


# ------------------------------------------------------------------ the probe
MLP = {"arch": "mlp", "kwargs": {"in_dim": 64, "out_dim": 10, "depth": 2, "width": 12}}
DIGITS = {"name": "digits", "kwargs": {"n_train": 60, "n_test": 40}, "seed": 0}


def test_probe_conforms_and_stores_what_it_declares():
    torch.manual_seed(0)
    model, data = build_model(MLP).eval(), load_dataset(DIGITS)
    params = LLCProbe.make_params({"n_chains": "2", "n_draws": "8", "n_burnin": "2", "batch_size": "16",
                                   "n_train": "50"})
    out = check_probe(LLCProbe, model, data, params)
    assert out.loss_trace.dims == ("chain", "draw") and out.loss_trace.shape == (2, 8)
    assert out.attrs["n"] == 50 and out.attrs["nbeta"] == pytest.approx(50 / math.log(50))
    assert out.llc.item() == pytest.approx(out.attrs["nbeta"] * (out.loss_trace.mean("draw") -
                                                                out.loss_init).mean().item())
    assert isinstance(out.warning.item(), str)


def test_bad_parameters_are_refused_in_one_line():
    with pytest.raises(ProbeError, match=r"llc.lr must be > 0, got -1.0"):
        LLCProbe.make_params({"lr": "-1"})
    with pytest.raises(ProbeError, match=r"llc.sampler must be one of sgld, rmsprop, got 'adam'"):
        LLCProbe.make_params({"sampler": "adam"})
    with pytest.raises(ProbeError, match=r"llc.n_draws must be >= 4"):
        LLCProbe.make_params({"n_draws": "3"})
    model, data = build_model(MLP).eval(), load_dataset(DIGITS)
    with pytest.raises(ProbeError, match=r"llc.n_train=61 is larger than the training split \(60 points\)"):
        LLCProbe().check(model, data, LLCProbe.make_params({"n_train": "61"}))
    with pytest.raises(ProbeError, match=r"llc.batch_size=70 is larger than the 60 training points"):
        LLCProbe().check(model, data, LLCProbe.make_params({"batch_size": "70"}))


@pytest.fixture
def cli():
    from click.testing import CliRunner

    from grokscope.cli import main

    return lambda *args: CliRunner().invoke(main, [str(a) for a in args])


def test_probe_through_the_engine_and_the_sweep(tmp_path, cli):
    run = make_run(tmp_path / "run", [0, 20])
    args = ["--param", "llc.n_chains=2", "--param", "llc.n_draws=6", "--param", "llc.n_burnin=2",
            "--param", "llc.lr=1e-6"]
    r = cli("probe", run, "--scheduler", "sync", "--metrics", "llc", *args)
    assert r.exit_code == 0, r.output
    ds = load_group(run / "probes.zarr", "run", "llc")
    assert ds.loss_trace.dims == ("step", "chain", "draw") and ds.done.all()
    assert all(w.startswith("not stationary") for w in ds.warning.values)  # ε = 1e-6 barely moves
    # the stored numbers are the functional core's on the same checkpoint
    from grokscope.engine.loading import load_into, read_state_dict
    from grokscope.runs import checkpoint_path
    model = load_into(build_model(RUN_MLP), read_state_dict(checkpoint_path(run, 20)), "step 20").eval()
    x, y = load_dataset(RUN_DIGITS).split("train")
    m = estimate_llc(model, x, y, nn.functional.cross_entropy, lr=1e-6, n_chains=2, n_draws=6, n_burnin=2)
    np.testing.assert_allclose(ds.loss_trace.sel(step=20).values, m["loss_trace"], rtol=1e-6)
    assert get_probe("llc") is LLCProbe

    png = tmp_path / "sweep.png"
    r = cli("llc-sweep", run, "--step", "20", "--lr", "1e-6,1e-4", "--gamma", "100", "--param", "n_chains=2",
            "--param", "n_draws=6", "--param", "n_burnin=2", "--out", png)
    assert r.exit_code == 0, r.output
    lines = [ln for ln in r.output.splitlines() if ln.strip().startswith(("1e-06", "0.0001"))]
    assert len(lines) == 2 and "not stationary" in lines[0]
    assert png.stat().st_size > 10_000
    r = cli("llc-sweep", run, "--lr", "0", "--param", "n_draws=6")
    assert r.exit_code != 0 and "llc.lr must be > 0" in r.output


def test_mse_task_loss_runs_under_the_chains_minibatches():
    """The run's MSE loss (``task_loss(kind="mse")``) inside vmapped chains with their own mini-batches:
    equal to the same loss written with a one-hot table lookup (regression: F.one_hot cannot be vmapped)."""
    from grokscope.losses import task_loss

    torch.manual_seed(0)
    model = build_model({"arch": "mlp", "kwargs": {"in_dim": 64, "out_dim": 10, "depth": 2, "width": 8}}).double()
    data = load_dataset({"name": "digits", "kwargs": {"n_train": 40, "n_test": 10}, "seed": 0})
    x, y = data.x_train.double(), data.y_train
    eye = torch.eye(10, dtype=torch.float64)
    kw = dict(lr=1e-3, gamma=50.0, nbeta=40 / math.log(40), batch_size=16, sampler="sgld", seed=3, n_draws=10)
    ours = sgld_chains(FlatModel(model, lambda o, t: task_loss(o, t, "mse")), x, y, chains=[0, 1], **kw)
    ref = sgld_chains(FlatModel(model, lambda o, t: ((o - eye[t]) ** 2).mean()), x, y, chains=[0, 1], **kw)
    np.testing.assert_allclose(ours.loss, ref.loss, rtol=1e-12, atol=0)
