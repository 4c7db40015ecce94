"""``lc``'s fx fast path (grokscope/functional/lc_fast.py) on non-Sequential piecewise-linear models: the counts equal
the hook path's (``fast=False``) exactly; unsupported graphs fall back with a logged reason."""

from __future__ import annotations

import logging

import pytest
import torch
from torch import nn

from grokscope.probes.lc import local_complexity
from grokscope.functional.lc_fast import graph_fast_path


class EncoderHead(nn.Module):
    """The usual way to write an MLP: an encoder Sequential and a head."""

    def __init__(self, d: int = 12, h: int = 16, c: int = 5):
        super().__init__()
        self.encoder = nn.Sequential(nn.Flatten(), nn.Linear(d, h), nn.ReLU(), nn.Linear(h, h), nn.ReLU())
        self.head = nn.Linear(h, c)

    def forward(self, x):
        return self.head(self.encoder(x))


class ResidualMLP(nn.Module):
    """Residual blocks ``x + W₂ relu(W₁ x)`` with one ReLU module called twice, LeakyReLU and BatchNorm."""

    def __init__(self, d: int = 12, h: int = 16, c: int = 5):
        super().__init__()
        self.inp = nn.Linear(d, h)
        self.bn = nn.BatchNorm1d(h)
        self.act = nn.ReLU()
        self.a1, self.b1 = nn.Linear(h, h), nn.Linear(h, h)
        self.a2, self.b2 = nn.Linear(h, h), nn.Linear(h, h)
        self.leaky = nn.LeakyReLU(0.1)
        self.out = nn.Linear(h, c)

    def forward(self, x):
        x = self.act(self.bn(self.inp(torch.flatten(x, 1))))
        x = x + self.b1(self.act(self.a1(x)))
        x = x + self.b2(self.leaky(self.a2(x)))
        return self.out(x)


class GeluNet(nn.Module):
    def __init__(self):
        super().__init__()
        self.fc, self.act, self.out = nn.Linear(12, 8), nn.GELU(), nn.Linear(8, 3)

    def forward(self, x):
        return self.out(self.act(self.fc(x)))


def _model(cls, seed=0):
    torch.manual_seed(seed)
    m = cls().double().eval()
    for mod in m.modules():
        if isinstance(mod, nn.BatchNorm1d):  # non-trivial running statistics
            mod.running_mean.uniform_(-0.5, 0.5)
            mod.running_var.uniform_(0.5, 2.0)
            mod.weight.data.uniform_(0.5, 1.5)
            mod.bias.data.uniform_(-0.2, 0.2)
    return m


@pytest.mark.parametrize("cls", [EncoderHead, ResidualMLP])
@pytest.mark.parametrize("include_output", [False, True])
def test_graph_fast_path_counts_equal_the_hook_path(cls, include_output):
    model = _model(cls)
    x = torch.randn(40, 12, dtype=torch.float64, generator=torch.Generator().manual_seed(1))
    assert graph_fast_path(model, model, x[:1], lambda m: isinstance(m, (nn.ReLU, nn.LeakyReLU))) is not None
    radii = (0.01, 0.3, 3.0)  # from few to nearly all points expanded at the first layer
    fast = local_complexity(model, x, radii, n_dirs=6, include_output=include_output, max_rows=70)
    slow = local_complexity(model, x, radii, n_dirs=6, include_output=include_output, fast=False)
    assert fast.layers == slow.layers and fast.neurons == slow.neurons
    assert torch.equal(fast.counts, slow.counts)
    assert fast.counts[:, 0].sum() < fast.counts[:, 2].sum()  # the radii matter: the check can fail
    if cls is ResidualMLP:
        assert fast.layers[:3] == ["act", "act#1", "leaky"]


def test_unsupported_graphs_fall_back_with_a_reason(caplog):
    model = _model(GeluNet)
    x = torch.randn(10, 12, dtype=torch.float64)
    with caplog.at_level(logging.INFO):
        res = local_complexity(model, x, 0.5, n_dirs=4)
    assert "lc fast path off for GeluNet" in caplog.text and "GELU" in caplog.text
    assert torch.equal(res.counts, local_complexity(model, x, 0.5, n_dirs=4, fast=False).counts)
    conv = nn.Sequential(nn.Conv2d(1, 2, 3), nn.ReLU(), nn.Flatten(), nn.Linear(8, 2)).double()

    class Wrap(nn.Module):
        def __init__(self):
            super().__init__()
            self.net = conv

        def forward(self, x):
            return self.net(x)

    w = Wrap()
    caplog.clear()
    with caplog.at_level(logging.INFO):
        assert graph_fast_path(w, w, torch.zeros(1, 1, 4, 4, dtype=torch.float64), lambda m: True) is None
    assert "Conv2d" in caplog.text
