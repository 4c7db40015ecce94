"""LC counts the kinks a model computes, however they are written: module and functional twins (the
same weights, ``nn.ReLU()`` modules in one, ``F.relu`` / ``x.relu_()`` / ``clamp(min=0)`` calls in the
other) give identical counts, equal to a brute-force vertex-by-vertex, neuron-by-neuron count."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from grokscope.models.resnet import PreActBlock
from grokscope.probes.lc import cross_polytope_frame, local_complexity


def brute_force_lc(model: nn.Module, x: torch.Tensor, r: float, frame: torch.Tensor,
                   acts: list[nn.Module], kinks: list[tuple[float, ...]]) -> list[list[int]]:
    """Slow LC of the *module* twin: each vertex forwarded alone; the inputs of the activation modules
    ``acts`` (one layer per call, in call order) captured by pre-hooks; each neuron's signs relative
    to each of its layer's ``kinks`` compared in a Python loop. Returns ``counts[point][layer]``."""
    model.eval()
    captured: list[torch.Tensor] = []
    handles = [m.register_forward_pre_hook(lambda mod, args: captured.append(args[0].detach().clone()))
               for m in acts]
    out = []
    try:
        for i in range(len(x)):
            vertices = []
            for sgn in (1.0, -1.0):
                for p in range(frame.shape[0]):
                    captured.clear()
                    with torch.no_grad():
                        model((x[i] + sgn * r * frame[p].reshape(x[i].shape)).unsqueeze(0))
                    vertices.append([t.flatten().tolist() for t in captured])
            counts = []
            for layer, layer_kinks in enumerate(kinks):
                c = 0
                for neuron in range(len(vertices[0][layer])):
                    values = [v[layer][neuron] for v in vertices]
                    c += any(len({(val > b) - (val < b) for val in values}) > 1 for b in layer_kinks)
                counts.append(c)
            out.append(counts)
    finally:
        for h in handles:
            h.remove()
    return out


# -- MLP twins ------------------------------------------------------------------------------------

#: functional form -> (call, module twin, kink values, op name in the call-site names)
FORMS = {
    "F.relu": (lambda t: F.relu(t), nn.ReLU, (0.0,), "relu"),
    "torch.relu": (torch.relu, nn.ReLU, (0.0,), "relu"),
    "Tensor.relu": (lambda t: t.relu(), nn.ReLU, (0.0,), "relu"),
    "F.relu-inplace": (lambda t: F.relu(t, inplace=True), nn.ReLU, (0.0,), "relu"),
    "relu_": (lambda t: t.relu_(), nn.ReLU, (0.0,), "relu"),
    "torch.relu_": (torch.relu_, nn.ReLU, (0.0,), "relu"),
    "clamp-min0": (lambda t: t.clamp(min=0), nn.ReLU, (0.0,), "clamp"),
    "clamp_-min0": (lambda t: t.clamp_(min=0), nn.ReLU, (0.0,), "clamp"),
    "torch.clamp": (lambda t: torch.clamp(t, min=0.0), nn.ReLU, (0.0,), "clamp"),
    "clamp_min": (lambda t: t.clamp_min(0), nn.ReLU, (0.0,), "clamp"),
    "clip": (lambda t: t.clip(0), nn.ReLU, (0.0,), "clamp"),
    "F.leaky_relu": (lambda t: F.leaky_relu(t, 0.1), lambda: nn.LeakyReLU(0.1), (0.0,), "leaky_relu"),
    "F.leaky_relu_": (lambda t: F.leaky_relu_(t, 0.1), lambda: nn.LeakyReLU(0.1), (0.0,), "leaky_relu"),
    "F.gelu": (F.gelu, nn.GELU, (0.0,), "gelu"),
    "F.silu": (F.silu, nn.SiLU, (0.0,), "silu"),
    "F.hardtanh": (lambda t: F.hardtanh(t, -0.5, 0.5), lambda: nn.Hardtanh(-0.5, 0.5), (-0.5, 0.5), "hardtanh"),
    "clamp-both": (lambda t: t.clamp(-0.5, 0.5), lambda: nn.Hardtanh(-0.5, 0.5), (-0.5, 0.5), "clamp"),
    "F.relu6": (F.relu6, nn.ReLU6, (0.0, 6.0), "relu6"),
}


