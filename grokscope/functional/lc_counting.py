"""How ``lc`` counts: hooks that count, per point, the neurons whose sign changes over the point's
vertices (:class:`KinkHooks`), and the closed-form path through an ``nn.Sequential`` that carries a
point as its centre and direction images while the network is linear around it
(:func:`run_sequential_fast`). The maths and the probe are in ``probes/lc.py``; graphs other than a
``Sequential`` take :mod:`.lc_fast`."""

from __future__ import annotations

from typing import Any, Callable, Sequence

import torch
from torch import nn

from .kinks import KinkWatch, count_crossings


class StopForward(Exception):
    """Raised by a hook once the last counted layer has been seen (the rest of the forward is waste)."""


class KinkHooks(KinkWatch):
    """Counts, per point, the neurons whose sign changes over a point's ``2P`` vertices, for every
    kinked module or call that :class:`~grokscope.functional.kinks.KinkWatch` finds.

    ``n_vertices`` rows per point, consecutive; counts go to ``out[:, j]`` (``(points, layers)``); the
    forward stops after layer ``stop_at``.
    """

    def __init__(self, root: nn.Module, explicit: Sequence[str] | None):
        super().__init__(root, explicit)
        self.n_vertices = 1
        self.out: torch.Tensor | None = None
        self.stop_at: int | None = None

    def store(self, j: int, counts: torch.Tensor, rows: torch.Tensor | None = None) -> None:
        """Write layer ``j``'s counts (for the points ``rows``; all points if None)."""
        assert self.out is not None
        if rows is None:
            self.out[:, j] = counts
        else:
            self.out[rows, j] = counts

    def done(self, j: int) -> bool:
        """True when layer ``j`` is the last one that has to be counted (the forward can stop)."""
        return self.stop_at is not None and j == self.stop_at

    def on_layer(self, j: int, t: torch.Tensor) -> None:
        self.store(j, count_crossings(t, self.n_vertices, self.layers[j].kinks))
        if self.done(j):
            raise StopForward


_PASS_THROUGH = (nn.Identity, nn.Dropout)  # identity maps in eval mode
_PIECEWISE_LINEAR = (nn.ReLU, nn.LeakyReLU)
_CONV = (nn.Conv1d, nn.Conv2d, nn.Conv3d)
_BATCHNORM = (nn.BatchNorm1d, nn.BatchNorm2d, nn.BatchNorm3d)


def fast_supported(model: nn.Module, forward: Callable, layers: Sequence[str] | None) -> bool:
    """The closed-form path applies to a ``Sequential`` called directly, counting activation inputs."""
    return isinstance(model, nn.Sequential) and forward is model and not layers


class _LinearState:
    """Vertices ``c ± T_p`` of points still inside one linear region of every layer seen so far.

    ``c`` is ``(B, *S)`` (the image of each point), ``T`` is ``(P, *S)`` (shared: before the first
    activation) or ``(B, P, *S)`` (the image of ``r v_p``; the map is linear on the polytope).
    """

    def __init__(self, c: torch.Tensor, t: torch.Tensor):
        self.c, self.t = c, t

    @property
    def shared(self) -> bool:
        return self.t.dim() == self.c.dim()

    def vertices(self) -> torch.Tensor:
        """``(B, 2P, *S)``: ``c + T_1..P, c - T_1..P``."""
        t = self.t.unsqueeze(0) if self.shared else self.t
        c = self.c.unsqueeze(1)
        p = t.shape[1]
        shape = (c.shape[0], 2 * p) + tuple(c.shape[2:])
        if self.c.dim() == 4 and not self.c.is_contiguous() and \
                self.c.is_contiguous(memory_format=torch.channels_last):  # keep the conv's layout
            out = torch.empty(shape[:2] + shape[3:] + shape[2:3], dtype=c.dtype, device=c.device
                              ).permute(0, 1, 4, 2, 3)
        else:
            out = torch.empty(shape, dtype=c.dtype, device=c.device)
        torch.add(c, t, out=out[:, :p])
        torch.sub(c, t, out=out[:, p:])
        return out

    def rows(self, keep: torch.Tensor) -> "_LinearState":
        return _LinearState(self.c[keep], self.t if self.shared else self.t[keep])


