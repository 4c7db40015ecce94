"""``lc``: local complexity (Humayun, Balestriero & Baraniuk, *Deep Networks Always Grok*, §2.2).

Around a point ``x`` (flattened to ``R^D``) take the cross-polytope with the ``2P`` vertices
``x ± r v_p`` for ``P`` orthonormal directions ``v_p``. Push all vertices through the network; at
layer ``ℓ`` a neuron is *intersecting* when its pre-activation does not have the same sign at every
vertex (sign 0 counts as a sign of its own, as in the authors' code). ``LC_ℓ(x)`` is the number of
intersecting neurons, ``LC(x) = Σ_ℓ LC_ℓ(x)`` (an un-normalised count).

* **Frame** (:func:`cross_polytope_frame`): one frame for every point, every radius and every
  checkpoint, built with the authors' recipe so their numbers can be reproduced exactly:
  ``torch.manual_seed(seed)``, ``W = nn.Linear(D, P).weight`` in the run's dtype, ``Q, R = qr(W.T)``,
  columns sign-fixed so ``diag R > 0``, frame ``= Q.T`` (rows re-normalised). Unlike the authors' code
  the global RNG is left exactly as it was.
* **Which tensors** (default): the *input* of every kinked nonlinearity the forward computes, found by
  :mod:`grokscope.functional.kinks` whichever way it is written: activation modules (ReLU, LeakyReLU,
  GELU, ELU, Hardtanh, ...) and functional calls (``F.relu``, ``torch.relu``, ``x.relu_()``,
  ``F.leaky_relu``, ``F.gelu``, ``F.silu``, ``F.hardtanh``/``relu6``, ``x.clamp(min=0)``, in-place
  forms). A module's layer is named after it (``layer1.0.act1``), a functional call after the module
  that makes it plus an index (``layer1.0#relu1``); a module or call reached several times counts once
  per call (``name``, ``name#1``, ...). For kinks not at 0 (Hardtanh/ReLU6, clamp bounds, Hardswish,
  Threshold, shrinkage) a neuron counts when any kink value is crossed. ``layers=[names]`` counts
  only what it names: a module name counts that module's *output* (sign at 0; H-code's MLP script
  hooks every ``nn.Linear``), a call-site name (``block#relu1``) that call's input at its kinks;
  :func:`~grokscope.functional.kinks.kink_layers` (or ``grokscope probes --model M --dataset D``)
  lists a model's kinks. ``include_output=True`` adds the logits as a layer called ``"output"``.
  Convolutional maps: every ``(c, h, w)`` element is a neuron; token sequences: every (position, unit).
* **Token models**: the frame lives in embedding space (:func:`grokscope.models.adapters.continuous_view`),
  and the radius is by default relative to the embedding scale (``radius_unit="auto"`` =
  ``embedding_rms``: ``r · RMS`` of the embedded training inputs at that checkpoint, stored as
  ``radius_abs``; ``radius_unit=absolute`` for embedding units).
* **Batched**: all ``2P`` vertices of a chunk of points go through one forward pass; counts are
  reduced inside the hooks (nothing is kept), and the forward stops after the last counted layer.
* **Fast path** for ``Sequential`` models (Flatten / Linear / Conv / eval BatchNorm / ReLU /
  LeakyReLU): the frame is shared by all points, so the first layer is ``W(x ± r v) + b = (Wx + b) ±
  r (Wv)`` (a conv: ``conv(x) ± r conv(v)``) with ``Wv`` computed once, and as long as a point's
  polytope meets no kink the network is affine on it, so the point travels as its centre and the
  ``P`` images of ``r v_p`` (``P + 1`` rows instead of ``2P``), counted in closed form; a point is
  expanded to its vertices at the first layer where it crosses a kink (on CNNs: at the first
  activation, which then costs one pass instead of conv + BatchNorm + counting on ``2P`` rows).
  Other piecewise-linear graphs (residual MLPs, encoder + head modules) take it through
  torch.fx: ``grokscope/functional/lc_fast.py``.

:func:`local_complexity` is the notebook entry point; :class:`LCProbe` is the engine's ``lc`` probe
over the point sets ``train``, ``test``, ``random`` (uniform in the data box) and ``boundary`` (points
on the model's own decision boundary, :func:`decision_boundary_points`).

Formulas, defaults and deviations from the authors' code: ``docs/algorithms.md#lc--local-complexity``.
"""

