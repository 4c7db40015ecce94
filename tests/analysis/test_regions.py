"""Region pictures (grokscope.regions): boundaries against analytic lines and brute force, the CLI
on a real tiny run."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from click.testing import CliRunner
from torch import nn

from grokscope.cli import main
from grokscope.regions import (Plane, RegionsError, activation_boundaries, default_points, parse_points,
                               pictures, regions_figure)
from tests.helpers import MLP, make_run

torch.set_num_threads(1)


def _square() -> Plane:
    """The plane = the input space R² itself: x0=(0,0), x1=(1,0), x2=(0,1) give x = (a, b)."""
    z = torch.zeros(2, dtype=torch.float64)
    return Plane.through(z, torch.tensor([1.0, 0.0], dtype=torch.float64),
                         torch.tensor([0.0, 1.0], dtype=torch.float64), margin=0.25)


def _one_hidden(act: nn.Module, width: int = 8, seed: int = 0) -> nn.Sequential:
    """2 -> width -> 3 net whose neuron lines w·x + c = 0 pass through random points of the view."""
    g = torch.Generator().manual_seed(seed)
    net = nn.Sequential(nn.Linear(2, width), act, nn.Linear(width, 3)).double()
    with torch.no_grad():
        w = torch.randn(width, 2, generator=g, dtype=torch.float64)
        through = -0.15 + 1.3 * torch.rand(width, 2, generator=g, dtype=torch.float64)
        net[0].weight.copy_(w)
        net[0].bias.copy_(-(w * through).sum(dim=1))
        net[2].weight.copy_(torch.randn(3, width, generator=g, dtype=torch.float64))
    return net


@pytest.mark.parametrize("act", [nn.ReLU(), nn.LeakyReLU(0.1)], ids=["relu", "leaky"])
def test_boundaries_coincide_with_neuron_lines(act):
    """Must-show 2: every boundary pixel is within a pixel diagonal of some neuron's line, and every
    neuron line crossing the view has boundary pixels all along it."""
    net = _one_hidden(act)
    res = 161
    rmap = activation_boundaries(net, _square(), res)
    h = rmap.spacing
    diag = math.sqrt(2) * h * (1 + 1e-9)
    w = net[0].weight.detach().numpy()
    c = net[0].bias.detach().numpy()
    norm = np.linalg.norm(w, axis=1)
    ib, ia = np.nonzero(rmap.boundary)
    assert len(ib) > 0
    pix = np.stack([rmap.a[ia], rmap.b[ib]], axis=1)                  # (n_boundary, 2)
    dist = np.abs(pix @ w.T + c) / norm                                 # (n_boundary, neurons)
    assert dist.min(axis=1).max() <= diag                               # on some line
    lo, hi = rmap.a[0] + 2 * h, rmap.a[-1] - 2 * h
    crossing = 0
    for k in range(len(c)):
        # points of line k inside the (inset) view: parametrise along the line direction
        d = np.array([-w[k, 1], w[k, 0]]) / norm[k]
        p0 = -c[k] * w[k] / norm[k] ** 2
        t = np.linspace(-4, 4, 4001)
        pts = p0 + t[:, None] * d
        pts = pts[((pts >= lo) & (pts <= hi)).all(axis=1)]
        if len(pts) < 10:
            continue
        crossing += 1
        # nearest boundary pixel of each point on the line
        near = np.sqrt(((pts[:, None, :] - pix[None]) ** 2).sum(-1)).min(axis=1)
        assert near.max() <= diag, f"neuron {k}: a stretch of its line has no boundary pixels"
        # and those pixels are on this line (not only near another neuron's)
        on_k = dist[:, k] <= diag
        assert on_k.sum() >= int(0.8 * np.abs(pts[-1] - pts[0]).max() / h)
    assert crossing == len(c)  # the construction puts every line through the view
    assert rmap.layers == ["1"] and rmap.neurons == [8]
    assert rmap.layer_boundary.shape == (1, res, res)


def _brute_patterns(net: nn.Sequential, x: torch.Tensor) -> list[np.ndarray]:
    """Per layer, the 0/1 activation pattern of one input ``x`` (1-D), by explicit matrix algebra."""
    pats = []
    h = x
    for m in net:
        if isinstance(m, nn.Linear):
            h = m.weight.detach() @ h + m.bias.detach()
        elif isinstance(m, nn.ReLU):
            pats.append((h > 0).numpy().copy())
            h = torch.clamp(h, min=0)
    return pats


def test_deep_net_matches_brute_force():
    """Region boundaries (per layer) and the decision boundary of a 2-hidden-layer net on a plane in R^5
    agree with pixel-by-pixel brute force (one point at a time, explicit neighbour comparisons)."""
    torch.manual_seed(5)  # a seed whose view holds two predicted classes
    net = nn.Sequential(nn.Linear(5, 12), nn.ReLU(), nn.Linear(12, 10), nn.ReLU(), nn.Linear(10, 4)).double()
    x = 3 * torch.randn(3, 5, dtype=torch.float64)
    plane = Plane.through(x[0], x[1], x[2], margin=0.3)
    res = 36
    rmap = activation_boundaries(net, plane, res)
    a, b = rmap.a, rmap.b
    pats = [[None] * res for _ in range(res)]
    pred = np.zeros((res, res), dtype=np.int64)
    for i in range(res):
        for j in range(res):
            p = x[0] + a[j] * (x[1] - x[0]) + b[i] * (x[2] - x[0])
            pats[i][j] = _brute_patterns(net, p)
            pred[i, j] = int(net(p[None]).argmax())
    layer_b = np.zeros((2, res, res), dtype=bool)
    dec = np.zeros((res, res), dtype=bool)
    for i in range(res):
        for j in range(res):
            for di, dj in ((0, 1), (1, 0)):
                if i + di < res and j + dj < res:
                    for layer in range(2):
                        if (pats[i][j][layer] != pats[i + di][j + dj][layer]).any():
                            layer_b[layer, i, j] = True
                    if pred[i, j] != pred[i + di, j + dj]:
                        dec[i, j] = True
    assert layer_b.any() and dec.any()
    np.testing.assert_array_equal(rmap.layer_boundary, layer_b)
    np.testing.assert_array_equal(rmap.boundary, layer_b.any(axis=0))
    np.testing.assert_array_equal(rmap.pred, pred)
    np.testing.assert_array_equal(rmap.decision, dec)
    distinct = {tuple(np.concatenate(pats[i][j])) for i in range(res) for j in range(res)}
    assert rmap.n_regions == len(distinct)
    # the generic path (forward is not the Sequential itself: no first-layer shortcut) agrees
    slow = activation_boundaries(net, plane, res, forward=lambda z: net(z), chunk_points=100)
    np.testing.assert_array_equal(slow.layer_boundary, rmap.layer_boundary)
    np.testing.assert_array_equal(slow.pred, rmap.pred)
    # counting the Linear outputs instead (sign at 0, as lc's layers=) gives the same partition
    named = activation_boundaries(net, plane, res, layers=["0", "2"])
    np.testing.assert_array_equal(named.layer_boundary, rmap.layer_boundary)


def test_linear_model_has_no_region_boundaries():
    net = nn.Sequential(nn.Flatten(), nn.Linear(2, 6), nn.Linear(6, 3)).double()
    rmap = activation_boundaries(net, _square(), 64)
    assert not rmap.boundary.any() and rmap.layers == [] and rmap.n_regions == 1
    assert rmap.layer_boundary.shape == (0, 64, 64)


class _Functional(nn.Module):
    """Nonlinearity applied functionally (no activation module): ``inner[2](fn(inner[0](x)))``."""

    def __init__(self, fn):
        super().__init__()
        self.inner = _one_hidden(nn.Identity())
        self.fn = fn

    def forward(self, x):
        return self.inner[2](self.fn(self.inner[0](x)))


@pytest.mark.parametrize("model,needle", [
    (nn.Sequential(nn.Linear(2, 4), nn.GELU(), nn.Linear(4, 3)), "1 (GELU)"),
    (nn.Sequential(nn.Linear(2, 4), nn.Tanh(), nn.Linear(4, 3)), "1 (Tanh)"),
    (nn.Sequential(nn.Linear(2, 4), nn.LayerNorm(4), nn.ReLU(), nn.Linear(4, 3)), "LayerNorm"),
    (_Functional(torch.tanh), "not affine"),
    (_Functional(torch.nn.functional.gelu), "#gelu1 (gelu): smooth"),
], ids=["gelu", "tanh", "layernorm", "functional-tanh", "functional-gelu"])
def test_non_piecewise_linear_models_are_refused(model, needle):
    with pytest.raises(RegionsError, match="not piecewise linear") as e:
        activation_boundaries(model.double(), _square(), 48)
    assert needle in str(e.value)


class _OwnReLU(nn.Module):
    """A third party's own ReLU class (recognised by what it computes)."""

    def forward(self, x):
        return torch.where(x > 0, x, torch.zeros_like(x))


