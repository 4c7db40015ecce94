"""Activation modules recognised by what they compute, not by their class.

Libraries write their activations as their own classes with plain arithmetic inside: transformers'
``NewGELUActivation`` (GPT-2's ``gelu_new``: ``0.5·x·(1 + tanh(√(2/π)(x + 0.044715x³)))``),
``FastGELUActivation``, ``QuickGELUActivation`` (``x·σ(1.702x)``), ``GELUActivation``,
``SiLUActivation``, ``ReLUSquaredActivation``, ... (the classes behind ``ACT2FN``), and timm its own
``GELU``/``Swish``/``HardSwish`` variants. A kink-watching forward pass sees none of them as a kinked
torch call, so :func:`recognise` asks the module itself: a parameter-free leaf module defined outside
``torch.nn`` is run once on a probe tensor (``PROBE``: 401 values in ``[-8, 8]``, float64, through its
``forward`` so no hook fires) and compared with the reference functions of :data:`REFERENCES`; the
first that agrees everywhere (``|f − g| ≤ TOL·(1 + |g|)``) names it and gives its kink values.

Smooth activations (GELU, SiLU, Mish, ELU, ReLU², ...) have no kink; like torch's own ``nn.GELU``
(see :mod:`grokscope.functional.kinks`) they count at the zero-crossing of their pre-activation, the
point where they bend from ~0 to ~identity, and are marked ``piecewise_linear=False``. A module that
matches nothing (tanh, sigmoid, softplus, an activation with learned parameters) is not a kink.
"""

from __future__ import annotations

import math
import weakref
from dataclasses import dataclass
from typing import Callable

import torch
from torch import nn

PROBE_RANGE, PROBE_POINTS, TOL = 8.0, 401, 1e-4


@dataclass(frozen=True)
class Activation:
    """What a recognised activation computes: ``label`` (the reference it matched), its kink values
    and whether it is piecewise linear."""

    label: str
    kinks: tuple[float, ...]
    piecewise_linear: bool


def _gelu_tanh(x: torch.Tensor) -> torch.Tensor:
    return 0.5 * x * (1.0 + torch.tanh(math.sqrt(2.0 / math.pi) * (x + 0.044715 * x ** 3)))


#: reference functions, in the order they are tried: ``(Activation, f)``.
REFERENCES: tuple[tuple[Activation, Callable[[torch.Tensor], torch.Tensor]], ...] = (
    (Activation("relu", (0.0,), True), torch.relu),
    (Activation("relu6", (0.0, 6.0), True), lambda x: x.clamp(0.0, 6.0)),
    (Activation("gelu", (0.0,), False), lambda x: torch.nn.functional.gelu(x)),
    (Activation("gelu_tanh", (0.0,), False), _gelu_tanh),
    (Activation("quick_gelu", (0.0,), False), lambda x: x * torch.sigmoid(1.702 * x)),
    (Activation("silu", (0.0,), False), lambda x: x * torch.sigmoid(x)),
    (Activation("mish", (0.0,), False), lambda x: x * torch.tanh(torch.nn.functional.softplus(x))),
    (Activation("elu", (0.0,), False), lambda x: torch.where(x > 0, x, torch.expm1(x))),
    (Activation("relu_squared", (0.0,), False), lambda x: torch.relu(x) ** 2),
    (Activation("hardswish", (-3.0, 3.0), False), lambda x: x * (x + 3.0).clamp(0.0, 6.0) / 6.0),
    (Activation("hardsigmoid", (-3.0, 3.0), True), lambda x: (x + 3.0).clamp(0.0, 6.0) / 6.0),
)

_CACHE: "weakref.WeakKeyDictionary[nn.Module, Activation | None]" = weakref.WeakKeyDictionary()


def probe_tensor() -> torch.Tensor:
    """The values an unknown module is evaluated at: ``PROBE_POINTS`` points in ``[-8, 8]``, float64."""
    return torch.linspace(-PROBE_RANGE, PROBE_RANGE, PROBE_POINTS, dtype=torch.float64)


def _leaky(x: torch.Tensor, y: torch.Tensor) -> Activation | None:
    """A leaky ReLU (identity above 0, a constant slope in (0, 1) below), or None."""
    pos, neg = x > 0, x < 0
    if not torch.allclose(y[pos], x[pos], rtol=TOL, atol=TOL):
        return None
    slope = y[neg] / x[neg]
    a = float(slope.mean())
    if 0.0 < a < 1.0 and float((slope - a).abs().max()) <= TOL:
        return Activation("leaky_relu", (0.0,), True)
    return None


def candidate(module: nn.Module) -> bool:
    """Whether ``module`` is worth testing: a leaf without parameters whose class is not torch's own
    (torch's activations are known by class in :mod:`grokscope.functional.kinks`)."""
    return (not type(module).__module__.startswith("torch.") and next(module.children(), None) is None
            and next(module.parameters(), None) is None)


@torch.no_grad()
def recognise(module: nn.Module) -> Activation | None:
    """The :class:`Activation` ``module`` computes elementwise, or None (see the module docstring).
    The answer is cached per module; modules that are not :func:`candidate` s give None at once."""
    if not candidate(module):
        return None
    try:
        return _CACHE[module]
    except (KeyError, TypeError):
        pass
    found = _classify(module)
    try:
        _CACHE[module] = found
    except TypeError:  # not weak-referenceable
        pass
    return found


def _classify(module: nn.Module) -> Activation | None:
    x = probe_tensor()
    with torch._C.DisableTorchFunction():  # no mode (a watching forward pass) sees the probe
        try:
            y = module.forward(x.clone())
        except Exception:  # noqa: BLE001 - a module that cannot take a 1-D float tensor is no activation
            return None
        if not isinstance(y, torch.Tensor) or y.shape != x.shape or not y.is_floating_point():
            return None
        y = y.to(torch.float64)
        for act, f in REFERENCES:
            g = f(x)
            if bool(((y - g).abs() <= TOL * (1.0 + g.abs())).all()):
                return act
        return _leaky(x, y)
