"""The probe contract. A probe is a thin class around a plain function (usable from a notebook).

A probe declares:

* ``name`` — the ``--metrics`` name and the store group name;
* ``Params`` — a dataclass of parameters with defaults (set from the CLI as ``--param name.field=v``);
* ``outputs`` — ``{variable: dims}`` it writes (dims without ``step``), for listings and docs;
* ``template(model, data, params, ctx)`` — optional: the result's shape without computing it (every
  declared output with its dims, sizes, dtype and attributes, the coordinates, the dataset's
  attributes; :func:`template_dataset` builds it). The engine writes each group's template from it
  before any job runs, so a group whose first job fails still holds its variables and attributes;
  a probe that returns None (the default) gets its template from its first result;
* ``needs_data`` / ``needs_grad`` / ``needs_previous`` — what the engine must provide;
* ``precision_mode`` — ``"strict"`` when the numbers need full IEEE float32 (no TF32 on GPUs, no bf16
  on CPUs, no autocast): the engine runs ``compute`` inside
  :func:`grokscope.functional.precision.precision_guard` (``lc``, ``regions``, ``collapse``);
  ``"default"``: whatever the worker process set (see ``docs/engine.md#on-gpus``);
* ``version`` — an integer stored with the group; raise it when a change of the algorithm changes the
  numbers (the engine then treats stored results like results of other parameters);
* ``panels`` / ``events`` / ``panel_order`` — how the results are shown (:mod:`grokscope.presentation`):
  the panels of ``grokscope plot``, the events the report and ``ds.grok`` name (change points and
  threshold onsets, with their words) and where the panels go among other probes';
* ``quick_params`` / ``quick_task`` — the small setting the conformance test and the doc-block tests
  run the probe in (sizes only: they must not change what is computed);
* ``check_params(params)`` — rejects impossible parameters on the client, before any job runs;
  ``check(model, data, params)`` — rejects parameters that this model or data cannot take (an input
  dimension too small, no layer to count), run once on the first checkpoint before the cluster starts;
* ``compute(model, data, params, ctx) -> xr.Dataset`` — numpy-backed variables with the declared
  dims (no ``step`` dim: the engine adds it) and coordinates for the non-step dims.

Randomness uses ``params.seed``: the same frame / starts / probes at every checkpoint, so curves over
steps are comparable. The engine stores ``asdict(params)`` as attributes of the probe's group.
"""

from __future__ import annotations

import contextlib
import dataclasses
import json
from dataclasses import dataclass
from typing import Any, Callable, ClassVar, final

import torch
from torch import nn

from grokscope.errors import GrokscopeError
from grokscope.functional.modes import eval_mode
from grokscope.functional.precision import precision_guard
from grokscope.presentation import DEFAULT_PANEL_ORDER, EventSpec, PanelSpec


class ProbeError(GrokscopeError, ValueError):
    """Bad probe name or parameters, or a probe that cannot run on this model/dataset."""


@dataclass
class ProbeContext:
    """What the engine knows about the job beyond the model and the data.

    ``load_previous`` returns the state dict of the previous checkpoint of the run (or None for the
    first one); only probes with ``needs_previous = True`` should call it.
    """

    step: int
    run: str = ""
    device: torch.device = torch.device("cpu")
    previous_step: int | None = None
    load_previous: Callable[[], dict[str, torch.Tensor] | None] = lambda: None
    run_spec: dict[str, Any] = dataclasses.field(default_factory=dict)