class FunctionalMLP(nn.Module):
    """``Linear → f → Linear → f → Linear`` with ``f`` a functional call (no activation modules)."""

    def __init__(self, f, d: int = 6, h: int = 9):
        super().__init__()
        self.f = f
        self.fc1, self.fc2, self.fc3 = nn.Linear(d, h), nn.Linear(h, h), nn.Linear(h, 3)

    def forward(self, x):
        return self.fc3(self.f(self.fc2(self.f(self.fc1(x.flatten(1))))))


def _mlp_twins(form: str, scale: float, seed: int = 0) -> tuple[nn.Sequential, FunctionalMLP]:
    f, act, _, _ = FORMS[form]
    torch.manual_seed(seed)
    functional = FunctionalMLP(f).double()
    with torch.no_grad():
        for p in functional.parameters():
            p.mul_(scale)
    module = nn.Sequential(nn.Flatten(), functional.fc1, act(), functional.fc2, act(), functional.fc3)
    return module, functional


@pytest.mark.parametrize("form", list(FORMS))
def test_mlp_twins_identical_and_brute_force(form):
    scale = 6.0 if form == "F.relu6" else 1.0  # reach relu6's kink at 6
    module, functional = _mlp_twins(form, scale, seed=1)
    x = torch.randn(6, 6, dtype=torch.float64) * scale
    radii = (0.3, 1.5)
    fast = local_complexity(module, x, radius=radii, n_dirs=3, seed=2, max_rows=18)
    plain = local_complexity(module, x, radius=radii, n_dirs=3, seed=2, fast=False)
    func = local_complexity(functional, x, radius=radii, n_dirs=3, seed=2, max_rows=18)
    label = FORMS[form][3]
    assert fast.layers == ["2", "4"] and func.layers == [f"#{label}1", f"#{label}2"]
    assert func.neurons == fast.neurons == [9, 9] and func.kinks == fast.kinks == [FORMS[form][2]] * 2
    assert torch.equal(func.counts, plain.counts) and torch.equal(fast.counts, plain.counts)
    frame = cross_polytope_frame(6, 3, seed=2, dtype=torch.float64)
    acts = [module[2], module[4]]
    for k, r in enumerate(radii):
        assert func.counts[:, k].tolist() == brute_force_lc(module, x, r, frame, acts, [FORMS[form][2]] * 2)
    assert func.counts[:, 1].sum() > 0  # not vacuous


# -- CNN with BatchNorm ---------------------------------------------------------------------------

class FunctionalCNN(nn.Module):
    """Conv → BN → ``F.relu`` → Conv/2 → BN → ``relu_`` → Flatten → Linear (no activation modules)."""

    def __init__(self):
        super().__init__()
        self.conv1, self.bn1 = nn.Conv2d(2, 4, 3, padding=1), nn.BatchNorm2d(4)
        self.conv2, self.bn2 = nn.Conv2d(4, 3, 3, stride=2, padding=1), nn.BatchNorm2d(3)
        self.fc = nn.Linear(3 * 3 * 3, 5)

    def forward(self, x):
        h = F.relu(self.bn1(self.conv1(x)))
        h = self.bn2(self.conv2(h)).relu_()
        return self.fc(h.flatten(1))


