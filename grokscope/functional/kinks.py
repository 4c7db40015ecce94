"""The kinks a network computes, whichever way they are written, found and named during a forward pass.

A kink is written as an activation *module* (``nn.ReLU()``, ``nn.Hardtanh()``, ...) or as a
*functional call* in some ``forward`` (``F.relu``, ``torch.relu``, ``x.relu()``, ``F.leaky_relu``,
``F.gelu``, ``F.silu``, ``F.hardtanh``, ``F.relu6``, ``x.clamp(min=0)``, ``torch.clamp_min``, the
in-place forms ``F.relu(x, inplace=True)``, ``x.relu_()``, ``x.clamp_(0)``, ...). Every module's
forward ends in such a call, so one mechanism sees both: inside :meth:`KinkWatch.watch` a
:class:`torch.overrides.TorchFunctionMode` sees every torch function call of the forward, and the
kinked ones (:data:`KINK_FUNCTIONS`) are recorded with the tensor they bend (their input, before an
in-place call changes it) and their kink values. A stack of the modules being called (forward
pre/post hooks on every module) says *where* each call happens, which gives its name:

* a call made by an activation module's own ``forward`` (``nn.ReLU`` calls ``F.relu``) is named
  after the module, e.g. ``layer1.0.act1`` (module-based models keep their module names);
* an activation module of another library (transformers' ``NewGELUActivation``, timm's GELU classes)
  whose maths is plain arithmetic is recognised by what it computes
  (:mod:`grokscope.functional.activations`); its input is taken by a forward pre-hook and it is named
  after the module too;
* any other call is ``<module>#<op><k>``: the ``k``-th call of that op (1-based) during one call of
  the module's ``forward``, e.g. ``layer1.0#relu1`` and ``layer1.0#relu2`` for the two ``F.relu`` of
  a pre-activation block, ``#relu1`` for a call in the root model's own ``forward``; the op is the
  family name (``relu`` for ``F.relu``, ``torch.relu``, ``x.relu_()``; ``clamp`` for ``clamp``,
  ``clip``, ``clamp_min`` and their in-place forms);
* a site reached again in the same forward pass (a reused module or block) counts once per call:
  ``name``, ``name#1``, ``name#2``, ...

Only calls whose input is a floating tensor with one row per row of the forward's input count (a
clamp of a parameter or a scale is not a kink of the input). Kink values: 0 for ReLU-like and for
smooth GELU-like functions (the paper counts those too); the clip values of hardtanh / relu6 /
clamp (scalar bounds only); ±3 for hardswish / hardsigmoid; the threshold of threshold; ±λ for the
shrinkages. Not seen: kinks written as arithmetic (``x * (x > 0)``, ``torch.where``,
``torch.maximum``), clamps with tensor bounds, max-pooling, code inside TorchScript or a compiled
graph, and calls nested inside another torch function (only the outermost call is seen).

:class:`KinkWatch` does the finding (a discovery pass lists the layers, later passes hand each
layer's tensor to :meth:`KinkWatch.on_layer`, which subclasses implement: the ``lc`` probe counts
crossings, ``grokscope regions`` keeps activation patterns); :func:`kink_layers` lists a model's
kinks without counting anything and :func:`format_kinks` prints them.
"""

from __future__ import annotations

import math
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any, Callable, Iterator, Sequence

import torch
from torch import nn
from torch.overrides import TorchFunctionMode

from .activations import Activation, recognise
from .modes import eval_mode

# -- which calls are kinks ----------------------------------------------------------------------------

#: activation modules whose kink is at 0 (GELU/SiLU/ELU are smooth but the paper counts them too).
ZERO_KINK_ACTIVATIONS: tuple[type[nn.Module], ...] = (
    nn.ReLU, nn.LeakyReLU, nn.PReLU, nn.RReLU, nn.ELU, nn.CELU, nn.SELU, nn.GELU, nn.SiLU, nn.Mish)


