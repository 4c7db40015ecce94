"""A conformance harness for probes: ``check_probe(ProbeClass, model, data)``.

Holds any probe, built-in or third-party, to the contract of :mod:`grokscope.probes.base`. Each check
raises :class:`ProbeContractError` naming the probe and what is wrong:

* the result is an ``xr.Dataset`` with every declared output, each with its declared dims, no ``step``
  dim, and a coordinate for every dim; no variable that is not declared;
* the panels and events it declares name declared outputs; its ``precision_mode`` is one the engine knows;
* a declared template (``Probe.template``) describes the result exactly: variables, dims, sizes,
  storage dtypes, attributes and coordinates (also in float64);
* the same checkpoint gives bit-identical results twice (randomness comes from ``params.seed``), and
  other weights give the same shapes (a store's template holds for every checkpoint);
* every parameter survives the command line (``--param name.field=text``) unchanged;
* the model's train/eval mode (given in either) and weights are the same after ``compute`` as before;
* it runs on a float64 copy of the model and data with the same shapes.

Use it in the probe's own tests (``tests/probes/test_<name>.py``)::

    from grokscope.testing import check_probe
    check_probe(MyProbe, model, data)
"""

from __future__ import annotations

import copy
import dataclasses
import json
from typing import Any

from grokscope.errors import GrokscopeError


class ProbeContractError(GrokscopeError, AssertionError):
    """A probe breaks the contract; the message names the probe and the rule."""


def _fail(cls: type, what: str) -> None:
    raise ProbeContractError(f"probe {getattr(cls, 'name', cls)!r}: {what}")


def _as_cli_text(value: Any) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, (list, tuple)):
        return json.dumps(list(value))
    if value is None:
        return "null"
    return str(value)


def _state(model: Any) -> dict[str, Any]:
    return {k: v.detach().clone() for k, v in model.state_dict().items()}


def _shapes(ds: Any) -> dict[str, tuple[tuple[str, int], ...]]:
    return {str(k): tuple(ds[k].sizes.items()) for k in ds.data_vars}


def _identical(a: Any, b: Any) -> bool:
    import numpy as np

    if set(a.data_vars) != set(b.data_vars):
        return False
    for k in a.data_vars:
        x, y = np.asarray(a[k].values), np.asarray(b[k].values)
        if x.shape != y.shape or not np.array_equal(x, y, equal_nan=x.dtype.kind in "fc"):
            return False
    return True


def check_probe(probe_cls: type, model: Any, data: Any, params: Any = None, ctx: Any = None,
                other_model: Any = None, float64: bool = True) -> Any:
    """Run every conformance check of the module docstring on ``probe_cls`` with ``model`` and ``data``
    (a :class:`grokscope.datasets.Data`); ``other_model`` (default: ``model`` with perturbed weights)
    stands for another checkpoint. Returns the probe's result on ``model``."""
    import torch
    import xarray as xr

    from grokscope.probes.base import check_result
    from grokscope.probes import Probe, ProbeContext

    if not (isinstance(probe_cls, type) and issubclass(probe_cls, Probe)):
        _fail(probe_cls, "is not a grokscope Probe subclass")
    if not probe_cls.name:
        _fail(probe_cls, "has no name")
    from grokscope.functional.precision import PRECISION_MODES

    if probe_cls.precision_mode not in PRECISION_MODES:
        _fail(probe_cls, f"precision_mode must be one of {', '.join(PRECISION_MODES)}, got "
                         f"{probe_cls.precision_mode!r}")
    params = params if params is not None else probe_cls.default_params()
    ctx = ctx or ProbeContext(step=0, run="check")
    declared = dict(probe_cls.outputs or {})
    if not declared:
        _fail(probe_cls, "declares no outputs")
    for spec in list(probe_cls.panel_specs()) + list(probe_cls.event_specs()):
        if spec.var not in declared:
            _fail(probe_cls, f"{type(spec).__name__} names {spec.var!r}, which is not a declared output "
                             f"({', '.join(declared)})")

    # parameters survive the command line
    texts = {f.name: _as_cli_text(getattr(params, f.name)) for f in dataclasses.fields(params)}
    parsed = probe_cls.make_params(texts)
    if parsed != params:
        _fail(probe_cls, f"parameters do not survive the command line: {params!r} became {parsed!r}")

    probe = probe_cls()
    probe.check(model, data, params)

    def run(m: Any, d: Any) -> Any:
        mode, before = m.training, _state(m)
        out = probe.compute(m, d, params, ctx)
        if m.training != mode:
            _fail(probe_cls, f"compute left the model in {'train' if m.training else 'eval'} mode")
        after = _state(m)
        if any(not torch.equal(before[k], after[k]) for k in before):
            _fail(probe_cls, "compute changed the model's weights")
        if not isinstance(out, xr.Dataset):
            _fail(probe_cls, f"compute returned {type(out).__name__}, not an xr.Dataset")
        try:
            out = check_result(out, probe_cls)
        except (TypeError, ValueError) as e:
            _fail(probe_cls, str(e))
        missing = [k for k in declared if k not in out.data_vars]
        extra = [str(k) for k in out.data_vars if k not in declared]
        if missing or extra:
            _fail(probe_cls, f"result variables differ from the declared outputs (missing: {missing}, "
                             f"undeclared: {extra})")
        for dim in out.dims:
            if dim not in out.coords:
                _fail(probe_cls, f"dim {dim!r} has no coordinate")
        return out

    model.train()  # the mode a notebook user may pass: it must come back unchanged
    run(model, data)
    model.eval()
    first = run(model, data)
    _check_template(probe, probe_cls, model, data, params, first, ctx)
    if not _identical(first, run(model, data)):
        _fail(probe_cls, "two runs on the same checkpoint differ (seed the randomness with params.seed)")
    if other_model is None:
        other_model = copy.deepcopy(model)
        g = torch.Generator().manual_seed(1)
        with torch.no_grad():
            for p in other_model.parameters():
                if p.is_floating_point():
                    p.add_(0.05 * p.detach().abs().mean() * torch.randn(p.shape, generator=g, dtype=p.dtype))
    other_model.eval()
    if _shapes(run(other_model, data)) != _shapes(first):
        _fail(probe_cls, "another checkpoint gives other shapes (a dim must not depend on the weights)")
    if float64:
        m64 = copy.deepcopy(model).double().eval()
        d64 = copy.copy(data)
        for name in ("x_train", "x_test", "box_low", "box_high"):
            t = getattr(data, name, None)
            if isinstance(t, torch.Tensor) and t.is_floating_point():
                setattr(d64, name, t.double())
        out64 = run(m64, d64)
        if _shapes(out64) != _shapes(first):
            _fail(probe_cls, "float64 gives other shapes than float32")
        _check_template(probe, probe_cls, m64, d64, params, out64, ctx)
    return first


def _check_template(probe: Any, probe_cls: type, model: Any, data: Any, params: Any, result: Any,
                    ctx: Any) -> None:
    """A declared template (``probe.template``) must describe ``result`` exactly."""
    from grokscope.probes.base import check_result
    from grokscope.engine.store_schema import template_mismatch

    mode = model.training
    template = probe.template(model, data, params, ctx)
    if model.training != mode:
        _fail(probe_cls, "template left the model in another train/eval mode")
    if template is None:
        return
    try:
        template = check_result(template, probe_cls)
    except (TypeError, ValueError) as e:
        _fail(probe_cls, f"template: {e}")
    why = template_mismatch(template, result)
    if why:
        _fail(probe_cls, f"its declared template does not describe its result: {why}")
