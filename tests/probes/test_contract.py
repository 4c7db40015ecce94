"""Every built-in probe passes the conformance harness (grokscope.testing.check_probe), and the
harness catches the faults it promises to catch."""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass

import numpy as np
import pytest
import torch
import xarray as xr

from grokscope.datasets import load_dataset
from grokscope.models import build_model
from grokscope.probes import BUILTIN, PanelSpec, Probe, ProbeError, get_probe
from grokscope.testing import ProbeContractError, check_probe

DIGITS = {"name": "digits", "kwargs": {"n_train": 60, "n_test": 40}, "seed": 0}
MLP = {"arch": "mlp", "kwargs": {"in_dim": 64, "out_dim": 10, "depth": 2, "width": 12}}
MODULAR = {"name": "modular", "kwargs": {"p": 7, "train_fraction": 0.5}, "seed": 0}
MOD_MLP = {"arch": "modular_mlp", "kwargs": {"p": 7, "width": 8}}

TASKS = {"digits": (MLP, DIGITS), "modular": (MOD_MLP, MODULAR)}  # a probe's quick_task
# a second label where a dim can hold several (radii, ε): the harness then checks multi-label coordinates
MORE_LABELS = {"lc": {"radius": "0.01,0.1"}, "pgd": {"eps": "0.05,0.2"}}


def case(name: str) -> tuple[dict, dict, dict]:
    """``(model spec, data spec, parameter overrides)`` a built-in probe is checked on: its own
    ``quick_task`` and ``quick_params``."""
    cls = get_probe(name)
    model_spec, data_spec = TASKS[cls.quick_task]
    return model_spec, data_spec, {**cls.quick_params, **MORE_LABELS.get(name, {})}


def _setup(model_spec, data_spec, seed=0):
    torch.manual_seed(seed)
    return build_model(model_spec).eval(), load_dataset(data_spec)


@pytest.mark.parametrize("name", sorted(BUILTIN))
def test_builtin_probe_conforms(name):
    model_spec, data_spec, overrides = case(name)
    cls = get_probe(name)
    model, data = _setup(model_spec, data_spec)
    out = check_probe(cls, model, data, cls.make_params(overrides))
    assert set(out.data_vars) == set(cls.outputs)


@dataclass(frozen=True)
class _P:
    seed: int = 0


def _probe(compute, outputs=None, panels=()):
    return type("Bad", (Probe,), {"name": "bad", "Params": _P, "outputs": outputs or {"v": ("k",)},
                                  "panels": panels, "compute": compute})


def _ok(self, model, data, params, ctx):
    return xr.Dataset({"v": (("k",), np.arange(3.0))}, coords={"k": [0, 1, 2]})


@pytest.mark.parametrize("fault, compute, outputs, panels", [
    ("not a declared output", _ok, None, (PanelSpec("w", "W", "w"),)),
    ("left the model in train mode", lambda s, m, d, p, c: (m.train(), _ok(s, m, d, p, c))[1], None, ()),
    ("changed the model's weights",
     lambda s, m, d, p, c: (next(m.parameters()).data.add_(1.0), _ok(s, m, d, p, c))[1], None, ()),
    ("differ from the declared outputs", _ok, {"v": ("k",), "w": ()}, ()),
    ("two runs on the same checkpoint differ",
     lambda s, m, d, p, c: xr.Dataset({"v": (("k",), np.random.rand(3))}, coords={"k": [0, 1, 2]}), None, ()),
    ("another checkpoint gives other shapes",
     lambda s, m, d, p, c: xr.Dataset({"v": (("k",), np.zeros(int(next(m.parameters()).abs().sum() * 7) % 5 + 1))},
                                      coords={"k": np.arange(int(next(m.parameters()).abs().sum() * 7) % 5 + 1)}),
     None, ()),
    ("has dims", lambda s, m, d, p, c: xr.Dataset({"v": (("j",), np.zeros(2))}, coords={"j": [0, 1]}), None, ()),
])
def test_harness_catches_each_fault(fault, compute, outputs, panels):
    model, data = _setup(MLP, DIGITS)
    with pytest.raises(ProbeContractError, match=fault):
        check_probe(_probe(compute, outputs, panels), model, data, float64=False)


def _template(shape_k=3, attrs=None, dtype=np.float64):
    def template(self, model, data, params, ctx=None):
        from grokscope.probes import template_dataset

        return template_dataset({"v": ("k",)}, {"k": list(range(shape_k))}, {"v": dtype}, attrs)
    return template