def module_kinks(module: nn.Module) -> tuple[float, ...] | None:
    """Pre-activation values where the activation module ``module`` is not linear, or None if it is
    not one (then a kinked call inside its ``forward`` is named ``<module>#<op><k>``).

    ReLU-like and GELU-like modules give ``(0,)``; Hardtanh/ReLU6 their clip values; Hardswish and
    Hardsigmoid ``(-3, 3)``; Threshold its threshold; Hardshrink/Softshrink ``(-λ, λ)``. Modules of
    other libraries (transformers' ``NewGELUActivation``, timm's ``GELUTanh``, ...) are recognised by
    what they compute (:func:`grokscope.functional.activations.recognise`).
    """
    if isinstance(module, nn.Hardtanh):  # includes ReLU6
        return (float(module.min_val), float(module.max_val))
    if isinstance(module, (nn.Hardswish, nn.Hardsigmoid)):
        return (-3.0, 3.0)
    if isinstance(module, nn.Threshold):
        return (float(module.threshold),)
    if isinstance(module, (nn.Hardshrink, nn.Softshrink)):
        return (-float(module.lambd), float(module.lambd))
    if isinstance(module, ZERO_KINK_ACTIVATIONS):
        return (0.0,)
    act = recognise(module)
    return act.kinks if act is not None else None


#: torch layers (exact types) whose forward is one kink-free functional call: they need no frame
#: on the module stack (fewer hooks per forward on conv nets).
_KINK_FREE: frozenset[type] = frozenset({
    nn.Linear, nn.Conv1d, nn.Conv2d, nn.Conv3d, nn.BatchNorm1d, nn.BatchNorm2d, nn.BatchNorm3d,
    nn.Identity, nn.Dropout, nn.Flatten, nn.AvgPool1d, nn.AvgPool2d, nn.AdaptiveAvgPool1d,
    nn.AdaptiveAvgPool2d, nn.MaxPool1d, nn.MaxPool2d, nn.Embedding, nn.LayerNorm})


@dataclass(frozen=True)
class KinkOp:
    """A family of kinked torch functions: its ``label`` (used in call-site names), whether it is
    piecewise linear, and ``values(args, kwargs)``: the kink values of one call (None: not a kink we
    can place, e.g. a clamp with tensor bounds)."""

    label: str
    piecewise_linear: bool
    values: Callable[[tuple, dict], tuple[float, ...] | None]


def _arg(args: tuple, kwargs: dict, pos: int, name: str, default: Any) -> Any:
    return args[pos] if len(args) > pos else kwargs.get(name, default)


def _scalar(v: Any) -> float | None:
    if isinstance(v, (bool, int, float)):
        return float(v)
    if isinstance(v, torch.Tensor) and v.numel() == 1 and v.dim() == 0:
        return float(v)
    return None


def _const(*values: float) -> Callable[[tuple, dict], tuple[float, ...]]:
    return lambda args, kwargs: values


def _bounds(*where: tuple[int, str, float | None]) -> Callable[[tuple, dict], tuple[float, ...] | None]:
    """Kink values read from the call's arguments (position, keyword, default); None bounds are absent."""
    def values(args: tuple, kwargs: dict) -> tuple[float, ...] | None:
        out = []
        for pos, name, default in where:
            v = _arg(args, kwargs, pos, name, default)
            if v is None:
                continue
            s = _scalar(v)
            if s is None or not math.isfinite(s):
                return None
            out.append(s)
        return tuple(sorted(set(out))) or None
    return values


def _shrink(args: tuple, kwargs: dict) -> tuple[float, ...] | None:
    lam = _scalar(_arg(args, kwargs, 1, "lambd", 0.5))
    return None if lam is None else (-lam, lam)


