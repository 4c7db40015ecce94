"""``spectral``: heavy-tailed self-regularisation (HTSR) summaries of every weight matrix, with no data.

For each weight matrix ``W`` (``N × M``) the empirical spectral density (ESD) is the set of the
eigenvalues ``λ_i = s_i²`` of ``WᵀW`` (``s_i`` the singular values; ``min(N, M)`` of them). A
convolution's kernel ``(out, in/groups, k…)`` is read as WeightWatcher and Martin & Mahoney do: one
``out × in`` matrix per kernel position, their eigenvalues pooled into one ESD. Per matrix:

* ``alpha`` — the exponent of a continuous power law ``p(λ) ∝ λ^{-α}`` fitted to the ESD's tail
  ``λ ≥ λ_min`` by maximum likelihood, ``λ_min`` chosen to minimise the Kolmogorov–Smirnov distance
  (Clauset, Shalizi & Newman 2009), done by the ``powerlaw`` package (the fit WeightWatcher wraps);
  ``alpha_ks`` (that KS distance: the fit's quality, smaller is better), ``alpha_sigma`` (its standard
  error ``(α − 1)/√n_tail``) and ``n_tail``; ``alpha_weighted = α · log10 λ_max`` (WeightWatcher's α̂);
* ``stable_rank = Σ λ_i / λ_max`` and ``spectral_norm = √λ_max`` (for a convolution: of its
  kernel-position matrices, not the convolution operator's norm);
* ``n_traps`` — "correlation traps" (Martin & Mahoney; Prakash & Martin): eigenvalues of the
  element-shuffled, centred matrix above the Marchenko–Pastur bulk edge ``σ²(√N + √M)²`` plus
  ``trap_tw`` Tracy–Widom scales ``σ²(√N + √M)(1/√N + 1/√M)^{1/3}``; a shuffle destroys every
  correlation, so what stays out of the bulk are single large elements. Mean over ``n_shuffles`` seeded
  shuffles (the same at every checkpoint).

Nothing here reads data (``needs_data = False``): the probe runs over any checkpoint series, a hub
series without its training set included. Definitions, defaults and the comparison with
WeightWatcher: ``docs/algorithms.md#spectral--heavy-tailed-weight-spectra``.
"""

from __future__ import annotations

import math
import warnings
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
from torch import nn

from .base import EventSpec, PanelSpec, Probe, ProbeContext, ProbeError, fill_template, template_dataset

INSTALL_HINT = "the spectral probe needs the powerlaw package: pip install 'grokscope[spectral]'"


# ============================================================================ which matrices
def weight_modules(model: nn.Module, layers: tuple[str, ...] = ()) -> dict[str, nn.Module]:
    """``{module name: module}`` of every module with its own ``weight`` of two or more dims, in
    ``named_modules`` order (reads no values: works on the ``meta`` device). ``layers`` (module names)
    keeps only those; a name that is no such module raises :class:`ProbeError` listing them."""
    found: dict[str, nn.Module] = {}
    for name, module in model.named_modules():
        w = module._parameters.get("weight") if hasattr(module, "_parameters") else None
        if w is not None and w.dim() >= 2:
            found[name or "weight"] = module
    if layers:
        missing = [n for n in layers if n not in found]
        if missing:
            raise ProbeError(f"spectral.layers: {', '.join(missing)} not a module with a weight matrix; "
                             f"valid: {', '.join(found) or 'none'}")
        found = {n: found[n] for n in layers}
    return found


def weight_matrices(model: nn.Module, layers: tuple[str, ...] = ()) -> dict[str, list[np.ndarray]]:
    """``{module name: [matrix, …]}`` of the modules of :func:`weight_modules` (``Linear``,
    ``Embedding``, ``Conv*d``, Hugging Face's ``Conv1D`` …), as float64 numpy arrays. A convolution
    gives one ``out × in/groups`` matrix per kernel position; any other weight of more than two dims is
    flattened to ``(shape[0], -1)``."""
    found: dict[str, list[np.ndarray]] = {}
    for name, module in weight_modules(model, layers).items():
        a = module.weight.detach().to("cpu", torch.float64).numpy()
        if isinstance(module, nn.modules.conv._ConvNd) and a.ndim > 2:
            if isinstance(module, nn.modules.conv._ConvTransposeNd):
                a = np.swapaxes(a, 0, 1)  # (in, out/groups, k…) -> (out/groups, in, k…)
            found[name] = [a[(slice(None), slice(None)) + idx] for idx in np.ndindex(*a.shape[2:])]
        else:
            found[name] = [a.reshape(a.shape[0], -1)]
    return found