@pytest.mark.parametrize("template, fault", [
    (_template(4), "declared template does not describe its result: var 'v'.*\\[4\\]"),
    (_template(3, dtype=np.float32), "var 'v'"),
    (_template(3, attrs={"unit": "m"}), "dataset attributes"),
])
def test_harness_holds_a_declared_template_to_the_result(template, fault):
    model, data = _setup(MLP, DIGITS)
    cls = type("Declared", (_probe(_ok),), {"template": template})
    with pytest.raises(ProbeContractError, match=fault):
        check_probe(cls, model, data, float64=False)
    check_probe(type("Declared", (_probe(_ok),), {"template": _template(3)}), model, data, float64=False)


@pytest.mark.parametrize("name, params", [("lc", {"n_points": "8", "n_dirs": "4"}), ("align", {"n_points": "8"})])
def test_declared_templates_of_token_models(name, params):
    """lc and align declare their templates; on a token model too (embedding space, other sizes)."""
    cls = get_probe(name)
    model, data = _setup({"arch": "transformer", "kwargs": {"p": 7, "d_model": 16, "n_heads": 2, "d_head": 8, "d_mlp": 32}},
                         MODULAR)
    check_probe(cls, model, data, cls.make_params(params), float64=False)
    assert cls().template(model, data, cls.make_params(params)) is not None


def test_bad_parameters_fail_on_the_client_with_one_line():
    lc = get_probe("lc")
    with pytest.raises(ProbeError, match=r"lc.radius must be one or more numbers > 0, got \[-1.0\]"):
        lc.make_params({"radius": "-1"})
    with pytest.raises(ProbeError, match=r"lc.n_dirs must be >= 1, got 0"):
        lc.make_params({"n_dirs": "0"})
    model, data = _setup(MLP, DIGITS)
    lc().check(model, data, lc.make_params({"n_dirs": "65"}))  # the default cap: 64 are used
    with pytest.raises(ProbeError, match=r"lc.n_dirs=65 is larger than the input dimension 64.*valid: 1..64"):
        lc().check(model, data, lc.make_params({"n_dirs": "65", "n_dirs_cap": "none"}))
    with pytest.raises(ProbeError, match=r"lc.n_dirs_cap"):
        lc.make_params({"n_dirs_cap": "some"})
    assert dataclasses.asdict(lc.make_params({"n_dirs": "64"}))["n_dirs"] == 64


def test_lc_check_names_a_model_without_layers():
    lc = get_probe("lc")
    model = torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(64, 10)).eval()
    data = load_dataset(DIGITS)
    with pytest.raises(ProbeError, match="no layer to count.*lc.layers="):
        lc().check(model, data, lc.default_params())


def test_one_point_selection_and_padding_rule():
    from grokscope.datasets import seeded_subset
    from grokscope.functional import pad_stack, subset_indices

    assert subset_indices(10, 0).tolist() == list(range(10))
    assert subset_indices(10, 10, selection="random").tolist() == list(range(10))  # all: in order
    assert subset_indices(10, 3, selection="first").tolist() == [0, 1, 2]
    assert subset_indices(10, 4, seed=3).tolist() == seeded_subset(10, 4, 3).tolist()
    out = pad_stack([np.array([1, 2, 3], dtype=np.int32), np.array([4], dtype=np.int32)], 3)
    assert out.dtype == np.int32 and out.tolist() == [[1, 2, 3], [4, -1, -1]]
    f = pad_stack([np.ones((1, 2)), np.ones((2, 2))], 2)
    assert np.isnan(f[0, 1]).all() and f.shape == (2, 2, 2)
    b = pad_stack([np.array([True]), np.array([True, True])], 2)
    assert b.tolist() == [[True, False], [True, True]]


def test_eval_mode_restores_mode_and_grad_flags():
    from grokscope.functional import eval_mode

    m = torch.nn.Sequential(torch.nn.Linear(2, 2), torch.nn.BatchNorm1d(2)).train()
    with pytest.raises(RuntimeError):
        with eval_mode(m, freeze=True):
            assert not m.training and not any(p.requires_grad for p in m.parameters())
            raise RuntimeError
    assert m.training and all(p.requires_grad for p in m.parameters())
    with eval_mode(m.forward):  # a bound method: its module
        assert not m.training
    assert m.training