from __future__ import annotations

import copy
import math
import warnings
from dataclasses import dataclass, field
from typing import Any, Callable, Sequence

import numpy as np
import torch
from torch import nn

from grokscope.functional import subset_indices
from grokscope.functional.devices import model_device, model_dtype
from grokscope.functional.kinks import kink_layers, module_kinks
from grokscope.functional.lc_counting import (KinkHooks, StopForward, channels_last_inputs, fast_supported,
                                             run_sequential_fast)
from grokscope.functional.layer_names import producing_modules
from grokscope.models.adapters import RADIUS_UNITS, radius_scale, radius_unit
from grokscope.models.adapters import continuous_view

from .base import EventSpec, PanelSpec, Probe, ProbeContext, ProbeError, check_choice, check_work, template_dataset

MAX_BISECT = 64  # bisection steps of a boundary point: 2**-64 of a segment is below float64's resolution

#: value filling ``lc`` where a split has fewer samples than the ``sample`` dimension.
PAD = -1
FILL_MEANING = f"{PAD}: no point (split smaller than the sample dim)"


def _unit_words(unit: str) -> str:
    """The ``radius_unit`` attribute of a result: the unit and what it means."""
    return unit + (": radius x RMS of the embedded training inputs (radius_abs, per step)"
                   if unit == "embedding_rms" else ": input units")


def cross_polytope_frame(dim: int, n_dirs: int, seed: int = 0, dtype: torch.dtype = torch.float32,
                         device: torch.device | str = "cpu") -> torch.Tensor:
    """``n_dirs`` orthonormal directions in ``R^dim`` as the rows of a ``(n_dirs, dim)`` tensor.

    The authors' recipe (H-code ``samplers.sample_ortho_random``, which wraps ``nn.Linear(dim,
    n_dirs)`` in ``parametrizations.orthogonal``): ``torch.manual_seed(seed)``; ``W`` = the weight of a
    freshly initialised ``nn.Linear(dim, n_dirs)`` in ``dtype`` (so float32 and float64 frames differ,
    as in their code); ``Q, R = qr(W.T)``; ``Q *= sign(diag R)``; rows of ``Q.T`` normalised to unit
    length. Torch's global RNG state is saved and restored (their code leaves it re-seeded).
    """
    if n_dirs < 1:
        raise ValueError(f"n_dirs must be >= 1, got {n_dirs}")
    if n_dirs > dim:
        raise ValueError(f"cannot draw {n_dirs} orthonormal directions in a {dim}-dimensional input space")
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        w = nn.Linear(dim, n_dirs, dtype=dtype).weight.detach()
    q, r = torch.linalg.qr(w.T)
    signs = torch.sign(torch.diagonal(r))
    signs[signs == 0] = 1
    frame = (q * signs).T
    frame = frame / frame.norm(dim=1, keepdim=True)
    return frame.contiguous().to(device)


@dataclass
class LCResult:
    """Counts of :func:`local_complexity`.

    ``counts[i, k, l]`` = number of intersecting neurons of layer ``layers[l]`` around point ``i`` at
    radius ``radius[k]``; ``neurons[l]`` = neurons of that layer (per sample).
    """

    counts: torch.Tensor  # (n_points, n_radius, n_layers) int64
    layers: list[str]
    neurons: list[int]
    radius: tuple[float, ...]
    n_dirs: int
    seed: int
    dtype: torch.dtype
    kinks: list[tuple[float, ...]] = field(default_factory=list)

    @property
    def total(self) -> torch.Tensor:
        """``LC(x) = Σ_ℓ LC_ℓ(x)``, shape ``(n_points, n_radius)``."""
        return self.counts.sum(dim=-1)

    def fraction(self) -> torch.Tensor:
        """Per-layer fraction ``LC_ℓ / D^(ℓ)`` (H-code's ``p_inters``), shape like ``counts``."""
        return self.counts.double() / torch.tensor(self.neurons, dtype=torch.float64)