def esd(mats: list[np.ndarray]) -> np.ndarray:
    """The pooled eigenvalues ``s²`` of ``WᵀW`` of every matrix in ``mats``, sorted ascending."""
    return np.sort(np.concatenate([np.linalg.svd(m, compute_uv=False) ** 2 for m in mats]))


# ============================================================================ the power-law fit
def fit_alpha(evals: np.ndarray, min_evals: int = 20, thresh: float = 1e-5) -> dict[str, float]:
    """The power-law fit of the tail of ``evals`` (the eigenvalues above ``thresh``): ``{"alpha",
    "alpha_ks", "alpha_sigma", "n_tail", "xmin"}``, by ``powerlaw.Fit`` (continuous MLE, ``xmin`` by
    minimal KS distance, ``α ∈ (1, ∞)``; powerlaw 2's default range ``(0, 3)`` would cap the heavy-tail
    exponents HTSR reads). NaN everywhere when fewer than ``min_evals`` eigenvalues are above ``thresh``."""
    nan = float("nan")
    out = {"alpha": nan, "alpha_ks": nan, "alpha_sigma": nan, "n_tail": 0.0, "xmin": nan}
    x = np.asarray(evals, dtype=np.float64)
    x = x[x > thresh]
    if len(x) < max(min_evals, 3) or len(np.unique(x)) < 3:
        return out
    try:
        import powerlaw
    except ImportError as e:  # pragma: no cover - the extra is in the test install
        raise ProbeError(INSTALL_HINT) from e
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        fit = powerlaw.Fit(x, xmin=None, xmax=None, verbose=False, parameter_ranges={"alpha": [1, None]})
        alpha, xmin = float(fit.alpha), float(fit.xmin)
    n_tail = int((x >= xmin).sum())
    out.update(alpha=alpha, alpha_ks=float(fit.D), alpha_sigma=(alpha - 1) / math.sqrt(n_tail),
               n_tail=float(n_tail), xmin=xmin)
    return out


# ============================================================================ correlation traps
def mp_trap_threshold(n: int, m: int, variance: float, tw: float) -> float:
    """Marchenko–Pastur bulk edge of ``WᵀW`` for an ``n × m`` matrix of i.i.d. entries of ``variance``,
    plus ``tw`` Tracy–Widom scales: ``σ²[(√n + √m)² + tw (√n + √m)(1/√n + 1/√m)^{1/3}]``."""
    a = math.sqrt(n) + math.sqrt(m)
    return variance * (a * a + tw * a * (1 / math.sqrt(n) + 1 / math.sqrt(m)) ** (1 / 3))


def correlation_traps(mats: list[np.ndarray], n_shuffles: int = 1, tw: float = 4.0,
                      rng: np.random.Generator | None = None) -> float:
    """Mean over ``n_shuffles`` of the number of eigenvalues of the element-shuffled matrices (each
    centred by its mean first, so a nonzero mean's rank-one spike is not counted) above
    :func:`mp_trap_threshold`, summed over the matrices of ``mats``."""
    rng = rng if rng is not None else np.random.default_rng(0)
    total = 0
    for _ in range(n_shuffles):
        for m in mats:
            c = m - m.mean()
            var = float((c * c).mean())
            if var == 0 or min(c.shape) < 1:
                continue
            shuffled = rng.permutation(c.ravel()).reshape(c.shape)
            ev = np.linalg.svd(shuffled, compute_uv=False) ** 2
            total += int((ev > mp_trap_threshold(c.shape[0], c.shape[1], var, tw)).sum())
    return total / n_shuffles


# ============================================================================ all of it
def spectral_summary(mats: list[np.ndarray], min_evals: int = 20, n_shuffles: int = 1, trap_tw: float = 4.0,
                     rng: np.random.Generator | None = None) -> dict[str, float]:
    """Every quantity :class:`SpectralProbe` stores for one layer's matrices ``mats``."""
    ev = esd(mats)
    lam_max = float(ev[-1]) if len(ev) else float("nan")
    fit = fit_alpha(ev, min_evals)
    return {
        **{k: fit[k] for k in ("alpha", "alpha_ks", "alpha_sigma", "n_tail")},
        "alpha_weighted": fit["alpha"] * math.log10(lam_max) if lam_max > 0 else float("nan"),
        "stable_rank": float(ev.sum() / lam_max) if lam_max > 0 else float("nan"),
        "spectral_norm": math.sqrt(lam_max) if lam_max >= 0 else float("nan"),
        "n_traps": correlation_traps(mats, n_shuffles, trap_tw, rng),
        "n_evals": float(len(ev)),
    }