def _affine_parts(m: nn.Module) -> Callable[[torch.Tensor], torch.Tensor] | None:
    """The linear part ``L`` of a module that is affine in eval mode (``m(x) = L(x) + m(0)``) as a
    function of a ``(rows, *S)`` tensor, or None when ``m`` is not one of Linear / Conv / BatchNorm
    with running statistics / Flatten(1, -1)."""
    if isinstance(m, nn.Linear):
        return lambda t: torch.nn.functional.linear(t, m.weight)
    if isinstance(m, _CONV) and m.padding_mode == "zeros":
        return lambda t: m._conv_forward(t, m.weight, None)
    if isinstance(m, _BATCHNORM) and not m.training and m.running_var is not None:
        scale = torch.rsqrt(m.running_var + m.eps)
        if m.weight is not None:
            scale = scale * m.weight
        return lambda t: t * scale.view(-1, *([1] * (t.dim() - 2)))
    if isinstance(m, nn.Flatten) and m.start_dim == 1 and m.end_dim == -1:
        return lambda t: t.flatten(1)
    return None


def _folded_pairs(children: Sequence[nn.Module]) -> dict[int, Callable[[torch.Tensor], torch.Tensor]]:
    """``{k: conv_k with BatchNorm_{k+1} folded in}`` for every Conv2d directly followed by an eval
    BatchNorm2d: weights ``w·s``, bias ``(b - μ)·s + β`` with ``s = γ / sqrt(σ² + ε)`` — one pass
    over the vertices instead of two (values agree with conv-then-BatchNorm up to rounding)."""
    out: dict[int, Callable[[torch.Tensor], torch.Tensor]] = {}
    for k in range(len(children) - 1):
        conv, bn = children[k], children[k + 1]
        if not (isinstance(conv, nn.Conv2d) and conv.padding_mode == "zeros" and isinstance(bn, nn.BatchNorm2d)
                and not bn.training and bn.running_var is not None and bn.running_mean is not None):
            continue
        s = torch.rsqrt(bn.running_var + bn.eps)
        if bn.weight is not None:
            s = s * bn.weight
        bias = conv.bias if conv.bias is not None else torch.zeros_like(bn.running_mean)
        bias = (bias - bn.running_mean) * s + (bn.bias if bn.bias is not None else 0.0)
        weight = conv.weight * s.view(-1, 1, 1, 1)
        out[k] = lambda x, conv=conv, weight=weight, bias=bias: conv._conv_forward(x, weight, bias)
    return out


def _rows_apply(f: Callable[[torch.Tensor], torch.Tensor], t: torch.Tensor, lead: int) -> torch.Tensor:
    """``f`` on ``t`` of shape ``(*lead dims, *S)`` with the lead dims merged into one row dim."""
    head = t.shape[:lead]
    out = f(t.reshape(-1, *t.shape[lead:]))
    return out.reshape(*head, *out.shape[1:])