#: the kink values of an activation module (kept under this name for notebooks).
kinks = module_kinks


_CPU_TENSOR_BYTES = 4 << 20


def _auto_rows(max_numel: int, itemsize: int, device: torch.device) -> int:
    """Rows per forward. CPU: as many as keep the largest layer tensor of one forward near
    ``_CPU_TENSOR_BYTES`` (MLPs: 1-2k rows, near the matmul sweet spot of 80-87 % of the measured
    matmul peak against about 50 % for one huge batch; CNNs: one point's vertices); CUDA: an eighth
    of the free memory."""
    per_row = max(max_numel, 1) * itemsize
    if device.type == "cuda":
        free, _ = torch.cuda.mem_get_info(device)
        return int(max(1, min(1 << 16, 0.125 * free // (4 * per_row))))  # x2 headroom for the fast path
    return int(max(1, min(2048, _CPU_TENSOR_BYTES // per_row)))


@torch.no_grad()
def local_complexity(model: nn.Module, x: torch.Tensor, radius: float | Sequence[float] = (0.005,),
                     n_dirs: int = 25, seed: int = 0, layers: Sequence[str] | None = None,
                     include_output: bool = False, dtype: torch.dtype | None = None,
                     max_rows: int | None = None, input_kind: str = "continuous",
                     forward: Callable[[torch.Tensor], torch.Tensor] | None = None,
                     fast: bool = True, frame_dtype: torch.dtype | None = None) -> LCResult:
    """Local complexity of ``model`` around each point of ``x``; see the module docstring.

    Parameters
    ----------
    x : ``(n, *input_shape)`` inputs (token ids when ``input_kind == "tokens"``: they are embedded with
        :func:`continuous_view` and the frame lives in embedding space). With ``forward`` given, ``x``
        is already the continuous input of ``forward`` (hooks are still looked up in ``model``).
    radius : one radius or several (each gets its own forward passes; the frame is shared).
    dtype : computation (and frame) dtype; default the model's. Another dtype works on a copy.
    max_rows : rows per forward pass: vertices, or ``P + 1`` per point on the fast path (default on
        CPU: what keeps the largest layer tensor near 4 MiB, at most 2048, at least one point; on GPU
        an eighth of the free memory).
    frame_dtype : the dtype the frame is drawn in (default ``dtype``; frames drawn in float32 and
        float64 differ), then cast to ``dtype``: a float64 reference with the float32 frame.
    fast : for a ``Sequential`` model, propagate each point's centre and the ``P`` direction images
        while the network is linear on its polytope (see :func:`grokscope.functional.lc_counting.run_sequential_fast`); the counts are
        those of the plain path (which ``fast=False`` forces) up to floating-point ties.

    Returns an :class:`LCResult` with int64 ``counts`` of shape ``(n, n_radius, n_layers)``. The model
    is evaluated in eval mode (BatchNorm running statistics) and its mode is restored.
    """
    radii = (float(radius),) if isinstance(radius, (int, float)) else tuple(float(r) for r in radius)
    if not radii or any(not math.isfinite(r) or r <= 0 for r in radii):
        raise ValueError(f"radius must be positive numbers, got {radius!r}")
    cdtype = dtype or model_dtype(model)
    if not cdtype.is_floating_point:
        raise ValueError(f"dtype must be a floating dtype, got {cdtype}")
    work = model
    if model_dtype(model) != cdtype:
        work = copy.deepcopy(model).to(cdtype)
        if forward is not None and getattr(forward, "__self__", None) is model:
            forward = getattr(work, forward.__name__)
    device = model_device(work)
    if forward is None:
        forward, x = continuous_view(work, x.to(device), input_kind)
    z = x.to(device=device, dtype=cdtype)
    n = z.shape[0]
    dim = int(z[0].numel()) if n else 0
    was_training = work.training
    work.eval()
    try:
        with KinkHooks(work, layers) as counter:
            if n == 0:
                raise ValueError("local_complexity needs at least one point")
            counter.start_pass(2)  # discovery on two rows: layer list, neurons, sizes
            with counter.watch():
                out = forward(torch.cat([z[:1], z[:1]]))
            if include_output:
                counter.record_output(out)
            counter.end_discovery()
            n_layers = len(counter.layers)
            if n_layers == 0:
                warnings.warn(f"{type(work).__name__} has no kinked activation (no ReLU, GELU, ... module "
                              "or functional call was seen): it is piecewise linear with one piece and its "
                              "LC is 0 (no layers). To count other tensors, pass layers=[module names].",
                              stacklevel=2)
                return LCResult(counts=torch.zeros(n, len(radii), 0, dtype=torch.int64), layers=[],
                                neurons=[], radius=radii, n_dirs=n_dirs, seed=seed, dtype=cdtype)
            frame = cross_polytope_frame(dim, n_dirs, seed, frame_dtype or cdtype, device).to(cdtype)
            graph_path = None
            v = 2 * n_dirs
            rows = max_rows or _auto_rows(counter.max_numel, z.element_size(), device)
            fast_path = fast and fast_supported(work, forward, layers)
            if fast and not fast_path and not layers:  # other piecewise-linear graphs: grokscope/functional/lc_fast.py
                from grokscope.functional.lc_fast import graph_fast_path
                graph_path = graph_fast_path(work, forward, z[:1],
                                             lambda m: counter.has_layer(counter.module_key(m)))
                fast_path = graph_path is not None
            chunk = max(1, rows // (n_dirs + 1 if fast_path else v))  # fast path: ~P + 1 rows per point
            cl = channels_last_inputs(work, z, device)
            counter.n_vertices = v
            counter.stop_at = None if include_output else n_layers - 1
            counts = torch.zeros(n, len(radii), n_layers, dtype=torch.int64)
            signed = torch.cat([frame, -frame])  # (2P, D): vertex order x + r v_1..P, x - r v_1..P
            shared: list[dict[Any, torch.Tensor]] = [{} for _ in radii]  # fast path: per radius
            for start in range(0, n, chunk):
                zc = z[start:start + chunk]
                b = zc.shape[0]
                counter.out = torch.zeros(b, n_layers, dtype=torch.int64, device=device)
                for kr, r in enumerate(radii):
                    counter.start_pass(b * v)
                    try:
                        if fast_path:
                            if graph_path is not None:
                                graph_path(work, zc, r * frame, counter, include_output)
                            else:
                                run_sequential_fast(work, zc, r * frame, counter, include_output, cl,
                                                     shared[kr])
                        else:
                            verts = (zc.reshape(b, 1, dim) + r * signed[None]).reshape(b * v, *z.shape[1:])
                            if cl:
                                verts = verts.contiguous(memory_format=torch.channels_last)
                            with counter.watch():
                                out = forward(verts)
                            if include_output:
                                counter.record_output(out)
                    except StopForward:
                        pass
                    counts[start:start + b, kr] = counter.out.cpu()
            info = counter.layers
    finally:
        work.train(was_training)
    return LCResult(counts=counts, layers=[l.name for l in info], neurons=[l.neurons for l in info],
                    radius=radii, n_dirs=n_dirs, seed=seed, dtype=cdtype, kinks=[l.kinks for l in info])


# -- point sets ---------------------------------------------------------------------------------------

@torch.no_grad()
def predict(forward: Callable[[torch.Tensor], torch.Tensor], z: torch.Tensor, batch_size: int = 4096
            ) -> torch.Tensor:
    """``argmax`` of ``forward`` over the last axis, in chunks; int64 ``(n,)``."""
    return torch.cat([forward(z[i:i + batch_size]).argmax(dim=-1) for i in range(0, len(z), batch_size)]
                     ) if len(z) else torch.zeros(0, dtype=torch.int64, device=z.device)


@torch.no_grad()
def decision_boundary_points(forward: Callable[[torch.Tensor], torch.Tensor], z: torch.Tensor, n: int,
                             seed: int = 0, pool: int | None = None, n_bisect: int = 40,
                             batch_size: int = 4096) -> tuple[torch.Tensor, torch.Tensor]:
    """Up to ``n`` points on the decision boundary of ``forward`` between points of ``z``.

    A seeded pool of ``pool`` (default ``4 n``) index pairs ``(i, j)`` of ``z`` is drawn — the same
    pairs for every model, so checkpoints are comparable. The pairs whose endpoints the model assigns
    to different classes are kept (the first ``n`` of them, in pool order), and each segment
    ``z_i + t (z_j - z_i)`` is bisected ``n_bisect`` times keeping ``pred(t_lo) = pred(z_i) ≠
    pred(t_hi)``; the returned point is at ``(t_lo + t_hi) / 2``, within ``2^-n_bisect ‖z_j - z_i‖`` of
    a point where the predicted class changes. Returns ``(points (k, ...), pairs (k, 2))``, ``k <= n``.
    """
    m = len(z)
    if m < 2 or n < 1:
        return z[:0], torch.zeros(0, 2, dtype=torch.int64)
    g = torch.Generator().manual_seed(seed)
    pool = pool or 4 * n
    i = torch.randint(0, m, (pool,), generator=g)
    j = (i + torch.randint(1, m, (pool,), generator=g)) % m  # j != i
    pred = predict(forward, z, batch_size).cpu()
    keep = (pred[i] != pred[j]).nonzero().flatten()[:n]
    i, j = i[keep], j[keep]
    if len(i) == 0:
        return z[:0], torch.zeros(0, 2, dtype=torch.int64)
    a, d = z[i.to(z.device)], z[j.to(z.device)] - z[i.to(z.device)]
    ca = pred[i].to(z.device)
    shape = (-1,) + (1,) * (z.dim() - 1)
    lo = torch.zeros(len(i), dtype=z.dtype, device=z.device)
    hi = torch.ones_like(lo)
    for _ in range(n_bisect):
        mid = (lo + hi) / 2
        same = predict(forward, a + mid.view(shape) * d, batch_size) == ca
        lo = torch.where(same, mid, lo)
        hi = torch.where(same, hi, mid)
    return a + ((lo + hi) / 2).view(shape) * d, torch.stack([i, j], dim=1)


def uniform_in_box(low: torch.Tensor, high: torch.Tensor, n: int, seed: int = 0) -> torch.Tensor:
    """``n`` points uniform in the box ``[low, high]`` (per coordinate), seeded; shape ``(n, *low.shape)``."""
    g = torch.Generator().manual_seed(seed)
    u = torch.rand((n,) + tuple(low.shape), generator=g, dtype=torch.float64)
    return (low.double() + u * (high.double() - low.double())).to(low.dtype)


# -- the probe ----------------------------------------------------------------------------------------

SPLITS = ("train", "test", "random", "boundary")
DTYPES = {"auto": None, "float32": torch.float32, "float64": torch.float64}


#: what ``lc.layers`` can name (shown by ``grokscope probes``).
LAYERS_HELP = ("count only these (default: the input of every kinked activation, module or functional "
               "call): a module name counts that module's output, sign at 0 (e.g. every Linear or "
               "BatchNorm, as the authors' hooks do); a kink call site such as 'layer1.0#relu1' (the "
               "first relu call - F.relu, torch.relu, x.relu_() - in layer1.0's forward; "
               "'#clamp2': the root's second clamp) counts that call's input at its kinks. "
               "`grokscope probes --model M --dataset D` lists a model's kinks.")


@dataclass(frozen=True)
class LCParams:
    """Parameters of the ``lc`` probe (defaults: the paper's, §2.2)."""

    radius: tuple[float, ...] = field(default=(0.005,), metadata={"help": "radii r of the cross-polytope"})
    n_dirs: int = field(default=25, metadata={"help": "P orthonormal directions (2P vertices)"})
    n_dirs_cap: str = field(default="input", metadata={
        "help": "input: at most the input dimension (the group's attribute n_dirs_used says how many were "
                "used) | none: refuse n_dirs above it"})
    n_points: int = field(default=1024, metadata={"help": "points per split (all of a smaller split)"})
    splits: tuple[str, ...] = field(default=SPLITS, metadata={"help": "point sets: " + ", ".join(SPLITS)})
    seed: int = field(default=0, metadata={"help": "frame, point subsets, random points, boundary pairs"})
    include_output: bool = field(default=False, metadata={"help": "also count the logits (layer 'output')"})
    layers: tuple[str, ...] = field(default=(), metadata={"help": LAYERS_HELP})
    dtype: str = field(default="auto", metadata={"help": "auto (the model's) | float32 | float64"})
    max_rows: int = field(default=0, metadata={"help": "vertices per forward pass; 0: automatic"})
    n_bisect: int = field(default=40, metadata={"help": "bisection steps for boundary points"})
    radius_unit: str = field(default="auto", metadata={
        "help": "auto | absolute | embedding_rms: radii in input units, or as multiples of the RMS of the "
                "embedded training inputs (auto: embedding_rms for token models)"})


def lc_points(model: nn.Module, forward: Callable, z_train: torch.Tensor, z_test: torch.Tensor,
              low: torch.Tensor | None, high: torch.Tensor | None, split: str, n: int, seed: int,
              n_bisect: int = 40) -> torch.Tensor:
    """The continuous points of one LC point set (``train``/``test``: a seeded subset; ``random``:
    uniform in ``[low, high]``; ``boundary``: :func:`decision_boundary_points` between train points)."""
    if split in ("train", "test"):
        src = z_train if split == "train" else z_test
        if len(src) <= n:
            return src
        return src[subset_indices(len(src), n, seed).to(src.device)]
    if split == "random":
        assert low is not None and high is not None
        return uniform_in_box(low, high, n, seed).to(device=z_train.device, dtype=z_train.dtype)
    if split == "boundary":
        return decision_boundary_points(forward, z_train, n, seed, n_bisect=n_bisect)[0]
    raise ProbeError(f"lc: unknown split {split!r}; valid: {', '.join(SPLITS)}")


def n_dirs_used(params: LCParams, dim: int) -> int:
    """The directions ``lc`` uses on inputs of ``dim`` coordinates: ``n_dirs``, at most ``dim`` when
    ``n_dirs_cap`` is ``"input"`` (the default 25 on a 20-dimensional input: 20)."""
    return min(int(params.n_dirs), dim) if params.n_dirs_cap == "input" else int(params.n_dirs)


class LCProbe(Probe):
    """Local complexity around train / test / random / decision-boundary points (Humayun et al.).

    Outputs: ``lc(split, sample, radius, layer)`` int32 counts, padded with ``-1`` where a split has
    fewer points than the ``sample`` dim (small splits, or fewer boundary points found; the dim is
    ``n_points`` or the largest split if smaller, so it is the same at every checkpoint);
    ``lc_mean(split, radius, layer)`` and ``lc_total_mean(split, radius)`` (means over a split's
    points, NaN when it has none); ``n_samples(split)``; ``neurons(layer)``. The ``layer`` coordinate
    names the hooked activation module whose input is counted; the ``produced_by(layer)`` coordinate
    names the module that computed that input (the Linear/Conv before it, :mod:`.layer_names`).
    Token models are probed in embedding space; their ``random`` points are uniform in the per-
    coordinate range of the embedded training points.
    """

    name = "lc"
    panel_order = 20
    quick_params = {"n_points": "16", "n_dirs": "4"}
    precision_mode = "strict"  # sign patterns / exact zeros: no TF32, no autocast (functional.precision)
    description = "local complexity (linear-region density) around train/test/random/boundary points"
    Params = LCParams
    outputs = {"lc": ("split", "sample", "radius", "layer"), "lc_mean": ("split", "radius", "layer"),
               "lc_total_mean": ("split", "radius"), "n_samples": ("split",), "neurons": ("layer",),
               "radius_abs": ("radius",)}

    panels = (
        PanelSpec("lc_total_mean", "Local complexity, all layers", "LC: neurons cut per neighbourhood", "split",
                  prefer=(("radius", "first"),)),
        PanelSpec("lc_mean", "Local complexity, layer {layer}", "LC: neurons cut per neighbourhood", "split",
                  prefer=(("radius", "first"),), per="layer", headline=False),
    )
    events = (EventSpec("lc_fall", "lc_total_mean", "fall", "the fall of LC around training points", "train"),)

    # stores written before ``radius_unit`` existed used absolute radii; before ``n_dirs_cap``, n_dirs
    # above the input dimension was refused, so every stored group used n_dirs itself: what "input" gives
    added_params = {"radius_unit": "absolute", "n_dirs_cap": "input"}
    unit_params = ("radius_unit",)

    @classmethod
    def check_params(cls, params: LCParams) -> None:
        splits = tuple(params.splits)
        bad = [s for s in splits if s not in SPLITS]
        if bad or not splits:
            raise ProbeError(f"lc.splits: unknown {bad}; valid: {', '.join(SPLITS)}")
        check_choice("lc.dtype", params.dtype, DTYPES)
        for key, value, low in (("n_points", params.n_points, 1), ("n_dirs", params.n_dirs, 1),
                                  ("n_bisect", params.n_bisect, 1), ("max_rows", params.max_rows, 0)):
            if value < low:
                raise ProbeError(f"lc.{key} must be >= {low}, got {value}")
        if not params.radius or any(not (float(r) > 0) for r in params.radius):
            raise ProbeError(f"lc.radius must be one or more numbers > 0, got {list(params.radius)}")
        if params.n_bisect > MAX_BISECT:
            raise ProbeError(f"lc.n_bisect must be <= {MAX_BISECT} (each step halves the interval: after "
                             f"{MAX_BISECT} a float64 point no longer moves), got {params.n_bisect}")
        check_work("lc", "lc.n_points x (2 lc.n_dirs + 1) vertices", params.n_points * (2 * params.n_dirs + 1))
        check_work("lc", "lc.max_rows", params.max_rows)
        check_choice("lc.radius_unit", params.radius_unit, RADIUS_UNITS)
        check_choice("lc.n_dirs_cap", params.n_dirs_cap, ("input", "none"))

    def check(self, model: nn.Module, data: Any, params: LCParams) -> None:
        device = model_device(model)
        _, z = continuous_view(model, data.x_train[:1].to(device), data.input_kind)
        dim = int(z[0].numel())
        if params.n_dirs > dim and params.n_dirs_cap == "none":
            raise ProbeError(f"lc.n_dirs={params.n_dirs} is larger than the input dimension {dim} "
                             f"(the directions are orthonormal); valid: 1..{dim}, or lc.n_dirs_cap=input")
        forward, z = continuous_view(model, data.x_train[:1].to(device), data.input_kind)
        try:
            found = kink_layers(model, z.to(model_dtype(model)), forward=forward,
                                layers=[str(s) for s in params.layers] or None,
                                include_output=params.include_output)
        except ValueError as e:  # a name in lc.layers that is neither a module nor a kink call site
            raise ProbeError(f"lc.layers: {e}") from None
        if not found:
            raise ProbeError("lc: this model has no layer to count (no kinked activation module or "
                             "functional call such as F.relu was seen); name the modules whose outputs to "
                             "count with lc.layers=name1,name2 (see `grokscope probes --model M --dataset D`)")

    def template(self, model: nn.Module, data: Any, params: LCParams, ctx: ProbeContext | None = None):
        """The result's shape from the layers one forward pass finds (:func:`kink_layers`), the
        splits, ``radius`` and the sample dim (``n_points``, or the largest split if smaller)."""
        splits = tuple(params.splits)
        dtype = DTYPES[params.dtype] or model_dtype(model)
        forward, z = continuous_view(model, data.x_train[:1].to(model_device(model)), data.input_kind)
        z = z.to(model_dtype(model))
        layers = [str(s) for s in params.layers] or None
        names = [k.name for k in kink_layers(model, z, forward=forward, layers=layers,
                                             include_output=params.include_output)]
        capacity = {"train": len(data.x_train), "test": len(data.x_test)}
        n_max = max(min(params.n_points, capacity.get(s, params.n_points)) for s in splits)
        producers = producing_modules(model, forward, z[:1], names, counts_output=bool(params.layers))
        return template_dataset(
            self.outputs,
            coords={"split": list(splits), "sample": np.arange(n_max),
                    "radius": [float(r) for r in params.radius], "layer": names,
                    "produced_by": ("layer", producers)},
            dtypes={"lc": np.int32, "n_samples": np.int64, "neurons": np.int64},
            attrs={"frame_dtype": str(dtype).replace("torch.", ""),
                   "radius_unit": _unit_words(radius_unit(params.radius_unit, data.input_kind)),
                   "n_dirs_used": n_dirs_used(params, int(z[0].numel()))},
            var_attrs={"lc": {"fill_value_meaning": FILL_MEANING}})

    def compute(self, model: nn.Module, data: Any, params: LCParams, ctx: ProbeContext):
        import xarray as xr

        splits = tuple(params.splits)
        dtype = DTYPES[params.dtype] or model_dtype(model)
        work = model if model_dtype(model) == dtype else copy.deepcopy(model).to(dtype)
        was_training = work.training
        work.eval()
        try:
            device = model_device(work)
            forward, z_train = continuous_view(work, data.x_train.to(device), data.input_kind)
            _, z_test = continuous_view(work, data.x_test.to(device), data.input_kind)
            z_train, z_test = z_train.to(dtype), z_test.to(dtype)
            unit = radius_unit(params.radius_unit, data.input_kind)
            scale = (1.0 if unit == "absolute" else
                     radius_scale(work, data.x_train[:4096].to(device), data.input_kind, unit))
            radius_abs = tuple(float(r) * scale for r in params.radius)
            if data.input_kind == "tokens":
                low, high = z_train.amin(dim=0), z_train.amax(dim=0)
            else:
                low, high = data.box_low.to(device, dtype), data.box_high.to(device, dtype)
            results = []
            for split in splits:
                pts = lc_points(work, forward, z_train, z_test, low, high, split, params.n_points,
                                params.seed, params.n_bisect)
                if len(pts) == 0:
                    results.append(None)
                    continue
                results.append(local_complexity(
                    work, pts, radius=radius_abs, n_dirs=n_dirs_used(params, int(z_train[0].numel())), seed=params.seed,
                    layers=[str(s) for s in params.layers] or None, include_output=params.include_output,
                    dtype=dtype, max_rows=params.max_rows or None, forward=forward))
        finally:
            work.train(was_training)
        ref = next((r for r in results if r is not None), None)
        if ref is None:
            raise ProbeError("lc: every point set is empty")
        n_samples = np.array([0 if r is None else r.counts.shape[0] for r in results], dtype=np.int64)
        # the sample dim is each split's capacity, not what was found: the same at every checkpoint
        capacity = {"train": len(data.x_train), "test": len(data.x_test)}
        n_max = max(min(params.n_points, capacity.get(s, params.n_points)) for s in splits)
        radii, layer_names = [float(r) for r in params.radius], ref.layers
        lc = np.full((len(splits), n_max, len(radii), len(layer_names)), PAD, dtype=np.int32)
        for s, r in enumerate(results):
            if r is not None:
                lc[s, : r.counts.shape[0]] = r.counts.numpy()
        valid = np.where(lc >= 0, lc, 0).astype(np.float64)
        with np.errstate(invalid="ignore", divide="ignore"):
            lc_mean = valid.sum(axis=1) / n_samples[:, None, None]
        lc_mean[n_samples == 0] = np.nan
        ds = xr.Dataset(
            {"lc": (("split", "sample", "radius", "layer"), lc),
             "lc_mean": (("split", "radius", "layer"), lc_mean),
             "lc_total_mean": (("split", "radius"), lc_mean.sum(axis=-1)),
             "n_samples": (("split",), n_samples),
             "neurons": (("layer",), np.array(ref.neurons, dtype=np.int64)),
             "radius_abs": (("radius",), np.array(radius_abs, dtype=np.float64))},
            coords={"split": list(splits), "sample": np.arange(n_max), "radius": radii,
                    "layer": layer_names})
        producers = producing_modules(work, forward, z_train[:1], layer_names, counts_output=bool(params.layers))
        ds = ds.assign_coords(produced_by=("layer", producers))
        ds["lc"].attrs["fill_value_meaning"] = FILL_MEANING
        ds.attrs["frame_dtype"] = str(dtype).replace("torch.", "")
        ds.attrs["radius_unit"] = _unit_words(unit)
        ds.attrs["n_dirs_used"] = n_dirs_used(params, int(z_train[0].numel()))
        return ds
