"""``Probe.__call__`` frames ``compute`` as every probe needs it: eval mode (the caller's mode back
after, also when compute raises), autograd off unless ``needs_grad``, the probe's precision, and the
result checked against the declared outputs. The engine's jobs call it."""

from __future__ import annotations

import numpy as np
import pytest
import torch
import xarray as xr
from torch import nn

from grokscope.functional.precision import is_strict
from grokscope.probes import Probe, ProbeContext


class Recorder(Probe):
    name = "recorder"
    outputs = {"x": ()}
    needs_data = False
    seen: list = []
    fail = False
    dims: tuple = ()

    def compute(self, model, data, params, ctx):
        type(self).seen.append((model.training, torch.is_grad_enabled(), is_strict()))
        if self.fail:
            raise RuntimeError("boom")
        return xr.Dataset({"x": (self.dims, np.zeros((2,) * len(self.dims)))})


class GradRecorder(Recorder):
    needs_grad = True
    precision_mode = "strict"


def test_compute_runs_in_eval_mode_without_grad_and_the_mode_comes_back():
    model = nn.Sequential(nn.Linear(2, 2), nn.BatchNorm1d(2)).train()
    Recorder.seen = []
    out = Recorder()(model, None, None, ProbeContext(step=0, run="r"))
    assert Recorder.seen == [(False, False, False)] and model.training and model[1].training
    assert float(out.x) == 0.0
    GradRecorder.seen = []
    GradRecorder()(model, None, None, ProbeContext(step=0, run="r"))
    assert GradRecorder.seen == [(False, True, True)] and model.training


def test_a_raising_compute_gives_the_model_back_in_its_mode():
    model = nn.Linear(2, 2).train()
    probe = Recorder()
    probe.fail = True
    with pytest.raises(RuntimeError, match="boom"):
        probe(model, None, None, ProbeContext(step=0, run="r"))
    assert model.training and torch.is_grad_enabled()


def test_a_result_off_its_declaration_is_refused():
    probe = Recorder()
    probe.dims = ("layer",)
    with pytest.raises(ValueError, match="variable 'x' has dims \\('layer',\\), declared \\(\\)"):
        probe(nn.Linear(2, 2), None, None, ProbeContext(step=0, run="r"))