def run_sequential_fast(model: nn.Sequential, zc: torch.Tensor, rv: torch.Tensor, counter: KinkHooks,
                         include_output: bool, channels_last: bool = False,
                         shared: dict[Any, torch.Tensor] | None = None) -> None:
    """Count one chunk through a ``Sequential`` model, propagating ``(c, T)`` while it is exact.

    ``zc``: ``(B, ...)`` points, ``rv``: ``(P, D)`` = ``r ·`` frame. While the modules are affine
    (Linear, Conv with zero padding, eval BatchNorm, Flatten; Identity / Dropout pass through) or
    ReLU / LeakyReLU, a point whose vertices all lie on one side of every kink so far is carried as
    its centre ``c`` and the ``P`` images of ``r v_p`` (``P + 1`` rows instead of ``2P``; before the
    first kink the images are shared by all points, so the first layer costs ``B + P`` rows): through
    an affine module ``c ← m(c), T ← L(T)`` (its linear part); at an activation the crossing test is
    the closed form ``|c| ≤ max_p |T_p|`` (min and max over ``c ± T_p``, exact in floating point
    because rounding is monotone), and the activation is a fixed 0/1 (or slope) mask on ``T``. Points
    with a crossing are expanded to their ``2P`` vertices and go on through the modules themselves.
    At the first other module every point is expanded and the rest of the model runs with the
    counting hooks; it stops as soon as the last counted layer is done. ``channels_last``: image
    inputs go in channels-last memory format (faster convolutions on CPU). ``shared``: a dict kept
    across the chunks of one radius, holding what does not depend on the points (the direction
    images before the first kink and their reach), so it is computed once per radius.
    """
    b = zc.shape[0]
    p = rv.shape[0]
    rows_all = torch.arange(b, device=zc.device)
    cache: dict[Any, torch.Tensor] = {} if shared is None else shared

    def once(key: Any, make: Callable[[], torch.Tensor]) -> torch.Tensor:
        if key not in cache:
            cache[key] = make()
        return cache[key]

    t0 = once("t", lambda: rv.reshape(p, *zc.shape[1:]).contiguous(
        memory_format=torch.channels_last if channels_last else torch.contiguous_format))
    if channels_last:
        zc = zc.contiguous(memory_format=torch.channels_last)
    lin: _LinearState | None = _LinearState(zc, t0)
    lin_rows = rows_all
    full: torch.Tensor | None = None  # (B_f, 2P, *S) vertices of the expanded points
    full_rows = rows_all[:0]
    children = list(model)
    folded = _folded_pairs(children)
    for k, m in enumerate(children):
        if isinstance(m, _PASS_THROUGH):
            continue
        part = _affine_parts(m)
        if part is not None:
            if lin is not None:
                lt = lin.t
                t = once(("t", k), lambda: part(lt)) if lin.shared else _rows_apply(part, lt, 2)
                c = m(lin.c)
                if channels_last and c.dim() == 4:  # a one-row conv may answer in NCHW
                    c = c.contiguous(memory_format=torch.channels_last)
                lin = _LinearState(c, t)
            if full is not None and k - 1 not in folded:  # a folded BatchNorm ran with its conv
                full = _rows_apply(folded.get(k, m), full, 2)
            continue
        if type(m) in _PIECEWISE_LINEAR and counter.has_layer(counter.module_key(m)):
            j = counter.next_layer(counter.module_key(m))
            slope = float(m.negative_slope) if isinstance(m, nn.LeakyReLU) else 0.0
            moving = None
            if lin is not None:
                lt, pdim = lin.t, 0 if lin.shared else 1
                reach_of = lambda: torch.maximum(lt.amax(dim=pdim), lt.amin(dim=pdim).neg_())  # max_p |T_p|
                reach = once(("reach", k), reach_of) if lin.shared else reach_of()
                cross = ((lin.c.abs() <= reach) & (reach > 0)).flatten(1)
                counter.store(j, cross.sum(dim=1), lin_rows)
                moving = cross.any(dim=1)
            if full is not None:
                counter.store(j, count_crossings(full.reshape(-1, *full.shape[2:]), 2 * p), full_rows)
            if counter.done(j):
                return
            if lin is not None and moving is not None and bool(moving.any()):
                new = lin.rows(moving).vertices()
                full = new if full is None else torch.cat([full, new])
                full_rows = torch.cat([full_rows, lin_rows[moving]])
                lin = lin.rows(~moving)
                lin_rows = lin_rows[~moving]
                if len(lin_rows) == 0:
                    lin = None
            if lin is not None:
                gain = torch.where(lin.c > 0, 1.0, slope).to(lin.c.dtype)  # (B, *S): slope per region
                t = lin.t.unsqueeze(0) if lin.shared else lin.t
                act = torch.nn.functional.leaky_relu(lin.c, slope) if slope else torch.relu(lin.c)
                lin = _LinearState(act, t * gain.unsqueeze(1))
            if full is not None:
                full = torch.nn.functional.leaky_relu_(full, slope) if slope else full.relu_()
            continue
        break  # anything else: expand every point and run the rest with the hooks
    else:
        k = len(children)
    verts: torch.Tensor | None = None
    if lin is not None:
        verts = lin.vertices()
    if full is not None:
        if verts is None:
            verts = full
        else:
            merged = torch.empty((b,) + tuple(full.shape[1:]), dtype=full.dtype, device=full.device)
            merged[lin_rows] = verts
            merged[full_rows] = full
            verts = merged
        if lin is None:
            verts = verts[torch.argsort(full_rows)]
    assert verts is not None
    x = verts.reshape(b * 2 * p, *verts.shape[2:])
    with counter.watch():
        out = model[k:](x) if k < len(children) else x
    if include_output:
        counter.record_output(out)


def channels_last_inputs(model: nn.Module, z: torch.Tensor, device: torch.device) -> bool:
    """Feed images in channels-last memory format: CPU, 4-D inputs, a model with 2-D convolutions
    (measured 5-40 % faster per forward on the benchmark CNN and ResNet). Values agree up to rounding
    (about 1e-7 relative in float32), so counts agree up to floating-point ties, as on the fast path."""
    return device.type == "cpu" and z.dim() == 4 and any(isinstance(m, nn.Conv2d) for m in model.modules())


#: CPU: bytes of the largest per-forward tensor that keep a forward in cache (measured on the
#: benchmark CNN and ResNet: one point's 40 vertex rows ran 1.4-2x faster than 480 rows).