def _build_table() -> dict[Any, KinkOp]:
    F, T = torch.nn.functional, torch.Tensor
    zero = _const(0.0)
    families: list[tuple[KinkOp, list[str]]] = [
        (KinkOp("relu", True, zero), ["F.relu", "F.relu_", "torch.relu", "torch.relu_", "T.relu", "T.relu_"]),
        (KinkOp("leaky_relu", True, zero), ["F.leaky_relu", "F.leaky_relu_"]),
        (KinkOp("prelu", True, zero), ["F.prelu", "torch.prelu", "T.prelu"]),
        (KinkOp("rrelu", True, zero), ["F.rrelu", "F.rrelu_", "torch.rrelu", "torch.rrelu_"]),
        (KinkOp("elu", False, zero), ["F.elu", "F.elu_"]),
        (KinkOp("celu", False, zero), ["F.celu", "F.celu_", "torch.celu", "torch.celu_"]),
        (KinkOp("selu", False, zero), ["F.selu", "F.selu_", "torch.selu", "torch.selu_"]),
        (KinkOp("gelu", False, zero), ["F.gelu"]),
        (KinkOp("silu", False, zero), ["F.silu"]),
        (KinkOp("mish", False, zero), ["F.mish"]),
        (KinkOp("hardtanh", True, _bounds((1, "min_val", -1.0), (2, "max_val", 1.0))),
         ["F.hardtanh", "F.hardtanh_"]),
        (KinkOp("relu6", True, _const(0.0, 6.0)), ["F.relu6"]),
        (KinkOp("hardswish", False, _const(-3.0, 3.0)), ["F.hardswish"]),
        (KinkOp("hardsigmoid", True, _const(-3.0, 3.0)), ["F.hardsigmoid"]),
        (KinkOp("threshold", True, _bounds((1, "threshold", None))),
         ["F.threshold", "F.threshold_", "torch.threshold", "torch.threshold_"]),
        (KinkOp("hardshrink", True, _shrink), ["F.hardshrink", "T.hardshrink"]),
        (KinkOp("softshrink", True, _shrink), ["F.softshrink"]),
        (KinkOp("clamp", True, _bounds((1, "min", None), (2, "max", None))),
         ["torch.clamp", "torch.clamp_", "torch.clip", "torch.clip_", "T.clamp", "T.clamp_", "T.clip", "T.clip_"]),
        (KinkOp("clamp", True, _bounds((1, "min", None))),
         ["torch.clamp_min", "torch.clamp_min_", "T.clamp_min", "T.clamp_min_"]),
        (KinkOp("clamp", True, _bounds((1, "max", None))),
         ["torch.clamp_max", "torch.clamp_max_", "T.clamp_max", "T.clamp_max_"]),
    ]
    spaces = {"F": F, "torch": torch, "T": T}
    table: dict[Any, KinkOp] = {}
    for op, names in families:
        for full in names:
            space, attr = full.split(".")
            fn = getattr(spaces[space], attr, None)
            if fn is not None:
                table.setdefault(fn, op)
    return table


#: torch functions (by identity) that bend their input, with their family.
KINK_FUNCTIONS: dict[Any, KinkOp] = _build_table()


# -- layers ---------------------------------------------------------------------------------------------

@dataclass
class KinkLayer:
    """One counted tensor of a forward pass.

    ``kind``: ``"module"`` (the input of an activation module), ``"call"`` (the input of a functional
    call), ``"output"`` (the output of a module named in ``layers=``, sign at 0) or ``"logits"``.
    ``op``: the module class (``ReLU``) or the call's family (``relu``, ``clamp``); ``neurons``: elements
    per row; ``kinks``: the values where it bends; ``piecewise_linear``: False for GELU-like ops.
    """

    name: str
    kinks: tuple[float, ...]
    neurons: int
    op: str = ""
    kind: str = "module"
    piecewise_linear: bool = True


class _Frame:
    """One call of a module's forward: which module, its name, and how many calls of each kinked op
    it has made so far (``k`` of ``#<op><k>``)."""

    __slots__ = ("module", "name", "activation", "seen")

    def __init__(self, module: nn.Module, name: str, activation: bool):
        self.module, self.name, self.activation = module, name, activation
        self.seen: dict[str, int] | None = None


def _is_rows(t: Any) -> bool:
    """A tensor that can hold rows of neurons (floating, at least one dim)."""
    return isinstance(t, torch.Tensor) and t.dim() > 0 and t.is_floating_point()


class _KinkMode(TorchFunctionMode):
    """Hands every kinked torch function call to its :class:`KinkWatch` before running it."""

    def __init__(self, watch: "KinkWatch"):
        super().__init__()
        self.watch = watch

    def __torch_function__(self, func: Any, types: Any, args: tuple = (), kwargs: dict | None = None) -> Any:
        kwargs = kwargs or {}
        try:
            op = KINK_FUNCTIONS.get(func)
        except TypeError:  # an unhashable callable is no kink
            op = None
        if op is not None and not self.watch.busy:
            self.watch.call(op, args, kwargs)
        return func(*args, **kwargs)