def test_cnn_with_batchnorm_twins_identical_and_brute_force():
    torch.manual_seed(3)
    functional = FunctionalCNN().double()
    for bn in (functional.bn1, functional.bn2):
        bn.running_mean.uniform_(-0.3, 0.3)
        bn.running_var.uniform_(0.5, 2.0)
        bn.weight.data.uniform_(0.5, 1.5)
        bn.bias.data.uniform_(-0.2, 0.2)
    f = functional
    module = nn.Sequential(f.conv1, f.bn1, nn.ReLU(), f.conv2, f.bn2, nn.ReLU(inplace=True), nn.Flatten(), f.fc)
    functional.train()  # lc switches to eval (running statistics) and back
    x = torch.rand(4, 2, 6, 6, dtype=torch.float64)
    res_f = local_complexity(functional, x, radius=(0.05, 0.4), n_dirs=3, seed=1, max_rows=12)
    res_m = local_complexity(module, x, radius=(0.05, 0.4), n_dirs=3, seed=1)
    assert functional.training
    assert res_f.layers == ["#relu1", "#relu2"] and res_m.layers == ["2", "5"]
    assert res_f.neurons == res_m.neurons == [4 * 6 * 6, 3 * 3 * 3]
    assert torch.equal(res_f.counts, res_m.counts)
    frame = cross_polytope_frame(2 * 36, 3, seed=1, dtype=torch.float64)
    for k, r in enumerate((0.05, 0.4)):
        assert res_f.counts[:, k].tolist() == brute_force_lc(module, x, r, frame, [module[2], module[5]],
                                                             [(0.0,)] * 2)
    assert res_f.counts.sum() > 0
    # the authors' way: hooks on the BatchNorm outputs give the same counts
    by_hand = local_complexity(functional, x, radius=(0.05, 0.4), n_dirs=3, seed=1, layers=["bn1", "bn2"])
    assert by_hand.layers == ["bn1", "bn2"] and torch.equal(by_hand.counts, res_f.counts)


# -- pre-activation residual blocks ---------------------------------------------------------------

class FunctionalPreActBlock(nn.Module):
    """A pre-activation block written as in the authors' ``models.py`` (kuangliu's PreActBlock):
    ``F.relu`` calls in forward, an in-place residual add."""

    def __init__(self, in_planes: int, planes: int, stride: int = 1):
        super().__init__()
        self.bn1 = nn.BatchNorm2d(in_planes)
        self.conv1 = nn.Conv2d(in_planes, planes, 3, stride=stride, padding=1, bias=False)
        self.bn2 = nn.BatchNorm2d(planes)
        self.conv2 = nn.Conv2d(planes, planes, 3, stride=1, padding=1, bias=False)
        if stride != 1 or in_planes != planes:
            self.shortcut = nn.Sequential(nn.Conv2d(in_planes, planes, 1, stride=stride, bias=False))

    def forward(self, x):
        out = F.relu(self.bn1(x))
        shortcut = self.shortcut(out) if hasattr(self, "shortcut") else x
        out = self.conv1(out)
        out = self.conv2(F.relu(self.bn2(out)))
        out += shortcut
        return out


def _preact_net(block: type[nn.Module], **kw) -> nn.Sequential:
    return nn.Sequential(nn.Conv2d(2, 4, 3, padding=1, bias=False), block(4, 4, 1, **kw), block(4, 6, 2, **kw),
                         nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(6, 3))


