"""Linear-region pictures: the spline partition of a piecewise-linear network on a 2-D plane
(``grokscope regions``; the paper's SplineCam-style figures, computed on a pixel grid).

The plane goes through three inputs ``x0, x1, x2``: the point with plane coordinates ``(a, b)`` is
``x0 + a (x1 - x0) + b (x2 - x0)``, so the points sit at ``(0, 0)``, ``(1, 0)``, ``(0, 1)`` and the view
is ``[-margin, 1 + margin]²``. On a ``resolution x resolution`` grid of that view every kinked unit's
*activation pattern* is recorded (for each kink value ``k`` of its module, whether the unit's input is
``> k``). The network is affine on each set of constant pattern, so

* a pixel is a **region boundary** when its pattern differs from its right or upper neighbour (the
  boundary then passes between the two pixel centres: within one pixel spacing of the pixel);
* a pixel is on the **decision boundary** when the predicted class (argmax of the logits) differs
  from its right or upper neighbour;
* ``n_regions`` counts the distinct patterns in the view (the linear regions the plane meets, up to
  the grid resolution), using a 64-bit hash of each pattern.

The kinks are found as the ``lc`` probe finds them (:mod:`grokscope.functional.kinks`: activation
modules and functional calls such as ``F.relu`` or ``x.clamp(min=0)``, with the same layer names);
everything is batched over grid rows. Token
models are drawn in embedding space (:func:`grokscope.models.adapters.continuous_view`), on the plane
through the three embedded points of each checkpoint. Models with smooth parts (GELU, tanh,
softmax attention, LayerNorm, ...) have no linear regions and are refused with the module named;
smooth functional calls (``F.gelu``, ``F.silu``, ...) are refused with their call site named; a
numerical check (the logits must be affine between two grid points of equal pattern) guards the rest
(smooth maths no kink watch sees, such as ``torch.tanh`` or softmax).

This module is the maths (:mod:`.figures` draws); :func:`activation_boundaries` is the functional core (a model and a :class:`Plane` in, a
:class:`RegionMap` of numpy arrays out). The ``regions`` probe (``grokscope.probes.regions``) stores
its pictures per checkpoint; :func:`regions_figure` draws a run's stored pictures as a grid of panels
(PNG/PDF/SVG) or an animated GIF; ``grokscope regions`` (``grokscope.cli.regions``) is its command.
"""

from __future__ import annotations

import math
import time
from dataclasses import dataclass, field
from typing import Callable, Sequence

import numpy as np
import torch
from torch import nn

from grokscope.errors import GrokscopeError
from grokscope.functional.activations import recognise
from grokscope.functional.kinks import KinkLayer, KinkWatch, module_kinks
from grokscope.functional.devices import model_device, model_dtype

#: kinked activation modules that are piecewise linear (their pattern bits pin down the piece).
PIECEWISE_LINEAR_ACTIVATIONS: tuple[type[nn.Module], ...] = (
    nn.ReLU, nn.LeakyReLU, nn.PReLU, nn.RReLU, nn.Hardtanh, nn.Threshold, nn.Hardshrink, nn.Softshrink,
    nn.Hardsigmoid)
#: modules that make a network smooth (no linear regions at all).
SMOOTH_MODULES: tuple[type[nn.Module], ...] = tuple(t for t in (
    nn.Tanh, nn.Sigmoid, nn.Softplus, nn.Softmax, nn.LogSoftmax, nn.Softmin, nn.LogSigmoid, nn.Softsign,
    nn.Tanhshrink, nn.LayerNorm, nn.GroupNorm, nn.LocalResponseNorm, nn.InstanceNorm1d, nn.InstanceNorm2d,
    nn.InstanceNorm3d, nn.MultiheadAttention, getattr(nn, "RMSNorm", None)) if t is not None)
