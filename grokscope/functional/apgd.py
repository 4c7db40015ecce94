"""APGD-CE (Croce & Hein, *Reliable evaluation of adversarial robustness with an ensemble of diverse
parameter-free attacks*, ICML 2020): PGD with momentum and a step size that halves when the attack
stops making progress. Used by the ``pgd`` probe with ``attack=apgd``.

For every row (radius ε, restart, sample), from ``x⁽⁰⁾`` (the same random start, box and projection
``P`` as :func:`grokscope.probes.pgd.pgd_perturb`), with ``η⁽⁰⁾ = 2ε`` and ``α = 0.75``::

    x⁽¹⁾   = P(x⁽⁰⁾ + η d(x⁽⁰⁾))
    z⁽ᵏ⁺¹⁾ = P(x⁽ᵏ⁾ + η⁽ᵏ⁾ d(x⁽ᵏ⁾))
    x⁽ᵏ⁺¹⁾ = P(x⁽ᵏ⁾ + α (z⁽ᵏ⁺¹⁾ − x⁽ᵏ⁾) + (1 − α)(x⁽ᵏ⁾ − x⁽ᵏ⁻¹⁾))

with ``d = sign ∇L`` (L∞) or ``∇L/‖∇L‖`` (L2) and ``L`` the cross-entropy (or the margin loss). At each
checkpoint ``w_j`` the step is halved, and the iterate reset to the best point so far ``x_max``, where

1. the loss rose in at most ``ρ · (w_j − w_{j−1})`` of the iterations since the last checkpoint
   (``ρ = 0.75``), or
2. the step was not halved at the last checkpoint and the best loss has not improved since.

Checkpoints, as in the authors' code: the first after ``max(⌊0.22 N⌋, 1)`` iterations, then windows
shorter by ``max(⌊0.03 N⌋, 1)`` each time down to ``max(⌊0.06 N⌋, 1)`` (for ``N = 100``: 22, 41, 57, 70,
80, 87, 93, 99 — the paper's ``w_j = ⌈p_j N⌉``, ``p_{j+1} = p_j + max(p_j − p_{j−1} − 0.03, 0.06)``).
A row counts as *not robust* when any iterate of any restart (the start included) is misclassified,
as in the authors' code, which returns that point.

All radii and restarts are stacked in one batch, one forward and backward pass per iteration.
Formulas and where this departs from the authors' code:
``docs/algorithms.md#pgd--robust-accuracy-under-pgd``.
"""

from __future__ import annotations

from typing import Callable, Sequence

import torch

from grokscope.functional.attacks import (attack_loss, attack_rows, check_attack_args, per_row,
                                          seeded_starts, start_points)

RHO = 0.75
MOMENTUM = 0.75


def apgd_checkpoints(steps: int) -> list[int]:
    """The iteration numbers ``w_j`` (1-based, ``≤ steps``) after which the step-size rule is checked."""
    if steps < 1:
        return []
    window = max(int(0.22 * steps), 1)
    shrink, shortest = max(int(0.03 * steps), 1), max(int(0.06 * steps), 1)
    out, at = [], window
    while at <= steps:
        out.append(at)
        window = max(window - shrink, shortest)
        at += window
    return out