def test_preact_residual_twins_identical_and_brute_force():
    torch.manual_seed(4)
    functional = _preact_net(FunctionalPreActBlock).double()
    module = _preact_net(PreActBlock, batchnorm=True).double()
    for m in functional.modules():
        if isinstance(m, nn.BatchNorm2d):
            m.running_mean.uniform_(-0.3, 0.3)
            m.running_var.uniform_(0.5, 2.0)
    module.load_state_dict(functional.state_dict())  # same keys: bn1, conv1, bn2, conv2, shortcut.0
    x = torch.randn(3, 2, 5, 5, dtype=torch.float64)
    res_f = local_complexity(functional, x, radius=(0.02, 0.3), n_dirs=4, seed=0, max_rows=16)
    res_m = local_complexity(module, x, radius=(0.02, 0.3), n_dirs=4, seed=0)
    assert res_f.layers == ["1#relu1", "1#relu2", "2#relu1", "2#relu2"]
    assert res_m.layers == ["1.act1", "1.act2", "2.act1", "2.act2"]
    assert res_f.neurons == res_m.neurons == [100, 100, 100, 54]
    assert torch.equal(res_f.counts, res_m.counts)
    acts = [module[1].act1, module[1].act2, module[2].act1, module[2].act2]
    frame = cross_polytope_frame(50, 4, seed=0, dtype=torch.float64)
    for k, r in enumerate((0.02, 0.3)):
        assert res_f.counts[:, k].tolist() == brute_force_lc(module, x, r, frame, acts, [(0.0,)] * 4)
    assert res_f.counts[:, 1].sum() > 0
    by_hand = local_complexity(functional, x, radius=(0.02, 0.3), n_dirs=4, seed=0,
                               layers=["1.bn1", "1.bn2", "2.bn1", "2.bn2"])
    assert torch.equal(by_hand.counts, res_f.counts)  # the by-hand workaround agrees


# -- a model mixing both, reuse, the fast path ----------------------------------------------------

class Mixed(nn.Module):
    """An ``nn.ReLU`` module, a block with ``F.relu`` and ``clamp_`` called twice (reused), a root
    ``torch.relu``, and a clamp of a parameter (not a kink of the input)."""

    def __init__(self):
        super().__init__()
        self.inp, self.act = nn.Linear(5, 7), nn.ReLU()
        self.block = _Block()
        self.scale = nn.Parameter(torch.tensor([0.5, -0.2, 1.0]))
        self.out = nn.Linear(7, 3)

    def forward(self, x):
        h = self.block(self.block(self.act(self.inp(x))))
        return self.out(torch.relu(h)) * self.scale.clamp(min=0.1)


class _Block(nn.Module):
    def __init__(self):
        super().__init__()
        self.a, self.b = nn.Linear(7, 7), nn.Linear(7, 7)

    def forward(self, x):
        return x + self.b(F.relu(self.a(x))).clamp_(min=-0.3)


class MixedModules(nn.Module):
    """:class:`Mixed` with every kink as a module (the brute force hooks them)."""

    def __init__(self, mixed: Mixed):
        super().__init__()
        self.m = mixed
        self.r1, self.clip, self.r2 = nn.ReLU(), nn.Threshold(-0.3, -0.3), nn.ReLU()

    def forward(self, x):
        h = self.m.act(self.m.inp(x))
        for _ in range(2):
            h = h + self.clip(self.m.block.b(self.r1(self.m.block.a(h))))
        return self.m.out(self.r2(h)) * self.m.scale.clamp(min=0.1)


def test_mixed_model_names_counts_and_brute_force():
    torch.manual_seed(5)
    mixed = Mixed().double()
    twin = MixedModules(mixed).double()
    x = torch.randn(5, 5, dtype=torch.float64)
    res = local_complexity(mixed, x, radius=(0.1, 0.8), n_dirs=3, seed=3, include_output=True)
    assert res.layers == ["act", "block#relu1", "block#clamp1", "block#relu1#1", "block#clamp1#1", "#relu1",
                          "output"]
    assert res.kinks[:6] == [(0.0,), (0.0,), (-0.3,), (0.0,), (-0.3,), (0.0,)]
    assert res.neurons == [7] * 6 + [3]
    frame = cross_polytope_frame(5, 3, seed=3, dtype=torch.float64)
    acts = [mixed.act, twin.r1, twin.clip, twin.r2]  # call order: act, (r1, clip) x 2, r2
    kinks = [(0.0,), (0.0,), (-0.3,), (0.0,), (-0.3,), (0.0,)]
    for k, r in enumerate((0.1, 0.8)):
        assert res.counts[:, k, :6].tolist() == brute_force_lc(twin, x, r, frame, acts, kinks)
    assert res.counts[:, 1, :6].sum() > 0
    only = local_complexity(mixed, x, radius=(0.1, 0.8), n_dirs=3, seed=3, layers=["block#clamp1", "inp"])
    assert only.layers == ["inp", "block#clamp1", "block#clamp1#1"]  # forward order, every call
    assert torch.equal(only.counts[..., 1:], res.counts[..., [2, 4]])
    assert torch.equal(only.counts[..., 0], res.counts[..., 0])  # Linear output = ReLU input
    with pytest.raises(ValueError, match=r"not kink call sites.*block#relu1, block#clamp1, #relu1"):
        local_complexity(mixed, x, layers=["block#relu9"])