#: piecewise-linear modules whose kinks are not hooked (the picture would miss their boundaries).
UNHOOKED_KINKS: tuple[type[nn.Module], ...] = (
    nn.MaxPool1d, nn.MaxPool2d, nn.MaxPool3d, nn.AdaptiveMaxPool1d, nn.AdaptiveMaxPool2d,
    nn.AdaptiveMaxPool3d)
_HASH_SEED = 0x5EED
PALETTE_SIZE = 10  # region fill colours (figures._FILL): a region's colour index is its hash modulo this


class RegionsError(GrokscopeError, ValueError):
    """Bad input for a region picture: the message names the value, file or module at fault."""


# -- the plane ----------------------------------------------------------------------------------------

@dataclass
class Plane:
    """The plane ``origin + a u + b v`` viewed over ``(a, b) ∈ [-margin, 1 + margin]²``.

    ``origin``, ``u``, ``v`` have the model's (continuous) input shape, without a batch dim.
    """

    origin: torch.Tensor
    u: torch.Tensor
    v: torch.Tensor
    margin: float = 0.25

    @classmethod
    def through(cls, x0: torch.Tensor, x1: torch.Tensor, x2: torch.Tensor, margin: float = 0.25) -> "Plane":
        """The plane through three points (``x0`` at ``(0, 0)``, ``x1`` at ``(1, 0)``, ``x2`` at ``(0, 1)``).

        Raises :class:`RegionsError` when shapes differ, the margin is negative or not finite, or the
        points are collinear (no plane).
        """
        if not (x0.shape == x1.shape == x2.shape):
            raise RegionsError(f"the three points must have one shape, got {tuple(x0.shape)}, "
                               f"{tuple(x1.shape)}, {tuple(x2.shape)}")
        if not math.isfinite(margin) or margin < 0:
            raise RegionsError(f"margin must be a finite number >= 0, got {margin!r}")
        u, v = x1 - x0, x2 - x0
        uu, vv = u.double().flatten(), v.double().flatten()
        nu, nv = float(uu.norm()), float(vv.norm())
        if nu == 0 or nv == 0 or abs(float(uu @ vv)) >= (1 - 1e-9) * nu * nv:
            raise RegionsError("the three points are collinear (or two are equal): they span no plane")
        return cls(origin=x0, u=u, v=v, margin=float(margin))

    @property
    def limits(self) -> tuple[float, float]:
        """``(low, high)`` of both plane coordinates."""
        return -self.margin, 1.0 + self.margin

    def at(self, a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
        """The inputs at plane coordinates ``a``, ``b`` (each ``(n,)``): shape ``(n, *origin.shape)``."""
        dt = self.origin.dtype
        a = a.to(self.origin.device, dt).reshape(-1, *([1] * self.origin.dim()))
        b = b.to(self.origin.device, dt).reshape(-1, *([1] * self.origin.dim()))
        return self.origin + a * self.u + b * self.v

    def to(self, device: torch.device | str, dtype: torch.dtype) -> "Plane":
        return Plane(self.origin.to(device, dtype), self.u.to(device, dtype), self.v.to(device, dtype),
                     self.margin)


# -- the functional core ------------------------------------------------------------------------------

@dataclass
class RegionMap:
    """What :func:`activation_boundaries` computes on an ``R x R`` grid; images are indexed
    ``[i_b, i_a]`` (row = coordinate ``b``, column = ``a``, ``origin="lower"`` in ``imshow``).

    ``boundary`` (R, R) bool: the pattern differs from the right or upper neighbour;
    ``layer_boundary`` (L, R, R) bool: the same per kinked layer (``layers[l]``);
    ``decision`` (R, R) bool: the predicted class differs from the right or upper neighbour;
    ``pred`` (R, R) int64: predicted class; ``region`` (R, R) int64: a 64-bit hash of the pattern
    (equal patterns, equal hashes); ``n_regions``: distinct hashes; ``a``/``b`` (R,): coordinates.
    """

    a: np.ndarray
    b: np.ndarray
    boundary: np.ndarray
    layer_boundary: np.ndarray
    decision: np.ndarray
    pred: np.ndarray
    region: np.ndarray
    n_regions: int
    layers: list[str]
    neurons: list[int]
    seconds: float = 0.0

    @property
    def spacing(self) -> float:
        """Distance between neighbouring pixel centres (plane units)."""
        return float(self.a[1] - self.a[0])

    @property
    def extent(self) -> tuple[float, float, float, float]:
        """``imshow`` extent: pixel edges, half a spacing outside the first and last centres."""
        h = self.spacing / 2
        return (float(self.a[0] - h), float(self.a[-1] + h), float(self.b[0] - h), float(self.b[-1] + h))

    def picture(self, corners: Sequence[tuple[int, int]] = ()) -> RegionPicture:
        """The map as :func:`draw_map` draws it."""
        return RegionPicture(self.a, self.b, self.boundary, self.decision, fill_index(self.region),
                             self.n_regions, list(corners))


@dataclass
class RegionPicture:
    """What a region picture shows (a :class:`RegionMap` as the ``regions`` probe stores it):
    ``boundary``/``decision`` (R, R) bool, ``fill`` (R, R) int colour index of each pixel's region,
    ``a``/``b`` (R,) plane coordinates, ``n_regions``, the corners ``[(index, class)]`` and the
    accuracies at that checkpoint (``{"train": 0.98, ...}``, where known)."""

    a: np.ndarray
    b: np.ndarray
    boundary: np.ndarray
    decision: np.ndarray
    fill: np.ndarray
    n_regions: int
    corners: list[tuple[int, int]] = field(default_factory=list)
    accuracy: dict[str, float] = field(default_factory=dict)

    @property
    def extent(self) -> tuple[float, float, float, float]:
        """``imshow`` extent: pixel edges, half a spacing outside the first and last centres."""
        h = float(self.a[1] - self.a[0]) / 2
        return (float(self.a[0] - h), float(self.a[-1] + h), float(self.b[0] - h), float(self.b[-1] + h))


class _PatternHooks(KinkWatch):
    """The ``lc`` probe's kink watch (same kinked modules and calls, same layer list and call order),
    keeping each layer's pattern bits ``(rows, neurons * n_kinks)`` instead of counting crossings."""

    bits: list[torch.Tensor | None]

    def on_layer(self, j: int, t: torch.Tensor) -> None:
        k = self.layers[j].kinks
        flat = t.reshape(t.shape[0], -1)
        self.bits[j] = flat > k[0] if len(k) == 1 else torch.cat([flat > kv for kv in k], dim=1)


def check_piecewise_linear(model: nn.Module, layers: Sequence[KinkLayer] = ()) -> None:
    """Raise :class:`RegionsError` naming the parts of ``model`` that have no linear regions.

    Refused: kinked but smooth activation modules (GELU, SiLU, ELU, ...), smooth modules (tanh, sigmoid,
    softmax, LayerNorm, attention, ...), max-pooling (piecewise linear, but its kinks are not tracked)
    and, among the kink ``layers`` a forward pass found, smooth functional calls (``F.gelu``, ...).
    Other smooth functional maths cannot be seen here; :func:`activation_boundaries` checks affinity
    numerically.
    """
    bad = []
    for name, m in model.named_modules():
        label = f"{name or '<model>'} ({type(m).__name__})"
        foreign = recognise(m)  # another library's activation class, by what it computes
        if module_kinks(m) is not None and not (isinstance(m, PIECEWISE_LINEAR_ACTIVATIONS)
                                                or (foreign is not None and foreign.piecewise_linear)):
            bad.append(f"{label}: smooth activation")
        elif isinstance(m, SMOOTH_MODULES) or type(m).__name__.endswith("Attention"):
            bad.append(f"{label}: smooth")
        elif isinstance(m, UNHOOKED_KINKS):
            bad.append(f"{label}: max-pooling kinks are not tracked")
    bad += [f"{l.name} ({l.op}): smooth activation" for l in layers
            if l.kind == "call" and not l.piecewise_linear]
    if bad:
        raise RegionsError(f"{type(model).__name__} is not piecewise linear, so it has no linear regions to "
                           f"draw: {'; '.join(bad[:6])}{'; ...' if len(bad) > 6 else ''}. Region pictures "
                           "need ReLU / LeakyReLU-type networks (Linear, Conv, ReLU, ...)")


def _hash_weights(n: int, layer: int, device: torch.device) -> torch.Tensor:
    g = torch.Generator().manual_seed(_HASH_SEED + 7919 * layer)
    return torch.randint(-(2 ** 62), 2 ** 62, (n,), generator=g, dtype=torch.int64).to(device)


def _longest_runs(same: np.ndarray) -> list[tuple[int, int, int]]:
    """For rows of ``same`` ((rows, R-1) bool: pixel j equals pixel j+1), the longest run of equal
    pixels per row as ``(row, start, end)`` (pixel indices, end inclusive)."""
    out = []
    for i, row in enumerate(same):
        best, start, cur = (0, 0, 0), 0, 0
        for j, s in enumerate(row):
            if s:
                cur += 1
                if cur > best[0]:
                    best = (cur, start, j + 1)
            else:
                cur, start = 0, j + 1
        if best[0] > 0:
            out.append((i, best[1], best[2]))
    return out


def _check_affine(g: Callable[[torch.Tensor, torch.Tensor], torch.Tensor], rmap: RegionMap,
                  n_rows: int = 12, min_len: int = 4) -> None:
    """Raise when the logits are not affine between two grid points of one region (row segments of
    equal pattern: the midpoint must map to the mean of the end points)."""
    rows = np.unique(np.linspace(0, len(rmap.b) - 1, n_rows).round().astype(int))
    same = ~rmap.boundary[rows, :-1]
    segs = [(rows[i], s, e) for i, s, e in _longest_runs(same) if e - s >= min_len]
    if not segs:
        return
    r, s, e = (torch.tensor([x[k] for x in segs]) for k in range(3))
    a0, a1 = torch.from_numpy(rmap.a)[s], torch.from_numpy(rmap.a)[e]
    bb = torch.from_numpy(rmap.b)[r]
    aa = torch.cat([a0, a1, (a0 + a1) / 2])
    raw = g(aa, bb.repeat(3))
    tol = 1e-8 if raw.dtype == torch.float64 else 1e-3
    f = raw.double()
    n = len(segs)
    f0, f1, fm = f[:n], f[n:2 * n], f[2 * n:]
    scale = float(f.abs().max()) + 1.0
    err = float((fm - (f0 + f1) / 2).abs().max()) / scale
    if err > tol:
        raise RegionsError(f"the model is not piecewise linear in its hooked activations: on a linear "
                           f"region its logits are not affine (relative error {err:.2e} > {tol:g}); it "
                           "probably applies smooth maths that no kink watch sees (torch.tanh, softmax, "
                           "x * (x > 0), ...)")


def plane_forward(model: nn.Module, forward: Callable[[torch.Tensor], torch.Tensor], plane: Plane,
                  fast: bool = True) -> Callable[[torch.Tensor, torch.Tensor], torch.Tensor]:
    """``g(a, b)``: the logits at plane coordinates ``a``, ``b`` (each ``(n,)``), ``(n, classes)``.

    For a ``Sequential`` called directly whose first layer (after Flatten / Identity / Dropout) is a
    ``Linear``, that layer is applied to the plane once: ``W(x0 + a u + b v) + c = (W x0 + c) + a Wu +
    b Wv``, so grid points never materialise in input space (the kinked modules come later, so the
    hooks see the same tensors). Otherwise ``forward(plane.at(a, b))``.
    """
    if fast and forward is model and isinstance(model, nn.Sequential):
        mods = list(model)
        flat = plane.origin.dim() == 1
        k = 0
        while k < len(mods) and isinstance(mods[k], (nn.Flatten, nn.Identity, nn.Dropout)):
            if isinstance(mods[k], nn.Flatten):
                if not (mods[k].start_dim == 1 and mods[k].end_dim == -1):
                    break
                flat = True
            k += 1
        if k < len(mods) and isinstance(mods[k], nn.Linear) and flat:
            lin, rest = mods[k], model[k + 1:]
            c0 = torch.nn.functional.linear(plane.origin.reshape(-1), lin.weight, lin.bias)
            cu = torch.nn.functional.linear(plane.u.reshape(-1), lin.weight)
            cv = torch.nn.functional.linear(plane.v.reshape(-1), lin.weight)

            def g(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
                a = a.to(c0.device, c0.dtype)[:, None]
                b = b.to(c0.device, c0.dtype)[:, None]
                return rest(torch.addcmul(torch.addcmul(c0, a, cu), b, cv))
            return g
    return lambda a, b: forward(plane.at(a, b))


def grid_axis(margin: float, resolution: int) -> torch.Tensor:
    """The plane coordinates ``(resolution,)`` float64 of a picture's pixel centres along ``a`` (and
    ``b``): ``resolution`` points evenly over ``[-margin, 1 + margin]`` (:attr:`Plane.limits`)."""
    return torch.linspace(-float(margin), 1.0 + float(margin), int(resolution), dtype=torch.float64)


@torch.no_grad()
def activation_boundaries(model: nn.Module, plane: Plane, resolution: int = 400, *,
                          forward: Callable[[torch.Tensor], torch.Tensor] | None = None,
                          layers: Sequence[str] | None = None, chunk_points: int = 16384,
                          check: bool = True) -> RegionMap:
    """Region and decision boundaries of ``model`` on ``plane`` over a ``resolution²`` grid.

    ``forward`` (default ``model``) maps a batch of plane points (``(n, *plane.origin.shape)``) to
    logits ``(n, classes)``; hooks are looked up in ``model`` (pass ``model.forward_embedded`` and an
    embedding-space plane for token models). ``layers`` counts the outputs of these modules (sign
    at 0) instead of the inputs of the kinked activations (as in the ``lc`` probe). Grid rows are
    evaluated ``chunk_points`` at a time (one forward pass each, no loop over points). The model runs
    in eval mode, in its own dtype, and its mode is restored. ``check`` refuses non-piecewise-linear
    models (see :func:`check_piecewise_linear`, plus a numerical affinity check).
    """
    t0 = time.perf_counter()
    res = int(resolution)
    if res < 2:
        raise RegionsError(f"resolution must be >= 2, got {resolution!r}")
    if check and not layers:
        check_piecewise_linear(model)
    plane = plane.to(model_device(model), model_dtype(model))
    fwd = plane_forward(model, forward or model, plane, fast=not layers)
    a, b = grid_axis(plane.margin, res), grid_axis(plane.margin, res)
    was_training = model.training
    model.eval()
    try:
        with _PatternHooks(model, layers) as hooks:
            hooks.start_pass(2)
            with hooks.watch():
                out = fwd(a[:2], b[:2])
            hooks.end_discovery()
            if check and not layers:
                check_piecewise_linear(model, hooks.layers)
            if out.dim() != 2:
                raise RegionsError(f"the model's output has shape {tuple(out.shape)}; expected logits "
                                   "(batch, classes)")
            n_layers = len(hooks.layers)
            device = out.device
            weights = [_hash_weights(l.neurons * len(l.kinks), j, device) for j, l in enumerate(hooks.layers)]
            pred = np.empty((res, res), dtype=np.int64)
            region = np.zeros((res, res), dtype=np.int64)
            layer_boundary = np.zeros((n_layers, res, res), dtype=bool)
            step = max(1, chunk_points // res)
            for r0 in range(0, res, step):
                own = min(step, res - r0)          # rows this chunk is responsible for
                r1 = min(res, r0 + own + 1)        # plus the next row, for the "upper" neighbour
                bb, aa = torch.meshgrid(b[r0:r1], a, indexing="ij")
                hooks.start_pass(aa.numel())
                hooks.bits = [None] * n_layers
                with hooks.watch():
                    logits = fwd(aa.reshape(-1), bb.reshape(-1))
                pred[r0:r0 + own] = logits.argmax(dim=-1).view(r1 - r0, res)[:own].cpu().numpy()
                h = torch.zeros(own * res, dtype=torch.int64, device=device)
                for j, bits in enumerate(hooks.bits):
                    if bits is None:
                        raise RegionsError(f"layer {hooks.layers[j].name!r} was not called on the grid")
                    p = bits.view(r1 - r0, res, -1)
                    right = (p[:own, :-1] != p[:own, 1:]).any(dim=-1)
                    up = (p[:-1] != p[1:]).any(dim=-1)
                    layer_boundary[j, r0:r0 + own, :-1] |= right.cpu().numpy()
                    layer_boundary[j, r0:r0 + up.shape[0]] |= up.cpu().numpy()
                    h += (p[:own].reshape(own * res, -1) * weights[j]).sum(dim=-1)  # wraps mod 2^64
                region[r0:r0 + own] = h.view(own, res).cpu().numpy()
            info = list(hooks.layers)
    finally:
        model.train(was_training)
    decision = np.zeros((res, res), dtype=bool)
    decision[:, :-1] |= pred[:, :-1] != pred[:, 1:]
    decision[:-1] |= pred[:-1] != pred[1:]
    rmap = RegionMap(a=a.numpy(), b=b.numpy(), boundary=layer_boundary.any(axis=0),
                     layer_boundary=layer_boundary, decision=decision, pred=pred, region=region,
                     n_regions=int(len(np.unique(region))), layers=[l.name for l in info],
                     neurons=[l.neurons for l in info])
    if check and not layers:
        was_training = model.training
        model.eval()
        try:
            _check_affine(fwd, rmap)
        finally:
            model.train(was_training)
    rmap.seconds = time.perf_counter() - t0
    return rmap


# -- points -------------------------------------------------------------------------------------------

def default_points(y: torch.Tensor, seed: int = 0) -> list[int]:
    """Three indices into ``y``: in a seeded permutation, the first point, then the first points of
    classes not chosen yet (any next points when there are fewer than three classes)."""
    if len(y) < 3:
        raise RegionsError(f"the split has {len(y)} points; three are needed")
    order = torch.randperm(len(y), generator=torch.Generator().manual_seed(seed))
    chosen: list[int] = []
    classes: set[int] = set()
    for i in order.tolist():
        c = int(y[i])
        if c not in classes:
            chosen.append(i)
            classes.add(c)
            if len(chosen) == 3:
                return chosen
    for i in order.tolist():
        if i not in chosen:
            chosen.append(i)
            if len(chosen) == 3:
                break
    return chosen


def parse_points(text: str | Sequence[int], n: int, split: str = "train") -> list[int]:
    """Three distinct indices ``i,j,k`` into a split of ``n`` points; :class:`RegionsError` names a bad one."""
    items = [t for t in text.replace(" ", "").split(",") if t] if isinstance(text, str) else list(text)
    if len(items) != 3:
        raise RegionsError(f"--points needs three indices like '0,5,17', got {text!r}")
    out = []
    for item in items:
        try:
            i = int(item)
        except (TypeError, ValueError):
            raise RegionsError(f"point index {item!r} in {text!r} is not an integer") from None
        if not 0 <= i < n:
            raise RegionsError(f"point index {i} is out of range: the {split} split has {n} points "
                               f"(indices 0..{n - 1})")
        out.append(i)
    if len(set(out)) != 3:
        raise RegionsError(f"--points {text!r}: the three indices must differ")
    return out


def fill_index(region: np.ndarray) -> np.ndarray:
    """The colour index ``(R, R)`` int8 of each pixel's region (its pattern hash modulo the palette)."""
    return (np.asarray(region).view(np.uint64) % np.uint64(PALETTE_SIZE)).astype(np.int8)