def apgd_perturb(f: Callable[[torch.Tensor], torch.Tensor], x: torch.Tensor, y: torch.Tensor,
                 eps_list: Sequence[float], steps: int, norm: str = "linf", restarts: int = 1,
                 random_start: bool = True, low: torch.Tensor | float | None = None,
                 high: torch.Tensor | float | None = None, seed: int = 0, loss: str = "ce",
                 starts: torch.Tensor | None = None, rho: float = RHO, momentum: float = MOMENTUM
                 ) -> tuple[torch.Tensor, torch.Tensor]:
    """APGD for every (ε, restart, sample): ``(x_max, robust)``.

    ``x_max (n_eps, restarts, *x.shape)``: the highest-loss iterate of each row; ``robust`` bool
    ``(n_eps, restarts, n)``: every iterate of the row (start included) classified as ``y``. Box,
    radius, starts and ``loss`` as in :func:`grokscope.probes.pgd.pgd_perturb`; gradients are taken
    w.r.t. the input only.
    """
    check_attack_args(norm, loss, restarts, steps)
    xs, ys, eps, project = attack_rows(x, y, eps_list, restarts, norm, low, high)
    n_eps = len(eps_list)

    def evaluate(z: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        z = z.detach().requires_grad_(True)
        with torch.enable_grad():
            logits = f(z)
            obj = attack_loss(logits, ys, loss)
            (g,) = torch.autograd.grad(obj.sum(), z)
        return obj.detach(), g.detach(), logits.detach().argmax(dim=-1) == ys

    def direction(g: torch.Tensor) -> torch.Tensor:
        if norm == "linf":
            return g.sign()
        return g / per_row(g.flatten(1).norm(dim=1).clamp_min(1e-30), g)

    def pick(mask: torch.Tensor, a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
        return torch.where(per_row(mask, a), a, b)

    cur = start_points(x, xs, eps, restarts, norm, random_start, project, seed, starts).detach()
    f_cur, g_cur, robust = evaluate(cur)
    x_best, f_best, g_best = cur.clone(), f_cur.clone(), g_cur.clone()
    prev = cur
    eta = 2 * eps
    checks = set(apgd_checkpoints(steps))
    last_check, rises = 0, torch.zeros_like(f_cur, dtype=torch.long)
    best_at_check = f_best.clone()
    halved_at_check = torch.ones_like(robust)  # rule 2 needs a previous checkpoint
    for k in range(1, steps + 1):
        a = 1.0 if k == 1 else momentum
        z = project(cur + per_row(eta, cur) * direction(g_cur))
        # x + a(z − x) + (1 − a)(x − x_prev), as one lerp from 2x − x_prev towards z
        new = project(torch.lerp(2 * cur - prev, z, a))
        prev, cur = cur, new
        f_new, g_cur, ok = evaluate(cur)
        robust &= ok
        rises += f_new > f_cur
        f_cur = f_new
        better = (f_new > f_best).nonzero().squeeze(1)
        if len(better):  # copy only the rows that improved
            x_best.index_copy_(0, better, cur.index_select(0, better))
            g_best.index_copy_(0, better, g_cur.index_select(0, better))
            f_best.index_copy_(0, better, f_new.index_select(0, better))
        if k in checks:
            oscillating = rises <= rho * (k - last_check)
            stalled = ~halved_at_check & (f_best <= best_at_check)
            halve = oscillating | stalled
            eta = torch.where(halve, eta / 2, eta)
            cur, g_cur = pick(halve, x_best, cur), pick(halve, g_best, g_cur)
            halved_at_check, best_at_check = halve, f_best.clone()
            last_check, rises = k, torch.zeros_like(rises)
    return x_best.view(n_eps, restarts, *x.shape), robust.view(n_eps, restarts, x.shape[0])


def apgd_attack(f: Callable[[torch.Tensor], torch.Tensor], x: torch.Tensor, y: torch.Tensor,
                eps_list: Sequence[float], steps: int, norm: str = "linf", restarts: int = 1,
                random_start: bool = True, low: torch.Tensor | float | None = None,
                high: torch.Tensor | float | None = None, seed: int = 0, loss: str = "ce",
                batch_size: int | None = None) -> torch.Tensor:
    """Robust correctness under APGD: bool ``(n_eps, n)``, True where no iterate of any restart is
    misclassified. Batched over radii and restarts, ``batch_size`` samples at a time; the random starts
    are :func:`grokscope.probes.pgd.pgd_attack`'s (drawn once with ``seed``), so PGD and APGD start from
    the same points."""
    n = x.shape[0]
    bs = batch_size or n
    starts = seeded_starts(x, restarts, norm, seed) if random_start else None
    out = []
    for i in range(0, n, bs):
        _, robust = apgd_perturb(f, x[i:i + bs], y[i:i + bs], eps_list, steps, norm, restarts, random_start,
                                 low, high, seed, loss, starts=None if starts is None else starts[i:i + bs])
        out.append(robust.all(dim=1))
    if not out:
        return torch.zeros(len(eps_list), 0, dtype=torch.bool)
    return torch.cat(out, dim=1).cpu()
