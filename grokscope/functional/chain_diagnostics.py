"""Diagnostics of SGLD chains (the ``llc`` probes' and ``grokscope llc-sweep``'s): split-R̂, per-chain
drift, and the warnings a run's diagnostics raise (their reasoning:
docs/algorithms.md#llc--local-learning-coefficient)."""

from __future__ import annotations

import math
from typing import Any

import numpy as np

# Thresholds of llc_warnings
RHAT_MAX = 1.1
STEP_TO_NOISE_MAX = 0.5


def split_rhat(trace: np.ndarray) -> float:
    """Split-R̂ (Gelman et al., *Bayesian Data Analysis*, 3rd ed., §11.4) of ``trace (chains, draws)``:
    each chain cut into halves, ``sqrt(((m−1)/m W + B/m) / W)`` with ``W`` the mean within-half variance
    and ``B/m`` the variance of the half means (``m`` draws per half). NaN with fewer than 4 draws or
    ``W = 0``."""
    m = trace.shape[1] // 2
    if m < 2:
        return math.nan
    halves = np.concatenate([trace[:, :m], trace[:, -m:]], axis=0)
    W = float(np.mean(np.var(halves, axis=1, ddof=1)))
    B_m = float(np.var(np.mean(halves, axis=1), ddof=1))
    if not (W > 0 and math.isfinite(W) and math.isfinite(B_m)):
        return math.nan
    return math.sqrt(((m - 1) / m * W + B_m) / W)


def trace_drift(trace: np.ndarray) -> np.ndarray:
    """Per chain ``(mean of the second half − mean of the first half) / std of the whole trace`` ``(chains,)``
    (a stationary trace gives values near 0; NaN for a constant trace)."""
    m = trace.shape[1] // 2
    if m < 1:
        return np.full(trace.shape[0], np.nan)
    sd = np.std(trace, axis=1, ddof=1)
    with np.errstate(invalid="ignore", divide="ignore"):
        return np.where(sd > 0, (trace[:, -m:].mean(axis=1) - trace[:, :m].mean(axis=1)) / sd, np.nan)


def llc_warnings(m: dict[str, Any]) -> list[str]:
    """One ``"label: details; remedy"`` sentence per problem found in a run's diagnostics ``m`` (see
    :func:`estimate_llc`); empty when none is found."""
    out = []
    trace = np.asarray(m["loss_trace"])
    bad = [int(c) for c in range(trace.shape[0]) if not np.all(np.isfinite(trace[c]))]
    if bad:
        return [f"diverged: non-finite loss in chain(s) {bad}; lower llc.lr"]
    noise = np.asarray(m["noise_step"])
    with np.errstate(all="ignore"):
        ratio_g = float(np.mean(np.asarray(m["grad_step"]) / noise))
        ratio_l = float(np.mean(np.asarray(m["loc_step"]) / noise))
    if ratio_g > STEP_TO_NOISE_MAX:
        out.append(f"step size too large: the loss-gradient step is {ratio_g:.2g} x the noise step "
                   f"(> {STEP_TO_NOISE_MAX}); lower llc.lr")
    if ratio_l > STEP_TO_NOISE_MAX:
        out.append(f"gamma too large for this step size: the localisation step is {ratio_l:.2g} x the noise "
                   f"step (> {STEP_TO_NOISE_MAX}); lower llc.gamma or llc.lr")
    if m["llc"] < 0:
        out.append(f"negative LLC: {100 * float(np.mean(m['frac_below'])):.0f} % of draws lie below L(w*), "
                   "so w* is not a local minimum at this gamma; raise llc.gamma (or the checkpoint is "
                   "not at a minimum)")
    rhat = m["rhat"]
    if math.isfinite(rhat) and rhat > RHAT_MAX:
        out.append(f"not stationary: split R-hat {rhat:.3g} > {RHAT_MAX} (the traces drift or the chains "
                   "disagree); more llc.n_burnin, or a larger llc.lr")
    return out