class _FunctionalReLU(nn.Module):
    def forward(self, x):
        return F.relu(x)


def test_fast_path_agrees_when_a_functional_layer_ends_it():
    """The Sequential fast path counts the first ReLU in closed form, then runs the rest (with a
    custom module calling F.relu) under the kink watch; both paths and the brute force agree."""
    torch.manual_seed(6)
    model = nn.Sequential(nn.Flatten(), nn.Linear(6, 10), nn.ReLU(), nn.Linear(10, 10), _FunctionalReLU(),
                          nn.Linear(10, 10), nn.ReLU(), nn.Linear(10, 3)).double()
    x = torch.randn(9, 6, dtype=torch.float64)
    radii = (0.05, 0.5)
    fast = local_complexity(model, x, radius=radii, n_dirs=3, seed=1, max_rows=16)
    plain = local_complexity(model, x, radius=radii, n_dirs=3, seed=1, fast=False)
    # a parameter-free activation class is recognised by what it computes and named after the module
    assert fast.layers == ["2", "4", "6"] and torch.equal(fast.counts, plain.counts)
    twin = nn.Sequential(*model[:4], nn.ReLU(), *model[5:])
    frame = cross_polytope_frame(6, 3, seed=1, dtype=torch.float64)
    for k, r in enumerate(radii):
        assert fast.counts[:, k].tolist() == brute_force_lc(twin, x, r, frame, [twin[2], twin[4], twin[6]],
                                                            [(0.0,)] * 3)
    assert (fast.counts[:, 0, 0] == 0).any() and fast.counts[:, 1].sum() > 0


def test_probe_store_of_a_functional_model_equals_its_module_twin():
    """The lc probe's dataset for a model written with F.relu / clamp_ equals that of its module twin
    apart from the layer names."""
    import numpy as np

    from grokscope.probes import ProbeContext, get_probe
    from tests.helpers import digits_data, functional_net

    data = digits_data()
    torch.manual_seed(0)
    functional = functional_net(hidden=12)
    module = nn.Sequential(nn.Flatten(), functional.fc1, nn.ReLU(), functional.fc2, nn.ReLU(), functional.head)
    probe = get_probe("lc")
    params = probe.make_params({"n_points": "24", "radius": "0.005,0.5", "n_dirs": "6"})
    a = probe().compute(functional, data, params, ProbeContext(step=0))
    b = probe().compute(module, data, params, ProbeContext(step=0))
    assert list(a.layer.values) == ["#relu1", "#clamp1"] and list(b.layer.values) == ["2", "4"]
    for v in ("lc", "lc_mean", "lc_total_mean", "n_samples", "neurons"):
        np.testing.assert_array_equal(a[v].values, b[v].values)
    assert a["lc"].values[:, :, 1].sum() > 0


def test_preflight_check_sees_functional_kinks_and_names_bad_call_sites():
    """The engine's pre-flight (LCProbe.check) accepts a model whose kinks are all functional and
    refuses an unknown call site in lc.layers with one line naming the sites found."""
    from grokscope.probes import ProbeError, get_probe
    from tests.helpers import digits_data, functional_net

    lc = get_probe("lc")
    model = functional_net(hidden=12).eval()
    lc().check(model, digits_data(), lc.default_params())
    with pytest.raises(ProbeError, match=r"lc.layers: .*#relu7.*call sites found: #relu1, #clamp1"):
        lc().check(model, digits_data(), lc.make_params({"layers": "#relu7"}))