class Probe:
    """Base class of every probe; see the module docstring for the contract."""

    name: ClassVar[str] = ""
    description: ClassVar[str] = ""
    Params: ClassVar[type] = object
    outputs: ClassVar[dict[str, tuple[str, ...]]] = {}
    needs_data: ClassVar[bool] = True
    needs_grad: ClassVar[bool] = False
    needs_previous: ClassVar[bool] = False
    # "strict": compute runs in IEEE float32, no TF32/bf16 products, no autocast (precision_guard)
    precision_mode: ClassVar[str] = "default"
    version: ClassVar[int] = 1
    panels: ClassVar[tuple[PanelSpec, ...]] = ()
    events: ClassVar[tuple[EventSpec, ...]] = ()
    # where the panels go among other probes' (grokscope.presentation.probe_order; lower first)
    panel_order: ClassVar[float] = DEFAULT_PANEL_ORDER
    # parameter overrides that keep one computation small (seconds) without changing what is computed:
    # the conformance test, the doc-block tests and quick checks run the probe with them
    quick_params: ClassVar[dict[str, str]] = {}
    # the small setting the conformance test runs the probe on: "digits" (an MLP on 8x8 digits) or
    # "modular" (an embedding MLP on modular addition)
    quick_task: ClassVar[str] = "digits"
    # parameters added to ``Params`` after stores were written at this ``version``: name -> the value
    # that a group stored without the parameter was computed with (read into its stored parameters)
    added_params: ClassVar[dict[str, Any]] = {}
    # radius-unit parameters (``auto`` | ``absolute`` | ``embedding_rms``) whose ``auto`` depends on the data
    unit_params: ClassVar[tuple[str, ...]] = ()

    @classmethod
    def resolve_params(cls, params: dict[str, Any], input_kind: str) -> dict[str, Any]:
        """``params`` (as stored: a dict) with every ``auto`` in :attr:`unit_params` replaced by what it
        means for inputs of ``input_kind`` (``"continuous"``/``"tokens"``). The engine compares a stored
        group with a request through it when the group lacks one of :attr:`added_params`."""
        from grokscope.models.adapters import radius_unit

        return {k: radius_unit(v, input_kind) if k in cls.unit_params and v == "auto" else v
                for k, v in params.items()}

    def compute(self, model: nn.Module, data: Any, params: Any, ctx: ProbeContext):  # -> xr.Dataset
        raise NotImplementedError

    @final
    def __call__(self, model: nn.Module, data: Any, params: Any, ctx: ProbeContext):  # -> xr.Dataset
        """:meth:`compute` framed as every probe needs it (what the engine's jobs call): the model in
        eval mode (its mode restored after), no autograd unless :attr:`needs_grad`, the precision the
        probe states (:attr:`precision_mode`), and the result checked against the declared
        :attr:`outputs` and loaded into numpy (:func:`check_result`). The parameters were checked
        once, when they were made (:meth:`make_params`)."""
        grad = contextlib.nullcontext() if self.needs_grad else torch.no_grad()
        with eval_mode(model), grad, precision_guard(self.precision_mode):
            result = self.compute(model, data, params, ctx)
        return check_result(result, type(self))

    def check(self, model: nn.Module, data: Any, params: Any) -> None:
        """Raise :class:`ProbeError` (naming the parameter and its valid range) if this probe cannot run
        with ``params`` on this model and data; called once on the first checkpoint before any job."""

    def template(self, model: nn.Module, data: Any, params: Any,
                 ctx: ProbeContext | None = None):  # -> xr.Dataset | None
        """What ``compute(model, data, params, ctx)`` will return, up to its values: the same variables,
        dims, sizes, storage dtypes, variable and dataset attributes and coordinates (any values in
        the variables), found without computing (sizes come from ``params``, the data and at most a
        forward pass of one point). ``ctx`` gives the run's spec (what an ``auto`` loss means; None:
        no spec, as a default :class:`ProbeContext`). None: not declared (the store's template then
        comes from the first result). ``grokscope.testing.check_probe`` holds a declared template to
        the results; a probe's ``compute`` fills the same frame (:func:`fill_template`)."""
        return None

    # -- presentation ---------------------------------------------------------------------------
    @classmethod
    def panel_specs(cls) -> tuple[PanelSpec, ...]:
        """``panels`` with this probe's name filled in."""
        return tuple(dataclasses.replace(p, probe=cls.name) for p in cls.panels)

    @classmethod
    def event_specs(cls) -> tuple[EventSpec, ...]:
        """``events`` with this probe's name filled in."""
        return tuple(dataclasses.replace(e, probe=cls.name) for e in cls.events)

    # -- parameters ---------------------------------------------------------------------------
    @classmethod
    def check_params(cls, params: Any) -> None:
        """Raise :class:`ProbeError` for values no model could take (a negative radius ...). The default
        accepts everything; override it, or validate in ``Params.__post_init__``."""

    @classmethod
    def default_params(cls):
        return cls.Params()

    @classmethod
    def make_params(cls, overrides: dict[str, str] | None = None):
        """``Params`` with ``overrides`` (``{field: text}``) parsed by each field's default's type.

        Lists take ``a,b,c`` or JSON; booleans take true/false/1/0/yes/no. Unknown fields and
        unparsable values raise :class:`ProbeError` naming the probe, the field and the valid fields.
        """
        params = cls.Params()
        fields = {f.name: f for f in dataclasses.fields(params)}
        values = {}
        for key, text in (overrides or {}).items():
            if key not in fields:
                raise ProbeError(f"probe {cls.name!r} has no parameter {key!r}; "
                                 f"valid: {', '.join(fields)}")
            default = getattr(params, key)
            try:
                values[key] = parse_value(text, default)
            except ValueError as e:
                raise ProbeError(f"bad value for {cls.name}.{key}={text!r}: {e}") from e
        try:
            params = dataclasses.replace(params, **values)
        except ValueError as e:  # a Params.__post_init__ check
            raise ProbeError(f"probe {cls.name!r}: {e}") from e
        validate_params(cls, params)
        return params


