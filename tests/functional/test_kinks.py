"""Kink finding (grokscope.functional.kinks): which calls are seen, how call sites are named, what is
left out, and the listing that `grokscope probes --model --dataset` prints."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from click.testing import CliRunner
from torch import nn

from grokscope.functional.kinks import KinkWatch, format_kinks, kink_layers, module_kinks

ACTIVATION_MODULES = [nn.ReLU(), nn.ReLU(inplace=True), nn.LeakyReLU(0.2), nn.PReLU(), nn.RReLU(), nn.ELU(),
                      nn.CELU(), nn.SELU(), nn.GELU(), nn.GELU(approximate="tanh"), nn.SiLU(), nn.Mish(),
                      nn.Hardtanh(-2.0, 0.5), nn.ReLU6(), nn.Hardswish(), nn.Hardsigmoid(),
                      nn.Threshold(0.25, 0.0), nn.Hardshrink(0.3), nn.Softshrink(0.4)]


@pytest.mark.parametrize("act", ACTIVATION_MODULES, ids=lambda m: repr(m))
def test_every_activation_module_is_seen_through_its_call(act):
    """Each activation module's forward is one kinked call, named after the module, with the kink
    values its attributes say (module_kinks restates them from the module)."""
    model = nn.Sequential(nn.Linear(3, 4), act, nn.Linear(4, 2))
    layers = kink_layers(model, torch.randn(5, 3))
    assert [(l.name, l.kind, l.op, l.neurons) for l in layers] == [("1", "module", type(act).__name__, 4)]
    assert layers[0].kinks == module_kinks(act)


class _Capture(KinkWatch):
    """Keeps a copy of each layer's tensor."""

    def on_layer(self, j, t):
        self.seen[j] = t.clone()


def _watched(model, x, layers=None):
    with _Capture(model, layers) as w:
        w.start_pass(2)
        with w.watch():
            model(torch.cat([x[:1], x[:1]]))
        w.end_discovery()
        w.seen = {}
        w.start_pass(len(x))
        with w.watch():
            out = model(x)
    return w, out


class _InPlace(nn.Module):
    def forward(self, x):
        y = x * 1.0
        y.relu_()
        return F.hardtanh_(y * 2 - 1, -0.5, 0.5) + x.clamp_min_(0.0)


def test_in_place_calls_are_seen_before_they_change_their_input():
    x = torch.randn(6, 8, dtype=torch.float64)
    x0 = x.clone()
    w, out = _watched(_InPlace(), x)
    assert [l.name for l in w.layers] == ["#relu1", "#hardtanh1", "#clamp1"]
    assert [l.kinks for l in w.layers] == [(0.0,), (-0.5, 0.5), (0.0,)]
    assert torch.equal(w.seen[0], x0) and torch.equal(w.seen[2], x0)  # the input, not the result
    assert torch.equal(w.seen[1], torch.relu(x0) * 2 - 1)
    assert torch.equal(out, F.hardtanh(torch.relu(x0) * 2 - 1, -0.5, 0.5) + torch.relu(x0))


class _NotKinks(nn.Module):
    """Clamps of parameters / scalars and clamps with tensor bounds are not kinks of the input."""

    def __init__(self):
        super().__init__()
        self.fc = nn.Linear(4, 4)
        self.scale = nn.Parameter(torch.ones(3))
        self.bound = nn.Parameter(torch.zeros(4))

    def forward(self, x):
        h = self.fc(x)
        t = self.scale.clamp(min=0.1).sum() + F.relu(self.fc.weight).sum()  # parameters
        h = torch.clamp(h, min=self.bound)                                  # tensor bound
        return torch.clamp(h, max=1.5) * t                                  # a real kink at 1.5


def test_parameters_and_tensor_bounds_are_not_kinks():
    layers = kink_layers(_NotKinks(), torch.randn(3, 4))
    assert [(l.name, l.kinks) for l in layers] == [("#clamp3", (1.5,))]  # clamp1: param, clamp2: tensor bound


class _Inner(nn.Module):
    def forward(self, x):
        return F.relu(x) + F.leaky_relu(x - 1) + F.relu(x + 1)


class _Outer(nn.Module):
    def __init__(self):
        super().__init__()
        self.blocks = nn.ModuleList([_Inner(), _Inner()])
        self.act = nn.GELU()

    def forward(self, x):
        x = self.blocks[0](torch.relu(x))
        x = self.blocks[1](self.blocks[0](x))  # blocks.0 reused
        return self.act(self.act(x)).clamp(0, 3)

    def forward_embedded(self, x):  # called directly: no module call around it
        return self.forward(x)


def test_call_sites_are_named_by_module_op_and_index_and_count_once_per_call():
    expected = ["#relu1", "blocks.0#relu1", "blocks.0#leaky_relu1", "blocks.0#relu2",
                "blocks.0#relu1#1", "blocks.0#leaky_relu1#1", "blocks.0#relu2#1",
                "blocks.1#relu1", "blocks.1#leaky_relu1", "blocks.1#relu2", "act", "act#1", "#clamp1"]
    model = _Outer()
    x = torch.randn(4, 5)
    layers = kink_layers(model, x)
    assert [l.name for l in layers] == expected
    assert [l.kind for l in layers] == ["call"] * 10 + ["module"] * 2 + ["call"]
    assert layers[-1].kinks == (0.0, 3.0) and not layers[-3].piecewise_linear
    assert [l.name for l in kink_layers(model, x, forward=model.forward_embedded)] == expected
    # the counted tensors are the inputs of those calls, in order
    w, _ = _watched(model, x)
    h = torch.relu(x)
    assert torch.equal(w.seen[0], x) and torch.equal(w.seen[1], h) and torch.equal(w.seen[3], h + 1)
    named = kink_layers(model, x, layers=["blocks.0#relu2", "blocks"])  # "blocks" is a ModuleList: never called
    assert [l.name for l in named] == ["blocks.0#relu2", "blocks.0#relu2#1"]
    with pytest.raises(ValueError, match="not kink call sites"):
        kink_layers(model, x, layers=["blocks.0#relu3"])
    with pytest.raises(ValueError, match="not modules"):
        kink_layers(model, x, layers=["nothing"])


def test_format_kinks_lines():
    model = nn.Sequential(nn.Linear(3, 4), nn.ReLU6())
    lines = format_kinks(kink_layers(model, torch.randn(2, 3), include_output=True))
    assert lines[0].split() == ["1", "input", "of", "module", "ReLU6:", "4", "neurons,", "kinks", "at", "0,", "6"]
    assert lines[1].startswith("output  logits output: 4 neurons")


def test_cli_probes_lists_the_kinks_of_a_model():
    from grokscope.cli import main

    res = CliRunner().invoke(main, ["probes", "--model", "tests.helpers:functional_net",
                                    "--model-kwargs", '{"hidden": 12}', "--dataset", "digits"])
    assert res.exit_code == 0, res.output
    tail = res.output.split("lc layers of tests.helpers:functional_net on digits (2")[1].splitlines()
    assert tail[1].split()[:6] == ["#relu1", "input", "of", "call", "relu:", "12"]
    assert tail[2].split()[:6] == ["#clamp1", "input", "of", "call", "clamp:", "12"]
    assert "lc.layers" in res.output and "layer1.0#relu1" in res.output  # the parameter's help
    bad = CliRunner().invoke(main, ["probes", "--model", "mlp", "--dataset", "digits",
                                    "--model-kwargs", '{"in_dim": 3}'])
    assert bad.exit_code != 0 and "forward failed" in bad.output