@dataclass(frozen=True)
class SpectralParams:
    layers: tuple[str, ...] = ()  # module names; empty: every module with a weight matrix
    min_evals: int = 20           # fewer eigenvalues above 1e-5: alpha is NaN
    n_shuffles: int = 1           # shuffles per matrix for the correlation traps (mean count)
    trap_tw: float = 4.0          # Tracy–Widom scales above the MP bulk edge that make a trap
    seed: int = 0


VARS = ("alpha", "alpha_ks", "alpha_sigma", "n_tail", "alpha_weighted", "stable_rank", "spectral_norm",
        "n_traps", "n_evals")


class SpectralProbe(Probe):
    """HTSR power-law α (with its KS distance), stable rank, spectral norm and correlation traps per layer."""

    name = "spectral"
    panel_order = 100
    quick_params = {"min_evals": "8"}
    description = "weight spectra per layer (HTSR): power-law alpha and its fit, stable rank, spectral norm, correlation traps; no data"
    Params = SpectralParams
    outputs = {v: ("layer",) for v in VARS}
    needs_data = False
    version = 1

    panels = (
        PanelSpec("alpha", "Power-law α of the weight spectra", "α (tail of the ESD of WᵀW)", hue="layer"),
        PanelSpec("stable_rank", "Stable rank", "Σλ / λ_max", hue="layer", yscale="log"),
        PanelSpec("n_traps", "Correlation traps", "eigenvalues of shuffled W beyond the MP edge", hue="layer"),
        PanelSpec("spectral_norm", "Spectral norm", "‖W‖₂", hue="layer", yscale="log", headline=False),
        PanelSpec("alpha_ks", "Power-law fit quality", "KS distance of the tail fit", hue="layer",
                  headline=False, higher_is_better=False),
    )
    events = (
        EventSpec("alpha_fall", "alpha", "fall", "the fall of the power-law exponent α of the weight spectra"),
        EventSpec("traps_rise", "n_traps", "rise", "the rise of the number of correlation traps"),
    )

    @classmethod
    def check_params(cls, params: SpectralParams) -> None:
        if params.min_evals < 3:
            raise ProbeError(f"spectral.min_evals must be >= 3, got {params.min_evals}")
        if params.n_shuffles < 1:
            raise ProbeError(f"spectral.n_shuffles must be >= 1, got {params.n_shuffles}")
        if not (params.trap_tw >= 0 and math.isfinite(params.trap_tw)):
            raise ProbeError(f"spectral.trap_tw must be a finite number >= 0, got {params.trap_tw}")
        try:
            import powerlaw  # noqa: F401
        except ImportError as e:
            raise ProbeError(INSTALL_HINT) from e

    def check(self, model: nn.Module, data: Any, params: SpectralParams) -> None:
        if not weight_modules(model, tuple(params.layers)):
            raise ProbeError(f"spectral: {type(model).__name__} has no module with a weight matrix")

    def _frame(self, layers: list[str]):  # -> xr.Dataset
        """The result's frame (zeros): one value of each variable per layer of ``layers``."""
        return template_dataset(self.outputs, coords={"layer": list(layers)})

    def template(self, model: nn.Module, data: Any, params: SpectralParams, ctx: ProbeContext | None = None):
        """One value per weight matrix of the model (the layers of :func:`weight_modules`; no values read)."""
        return self._frame(list(weight_modules(model, tuple(params.layers))))

    def compute(self, model: nn.Module, data: Any, params: SpectralParams, ctx: ProbeContext):
        mats = weight_matrices(model, tuple(params.layers))
        rows = []
        for i, (name, ms) in enumerate(mats.items()):
            rng = np.random.default_rng([params.seed, i])
            rows.append(spectral_summary(ms, params.min_evals, params.n_shuffles, params.trap_tw, rng))
        return fill_template(self._frame(list(mats)),
                             {v: np.array([r[v] for r in rows], dtype=np.float64) for v in VARS})