SEED_MAX = 2**63 - 1  # torch's and numpy's generators both take 0..2**63-1
_INT64 = (-(2**63), 2**63 - 1)


def machine_memory() -> int:
    """This machine's physical memory in bytes (16 GiB where the system does not say)."""
    import os

    try:
        return int(os.sysconf("SC_PHYS_PAGES")) * int(os.sysconf("SC_PAGE_SIZE"))
    except (AttributeError, OSError, ValueError):
        return 16 * 2**30


def check_bounds(probe: str, params: Any) -> None:
    """The bounds every probe's parameters obey, whatever its own ``check_params`` adds: numbers (alone
    or in lists) finite and within int64, and seeds (``seed``, ``*_seed``) in ``0..2**63-1``; a
    :class:`ProbeError` names the first parameter out of bounds (``lc.radius must be finite ...``)."""
    import math

    if not dataclasses.is_dataclass(params):
        return
    for f in dataclasses.fields(params):
        value = getattr(params, f.name)
        if (f.name == "seed" or f.name.endswith("_seed")) and value is not None and not (
                isinstance(value, int) and not isinstance(value, bool) and 0 <= value <= SEED_MAX):
            raise ProbeError(f"{probe}.{f.name} must be an integer in 0..2**63-1, got {value!r}")
        for x in value if isinstance(value, (list, tuple)) else (value,):
            if isinstance(x, bool):
                continue
            if isinstance(x, float) and not math.isfinite(x):
                raise ProbeError(f"{probe}.{f.name} must be finite, got {x}")
            if isinstance(x, int) and not _INT64[0] <= x <= _INT64[1]:
                raise ProbeError(f"{probe}.{f.name}={x} is out of range (64-bit integers)")


def check_at_least(probe: str, params: Any, **lows: float) -> None:
    """:class:`ProbeError` ``"acc.batch_size must be >= 1, got -4"`` for the first field of ``lows``
    (``field=lowest value``) below its bound."""
    for key, low in lows.items():
        value = getattr(params, key)
        if value < low:
            raise ProbeError(f"{probe}.{key} must be >= {low:g}, got {value}")


def check_work(probe: str, what: str, count: float, each: int = 8) -> None:
    """:class:`ProbeError` when ``count`` values of ``each`` bytes (a probe's points, rows, grid cells
    for one checkpoint: at least one float64 each) are more than this machine's memory holds, so a
    request that cannot run is refused before the store is written. ``what`` says which parameters
    give ``count`` (``"lc.n_points x (2 lc.n_dirs + 1)"``)."""
    mem = machine_memory()
    if count * each > mem:
        raise ProbeError(f"{probe}: {what} = {count:.3g} values of {each} bytes, more than this machine's "
                         f"memory ({mem / 2**30:.0f} GiB) holds; lower it")


def validate_params(cls: type[Probe], params: Any) -> None:
    """The up-front check of one probe's parameters: :func:`check_bounds`, then the probe's own
    ``check_params``. :meth:`Probe.make_params` and the engine (before writing the store) call it."""
    check_bounds(cls.name, params)
    cls.check_params(params)


def parse_value(text: Any, like: Any) -> Any:
    """Parse ``text`` into the type of ``like`` (bool, int, float, str, list/tuple, None → JSON)."""
    if not isinstance(text, str):
        return text
    if isinstance(like, bool):
        low = text.strip().lower()
        if low in ("1", "true", "yes", "on"):
            return True
        if low in ("0", "false", "no", "off"):
            return False
        raise ValueError("expected true/false")
    if isinstance(like, int):
        return int(text)
    if isinstance(like, float):
        return float(text)
    if isinstance(like, (list, tuple)):
        t = text.strip()
        items = json.loads(t) if t.startswith("[") else [s for s in t.split(",") if s.strip()]
        if like:
            items = [parse_value(i, like[0]) if isinstance(i, str) else i for i in items]
        else:
            items = [_auto(i) for i in items]
        return type(like)(items)
    if like is None:
        return _auto(text)
    return text