class KinkWatch:
    """Finds the kinked tensors of ``root``'s forward passes, names them, and hands them to
    :meth:`on_layer` (see the module docstring for what is seen and how it is named).

    Default: every kinked module and call. ``layers=[...]`` instead: module names count the module's
    *output* (sign at 0, as the authors' hooks do), call-site names (``block#relu1``) that call's
    input at its kinks; every call of each. Use::

        with Watch(model, layers) as w:        # a subclass implementing on_layer
            w.start_pass(rows=2)
            with w.watch():
                model(x2)                      # discovery: w.layers, w.max_numel
            w.end_discovery()
            w.start_pass(rows=len(x))
            with w.watch():
                model(x)                       # on_layer(j, t) for each layer, in forward order

    Layers are keyed by (site, call number); a pass must call them as the discovery pass did.
    """

    def __init__(self, root: nn.Module, layers: Sequence[str] | None = None):
        self.root = root
        self.explicit = [str(n) for n in layers] if layers else None
        self.layers: list[KinkLayer] = []
        self.index: dict[tuple, int] = {}
        self.calls: dict[tuple, int] = {}
        self.sites: list[str] = []        # every call site seen in discovery (selected or not)
        self.discover = True
        self.busy = False                 # True while on_layer runs (its own torch calls are not kinks)
        self.rows = 0
        self.max_numel = 0
        self._names: dict[int, str] = {}
        self._ignored: set[tuple] = set()
        self._stack: list[_Frame] = []
        self._root_frame = _Frame(root, "", module_kinks(root) is not None)
        self._explicit_calls: set[str] = set()
        self._activation: dict[int, bool] = {}          # module id -> is an activation module
        self._recognised: dict[int, Activation] = {}    # module id -> what a foreign activation computes
        self._handles: list[Any] = []
        self._size_handles: list[Any] = []

    # -- setup ------------------------------------------------------------------------------------
    def __enter__(self) -> "KinkWatch":
        modules = dict(self.root.named_modules())
        for n, m in modules.items():
            self._names.setdefault(id(m), n)
        if self.explicit is not None:
            missing = [n for n in self.explicit if n not in modules and "#" not in n]
            if missing:
                raise ValueError(f"layers {missing} are not modules of {type(self.root).__name__}; "
                                 f"valid names include: {', '.join(n for n in list(modules)[1:40] if n)} "
                                 "(and kink call sites such as 'block#relu1', see kink_layers)")
            self._explicit_calls = {n for n in self.explicit if "#" in n}
        for n, m in modules.items():
            self._activation[id(m)] = module_kinks(m) is not None
            act = recognise(m)
            if act is not None:  # an activation of another library: its input is taken by a hook
                self._recognised[id(m)] = act
                self._handles.append(m.register_forward_pre_hook(self._recognised_hook))
        for n, m in modules.items():
            if type(m) in _KINK_FREE:  # no frame needed: its forward makes no kinked call
                continue
            self._handles.append(m.register_forward_pre_hook(self._push))
            self._handles.append(m.register_forward_hook(self._pop, always_call=True))
        if self.explicit is not None:
            for n in self.explicit:
                if n in modules:
                    self._handles.append(modules[n].register_forward_hook(self._output_hook))
        for m in modules.values():  # sizes of every leaf's output during discovery (memory cap)
            if not list(m.children()):
                self._size_handles.append(m.register_forward_hook(self._size_hook))
        return self

    def __exit__(self, *exc: Any) -> None:
        for h in self._handles + self._size_handles:
            h.remove()
        self._handles.clear()
        self._size_handles.clear()

    def start_pass(self, rows: int) -> None:
        """Begin a forward pass over ``rows`` input rows (call numbers start again)."""
        self.rows = int(rows)
        self.calls.clear()
        self._stack.clear()
        self._root_frame.seen = None

    @contextmanager
    def watch(self) -> Iterator[None]:
        """See the kinked calls of whatever runs inside (the model's forward, not the caller's maths)."""
        with _KinkMode(self):
            yield

    def end_discovery(self) -> None:
        """Switch from listing layers to handing them to :meth:`on_layer`; checks named call sites."""
        for h in self._size_handles:
            h.remove()
        self._size_handles.clear()
        self.discover = False
        missing = sorted(self._explicit_calls - set(self.sites))
        if missing:
            found = ", ".join(self.sites[:40]) or "none"
            raise ValueError(f"layers {missing} are not kink call sites of {type(self.root).__name__} "
                             f"(call sites found: {found})")

    # -- hooks ------------------------------------------------------------------------------------
    def _push(self, module: nn.Module, args: Any) -> None:
        act = self._activation.get(id(module))
        self._stack.append(_Frame(module, self._names.get(id(module), type(module).__name__),
                                  module_kinks(module) is not None if act is None else act))

    def _recognised_hook(self, module: nn.Module, args: Any) -> None:
        t = args[0] if args else None
        if self.explicit is not None or not _is_rows(t):
            return
        act = self._recognised[id(module)]
        self._seen((id(module),), self._names.get(id(module), type(module).__name__), t, act.kinks,
                   type(module).__name__, "module", act.piecewise_linear)

    def _pop(self, module: nn.Module, args: Any, output: Any) -> None:
        if self._stack and self._stack[-1].module is module:
            self._stack.pop()

    def _size_hook(self, module: nn.Module, args: Any, output: Any) -> None:
        if isinstance(output, torch.Tensor) and output.dim() > 0:
            self.max_numel = max(self.max_numel, output[0].numel())

    def _output_hook(self, module: nn.Module, args: Any, output: Any) -> None:
        name = self._names[id(module)]
        if not isinstance(output, torch.Tensor):
            raise TypeError(f"layer {name!r} returns {type(output).__name__}, not a tensor")
        self._seen(("out", id(module)), name, output, (0.0,), type(module).__name__, "output", True)

    def call(self, op: KinkOp, args: tuple, kwargs: dict) -> None:
        """A kinked call during a watched pass: name its site, then record or hand on its input."""
        t = args[0] if args else kwargs.get("input", kwargs.get("self"))
        frame = self._stack[-1] if self._stack else self._root_frame
        if frame.activation:  # the activation module's own call: named after the module
            if id(frame.module) in self._recognised:  # its input was taken by _recognised_hook
                return
            values = op.values(args, kwargs)
            if self.explicit is not None or values is None or not _is_rows(t):
                return
            self._seen((id(frame.module),), frame.name, t, values, type(frame.module).__name__, "module",
                       op.piecewise_linear)
            return
        seen = frame.seen if frame.seen is not None else {}
        frame.seen = seen
        k = seen[op.label] = seen.get(op.label, 0) + 1  # every call of the op has an index, counted or not
        values = op.values(args, kwargs)
        if values is None or not _is_rows(t):
            return
        site = f"{frame.name}#{op.label}{k}"
        if self.discover and site not in self.sites:
            self.sites.append(site)
        if self.explicit is not None and site not in self._explicit_calls:
            return
        self._seen((id(frame.module), op.label, k), site, t, values, op.label, "call", op.piecewise_linear)

    def record_output(self, out: torch.Tensor) -> None:
        """Count the model's output as a layer called ``"output"`` (sign at 0)."""
        self._seen(("logits",), "output", out, (0.0,), "output", "logits", True)

    def _seen(self, key: tuple, base: str, t: torch.Tensor, values: tuple[float, ...], op: str, kind: str,
              piecewise_linear: bool) -> None:
        call = self.calls.get(key, 0)
        self.calls[key] = call + 1
        rows_ok = t.shape[0] == self.rows
        if self.discover:
            if not rows_ok:
                self._ignored.add((key, call))
                return
            self.index[(key, call)] = len(self.layers)
            self.layers.append(KinkLayer(base if call == 0 else f"{base}#{call}", tuple(values),
                                         int(t[0].numel()), op, kind, piecewise_linear))
            self.max_numel = max(self.max_numel, int(t[0].numel()))
            return
        j = self.index.get((key, call))
        if j is None:
            if (key, call) in self._ignored:
                return
            raise RuntimeError("the model called its kinks differently from the discovery pass "
                               f"(at {base!r}; data-dependent control flow is not supported)")
        if not rows_ok:
            raise RuntimeError(f"layer {self.layers[j].name!r} sees {t.shape[0]} rows, the pass has "
                               f"{self.rows}: its leading dim is not the batch")
        self.busy = True
        try:
            self.on_layer(j, t)
        finally:
            self.busy = False

    # -- for subclasses ---------------------------------------------------------------------------
    @staticmethod
    def module_key(module: nn.Module) -> tuple:
        """The site key of an activation module's own call (see :meth:`next_layer`)."""
        return (id(module),)

    def next_layer(self, key: tuple) -> int:
        """Index of the layer of the next call of site ``key``, counting the call (for code that
        computes a layer itself instead of running the module, like lc's fast path)."""
        call = self.calls.get(key, 0)
        self.calls[key] = call + 1
        j = self.index.get((key, call))
        if j is None:
            raise RuntimeError("the model called its kinks differently from the discovery pass "
                               "(data-dependent control flow is not supported)")
        return j

    def has_layer(self, key: tuple) -> bool:
        """True when the first call of site ``key`` is a layer."""
        return (key, 0) in self.index

    def on_layer(self, j: int, t: torch.Tensor) -> None:
        """Layer ``j``'s tensor ``t`` (``(rows, ...)``) during a counting pass; subclasses use it."""
        raise NotImplementedError


