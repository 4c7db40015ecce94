"""Krylov methods on an operator given as a function (matrix-free): conjugate gradients for
``A x = b``, Lanczos tridiagonalisation, and Gauss / Gauss-Radau quadrature bounds of ``bᵀ f(A) b``
from its coefficients (used by the ``norm`` probe on ``J Jᵀ``)."""

from __future__ import annotations

import math
from typing import Callable

import numpy as np
import torch


def conjugate_gradient(apply: Callable[[torch.Tensor], torch.Tensor], b: torch.Tensor, iters: int = 200,
                       tol: float = 1e-8) -> tuple[torch.Tensor, int, float]:
    """Solve ``A x = b`` for symmetric PSD ``A`` (given as ``apply``) by CG from ``x = 0``.

    Stops when ``‖r‖ ≤ tol·‖b‖`` or after ``iters`` iterations. Returns ``(x, iterations, ‖r‖/‖b‖)``.
    """
    x = torch.zeros_like(b)
    bnorm = float(b.norm())
    if bnorm == 0.0:
        return x, 0, 0.0
    r = b.clone()
    d = r.clone()
    rr = float(r @ r)
    it = 0
    for it in range(1, iters + 1):
        Ad = apply(d)
        dAd = float(d @ Ad)
        if dAd <= 0:
            it -= 1
            break
        alpha = rr / dAd
        x = x + alpha * d
        r = r - alpha * Ad
        rr_new = float(r @ r)
        if math.sqrt(rr_new) <= tol * bnorm:
            rr = rr_new
            break
        d = r + (rr_new / rr) * d
        rr = rr_new
    return x, it, math.sqrt(rr) / bnorm


def lanczos(apply: Callable[[torch.Tensor], torch.Tensor], b: torch.Tensor, iters: int,
            stop: Callable[[torch.Tensor, torch.Tensor], bool] | None = None, check_every: int = 5
            ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Lanczos tridiagonalisation of the symmetric PSD operator ``apply`` from ``b``, with full
    re-orthogonalisation (classical Gram–Schmidt, a second pass only where the first cancelled).

    Runs until ``iters`` steps, an invariant subspace (``β ≤ 1e-13·α_1``), or ``stop(α, β)`` returns True
    (asked every ``check_every`` steps). Returns ``(Q (k, n), α (k,), β (k,))``: the orthonormal basis
    (``Q[0] = b/‖b‖``), the diagonal and the off-diagonal of ``T_k = Qᵀ A Q`` (``β[j]`` couples steps
    ``j`` and ``j+1``; the last is the residual norm ``β_k``).
    """
    n = b.numel()
    Q = torch.empty(iters + 1, n, dtype=b.dtype, device=b.device)
    Q[0] = b / b.norm()
    alpha = torch.zeros(iters, dtype=torch.float64)
    beta = torch.zeros(iters, dtype=torch.float64)
    k = 0
    for j in range(iters):
        w = apply(Q[j])
        if j:
            w = w - beta[j - 1].item() * Q[j - 1]
        alpha[j] = float(Q[j] @ w)
        w = w - alpha[j].item() * Q[j]
        before = float(w.norm())
        w = w - Q[:j + 1].T @ (Q[:j + 1] @ w)
        beta[j] = float(w.norm())
        if beta[j] < 0.7 * before:  # cancellation: a second pass (Daniel, Gragg, Kaufman & Stewart 1976)
            w = w - Q[:j + 1].T @ (Q[:j + 1] @ w)
            beta[j] = float(w.norm())
        k = j + 1
        if beta[j] <= 1e-13 * abs(float(alpha[0])) or beta[j] == 0:
            break
        Q[j + 1] = w / beta[j]
        if stop is not None and k % check_every == 0 and stop(alpha[:k], beta[:k]):
            break
    return Q[:k], alpha[:k], beta[:k]


def gauss_radau(alpha: torch.Tensor, beta: torch.Tensor,
                fs: Callable[[float], list[Callable[[np.ndarray], np.ndarray]]]
                ) -> tuple[float, list[tuple[float, float]]]:
    """Gauss and Gauss–Radau (node prescribed at 0) estimates of ``e₁ᵀ f(A) e₁`` (in units of ``‖b‖²``)
    from the Lanczos coefficients of a PSD ``A`` started at ``b`` (Golub & Meurant, *Matrices, Moments
    and Quadrature*, 2010, ch. 6), for each ``f`` of ``fs(λ_max)`` (``λ_max``: the largest Ritz value).

    For ``f`` completely monotone on ``[0, ∞)`` (``(−1)^j f⁽ʲ⁾ ≥ 0``) the exact value lies between the two:
    Gauss from below, Radau from above. Each ``f`` takes an array of eigenvalues (negative rounding is
    clamped to 0). Returns ``(λ_max, [(gauss, radau) per f])``; ``radau`` is ``inf`` when the rule
    cannot be formed (singular ``T_k``).
    """
    from scipy.linalg import eigh_tridiagonal, solve_banded

    a, b = alpha.numpy().astype(np.float64), beta.numpy().astype(np.float64)
    k = a.size
    ev, Y = eigh_tridiagonal(a, b[:k - 1])
    lam = float(ev[-1])
    funcs = fs(lam)
    w, ev = Y[0] ** 2, np.clip(ev, 0, None)
    gauss = [float(w @ f(ev)) for f in funcs]
    last = math.inf
    if k > 1 or a[0] > 0:
        ab = np.zeros((3, k))
        ab[0, 1:], ab[1], ab[2, :-1] = b[:k - 1], a, b[:k - 1]
        ek = np.zeros(k)
        ek[-1] = 1.0
        try:
            last = float(b[k - 1] ** 2 * solve_banded((1, 1), ab, ek)[-1])
        except (np.linalg.LinAlgError, ValueError):
            last = math.inf
    if not math.isfinite(last):
        return lam, [(g, math.inf) for g in gauss]
    ev2, Y2 = eigh_tridiagonal(np.append(a, last), b[:k])
    w2, ev2 = Y2[0] ** 2, np.clip(ev2, 0, None)
    return lam, [(g, float(w2 @ f(ev2))) for g, f in zip(gauss, funcs)]