class _OwnGELU(nn.Module):
    def forward(self, x):
        return 0.5 * x * (1.0 + torch.erf(x / 2 ** 0.5))


def test_foreign_activation_classes_are_judged_by_what_they_compute():
    own = nn.Sequential(nn.Linear(2, 8), _OwnReLU(), nn.Linear(8, 3)).double()
    ref = nn.Sequential(own[0], nn.ReLU(), own[2])
    a, b = activation_boundaries(own, _square(), 64), activation_boundaries(ref, _square(), 64)
    assert a.layers == b.layers == ["1"]
    np.testing.assert_array_equal(a.region, b.region)
    with pytest.raises(RegionsError, match=r"1 \(_OwnGELU\): smooth activation"):
        activation_boundaries(nn.Sequential(nn.Linear(2, 8), _OwnGELU(), nn.Linear(8, 3)).double(), _square(), 48)


@pytest.mark.parametrize("fn,act,label", [
    (torch.relu, nn.ReLU(), "relu"),
    (lambda t: t.clamp_(min=0), nn.ReLU(), "clamp"),
    (lambda t: torch.nn.functional.leaky_relu(t, 0.1), nn.LeakyReLU(0.1), "leaky_relu"),
], ids=["torch.relu", "clamp_", "leaky_relu"])
def test_functional_kinks_draw_the_same_map_as_modules(fn, act, label):
    """A kink written as a call is drawn like the module it replaces (same boundaries, regions,
    predictions); only the layer name says where the call happens."""
    functional = _Functional(fn).double()
    module = nn.Sequential(functional.inner[0], act, functional.inner[2])
    a = activation_boundaries(functional, _square(), 96)
    b = activation_boundaries(module, _square(), 96)
    assert a.layers == [f"#{label}1"] and b.layers == ["1"] and a.neurons == b.neurons == [8]
    for f in ("boundary", "layer_boundary", "decision", "pred", "region"):
        np.testing.assert_array_equal(getattr(a, f), getattr(b, f))
    assert a.boundary.any() and a.n_regions == b.n_regions > 1