def _auto(text: Any) -> Any:
    if not isinstance(text, str):
        return text
    try:
        return json.loads(text)
    except ValueError:
        return text


def check_choice(key: str, value: Any, valid: Any) -> None:
    """:class:`ProbeError` ``"<key> must be one of a, b, got 'v'"`` unless ``value`` is in ``valid``
    (``key`` names the parameter as the command line does: ``pgd.norm``)."""
    if value not in valid:
        raise ProbeError(f"{key} must be one of {', '.join(map(str, valid))}, got {value!r}")


def template_dataset(outputs: dict[str, tuple[str, ...]], coords: dict[str, Any],
                     dtypes: dict[str, Any] | None = None, attrs: dict[str, Any] | None = None,
                     var_attrs: dict[str, dict[str, Any]] | None = None):
    """A result-shaped ``xr.Dataset`` for :meth:`Probe.template`: each variable of ``outputs``
    (``{name: dims}``) with its dims sized by ``coords`` (the result's coordinates, as ``xr.Dataset``
    takes them: one per dim, plus any others such as ``(dim, labels)``), of dtype ``dtypes[name]``
    (default float64), filled with zeros; ``attrs`` the dataset's attributes, ``var_attrs`` each
    variable's."""
    import numpy as np
    import xarray as xr

    ds = xr.Dataset(coords=coords, attrs=dict(attrs or {}))
    for name, dims in outputs.items():
        missing = [d for d in dims if d not in ds.sizes]
        if missing:
            raise ProbeError(f"template of {name!r}: no coordinate gives the size of dim(s) {missing}")
        shape = tuple(ds.sizes[d] for d in dims)
        ds[name] = xr.Variable(dims, np.zeros(shape, dtype=(dtypes or {}).get(name, np.float64)),
                               attrs=dict((var_attrs or {}).get(name, {})))
    return ds


def fill_template(template: Any, values: dict[str, Any]):  # -> xr.Dataset
    """``template`` (from :func:`template_dataset`) with the values of each of its variables from
    ``values`` (``{name: array}``, each of the variable's shape, cast to its dtype within its kind):
    the one way a probe that declares its template builds its result, so the two cannot differ in
    anything but the values. A missing or extra name or a wrong shape raises :class:`ProbeError`."""
    import numpy as np

    missing = sorted(set(template.data_vars) - set(values))
    extra = sorted(set(values) - set(template.data_vars))
    if missing or extra:
        raise ProbeError(f"result values differ from the template's variables (missing: {missing}, "
                         f"not in the template: {extra})")
    for name, value in values.items():
        var = template[name].variable
        a = np.asarray(value)
        if a.shape != var.shape:
            raise ProbeError(f"variable {name!r}: values of shape {a.shape}, its template has {var.shape}")
        template[name] = var.copy(data=a.astype(var.dtype, casting="same_kind"))
    return template


def params_attrs(params: Any) -> dict[str, Any]:
    """``asdict(params)`` made JSON/Zarr-attribute friendly (tuples → lists, None → "none")."""
    out = {}
    for k, v in dataclasses.asdict(params).items():
        if isinstance(v, tuple):
            v = list(v)
        if v is None:
            v = "none"
        out[k] = v
    return out


def check_result(ds: Any, probe_cls: Any) -> Any:
    """Validate a probe's return value against the contract; returns it loaded into numpy.

    Must be an ``xr.Dataset`` without a ``step`` dim; declared ``outputs`` that are present must
    have the declared dims. A scalar ``step`` coordinate, if any, is dropped.
    """
    import xarray as xr

    if not isinstance(ds, xr.Dataset):
        raise TypeError(f"probe {probe_cls.name!r} returned {type(ds).__name__}, expected an xr.Dataset")
    if "step" in ds.dims:
        raise ValueError(f"probe {probe_cls.name!r} returned a 'step' dim; the engine adds it")
    if "step" in ds.coords:
        ds = ds.drop_vars("step")
    for name, dims in (probe_cls.outputs or {}).items():
        if name in ds.data_vars and tuple(ds[name].dims) != tuple(dims):
            raise ValueError(f"probe {probe_cls.name!r}: variable {name!r} has dims "
                             f"{tuple(ds[name].dims)}, declared {tuple(dims)}")
    if not ds.data_vars:
        raise ValueError(f"probe {probe_cls.name!r} returned no variables")
    return ds.load()
