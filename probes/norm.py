"""``norm``: weight norms, distance to the zero-loss manifold and the weight-decay direction split into
its tangent and normal parts (Musat, *The Geometry of Grokking*, §4.6 and App. D).

Let ``F(θ) ∈ R^{km}`` be all training outputs stacked and ``J = ∂F/∂θ (km, d)``. Near the zero-loss set
``Z = {θ : F(θ) = Y}`` its tangent space at ``θ′`` is ``null(J(θ′))`` and the normal space is the row
space of ``J``. Musat's claim: after memorisation the loss gradient only pulls back to ``Z`` and the
motion along ``Z`` is weight decay projected on its tangent space.

Functional pieces (usable from a notebook; all in parameter space, flat vectors):

* :class:`OutputMap` — ``F`` as a function of the flat parameter vector, via ``torch.func.functional_call``;
  ``jv(θ, v) = J v`` (``torch.func.jvp``) and ``vjp(θ)`` giving ``z ↦ Jᵀz`` (``torch.func.vjp``).
* :func:`conjugate_gradient` — CG for a symmetric positive (semi-)definite operator.
* :func:`normal_projection_cg` — matrix-free ``P_N v = Jᵀ z`` with ``(JJᵀ + δI) z = J v``.
* :func:`normal_projection_explicit` — the same with ``J`` materialised (``δ = 0``: the pseudo-inverse).
* :func:`project_to_zero_loss` — ``θ′``: gradient descent with momentum on the summed training loss.
* :func:`norm_measures` — everything :class:`NormProbe` stores.

With damping ``δ > 0`` a direction of ``J``'s row space with singular value ``s`` counts as normal with
weight ``s²/(s² + δ)``: ``δ`` is the cut-off below which directions count as tangent (the ``rcond`` of
the pseudo-inverse). The probe sets ``δ = damping · λ_max(JJᵀ)``.

Formulas, defaults and deviations from the paper:
``docs/algorithms.md#norm--weight-norm-and-the-zero-loss-manifold``.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any, Callable

import numpy as np
import torch
from torch import nn
from torch.func import functional_call, jvp, vjp

from grokscope.functional import eval_mode, split_subset, subset_size
from grokscope.functional.krylov import conjugate_gradient, gauss_radau, lanczos
from grokscope.losses import LOSSES, task_loss
from grokscope.models.adapters import differentiable_attention

from .base import (EventSpec, PanelSpec, Probe, ProbeContext, ProbeError, check_at_least, check_choice, check_work,
                   fill_template, template_dataset)

DTYPES = {"float64": torch.float64, "float32": torch.float32}
METHODS = ("auto", "explicit", "lanczos", "cg")


# ============================================================================ parameter-space maps
class OutputMap:
    """``F(θ)``: the model's outputs on ``x``, flattened to ``(n·C,)``, as a function of the flat vector
    ``θ (d,)`` of the model's trainable parameters (in ``named_parameters`` order), in ``dtype``.

    Buffers are taken from the model (cast to ``dtype`` if floating); the model is put in eval mode.
    """

    def __init__(self, model: nn.Module, x: torch.Tensor, dtype: torch.dtype = torch.float64):
        model.eval()
        self.model = model
        named = trainable_parameters(model)
        if not named:
            raise ProbeError(f"{type(model).__name__} has no trainable parameters")
        self.names = [n for n, _ in named]
        self.shapes = [p.shape for _, p in named]
        self.sizes = [p.numel() for _, p in named]
        self.dtype = dtype
        self.buffers = {n: (b.to(dtype) if b.is_floating_point() else b) for n, b in model.named_buffers()}
        self.x = x.to(dtype) if x.is_floating_point() else x
        self.theta = torch.cat([p.detach().to(dtype).reshape(-1) for _, p in named])

    @property
    def dim(self) -> int:
        return int(self.theta.numel())

    def flatten(self, state: dict[str, torch.Tensor], where: str = "state dict") -> torch.Tensor:
        """The flat vector of ``state`` in this map's parameter order; names missing keys in ``where``."""
        missing = [n for n in self.names if n not in state]
        if missing:
            raise ProbeError(f"{where} lacks parameter(s) {', '.join(missing[:5])}")
        return torch.cat([state[n].detach().to(self.theta.device, self.dtype).reshape(-1) for n in self.names])

    def unflatten(self, theta: torch.Tensor) -> dict[str, torch.Tensor]:
        """``{name: tensor}`` views of the flat vector ``theta``."""
        return {n: t.view(s) for n, t, s in zip(self.names, torch.split(theta, self.sizes), self.shapes)}

    def __call__(self, theta: torch.Tensor) -> torch.Tensor:
        out = functional_call(self.model, (self.unflatten(theta), self.buffers), (self.x,))
        return out.reshape(-1)

    def per_tensor(self, theta: torch.Tensor) -> dict[str, torch.Tensor]:
        """``{name: slice of theta}`` (flat pieces)."""
        return dict(zip(self.names, torch.split(theta, self.sizes)))

    def jv(self, theta: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
        """``J(θ) v`` ``(n·C,)`` by forward-mode AD."""
        return jvp(self, (theta,), (v,))[1]

    def vjp(self, theta: torch.Tensor) -> Callable[[torch.Tensor], torch.Tensor]:
        """``z ↦ J(θ)ᵀ z`` ``(d,)`` (the forward pass is done once here)."""
        _, fn = vjp(self, theta)
        return lambda z: fn(z)[0]

    def jacobian(self, theta: torch.Tensor) -> torch.Tensor:
        """``J(θ)`` materialised, ``(n·C, d)`` (only for small problems)."""
        return torch.func.jacrev(self)(theta)


def top_eigenvalue_jjt(F: OutputMap, theta: torch.Tensor, iters: int = 20, seed: int = 0) -> float:
    """``λ_max(J Jᵀ) = σ_max(J)²`` by power iteration on ``Jᵀ J`` (``iters`` JVP+VJP pairs)."""
    g = torch.Generator().manual_seed(seed)
    v = torch.randn(F.dim, generator=g, dtype=theta.dtype).to(theta.device)
    v = v / v.norm()
    ops = JacobianOps(F, theta)
    lam = 0.0
    for _ in range(max(iters, 1)):
        w = ops.jtv(ops.jv(v))
        lam = float(v @ w)
        n = w.norm()
        if not n > 0:
            return 0.0
        v = w / n
    return lam


def normal_projection_cg(F: OutputMap, theta: torch.Tensor, v: torch.Tensor, damping: float,
                         iters: int = 200, tol: float = 1e-8) -> tuple[torch.Tensor, dict[str, float]]:
    """Matrix-free ``P_N v = Jᵀ z``, ``(JJᵀ + δI) z = J v`` at ``θ`` (``δ = damping``, absolute), by CG on
    JVPs/VJPs. Returns ``(P_N v (d,), {"cg_iters", "cg_residual"})``; ``P_T v = v − P_N v``."""
    jt = F.vjp(theta)
    b = F.jv(theta, v)
    z, n_it, res = conjugate_gradient(lambda u: F.jv(theta, jt(u)) + damping * u, b, iters, tol)
    return jt(z), {"cg_iters": float(n_it), "cg_residual": float(res)}


def normal_projection_explicit(J: torch.Tensor, v: torch.Tensor, damping: float = 0.0,
                               rcond: float | None = None) -> torch.Tensor:
    """``P_N v`` with ``J (km, d)`` materialised: ``Jᵀ(JJᵀ + δI)⁻¹J v`` for ``δ > 0``; for ``δ = 0`` the
    pseudo-inverse projector ``J⁺J v = V_r V_rᵀ v`` (singular values below ``rcond·s_max`` dropped;
    default ``rcond = max(km, d)·eps``)."""
    U, S, Vh = torch.linalg.svd(J, full_matrices=False)
    c = Vh @ v
    if damping > 0:
        w = S ** 2 / (S ** 2 + damping)
    else:
        rc = rcond if rcond is not None else max(J.shape) * torch.finfo(J.dtype).eps
        w = (S > rc * (S[0] if S.numel() else 0)).to(J.dtype)
    return Vh.T @ (w * c)


class JacobianOps:
    """``u ↦ J(θ) u`` and ``z ↦ J(θ)ᵀ z`` on one retained autograd graph of ``F`` at ``θ``.

    ``Jᵀz`` is a backward pass through ``F(θ)``; ``J u`` is the double-backward trick (``Jᵀw`` is built
    once with ``create_graph=True`` for a dummy ``w``, and ``J u = ∂(uᵀJᵀw)/∂w``). Both reuse the graph
    built here, so a matrix-vector product costs about two backward passes and no new forward pass
    (``torch.func.jvp``/``vjp`` rebuild the forward every call, ~1.5× the time on the demo model).
    """

    def __init__(self, F: OutputMap, theta: torch.Tensor):
        self._t = theta.detach().requires_grad_(True)
        with torch.enable_grad():
            self._out = F(self._t)
            self._w = torch.zeros_like(self._out, requires_grad=True)
            (self._jtw,) = torch.autograd.grad(self._out, self._t, self._w, create_graph=True)

    def jv(self, u: torch.Tensor) -> torch.Tensor:
        """``J u`` ``(n·C,)`` for ``u (d,)``."""
        (r,) = torch.autograd.grad(self._jtw, self._w, u, retain_graph=True)
        return r

    def jtv(self, z: torch.Tensor) -> torch.Tensor:
        """``Jᵀ z`` ``(d,)`` for ``z (n·C,)``."""
        (r,) = torch.autograd.grad(self._out, self._t, z, retain_graph=True)
        return r


def _split_weights(delta: float) -> tuple[Callable, Callable, Callable]:
    """Completely monotone functions of ``λ`` (an eigenvalue of ``JJᵀ``) that give the damped split of ``v``
    from the spectral measure ``μ_b`` of ``b = J v``: ``‖v‖² − ‖P_T v‖² = ∫ f_T dμ_b`` with
    ``f_T = (λ + 2δ)/(λ + δ)²``, and ``‖P_N v‖² = ∫ λ/(λ + δ)² dμ_b = ∫ f_1 − f_2 dμ_b`` with
    ``f_1 = 1/(λ + δ)``, ``f_2 = δ/(λ + δ)²``. Returns ``(f_T, f_1, f_2)``."""
    return ((lambda lam: (lam + 2 * delta) / (lam + delta) ** 2), (lambda lam: 1.0 / (lam + delta)),
            (lambda lam: delta / (lam + delta) ** 2))


def tangent_split_lanczos(F: OutputMap, theta: torch.Tensor, v: torch.Tensor, damping: float,
                          grid: tuple[float, ...] = (), iters: int = 400, tol: float = 1e-3,
                          matvec_dtype: torch.dtype | None = None) -> dict[str, Any]:
    """The damped tangent/normal split of ``v (d,)`` at ``θ`` by Lanczos on ``JJᵀ`` from ``b = J v``, with
    certified error bounds; ``δ = damping · λ_max`` (relative damping, as :class:`NormParams`).

    ``‖P_T v‖²`` and ``‖P_N v‖²`` are quadratic forms of ``b`` (:func:`_split_weights`), bracketed by Gauss
    and Gauss–Radau quadrature on the Lanczos coefficients; Lanczos stops once the bracket of
    ``‖P_T v‖/‖v‖`` at ``damping`` is at most ``2·tol`` wide (or after ``iters`` steps). Each fraction
    is the bracket's midpoint, within its half-width ``*_err`` of the exact damped value (up to
    rounding). Every relative damping in ``grid`` comes from the same run. The vector
    ``P_N v = Jᵀ z`` uses the Lanczos (CG-equivalent) solution ``z`` of ``(JJᵀ + δI) z = b``.

    Returns ``{"pn": P_N v (d,), "lambda_max": largest Ritz value, "delta": δ, "iters",
    "tangent_frac", "tangent_err", "normal_frac", "normal_err",
    "curve": [(tangent_frac, tangent_err) per grid entry]}``.
    """
    ops = JacobianOps(F, theta)
    b = ops.jv(v)
    vv, bb = float(v @ v), float(b @ b)
    if bb == 0.0 or vv == 0.0:
        zero = {"tangent_frac": 1.0 if vv > 0 else math.nan, "tangent_err": 0.0, "normal_frac": 0.0,
                "normal_err": 0.0}
        return {"pn": torch.zeros_like(v), "lambda_max": 0.0, "delta": 0.0, "iters": 0, **zero,
                "curve": [(zero["tangent_frac"], 0.0)] * len(grid)}

    def fractions(alpha: torch.Tensor, beta: torch.Tensor, rels: tuple[float, ...]
                  ) -> tuple[float, list[tuple[float, float, float, float]]]:
        lam, brackets = gauss_radau(alpha, beta, lambda lam: [f for r in rels for f in _split_weights(r * lam)])
        out = []
        for i in range(len(rels)):
            (g_t, r_t), (g_1, r_1), (g_2, r_2) = brackets[3 * i:3 * i + 3]
            t_hi = math.sqrt(max(1.0 - bb * g_t / vv, 0.0))  # Gauss underestimates each integral
            t_lo = math.sqrt(max(1.0 - bb * r_t / vv, 0.0)) if math.isfinite(r_t) else 0.0
            n_lo = math.sqrt(max(bb * (g_1 - r_2) / vv, 0.0)) if math.isfinite(r_2) else 0.0
            n_hi = math.sqrt(max(bb * (r_1 - g_2) / vv, 0.0)) if math.isfinite(r_1) else math.inf
            out.append(((t_lo + t_hi) / 2, max(t_hi - t_lo, 0.0) / 2, (n_lo + n_hi) / 2, max(n_hi - n_lo, 0.0) / 2))
        return lam, out

    gram, start = (lambda z: ops.jv(ops.jtv(z))), b  # noqa: E731
    if matvec_dtype is not None and matvec_dtype != F.dtype:  # the Krylov basis in matvec_dtype too
        low = JacobianOps(OutputMap(F.model, F.x, matvec_dtype), theta.to(matvec_dtype))
        gram, start = (lambda z: low.jv(low.jtv(z))), b.to(matvec_dtype)  # noqa: E731
    Q, alpha, beta = lanczos(gram, start, iters,
                             stop=lambda a, be: fractions(a, be, (damping,))[1][0][1] <= tol)
    k = alpha.numel()
    T = torch.diag(alpha)
    if k > 1:
        T = T + torch.diag(beta[:k - 1], 1) + torch.diag(beta[:k - 1], -1)
    lam, split = fractions(alpha, beta, (damping, *grid))
    delta = damping * lam
    (t, t_err, nf, n_err), curve = split[0], [s[:2] for s in split[1:]]
    e1 = torch.zeros(k, dtype=T.dtype)
    e1[0] = math.sqrt(bb)
    y = torch.linalg.solve(T + delta * torch.eye(k, dtype=T.dtype), e1)
    pn = ops.jtv((Q.T @ y.to(Q.dtype)).to(b.dtype))
    return {"pn": pn, "lambda_max": lam, "delta": delta, "iters": k, "tangent_frac": t, "tangent_err": t_err,
            "normal_frac": nf, "normal_err": n_err, "curve": curve}


def explicit_spectrum(J: torch.Tensor, v: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """``(s (r,), c (r,))``: the singular values of ``J (km, d)`` (descending) and the coordinates
    ``c = V_rᵀ v`` of ``v (d,)`` along its right singular vectors."""
    _, S, Vh = torch.linalg.svd(J, full_matrices=False)
    return S, Vh @ v


def explicit_tangent_frac(S: torch.Tensor, c: torch.Tensor, vv: float, delta: float) -> float:
    """``‖P_T v‖/‖v‖`` for the damped projector of :func:`normal_projection_explicit` from the spectrum
    of :func:`explicit_spectrum` (``vv = ‖v‖²``): ``‖P_T v‖² = ‖v‖² − Σ c_i² (1 − (δ/(s_i² + δ))²)``."""
    if vv <= 0:
        return math.nan
    h = (delta / (S ** 2 + delta)) ** 2 if delta > 0 else (S == 0).to(S.dtype)
    return math.sqrt(max(vv - float((c ** 2 * (1 - h)).sum()), 0.0) / vv)


def summed_loss(out: torch.Tensor, y: torch.Tensor, n_classes: int, loss: str) -> torch.Tensor:
    """The summed training loss of flat outputs ``out (n·C,)``: ``Σ‖f(x_i) − e_{y_i}‖²`` (Musat's L) for
    ``mse``, ``Σ CE_i`` for ``ce``."""
    logits = out.reshape(len(y), n_classes)
    if loss == "mse":
        return task_loss(logits, y, "mse", reduction="sum") * n_classes
    return task_loss(logits, y, loss, reduction="sum")


def project_to_zero_loss(F: OutputMap, theta: torch.Tensor, y: torch.Tensor, n_classes: int, loss: str,
                         iters: int = 100, lr: float = 1.0, momentum: float = 0.9
                         ) -> tuple[torch.Tensor, float, float]:
    """``θ′``: ``iters`` steps of heavy-ball GD (PyTorch SGD semantics) on :func:`summed_loss` from ``θ``.

    Returns ``(θ′, loss(θ), loss(θ′))``; ``θ′`` is the lowest-loss iterate seen (so a too-large ``lr``
    cannot make the projection worse than no projection).
    """
    def value_and_grad(t: torch.Tensor) -> tuple[float, torch.Tensor]:
        t = t.detach().requires_grad_(True)
        with torch.enable_grad():
            val = summed_loss(F(t), y, n_classes, loss)
            (g,) = torch.autograd.grad(val, t)
        return float(val.detach()), g

    start, g = value_and_grad(theta)
    best, best_t = start, theta
    t, buf = theta.clone(), torch.zeros_like(theta)
    for i in range(iters):
        buf = momentum * buf + g if i else g.clone()
        t = t - lr * buf
        val, g = value_and_grad(t)
        if not math.isfinite(val):
            break
        if val < best:
            best, best_t = val, t
    return best_t.detach(), start, best


def task_gradient(F: OutputMap, theta: torch.Tensor, y: torch.Tensor, n_classes: int, loss: str) -> torch.Tensor:
    """``∇_θ`` of the mean task loss at ``θ`` ``(d,)``."""
    t = theta.detach().requires_grad_(True)
    with torch.enable_grad():
        val = task_loss(F(t).reshape(len(y), n_classes), y, loss)
        (g,) = torch.autograd.grad(val, t)
    return g


def _cos(a: torch.Tensor, b: torch.Tensor) -> float:
    na, nb = float(a.norm()), float(b.norm())
    return float(a @ b) / (na * nb) if na > 0 and nb > 0 else float("nan")


# ============================================================================ the probe
@dataclass(frozen=True)
class NormParams:
    loss: str = "auto"            # training loss ("auto": the run's train.loss, else "ce")
    n_train: int = 256            # training samples used for F (seeded subset when there are more)
    seed: int = 0                 # subset and power-iteration seed
    proj_iters: int = 100         # GD steps of the projection θ → θ′ (0: θ′ = θ)
    proj_lr: float | None = None  # GD step size on the summed loss; None: 1 / (2 λ_max(JJᵀ))
    proj_momentum: float = 0.9
    method: str = "auto"          # auto | explicit | lanczos | cg
    explicit_max: int = 2_000_000  # auto uses the explicit Jacobian when km·d is at most this, else lanczos
    damping: float = 1e-5         # δ = damping · λ_max(JJᵀ) (directions with s² ≲ δ count as tangent)
    damping_grid: tuple[float, ...] = (1e-6, 1e-5, 1e-4, 1e-3)  # relative dampings of the curve
    lanczos_iters: int = 400
    lanczos_tol: float = 1e-3     # stop once wd_tangent_frac is certified to within this
    lanczos_dtype: str = "float32"  # precision of Lanczos' matrix-vector products and basis ("float64": all)
    cg_iters: int = 200
    cg_tol: float = 1e-6
    power_iters: int = 20
    dtype: str = "float64"        # precision of every computation (the model is not modified)


def _manifold_note(loss: str) -> str:
    if loss == "mse":
        return "zero-loss set Z = {theta: F(theta) = Y} (MSE); tangent space null(J) at theta'"
    return ("output level set {theta: F(theta) = F(theta')} (loss %s: the zero-loss set is empty); "
            "tangent space null(J) at theta'" % loss)


def resolve_method(params: NormParams, km: int, d: int) -> str:
    """``params.method``, with ``auto`` → ``explicit`` when the Jacobian (``km`` outputs x ``d``
    parameters) has at most ``explicit_max`` entries, else ``lanczos``."""
    if params.method != "auto":
        return params.method
    return "explicit" if km * d <= params.explicit_max else "lanczos"


def trainable_parameters(model: nn.Module) -> list[tuple[str, nn.Parameter]]:
    """``[(name, parameter)]`` of ``model``'s trainable parameters, in ``named_parameters`` order: the
    coordinates of :class:`OutputMap`'s flat vector ``θ``."""
    return [(n, p) for n, p in model.named_parameters() if p.requires_grad]


def norm_measures(model: nn.Module, x: torch.Tensor, y: torch.Tensor, n_classes: int, params: NormParams,
                  loss: str, previous: dict[str, torch.Tensor] | None = None) -> dict[str, Any]:
    """Every quantity of :class:`NormProbe` for ``model`` on the training subset ``(x, y)``.

    Returns a dict of Python floats plus ``weight_sq_param`` ``{name: float}`` and ``method``.
    """
    check_choice("norm.dtype", params.dtype, DTYPES)
    check_choice("norm.lanczos_dtype", params.lanczos_dtype, DTYPES)
    check_choice("norm.method", params.method, METHODS)
    check_choice("norm.loss", loss, LOSSES)
    F = OutputMap(model, x, DTYPES[params.dtype])
    theta = F.theta
    km, d = len(y) * n_classes, F.dim
    method = resolve_method(params, km, d)

    out: dict[str, Any] = {"weight_sq": float(theta @ theta),
                           "weight_sq_param": {n: float(t @ t) for n, t in F.per_tensor(theta).items()},
                           "method": method, "n_outputs": float(km), "n_params": float(d)}

    # θ′: a short GD projection on the summed training loss
    lam0 = top_eigenvalue_jjt(F, theta, params.power_iters, params.seed)
    lr = params.proj_lr if params.proj_lr is not None else (0.5 / lam0 if lam0 > 0 else 0.0)
    theta_p, loss0, loss1 = (project_to_zero_loss(F, theta, y, n_classes, loss, params.proj_iters, lr,
                                                  params.proj_momentum)
                             if params.proj_iters > 0 and lr > 0 else (theta, math.nan, math.nan))
    if params.proj_iters <= 0 or lr <= 0:
        loss0 = loss1 = float(summed_loss(F(theta).detach(), y, n_classes, loss))
    out.update({"dist_zero_loss": float((theta - theta_p).norm()), "proj_lr": float(lr),
                "train_loss_sum": float(loss0), "proj_loss_sum": float(loss1)})

    # tangent / normal split of the weight-decay direction −θ at θ′
    v = -theta
    vv = float(v @ v)
    grid = tuple(float(g) for g in params.damping_grid)
    nan_curve = [math.nan] * len(grid)
    if method == "explicit":
        J = F.jacobian(theta_p)
        S, c = explicit_spectrum(J, v)
        lam = float(S[0]) ** 2 if S.numel() else 0.0
        delta = params.damping * lam
        pn = normal_projection_explicit(J, v, delta)
        info = {"cg_iters": 0.0, "cg_residual": 0.0, "wd_tangent_frac_err": 0.0}
        curve = [explicit_tangent_frac(S, c, vv, g * lam) for g in grid]
        curve_err = [0.0] * len(grid)
    elif method == "lanczos":
        r = tangent_split_lanczos(F, theta_p, v, params.damping, grid, params.lanczos_iters, params.lanczos_tol,
                                  DTYPES[params.lanczos_dtype])
        lam, delta, pn = r["lambda_max"], r["delta"], r["pn"]
        info = {"cg_iters": float(r["iters"]), "cg_residual": math.nan, "wd_tangent_frac_err": r["tangent_err"]}
        curve, curve_err = [c[0] for c in r["curve"]], [c[1] for c in r["curve"]]
    else:
        lam = top_eigenvalue_jjt(F, theta_p, params.power_iters, params.seed) if params.proj_iters > 0 else lam0
        delta = params.damping * lam
        pn, info = normal_projection_cg(F, theta_p, v, delta, params.cg_iters, params.cg_tol)
        info["wd_tangent_frac_err"] = math.nan
        curve, curve_err = nan_curve, nan_curve
    pt = v - pn
    tn = float(theta.norm())
    grad = task_gradient(F, theta, y, n_classes, loss)
    t_frac = float(pt.norm()) / tn if tn > 0 else math.nan
    n_frac = float(pn.norm()) / tn if tn > 0 else math.nan
    if method == "lanczos":  # the certified quadrature values (the vector's norms agree to within the bracket)
        t_frac, n_frac = r["tangent_frac"], r["normal_frac"]
    out.update({"lambda_max": lam, "damping_abs": delta, **info,
                "wd_tangent_frac": t_frac, "wd_normal_frac": n_frac,
                "wd_tangent_frac_curve": curve, "wd_tangent_frac_curve_err": curve_err,
                "grad_tangent_cos": abs(_cos(grad, pt)),
                "update_cos": math.nan})
    if previous is not None:
        theta_prev = F.flatten(previous, "the previous checkpoint")
        out["update_cos"] = _cos(theta - theta_prev, pt)
    return out


# the variables whose attributes also say which manifold and method
MANIFOLD_VARS = ("dist_zero_loss", "wd_tangent_frac", "wd_normal_frac", "grad_tangent_cos", "update_cos")

DESCRIPTIONS = {
    "weight_sq": "sum of squares of every trainable parameter, ||theta||^2",
    "weight_sq_param": "sum of squares per parameter tensor",
    "dist_zero_loss": "||theta - theta'||, theta' = a short GD projection on the summed training loss",
    "wd_tangent_frac": "||P_T(-theta)|| / ||theta||, tangent space null(J) at theta'",
    "wd_normal_frac": "||P_N(-theta)|| / ||theta||",
    "grad_tangent_cos": "|cos(grad L(theta), P_T(-theta))| (Musat Thm 4.14: O(distance))",
    "update_cos": "cos(theta_t - theta_prev, P_T(-theta_t)); NaN at the first checkpoint",
    "update_spacing": "step - previous checkpoint's step",
    "train_loss_sum": "summed training loss at theta on the probe's subset (MSE: sum of squared errors)",
    "proj_loss_sum": "summed training loss at theta'",
    "proj_lr": "step size of the GD projection",
    "wd_tangent_frac_err": "certified bound on the error of wd_tangent_frac (lanczos: Gauss/Radau half-width; "
                           "explicit: 0; cg: NaN)",
    "wd_tangent_frac_curve": "wd_tangent_frac at each relative damping of the damping coordinate",
    "wd_tangent_frac_curve_err": "certified error bound of each wd_tangent_frac_curve value (NaN with cg)",
    "lambda_max": "largest eigenvalue of J J^T at theta' (largest Ritz value, SVD or power iteration)",
    "damping_abs": "absolute damping delta = damping * lambda_max",
    "cg_iters": "Lanczos or CG iterations used (0: explicit Jacobian)",
    "cg_residual": "final relative CG residual (cg only; NaN with lanczos, 0 explicit)",
}


class NormProbe(Probe):
    name = "norm"
    panel_order = 60
    quick_params = {"n_train": "16", "proj_iters": "3", "power_iters": "3"}
    quick_task = "modular"
    description = ("weight norms, distance to the zero-loss manifold, weight decay split into tangent/normal "
                   "parts (Musat)")
    Params = NormParams
    outputs = {
        "weight_sq": (), "weight_sq_param": ("param",), "dist_zero_loss": (),
        "wd_tangent_frac": (), "wd_normal_frac": (), "grad_tangent_cos": (), "update_cos": (),
        "update_spacing": (), "train_loss_sum": (), "proj_loss_sum": (), "proj_lr": (),
        "wd_tangent_frac_err": (), "wd_tangent_frac_curve": ("damping",), "wd_tangent_frac_curve_err": ("damping",),
        "lambda_max": (), "damping_abs": (), "cg_iters": (), "cg_residual": (),
    }
    version = 2  # 2: Lanczos with certified bounds replaces CG by default; the damping curve
    needs_data = True
    needs_grad = True
    needs_previous = True

    panels = (
        PanelSpec("weight_sq", "Squared weight norm", "‖θ‖² (log scale)", yscale="log"),
        PanelSpec("wd_tangent_frac", "Weight decay along the zero-loss set", "‖P_T(−θ)‖ / ‖θ‖", ylim=(0, 1.02)),
    )
    events = (EventSpec("weight_norm_fall", "weight_sq", "fall", "the fall of ‖θ‖²"),)

    @classmethod
    def check_params(cls, params: NormParams) -> None:
        if params.n_train < 1:
            raise ProbeError(f"norm.n_train must be >= 1, got {params.n_train}")
        if not params.damping_grid or any(not g > 0 for g in params.damping_grid):
            raise ProbeError(f"norm.damping_grid must be positive relative dampings, got {params.damping_grid}")
        if params.lanczos_iters < 1 or not params.lanczos_tol > 0:
            raise ProbeError(f"norm.lanczos_iters must be >= 1 and lanczos_tol > 0, got "
                             f"{params.lanczos_iters}, {params.lanczos_tol}")
        check_at_least("norm", params, proj_iters=0, explicit_max=0, cg_iters=1, power_iters=1)
        for key in ("damping", "cg_tol"):
            if not getattr(params, key) > 0:
                raise ProbeError(f"norm.{key} must be > 0, got {getattr(params, key)}")
        if params.proj_lr is not None and not params.proj_lr > 0:
            raise ProbeError(f"norm.proj_lr must be > 0 or null (automatic), got {params.proj_lr}")
        check_work("norm", "norm.explicit_max", params.explicit_max)
        check_work("norm", "norm.n_train", params.n_train)

    @staticmethod
    def resolve_loss(params: NormParams, ctx: ProbeContext | None) -> str:
        """``params.loss``, with ``auto`` → the run's training loss, else ``ce`` (also without a run spec)."""
        if params.loss != "auto":
            return params.loss
        return ((ctx.run_spec if ctx is not None else {}).get("train") or {}).get("loss", "ce")

    def _frame(self, params: NormParams, loss: str, method: str, n_outputs: int, n_params: int,
               names: list[str], eager: list[str]):  # -> xr.Dataset
        """The result's frame (zeros): one value per parameter tensor of ``names`` and per relative
        damping; the attributes say which manifold, ``method``, the Jacobian's size (``n_outputs`` x
        ``n_params``) and the attention modules switched to eager (``eager``)."""
        attrs = {"manifold": _manifold_note(loss), "loss": loss, "method": method,
                 "n_outputs": int(n_outputs), "n_params": int(n_params),
                 "theta_prime": "heavy-ball GD on the summed training loss from theta (best iterate)",
                 "update_cos": "cos(theta_t - theta_prev, P_T(-theta_t)); NaN at the first checkpoint"}
        if eager:
            attrs["attention"] = (f"eager attention in {', '.join(eager)} (its fused kernels have no double "
                                  "backward or forward-mode derivative); the same function")
        manifold = {"manifold": attrs["manifold"], "method": method}
        var_attrs = {name: {"description": DESCRIPTIONS[name],
                            **(manifold if name in MANIFOLD_VARS else {})} for name in self.outputs}
        return template_dataset(self.outputs,
                                coords={"param": list(names),
                                        "damping": np.array(params.damping_grid, dtype=np.float64)},
                                attrs=attrs, var_attrs=var_attrs)

    def template(self, model: nn.Module, data: Any, params: NormParams, ctx: ProbeContext | None = None):
        """Sizes from the model's trainable parameter tensors and the damping grid; the method
        ``auto`` picks from the Jacobian's size (training subset x classes x parameters), the loss
        from the run; no forward pass."""
        loss = self.resolve_loss(params, ctx)
        named = trainable_parameters(model)
        d = sum(p.numel() for _, p in named)
        km = subset_size(len(data.x_train), params.n_train) * int(data.n_classes)
        with differentiable_attention(model) as eager:
            switched = list(eager)
        return self._frame(params, loss, resolve_method(params, km, d), km, d, [n for n, _ in named], switched)

    def compute(self, model: nn.Module, data: Any, params: NormParams, ctx: ProbeContext):
        loss = self.resolve_loss(params, ctx)
        x, y = split_subset(data, "train", params.n_train, params.seed)
        device = next(model.parameters()).device
        x, y = x.to(device), y.to(device)
        previous = ctx.load_previous()
        with eval_mode(model), differentiable_attention(model) as eager:
            m = norm_measures(model, x, y, int(data.n_classes), params, loss, previous)
        spacing = (float(ctx.step - ctx.previous_step)
                   if previous is not None and ctx.previous_step is not None else math.nan)
        names = list(m["weight_sq_param"])
        values: dict[str, Any] = {k: np.float64(m[k]) for k, dims in self.outputs.items()
                                  if dims == () and k != "update_spacing"}
        values["update_spacing"] = np.float64(spacing)
        values["weight_sq_param"] = np.array([m["weight_sq_param"][n] for n in names], dtype=np.float64)
        for k in ("wd_tangent_frac_curve", "wd_tangent_frac_curve_err"):
            values[k] = np.array(m[k], dtype=np.float64)
        return fill_template(self._frame(params, loss, m["method"], int(m["n_outputs"]), int(m["n_params"]),
                                         names, eager), values)