@torch.no_grad()
def kink_layers(model: nn.Module, example: torch.Tensor, forward: Callable[[torch.Tensor], Any] | None = None,
                layers: Sequence[str] | None = None, include_output: bool = False) -> list[KinkLayer]:
    """The layers ``lc`` counts (and ``regions`` draws) for ``model``, found by one forward pass of the
    first row of ``example`` (``(n, *input_shape)``, continuous: for token models pass the embedded
    inputs and ``forward=model.forward_embedded``). ``layers``/``include_output`` as in ``lc``.
    The model runs in eval mode; its mode is restored."""
    forward = forward or model
    with eval_mode(model), KinkWatch(model, layers) as w:
        x = torch.cat([example[:1], example[:1]])
        w.start_pass(2)
        with w.watch():
            out = forward(x)
        if include_output:
            w.record_output(out)
        w.end_discovery()
        return list(w.layers)


def format_kinks(layers: Sequence[KinkLayer]) -> list[str]:
    """One line per layer: name, what it is, neurons and kink values (for CLI listings)."""
    what = {"module": "input of module", "call": "input of call", "output": "output of module",
            "logits": "logits"}
    width = max((len(l.name) for l in layers), default=0)
    out = []
    for l in layers:
        kinks = ", ".join(f"{v:g}" for v in l.kinks)
        smooth = "" if l.piecewise_linear else ", smooth"
        out.append(f"{l.name:<{width}}  {what.get(l.kind, l.kind)} {l.op}: {l.neurons} neurons, "
                   f"kinks at {kinks}{smooth}")
    return out


def count_crossings(t: torch.Tensor, n_vertices: int, kink_values: Sequence[float] = (0.0,)) -> torch.Tensor:
    """For ``t`` of shape ``(B * n_vertices, ...)`` (vertices of a point consecutive), the number of
    neurons per point whose sign relative to some kink value ``b`` is not constant over the vertices.

    Sign constant ⇔ all ``> b``, all ``< b`` or all ``== b``; with ``mn, mx`` the min and max over the
    vertices that is ``not (mn <= b <= mx and mn < mx)``. Returns int64 ``(B,)``.
    """
    if t.dim() == 4 and not t.is_contiguous() and t.is_contiguous(memory_format=torch.channels_last):
        t = t.permute(0, 2, 3, 1)  # memory order (a view): neurons are summed, their order is free
    z = t.reshape(t.shape[0] // n_vertices, n_vertices, -1)
    mn, mx = z.amin(dim=1), z.amax(dim=1)  # two reductions beat torch.aminmax over a middle dim
    differ = mn < mx
    crossing = None
    for b in kink_values:
        c = (mn <= b) & (mx >= b) & differ
        crossing = c if crossing is None else crossing | c
    assert crossing is not None
    return crossing.sum(dim=1)