def test_token_model_through_embedding_space():
    from grokscope.models import build_model
    from grokscope.models.adapters import continuous_view

    torch.manual_seed(0)
    model = build_model({"arch": "modular_mlp", "kwargs": {"p": 7, "width": 16, "input": "tokens"}})
    tokens = torch.tensor([[1, 2, 7], [3, 5, 7], [6, 0, 7]])
    forward, z = continuous_view(model, tokens, "tokens")
    plane = Plane.through(z[0], z[1], z[2])
    rmap = activation_boundaries(model, plane, 40, forward=forward)
    assert rmap.layers == ["act"] and rmap.boundary.any()
    grid_a, grid_b = np.meshgrid(rmap.a, rmap.b)
    pts = plane.at(torch.from_numpy(grid_a.ravel()), torch.from_numpy(grid_b.ravel()))
    np.testing.assert_array_equal(rmap.pred, model.forward_embedded(pts).argmax(-1).view(40, 40).numpy())
    transformer = build_model({"arch": "transformer", "kwargs": {"p": 7, "d_model": 8, "n_heads": 2,
                                                                 "d_head": 4, "d_mlp": 16}})
    with pytest.raises(RegionsError, match="attn"):
        activation_boundaries(transformer, plane, 8, forward=transformer.forward_embedded)


def test_plane_and_selection_errors():
    z = torch.zeros(3)
    with pytest.raises(RegionsError, match="collinear"):
        Plane.through(z, z + 1, z + 2)
    assert parse_points("4, 0,9", 10) == [4, 0, 9]
    with pytest.raises(RegionsError, match="point index 12 is out of range: the train split has 10"):
        parse_points("1,2,12", 10)
    with pytest.raises(RegionsError, match="must differ"):
        parse_points("1,2,1", 10)
    y = torch.tensor([0, 0, 1, 1, 2, 2, 3, 3])
    pts = default_points(y, seed=0)
    assert len({int(y[i]) for i in pts}) == 3 and pts == default_points(y, seed=0)


