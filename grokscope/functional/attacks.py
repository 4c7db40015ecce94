"""The mechanics of gradient attacks that ``pgd`` and ``apgd`` share: the attack objective, one row
per (radius, restart, sample), seeded random starts, and projection onto the ε-ball inside the
input box. The attacks themselves (their step rules) live with their probes."""

from __future__ import annotations

from typing import Callable, Sequence

import torch

NORMS = ("linf", "l2")
LOSSES = ("ce", "margin")


def attack_loss(logits: torch.Tensor, y: torch.Tensor, kind: str) -> torch.Tensor:
    """Per-row attack objective to *increase*: CE on logits, or the best wrong logit minus the true one."""
    if kind == "ce":
        return torch.nn.functional.cross_entropy(logits, y, reduction="none")
    true = logits.gather(1, y[:, None]).squeeze(1)
    other = logits.scatter(1, y[:, None], float("-inf")).amax(dim=1)
    return other - true


def per_row(t: torch.Tensor, like: torch.Tensor) -> torch.Tensor:
    """``t (rows,)`` viewed as ``(rows, 1, ..., 1)`` to broadcast against ``like (rows, ...)``."""
    return t.view((-1,) + (1,) * (like.dim() - 1))


def seeded_starts(x: torch.Tensor, restarts: int, norm: str, seed: int) -> torch.Tensor:
    """:func:`unit_starts` of every sample of ``x`` and restart, drawn at once from a generator seeded
    with ``seed`` (so they do not depend on how the samples are batched); PGD and APGD share them."""
    return unit_starts((x.shape[0], restarts, *x.shape[1:]), norm, torch.Generator().manual_seed(seed))


def unit_starts(shape: Sequence[int], norm: str, generator: torch.Generator) -> torch.Tensor:
    """Random-start offsets for a unit radius, float64 on the CPU, shape ``(n, restarts, *input)``.

    L∞: uniform in ``[-1, 1]`` per coordinate; L2: uniform in the unit ball (``u^{1/d} g/‖g‖``).
    PGD scales them by each ε, so all radii share the same start directions.
    """
    if norm == "linf":
        return torch.rand(tuple(shape), generator=generator, dtype=torch.float64) * 2 - 1
    g = torch.randn(tuple(shape), generator=generator, dtype=torch.float64).flatten(2)
    rad = torch.rand(g.shape[:2], generator=generator, dtype=torch.float64) ** (1.0 / g.shape[2])
    g = g / g.norm(dim=2, keepdim=True).clamp_min(1e-300) * rad[..., None]
    return g.view(tuple(shape))


def check_attack_args(norm: str, loss: str, restarts: int, steps: int) -> None:
    """ValueError naming the first bad attack argument."""
    if norm not in NORMS:
        raise ValueError(f"norm must be one of {NORMS}, got {norm!r}")
    if loss not in LOSSES:
        raise ValueError(f"loss must be one of {LOSSES}, got {loss!r}")
    if restarts < 1 or steps < 0:
        raise ValueError(f"need restarts >= 1 and steps >= 0, got restarts={restarts}, steps={steps}")


def attack_rows(x: torch.Tensor, y: torch.Tensor, eps_list: Sequence[float], restarts: int, norm: str,
                low: torch.Tensor | float | None = None, high: torch.Tensor | float | None = None
                ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, Callable[[torch.Tensor], torch.Tensor]]:
    """Every (ε, restart, sample) as one row: ``(xs, ys, eps, project)``.

    ``xs (rows, *x.shape[1:])`` the clean points, ``ys (rows,)``, ``eps (rows,)``, row index
    ``(e · restarts + r) · n + i``. ``project(z)`` maps rows onto the ε-ball around ``xs`` intersected with
    the box ``[low, high]`` (widened to contain the clean point; None: unbounded); for L∞ both are one box.
    """
    eps_t = torch.as_tensor([float(e) for e in eps_list], dtype=x.dtype, device=x.device)
    if (eps_t < 0).any():
        raise ValueError(f"eps must be >= 0, got {list(eps_list)}")
    n, n_eps = x.shape[0], len(eps_t)
    rows = n_eps * restarts * n
    xs = x.detach().unsqueeze(0).expand(n_eps * restarts, *x.shape).reshape(rows, *x.shape[1:])
    ys = y.repeat(n_eps * restarts)
    eps = eps_t.repeat_interleave(restarts * n)  # (rows,): row = (e, restart, sample)
    lo = hi = None
    if low is not None:
        lo = torch.minimum(torch.as_tensor(low, dtype=x.dtype, device=x.device).expand_as(xs), xs)
    if high is not None:
        hi = torch.maximum(torch.as_tensor(high, dtype=x.dtype, device=x.device).expand_as(xs), xs)
    if norm == "linf":  # the ε-ball and the box are one box: clip once
        e = per_row(eps, xs)
        lo = xs - e if lo is None else torch.maximum(lo, xs - e)
        hi = xs + e if hi is None else torch.minimum(hi, xs + e)

    def project(z: torch.Tensor) -> torch.Tensor:
        if norm == "l2":
            d = (z - xs).flatten(1)
            scale = (eps / d.norm(dim=1).clamp_min(1e-30)).clamp(max=1.0)
            z = xs + (d * scale[:, None]).view_as(xs)
        if lo is not None:
            z = torch.maximum(z, lo)
        if hi is not None:
            z = torch.minimum(z, hi)
        return z

    return xs, ys, eps, project


def start_points(x: torch.Tensor, xs: torch.Tensor, eps: torch.Tensor, restarts: int, norm: str,
                 random_start: bool, project: Callable[[torch.Tensor], torch.Tensor], seed: int = 0,
                 starts: torch.Tensor | None = None) -> torch.Tensor:
    """The first iterate of every row: ``project(xs + ε · starts)`` (``starts`` from :func:`unit_starts`,
    drawn with ``seed`` if not given) or a copy of ``xs`` without a random start."""
    if not random_start:
        return xs.clone()
    n = x.shape[0]
    n_eps = len(xs) // (restarts * n) if n else 0
    if starts is None:
        starts = seeded_starts(x, restarts, norm, seed)
    if tuple(starts.shape) != (n, restarts, *x.shape[1:]):
        raise ValueError(f"starts must have shape {(n, restarts, *x.shape[1:])}, got {tuple(starts.shape)}")
    noise = starts.to(x.device, x.dtype).transpose(0, 1).unsqueeze(0).expand(n_eps, -1, -1, *x.shape[1:])
    return project(xs + per_row(eps, xs) * noise.reshape(len(xs), *x.shape[1:]))
