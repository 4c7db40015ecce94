"""Each built-in probe that declares its template (``Probe.template``) describes its result exactly in a
second setting, unlike the conformance test's (other parameters, another model depth or kind, a run
spec that resolves an ``auto`` loss): dims, sizes, storage dtypes, coordinates and attributes equal,
and the sizes are the ones the parameters and data say."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from grokscope.datasets import load_dataset
from grokscope.engine.store_schema import template_mismatch
from grokscope.models import build_model
from grokscope.probes import ProbeContext, get_probe
from grokscope.probes.base import check_result

DIGITS = {"name": "digits", "kwargs": {"n_train": 60, "n_test": 40}, "seed": 0}
MODULAR = {"name": "modular", "kwargs": {"p": 11, "train_fraction": 0.5}, "seed": 0}
DEEP = {"arch": "mlp", "kwargs": {"in_dim": 64, "out_dim": 10, "depth": 3, "width": 10}}
TRANSFORMER = {"arch": "transformer", "kwargs": {"p": 11, "d_model": 16, "n_heads": 2, "d_head": 8, "d_mlp": 24}}

# setting -> (model, data, parameters, the run's train spec, {dim: the size it must have}); a setting is
# a probe's name, or ``probe:what`` for a further one
CASES = {
    # 3 radii, 70 points asked of splits of 60 and 40: sample 60 (the largest split), the test split padded
    "pgd": (DEEP, DIGITS, {"eps": "0.02,0.1,0.3", "n_points": "70", "splits": "train,test", "steps": "2"},
            {}, {"split": 2, "eps": 3, "sample": 60}),
    # a token model: radii in embedding units (auto), 100 points asked of the 61 test pairs of p = 11
    "pgd:tokens": (TRANSFORMER, MODULAR, {"eps": "0.1,0.5", "n_points": "100", "steps": "1"}, {},
                   {"split": 1, "eps": 2, "sample": 61}),
    "collapse": (DEEP, DIGITS, {"splits": "test", "quantiles": "0.1,0.9", "n_points": "30"},
                 {"loss": "stablemax"}, {"split": 1, "quantile": 2}),
    "spectral": (DEEP, DIGITS, {"min_evals": "5"}, {}, {"layer": 4}),
    "norm": (DEEP, DIGITS, {"n_train": "6", "proj_iters": "2", "power_iters": "2", "explicit_max": "0",
                            "lanczos_iters": "6", "damping_grid": "1e-4,1e-2"},
             {"loss": "mse"}, {"param": 8, "damping": 2}),
    # a transformer: p = 11 (5 frequencies), the MLP's 24 neurons, 3 key frequencies
    "fourier": (TRANSFORMER, MODULAR, {"n_key": "3"}, {"loss": "ce"}, {"freq": 5, "key": 3, "neuron": 24}),
    "regions": (DEEP, DIGITS, {"resolution": "9", "margin": "0.5", "points": "0,1,2"}, {},
                {"a": 9, "b": 9, "corner": 3}),
    # 25 of the 60 training points in batches of 10, the run's mse loss, 3 chains of 5 draws
    "llc": (DEEP, DIGITS, {"n_chains": "3", "n_draws": "5", "n_burnin": "1", "n_train": "25", "batch_size": "10",
                           "beta": "0.5"}, {"loss": "mse"}, {"chain": 3, "draw": 5}),
    # the one-layer transformer's two heads and its MLP input layer
    "rllc": (TRANSFORMER, MODULAR,
             {"n_chains": "2", "n_draws": "4", "n_burnin": "0", "components": "heads,params:mlp_in"},
             {"loss": "ce"}, {"component": 3, "chain": 2, "draw": 4}),
}


@pytest.mark.parametrize("name", sorted(CASES))
def test_declared_template_describes_the_result_in_a_second_setting(name):
    model_spec, data_spec, overrides, train, sizes = CASES[name]
    cls = get_probe(name.split(":")[0])
    torch.manual_seed(1)
    model, data = build_model(model_spec).eval(), load_dataset(data_spec)
    params = cls.make_params(overrides)
    ctx = ProbeContext(step=0, run="r", run_spec={"train": train})
    probe = cls()
    probe.check(model, data, params)
    template = probe.template(model, data, params, ctx)
    assert template is not None, f"{name} declares no template"
    template = check_result(template, cls)
    result = probe(model, data, params, ctx)
    assert template_mismatch(template, result) == ""
    assert {d: result.sizes[d] for d in sizes} == sizes
    if "loss" in train and "loss" in result.attrs:  # an auto loss is the run's
        assert template.attrs["loss"] == result.attrs["loss"] == train["loss"]


def test_fourier_template_without_all_pairs_and_spectral_layers_follow_the_model():
    """fourier without ``all_pairs`` declares no all-pairs variable (and no neuron dim); spectral's
    layers are the model's weight matrices, whatever its depth (counted here independently)."""
    fourier = get_probe("fourier")
    torch.manual_seed(0)
    model, data = build_model({"arch": "modular_mlp", "kwargs": {"p": 11, "width": 6}}).eval(), load_dataset(MODULAR)
    params = fourier.make_params({"all_pairs": "false", "n_key": "9"})  # more than the 5 frequencies
    template = fourier().template(model, data, params)
    result = fourier()(model, data, params, ProbeContext(step=0))
    assert template_mismatch(template, result) == ""
    assert "neuron" not in template.dims and "full_loss" not in template and template.sizes["key"] == 5

    spectral = get_probe("spectral")
    for depth in (1, 5):
        deep = build_model({**DEEP, "kwargs": {**DEEP["kwargs"], "depth": depth}}).eval()
        linear = [n for n, m in deep.named_modules() if isinstance(m, nn.Linear)]
        t = spectral().template(deep, None, spectral.make_params({}))
        assert list(t.layer.values) == linear and len(linear) == depth + 1