@pytest.fixture(scope="module")
def tiny_run(tmp_path_factory):
    return make_run(tmp_path_factory.mktemp("regions") / "run", [0, 3, 10])


def test_cli_writes_png_gif_pdf(tiny_run, tmp_path):
    """A run folder: the regions probe runs into its store first, then the pictures come from the store."""
    from PIL import Image

    import grokscope

    runner = CliRunner()
    png = tmp_path / "r.png"
    res = runner.invoke(main, ["regions", str(tiny_run), "--steps", "0,10", "--out", str(png),
                               "--resolution", "48", "--store", str(tmp_path / "s.zarr")])
    assert res.exit_code == 0, res.output
    assert f"wrote {png}" in res.output
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    with Image.open(png) as im:
        assert im.size[0] > 300 and im.size[1] > 200
    tree = grokscope.open_store(tmp_path / "s.zarr")
    stored = tree["run/regions"].ds
    assert list(stored.step.values) == [0, 10] and stored["boundary"].shape == (2, 48, 48)
    # the stored picture is the functional core's map at that checkpoint
    from grokscope.engine.loading import load_into, read_state_dict
    from grokscope.models import build_model
    from grokscope.models.adapters import continuous_view
    from grokscope.datasets import load_dataset
    from grokscope.runs import checkpoint_path, read_run_json

    spec = read_run_json(tiny_run)
    model = load_into(build_model(spec["model"]), read_state_dict(checkpoint_path(tiny_run, 10)), "ck").eval()
    x, _ = load_dataset(spec["dataset"]).split("train")
    idx = [int(i) for i in stored["point_index"].sel(step=10).values]
    _, z = continuous_view(model, x[idx], "continuous")
    rmap = activation_boundaries(model, Plane.through(z[0], z[1], z[2], 0.25), 48)
    np.testing.assert_array_equal(stored["boundary"].sel(step=10).values, rmap.boundary)
    np.testing.assert_array_equal(stored["decision"].sel(step=10).values, rmap.decision)
    assert int(stored["n_regions"].sel(step=10)) == rmap.n_regions

    gif = tmp_path / "r.gif"
    res = runner.invoke(main, ["regions", str(tmp_path / "s.zarr"), "--steps", "all", "--out", str(gif)])
    assert res.exit_code == 0, res.output
    with Image.open(gif) as im:
        assert im.format == "GIF" and im.n_frames == 2
    pdf = regions_figure(tmp_path / "s.zarr", "run", [10], tmp_path / "r.pdf")
    assert pdf.read_bytes()[:5] == b"%PDF-"
    (step, pic), = pictures(tree, "run", "10")
    assert step == 10 and set(pic.accuracy) == set() and len(pic.corners) == 3  # no acc probe in this store
    res = runner.invoke(main, ["regions", str(tmp_path / "s.zarr"), "--resolution", "20"])
    assert res.exit_code != 0 and "already computed" in res.output


@pytest.mark.parametrize("args,needle", [
    (["--steps", "7"], "run: no checkpoint at step(s) 7; checkpoints: 0, 3, 10"),
    (["--points", "0,1,999"], "point index 999 is out of range: the train split has 300 points"),
    (["--out", "x.jpg"], "unsupported format '.jpg'"),
], ids=["step", "points", "suffix"])
def test_cli_errors_name_the_value(tiny_run, tmp_path, args, needle):
    args = [a if a != "x.jpg" else str(tmp_path / a) for a in args]
    res = CliRunner().invoke(main, ["regions", str(tiny_run), "--resolution", "16", "--store",
                                    str(tmp_path / "e.zarr"), *args])
    assert res.exit_code in (1, 2) and needle in res.output, res.output


def test_cli_refuses_a_smooth_run(tmp_path):
    run = make_run(tmp_path / "gelu", [0, 2], model={**MLP, "kwargs": {**MLP["kwargs"],
                                                                       "activation_name": "gelu"}})
    res = CliRunner().invoke(main, ["regions", str(run), "--out", str(tmp_path / "g.png")])
    assert res.exit_code == 1 and "not piecewise linear" in res.output and "2 (GELU)" in res.output
