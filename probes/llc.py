"""``llc``: the local learning coefficient (LLC) of each checkpoint, estimated by SGLD around its weights
(Lau, Furman, Wang, Murfet & Wei, AISTATS 2025; Hoogland et al., TMLR 2025; Watanabe's learning
coefficient).

Around the checkpoint's weights ``w*`` the chains sample the localised tempered posterior

    p(w) ∝ exp(−nβ L_n(w) − (γ/2) ‖w − w*‖²),   β = 1 / log n,

with ``L_n`` the mean training loss over the ``n`` training points used. The estimate is

    λ̂ = nβ (E_chains,draws[L(w_t)] − L_n(w*)).

Update of every chain (SGLD; Welling & Teh 2011 with the localisation of Lau et al.)::

    w ← w − (ε/2) G ⊙ (nβ ∇L_B(w) + γ (w − w*)) + sqrt(ε G) ⊙ ξ,   ξ ~ N(0, I)

``G = 1`` for ``sampler="sgld"``; ``G = 1 / (sqrt(V) + rms_eps)``, ``V ← α V + (1 − α) ∇L_B²`` for
``sampler="rmsprop"`` (Li et al. 2016; devinterp's ``rmsprop_sgld``). ``L_B`` is the mean loss on a
batch: the same ``n`` points as ``L_n(w*)`` (``batch_size=0``, full batch: then the trace is exactly
``L_n(w_t)``) or a fresh seeded batch of ``batch_size`` of them per chain and step (the trace is then the
unbiased batch estimate of ``L_n(w_t)``; ``L_n(w*)`` is still computed once on all ``n``).

Design: the chains are one computation — the state is a ``(chains, d)`` matrix of flat parameter
vectors and every step is one ``torch.func.vmap`` of ``grad_and_value`` of a ``functional_call`` of the
model. Each chain has its own generators seeded from ``(seed, chain)``, so a chain's draws do not
depend on how many chains run beside it, and one chain at a time gives the same draws
(:func:`sgld_chains` with ``chains=[c]``).

Functional pieces (usable from a notebook):

* :class:`FlatModel` — the trainable parameters as one flat vector, the mean loss as a function of it;
* :func:`sgld_chains` — the sampler; returns a :class:`Chains` (loss traces and per-chain diagnostics);
* :func:`estimate_llc` — the estimate and its diagnostics from a model and data; :func:`llc_warnings`
  the words for a bad run;
* :func:`estimate_restricted_llc` — the LLC restricted to named components (layers, attention heads:
  :mod:`grokscope.functional.components`), every component's chains batched (the ``rllc`` probe,
  :class:`RestrictedLLCProbe`). The chains' loss: :func:`grokscope.losses.llc_loss`.

Formulas, defaults and the diagnostics' thresholds: ``docs/algorithms.md#llc--local-learning-coefficient``.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any, Callable, Sequence

import numpy as np
import torch
from torch import nn
from torch.func import functional_call, grad_and_value, vmap

from grokscope.functional import eval_mode, split_subset, subset_indices, subset_size
from grokscope.functional.chain_diagnostics import llc_warnings, split_rhat, trace_drift
from grokscope.losses import LOSSES, llc_loss, lm_labels
from grokscope.models.adapters import SequenceLogitsModule, differentiable_attention

from .base import (EventSpec, PanelSpec, Probe, ProbeContext, ProbeError, check_choice, check_work, fill_template,
                   template_dataset)

SAMPLERS = ("sgld", "rmsprop")
LLC_LOSSES = (*LOSSES, "next_token")  # next_token: the causal-LM loss on token sequences (lm_labels)
DTYPES = {"float64": torch.float64, "float32": torch.float32}
LossFn = Callable[[torch.Tensor, torch.Tensor], torch.Tensor]



# ============================================================================ the flat model
class FlatModel:
    """The trainable parameters of ``model`` as one flat vector ``(d,)`` (``named_parameters`` order) and
    the mean loss ``loss_fn(model(x), y)`` as a function of it (:meth:`loss`), via ``functional_call``.
    A loss with ``sequence_outputs`` (``next_token``) reads the model's logits at every position
    (:func:`grokscope.models.adapters.sequence_logits`: a ``--model hf`` causal LM's own forward gives
    one position).

    Buffers are taken from the model as they are; the model itself is never modified.
    """

    def __init__(self, model: nn.Module, loss_fn: LossFn, dtype: torch.dtype | None = None):
        named = [(n, p) for n, p in model.named_parameters() if p.requires_grad]
        if not named:
            raise ProbeError(f"llc: {type(model).__name__} has no trainable parameters")
        self.model, self.loss_fn = model, loss_fn
        self.called, self.prefix = model, ""
        if getattr(loss_fn, "sequence_outputs", False):
            self.called, self.prefix = SequenceLogitsModule(model), "inner."
        self.dtype = dtype or named[0][1].dtype
        self.names = [n for n, _ in named]
        self.shapes = [tuple(p.shape) for _, p in named]
        self.sizes = [p.numel() for _, p in named]
        self.buffers = {self.prefix + n: (b.to(self.dtype) if b.is_floating_point() else b)
                        for n, b in model.named_buffers()}
        self.theta = torch.cat([p.detach().to(self.dtype).reshape(-1) for _, p in named])

    @property
    def dim(self) -> int:
        return int(self.theta.numel())

    def unflatten(self, theta: torch.Tensor) -> dict[str, torch.Tensor]:
        """``{name: tensor}`` views of the flat vector ``theta (d,)``."""
        return {n: t.view(s) for n, t, s in zip(self.names, torch.split(theta, self.sizes), self.shapes)}

    def loss(self, theta: torch.Tensor, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        """The mean loss (a 0-dim tensor) of the parameters ``theta (d,)`` on ``(x, y)``."""
        params = {self.prefix + n: t for n, t in self.unflatten(theta).items()}
        out = functional_call(self.called, (params, self.buffers), (x,))
        return self.loss_fn(out, y)


def chain_seed(seed: int, chain: int, stream: int) -> int:
    """The generator seed of one chain's noise (``stream=0``) or batch indices (``stream=1``)."""
    return int(np.random.SeedSequence([int(seed), int(chain), int(stream)]).generate_state(1)[0])


@torch.no_grad()
def full_loss(flat: FlatModel, theta: torch.Tensor, x: torch.Tensor, y: torch.Tensor, chunk: int = 8192) -> float:
    """``L_n(theta)``: the mean loss on all of ``(x, y)``, in chunks of ``chunk`` points (as a float).
    Each chunk's mean is weighted by its number of points, or by ``flat.loss_fn.count(targets)`` where the
    loss has one (``next_token``: its mean is over the counted predictions, not the rows)."""
    count = getattr(flat.loss_fn, "count", None)
    total = weight = 0.0
    for i in range(0, len(x), chunk):
        xb, yb = x[i:i + chunk], y[i:i + chunk]
        w = float(count(yb)) if count is not None else float(len(xb))
        total += float(flat.loss(theta, xb, yb)) * w
        weight += w
    return total / weight if weight > 0 else 0.0


# ============================================================================ the sampler
@dataclass
class Chains:
    """What :func:`sgld_chains` returns; per-chain arrays have the chains on the first axis.

    ``loss (chains, draws)``: the loss at each draw (the sampler's own evaluation); ``dist (chains,)``:
    mean ``‖w_t − w*‖`` over the draws; ``grad_step``, ``loc_step``, ``noise_step (chains,)``: mean
    Euclidean length per step (over the steps after burn-in) of the loss-gradient part
    ``(ε/2) G nβ ∇L``, the localisation part ``(ε/2) G γ (w − w*)`` and the noise ``sqrt(εG) ξ`` of the
    update; ``theta (chains, d)``: the last state (for tests)."""

    loss: np.ndarray
    dist: np.ndarray
    grad_step: np.ndarray
    loc_step: np.ndarray
    noise_step: np.ndarray
    theta: torch.Tensor = field(repr=False, default=None)  # type: ignore[assignment]


def sgld_chains(flat: FlatModel, x: torch.Tensor, y: torch.Tensor, *, lr: float, gamma: float, nbeta: float,
                chains: Sequence[int], n_draws: int, n_burnin: int = 0, thin: int = 1, batch_size: int = 0,
                sampler: str = "sgld", rms_alpha: float = 0.99, rms_eps: float = 0.1, seed: int = 0,
                masks: torch.Tensor | None = None) -> Chains:
    """Run the SGLD chains numbered ``chains`` together, from ``flat.theta``, on ``(x, y)``.

    ``n_burnin + n_draws · thin`` steps; the draws are the states at steps ``n_burnin + k·thin``
    (``k < n_draws``; step 0 is ``w*`` itself), each recorded with the loss that the step's gradient
    evaluation gives. ``batch_size=0``: full batch. See the module docstring for the update.

    ``masks (K, d)`` bool (restricted LLC): every chain runs once per row ``k``, moving only the
    coordinates where ``masks[k]`` is True (the update times the mask; the others stay at ``w*``).
    The ``K × C`` chains are one batched computation; row ``k·C + i`` of every returned array is chain
    ``chains[i]`` restricted to ``masks[k]``. Chain ``c`` draws the same noise and batches whatever its
    restriction (its noise is masked), so an all-True mask gives exactly the unrestricted chain.
    """
    check_choice("llc.sampler", sampler, SAMPLERS)
    dev, dt = flat.theta.device, flat.dtype
    n, d = len(x), flat.dim
    K = 1 if masks is None else int(masks.shape[0])
    n_chains = len(chains)
    C = K * n_chains
    mask = None if masks is None else masks.to(device=dev).repeat_interleave(n_chains, dim=0).to(dt)
    w0 = flat.theta
    w = w0.expand(C, d).clone()
    noise_gens = [torch.Generator(device=dev).manual_seed(chain_seed(seed, c, 0)) for c in chains]
    batch_gens = [torch.Generator().manual_seed(chain_seed(seed, c, 1)) for c in chains]
    minibatch = 0 < batch_size < n
    step_fn = vmap(grad_and_value(flat.loss), in_dims=(0, 0, 0) if minibatch else (0, None, None))
    V = torch.zeros_like(w) if sampler == "rmsprop" else None
    xi = torch.empty_like(w)
    total = n_burnin + n_draws * thin
    loss = np.full((C, n_draws), np.nan)
    dist = np.zeros(C)
    sums = np.zeros((3, C))
    half = 0.5 * lr
    for t in range(total):
        if minibatch:
            idx = torch.stack([torch.randperm(n, generator=g)[:batch_size] for g in batch_gens]).to(x.device)
            idx = idx.repeat(K, 1)
            g, value = step_fn(w, x[idx], y[idx])
        else:
            g, value = step_fn(w, x, y)
        g, value = g.detach(), value.detach()
        for i, gen in enumerate(noise_gens):
            torch.randn(d, generator=gen, device=dev, dtype=dt, out=xi[i])
        for k in range(1, K):
            xi[k * n_chains:(k + 1) * n_chains] = xi[:n_chains]
        if mask is not None:
            g = g * mask
            xi.mul_(mask)
        delta = w - w0
        if V is not None:
            V.mul_(rms_alpha).addcmul_(g, g, value=1.0 - rms_alpha)
            G = 1.0 / (V.sqrt() + rms_eps)
            grad_part, loc_part, noise_part = half * G * (nbeta * g), half * G * (gamma * delta), (lr * G).sqrt() * xi
        else:
            grad_part, loc_part, noise_part = half * nbeta * g, half * gamma * delta, math.sqrt(lr) * xi
        if t >= n_burnin:
            sums += np.stack([p.norm(dim=1).cpu().double().numpy() for p in (grad_part, loc_part, noise_part)])
            k, r = divmod(t - n_burnin, thin)
            if r == 0:
                loss[:, k] = value.cpu().double().numpy()
                dist += delta.norm(dim=1).cpu().double().numpy()
        w = w - grad_part - loc_part + noise_part
    steps = max(total - n_burnin, 1)
    return Chains(loss=loss, dist=dist / max(n_draws, 1), grad_step=sums[0] / steps, loc_step=sums[1] / steps,
                  noise_step=sums[2] / steps, theta=w)


# ============================================================================ estimate + diagnostics
def estimate_llc(model: nn.Module, x: torch.Tensor, y: torch.Tensor, loss_fn: LossFn, *, lr: float = 1e-3,
                 gamma: float = 100.0, beta: float | None = None, n_chains: int = 4, n_draws: int = 200,
                 n_burnin: int = 100, thin: int = 1, batch_size: int = 0, sampler: str = "sgld",
                 rms_alpha: float = 0.99, rms_eps: float = 0.1, seed: int = 0,
                 dtype: torch.dtype | None = None, chains: Sequence[int] | None = None) -> dict[str, Any]:
    """The LLC of ``model`` at its weights on the training points ``(x, y)`` (all of them: ``n = len(x)``),
    with ``loss_fn(outputs, y)`` the mean loss, and every diagnostic of :class:`LLCProbe`.

    ``beta=None``: ``1 / log n``. ``chains`` (default ``range(n_chains)``) names the chains to run
    together. Returns a dict of numpy arrays / floats keyed like the probe's outputs, plus ``nbeta``,
    ``beta``, ``n``, ``n_params`` and ``warnings`` (a list of sentences).
    """
    kw = dict(lr=lr, gamma=gamma, beta=beta, n_chains=n_chains, n_draws=n_draws, n_burnin=n_burnin, thin=thin,
              batch_size=batch_size, sampler=sampler, rms_alpha=rms_alpha, rms_eps=rms_eps, seed=seed,
              dtype=dtype, chains=chains)
    return _estimate(model, x, y, loss_fn, None, **kw)[0]


def inverse_temperature(n: int, beta: float | None) -> float:
    """The chains' β for ``n`` training points: ``beta``, or ``1 / log n`` when it is None."""
    return 1.0 / math.log(n) if beta is None else float(beta)


def named_components(model: nn.Module, specs: Sequence[str]) -> list[Any]:
    """The components ``specs`` name in ``model`` (:func:`grokscope.functional.components.resolve_components`;
    :class:`ProbeError` naming ``rllc.components`` when one is bad)."""
    from grokscope.functional.components import ComponentError, resolve_components

    try:
        return resolve_components(model, specs)
    except ComponentError as e:
        raise ProbeError(f"rllc.components: {e}") from e


def estimate_restricted_llc(model: nn.Module, x: torch.Tensor, y: torch.Tensor, loss_fn: LossFn,
                            components: Sequence[str], component_batch: int = 0, **kw: Any) -> list[dict[str, Any]]:
    """The restricted LLC of each component of ``model`` (Wang et al., ICLR 2025, "refined LLC"): the
    chains move only the component's parameters ``v`` (the others frozen at the checkpoint), the
    localisation acts on ``v`` only, and the estimate is ``nβ (E_v[L_n(v, w*_rest)] − L_n(w*))``.

    ``components``: specifications of :mod:`grokscope.functional.components` (``"heads"``,
    ``"layer:0"``, ``"head:0.1"``, ``"params:PREFIX"``, ``"all"``). Every component's chains run in one
    batched computation (components × chains), or ``component_batch`` components at a time (0: all; the
    draws are the same either way, only the memory differs). ``kw``: the sampler settings of
    :func:`estimate_llc`.
    Returns one dict per component, as :func:`estimate_llc` returns for the whole model, with
    ``component`` (its name) and ``n_params`` (its parameter count ``d_k``) added.
    """
    from grokscope.functional.components import flat_masks

    comps = named_components(model, components)
    probe = FlatModel(model, loss_fn, kw.get("dtype"))
    masks = flat_masks(comps, probe.names, probe.shapes, probe.theta.device)
    empty = [c.name for c, m in zip(comps, masks) if not bool(m.any())]
    if empty:
        raise ProbeError(f"rllc.components: {empty[0]} holds no trainable parameter of {type(model).__name__}")
    size = component_batch if component_batch > 0 else len(comps)
    out = [r for i in range(0, len(comps), size) for r in _estimate(model, x, y, loss_fn, masks[i:i + size], **kw)]
    for c, m, r in zip(comps, masks, out):
        r["component"] = c.name
        r["n_params"] = int(m.sum())
        r["weight_norm"] = float(probe.theta[m].norm())
    return out


def _estimate(model: nn.Module, x: torch.Tensor, y: torch.Tensor, loss_fn: LossFn, masks: torch.Tensor | None, *,
              lr: float = 1e-3, gamma: float = 100.0, beta: float | None = None, n_chains: int = 4,
              n_draws: int = 200, n_burnin: int = 100, thin: int = 1, batch_size: int = 0, sampler: str = "sgld",
              rms_alpha: float = 0.99, rms_eps: float = 0.1, seed: int = 0, dtype: torch.dtype | None = None,
              chains: Sequence[int] | None = None) -> list[dict[str, Any]]:
    """The chains of every row of ``masks (K, d)`` (None: one unrestricted set) in one run of
    :func:`sgld_chains`, summarised per row as :func:`estimate_llc` documents."""
    n = len(x)
    if n < 2:
        raise ProbeError(f"llc needs at least 2 training points (log n > 0), got {n}")
    beta = inverse_temperature(n, beta)
    nbeta = n * beta
    chains = list(range(n_chains)) if chains is None else list(chains)
    with eval_mode(model), differentiable_attention(model):  # vmap has no rule for fused attention
        flat = FlatModel(model, loss_fn, dtype)
        x = x.to(flat.dtype) if x.is_floating_point() else x
        init = full_loss(flat, flat.theta, x, y)
        ch = sgld_chains(flat, x, y, lr=lr, gamma=gamma, nbeta=nbeta, chains=chains, n_draws=n_draws,
                         n_burnin=n_burnin, thin=thin, batch_size=batch_size, sampler=sampler,
                         rms_alpha=rms_alpha, rms_eps=rms_eps, seed=seed, masks=masks)
    C = len(chains)
    out = []
    for k in range(1 if masks is None else len(masks)):
        rows = slice(k * C, (k + 1) * C)
        part = Chains(loss=ch.loss[rows], dist=ch.dist[rows], grad_step=ch.grad_step[rows],
                      loc_step=ch.loc_step[rows], noise_step=ch.noise_step[rows], theta=ch.theta[rows])
        with np.errstate(all="ignore"):  # a diverged chain's inf/NaN gives NaN statistics, and a warning below
            m = _summary(part, init, nbeta)
        m.update({"weight_norm": float(flat.theta.norm()), "nbeta": nbeta, "beta": beta, "n": n,
                  "n_params": flat.dim})
        m["warnings"] = llc_warnings(m)
        out.append(m)
    return out


def _summary(ch: Chains, init: float, nbeta: float) -> dict[str, Any]:
    """The estimate and the trace statistics of :func:`estimate_llc` from the chains and L(w*)."""
    per_chain = nbeta * (ch.loss.mean(axis=1) - init)
    return {
        "llc": float(per_chain.mean()),
        "llc_std": float(per_chain.std(ddof=1)) if len(per_chain) > 1 else math.nan,
        "llc_chain": per_chain, "loss_init": init, "loss_trace": ch.loss,
        "trace_drift": trace_drift(ch.loss), "rhat": split_rhat(ch.loss), "dist": ch.dist,
        "frac_below": np.mean(ch.loss < init, axis=1),
        "grad_step": ch.grad_step, "loc_step": ch.loc_step, "noise_step": ch.noise_step,
    }


def resolve_loss(params: Any, data: Any, run_spec: dict[str, Any] | None = None) -> str:
    """``params.loss``, with ``auto`` read as ``next_token`` for a causal-LM task (``data.is_lm``), else
    the run's training loss (``train.loss`` of ``run_spec``), else ``ce``."""
    if params.loss != "auto":
        return params.loss
    if getattr(data, "is_lm", False):
        return "next_token"
    return ((run_spec or {}).get("train") or {}).get("loss", "ce")


def training_points(data: Any, params: Any, loss: str) -> tuple[torch.Tensor, torch.Tensor]:
    """The ``n`` training points the chains use (all, or a seeded subset of ``params.n_train``) as
    ``(inputs, targets)``; for ``next_token`` the targets are :func:`lm_labels` of the inputs (token ids
    ``(n, T)``) and the task's ``mask_train``, if it has one."""
    x, y = split_subset(data, "train", params.n_train, params.seed)
    if loss != "next_token":
        return x, y
    if x.ndim != 2 or x.is_floating_point():
        raise ProbeError(f"llc.loss=next_token needs token ids (n, T) as the training inputs; "
                         f"got {tuple(x.shape)} {x.dtype}")
    mask = getattr(data, "mask_train", None)
    if mask is not None and 0 < params.n_train < len(mask):
        mask = mask[subset_indices(len(mask), params.n_train, params.seed)]
    return x, lm_labels(x, mask)


# ============================================================================ the probe
@dataclass(frozen=True)
class LLCParams:
    lr: float = 1e-3              # SGLD step size ε
    gamma: float = 100.0          # localisation strength γ
    beta: float | None = None     # inverse temperature; None: 1 / log n
    n_chains: int = 4
    n_draws: int = 200
    n_burnin: int = 100           # steps before the first draw
    thin: int = 1                 # steps between draws
    batch_size: int = 0           # 0: full batch (the same n points as L(w*))
    n_train: int = 0              # training points used (0: all; else a seeded subset)
    sampler: str = "sgld"         # sgld | rmsprop
    rms_alpha: float = 0.99       # RMSProp averaging of the squared gradient
    rms_eps: float = 0.1          # RMSProp stabiliser (devinterp's default)
    loss: str = "auto"            # ce | mse | stablemax | next_token ("auto": next_token on an LM task, else
                                  # the run's train.loss, else "ce")
    dtype: str = "auto"           # auto (the model's) | float32 | float64
    seed: int = 0                 # chain noise, batches and the n_train subset


DESCRIPTIONS = {
    "llc": "local learning coefficient: mean over chains of n*beta*(mean trace loss - L(w*))",
    "llc_std": "standard deviation of the per-chain estimates (ddof=1; NaN for one chain)",
    "llc_chain": "the estimate of each chain",
    "loss_init": "L(w*): the mean training loss at the checkpoint's weights, on all n points used",
    "loss_trace": "the loss at each draw of each chain (full batch: L_n(w); mini-batch: the batch's loss)",
    "trace_drift": "(mean of the trace's second half - first half) / the trace's std, per chain",
    "rhat": "split R-hat of the loss traces (Gelman et al.); > 1.1: not stationary or chains disagree",
    "dist": "mean ||w - w*|| over the draws, per chain",
    "weight_norm": "||w*||",
    "frac_below": "fraction of draws with loss below L(w*), per chain",
    "grad_step": "mean length per step of the loss-gradient part (eps/2) G n beta grad L of the update",
    "loc_step": "mean length per step of the localisation part (eps/2) G gamma (w - w*)",
    "noise_step": "mean length per step of the noise sqrt(eps G) xi",
    "warning": "what the diagnostics say is wrong with this checkpoint's chains ('' when nothing)",
}


class LLCProbe(Probe):
    name = "llc"
    panel_order = 80
    quick_params = {"n_chains": "2", "n_draws": "6", "n_burnin": "2"}
    quick_task = "modular"
    description = "local learning coefficient by batched SGLD chains around each checkpoint (Lau et al.)"
    Params = LLCParams
    descriptions = DESCRIPTIONS  # each variable's, kept in the store
    tasks = ("classification", "causal_lm")  # causal_lm: the next_token loss (llc.loss=auto picks it)
    outputs = {
        "llc": (), "llc_std": (), "llc_chain": ("chain",), "loss_init": (), "loss_trace": ("chain", "draw"),
        "trace_drift": ("chain",), "rhat": (), "dist": ("chain",), "weight_norm": (),
        "frac_below": ("chain",), "grad_step": ("chain",), "loc_step": ("chain",), "noise_step": ("chain",),
        "warning": (),
    }
    needs_data = True
    needs_grad = True
    version = 1

    panels = (
        PanelSpec("llc", "Local learning coefficient", "λ̂ (mean over chains)", higher_is_better=None),
        PanelSpec("rhat", "LLC chains: split R-hat", "R̂ of the loss traces", headline=False),
    )
    events = (EventSpec("llc_fall", "llc", "fall", "the fall of the local learning coefficient"),)

    @classmethod
    def check_params(cls, p: LLCParams) -> None:
        def need(ok: bool, what: str) -> None:
            if not ok:
                raise ProbeError(f"{cls.name}.{what}")
        need(p.lr > 0 and math.isfinite(p.lr), f"lr must be > 0, got {p.lr}")
        need(p.gamma >= 0 and math.isfinite(p.gamma), f"gamma must be >= 0, got {p.gamma}")
        need(p.beta is None or (isinstance(p.beta, (int, float)) and p.beta > 0),
             f"beta must be > 0 or null (1/log n), got {p.beta}")
        need(p.n_chains >= 1, f"n_chains must be >= 1, got {p.n_chains}")
        need(p.n_draws >= 4, f"n_draws must be >= 4 (the split R-hat needs two halves of 2), got {p.n_draws}")
        need(p.n_burnin >= 0, f"n_burnin must be >= 0, got {p.n_burnin}")
        need(p.thin >= 1, f"thin must be >= 1, got {p.thin}")
        need(p.batch_size >= 0, f"batch_size must be >= 0 (0: full batch), got {p.batch_size}")
        need(p.n_train >= 0, f"n_train must be >= 0 (0: all), got {p.n_train}")
        check_choice(f"{cls.name}.sampler", p.sampler, SAMPLERS)
        need(0 <= p.rms_alpha < 1, f"rms_alpha must be in [0, 1), got {p.rms_alpha}")
        need(p.rms_eps > 0, f"rms_eps must be > 0, got {p.rms_eps}")
        need(p.loss == "auto" or p.loss in LLC_LOSSES, f"loss={p.loss!r}; valid: auto, {', '.join(LLC_LOSSES)}")
        need(p.dtype == "auto" or p.dtype in DTYPES, f"dtype={p.dtype!r}; valid: auto, {', '.join(DTYPES)}")
        check_work(cls.name, f"{cls.name}.n_chains x {cls.name}.n_draws (stored draws)", p.n_chains * p.n_draws)
        check_work(cls.name, f"{cls.name}.n_train", p.n_train)
        check_work(cls.name, f"{cls.name}.batch_size", p.batch_size)

    def check(self, model: nn.Module, data: Any, params: LLCParams) -> None:
        n_all = len(data.split("train")[1])
        if params.n_train > n_all:
            raise ProbeError(f"{self.name}.n_train={params.n_train} is larger than the training split "
                             f"({n_all} points); valid: 0..{n_all}")
        n = params.n_train or n_all
        if n < 2:
            raise ProbeError(f"{self.name} needs at least 2 training points, the training split has {n_all}")
        if params.batch_size > n:
            raise ProbeError(f"{self.name}.batch_size={params.batch_size} is larger than the {n} training points used; "
                             f"valid: 0 (full batch)..{n}")
        loss = resolve_loss(params, data)
        x, y = training_points(data, params, loss)
        flat = FlatModel(model, llc_loss(loss))
        device = flat.theta.device
        xb, yb = x[:2].to(device), y[:2].to(device)
        xb = xb.to(flat.dtype) if xb.is_floating_point() else xb
        try:
            with eval_mode(model), differentiable_attention(model):
                vmap(grad_and_value(flat.loss), in_dims=(0, None, None))(flat.theta.expand(2, -1), xb, yb)
        except Exception as e:  # any failure of torch.func on this model is reported in one line
            first = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
            raise ProbeError(f"{self.name}: {type(model).__name__} cannot run under torch.func.vmap/grad "
                             f"({first})") from e

    @staticmethod
    def sampler_settings(params: LLCParams) -> dict[str, Any]:
        """The keyword arguments of :func:`estimate_llc` that ``params`` set."""
        return dict(lr=params.lr, gamma=params.gamma, beta=params.beta, n_chains=params.n_chains,
                    n_draws=params.n_draws, n_burnin=params.n_burnin, thin=params.thin,
                    batch_size=params.batch_size, sampler=params.sampler, rms_alpha=params.rms_alpha,
                    rms_eps=params.rms_eps, seed=params.seed,
                    dtype=None if params.dtype == "auto" else DTYPES[params.dtype])

    @staticmethod
    def inputs(model: nn.Module, data: Any, params: LLCParams, ctx: ProbeContext
               ) -> tuple[str, torch.Tensor, torch.Tensor]:
        """``(loss name, inputs, targets)`` of the chains, on the model's device."""
        loss = resolve_loss(params, data, ctx.run_spec)
        x, y = training_points(data, params, loss)
        device = next(model.parameters()).device
        return loss, x.to(device), y.to(device)

    def _frame(self, params: LLCParams, loss: str, n: int, attrs: dict[str, Any], coords: dict[str, Any]):
        """The result's frame (zeros) for ``n`` training points, with the probe's own ``attrs`` (``llc``:
        ``n_params``) and ``coords`` (``rllc``: ``component``): what :meth:`template` declares and
        :meth:`compute` fills."""
        beta = inverse_temperature(n, params.beta)
        batch = "full batch" if not 0 < params.batch_size < n else f"{params.batch_size} per step"
        attrs = {"loss": loss, "n": int(n), "beta": beta, "nbeta": n * beta, "batch": batch, **attrs}
        coords = {"chain": np.arange(params.n_chains), "draw": np.arange(params.n_draws), **coords}
        return template_dataset(self.outputs, coords, {"warning": object}, attrs,
                                {name: {"description": self.descriptions[name]} for name in self.outputs})

    @staticmethod
    def _sizes(data: Any, params: LLCParams, ctx: ProbeContext | None) -> tuple[str, int]:
        """``(loss name, n training points)`` without running the chains."""
        loss = resolve_loss(params, data, ctx.run_spec if ctx is not None else None)
        return loss, subset_size(len(data.split("train")[0]), params.n_train)

    def template(self, model: nn.Module, data: Any, params: LLCParams, ctx: ProbeContext | None = None):
        """Chains x draws; sizes from the parameters, the training split and the model's parameters."""
        d = sum(p.numel() for p in model.parameters() if p.requires_grad)
        return self._frame(params, *self._sizes(data, params, ctx), {"n_params": d}, {})

    def compute(self, model: nn.Module, data: Any, params: LLCParams, ctx: ProbeContext):
        loss, x, y = self.inputs(model, data, params, ctx)
        m = estimate_llc(model, x, y, llc_loss(loss), **self.sampler_settings(params))
        values = {name: np.asarray(m[name], dtype=np.float64) for name in self.outputs if name != "warning"}
        values["warning"] = np.array("; ".join(m["warnings"]), dtype=object)
        return fill_template(self._frame(params, loss, int(m["n"]), {"n_params": int(m["n_params"])}, {}), values)


# ============================================================================ the restricted probe
@dataclass(frozen=True)
class RestrictedLLCParams(LLCParams):
    # which components (grokscope.functional.components): heads, layers, all, layer:I, head:L.H, params:PREFIX
    components: tuple[str, ...] = ("heads",)
    component_batch: int = 0      # components whose chains run together (0: all; lower it to save memory)


R_DESCRIPTIONS = {
    **DESCRIPTIONS,
    "llc": "restricted LLC of each component: n*beta*(mean trace loss - L(w*)), chains moving the component only",
    "dist": "mean ||w - w*|| over the draws (only the component's coordinates move), per component and chain",
    "weight_norm": "||w*|| of the component's parameters",
    "n_params": "number of parameters in the component (d; a regular component has LLC d/2)",
    "warning": "what the diagnostics say is wrong with this component's chains ('' when nothing)",
}


class RestrictedLLCProbe(LLCProbe):
    """``rllc``: the LLC restricted to each named component (Wang et al., ICLR 2025, "refined LLC"): the
    chains of :class:`LLCProbe` moving only the component's parameters, every component's chains in one
    batched computation. Same parameters as ``llc`` plus ``components``."""

    name = "rllc"
    description = "restricted (refined) LLC of each layer or attention head by batched SGLD chains (Wang et al.)"
    Params = RestrictedLLCParams
    descriptions = R_DESCRIPTIONS
    outputs = {
        "llc": ("component",), "llc_std": ("component",), "llc_chain": ("component", "chain"), "loss_init": (),
        "loss_trace": ("component", "chain", "draw"), "trace_drift": ("component", "chain"),
        "rhat": ("component",), "dist": ("component", "chain"), "weight_norm": ("component",),
        "n_params": ("component",), "frac_below": ("component", "chain"), "grad_step": ("component", "chain"),
        "loc_step": ("component", "chain"), "noise_step": ("component", "chain"), "warning": ("component",),
    }
    version = 1

    panels = (
        PanelSpec("llc", "Restricted LLC by component", "λ̂ of the component", hue="component",
                  higher_is_better=None),
    )
    events = ()
    panel_order = 85
    quick_task = "modular_transformer"  # heads to restrict to

    @classmethod
    def check_params(cls, p: RestrictedLLCParams) -> None:
        from grokscope.functional.components import ComponentError, check_specs

        super().check_params(p)
        try:
            check_specs(p.components)
        except ComponentError as e:
            raise ProbeError(f"rllc.components: {e}") from e
        if p.component_batch < 0:
            raise ProbeError(f"rllc.component_batch must be >= 0 (0: all components together), "
                             f"got {p.component_batch}")

    def check(self, model: nn.Module, data: Any, params: RestrictedLLCParams) -> None:
        comps = named_components(model, params.components)
        super().check(model, data, params)
        d = sum(p.numel() for p in model.parameters() if p.requires_grad)
        together = min(params.component_batch or len(comps), len(comps))
        check_work("rllc", "components run together x n_chains x parameters (the chains' state, gradient, noise, "
                   "offset; lower rllc.component_batch)", together * params.n_chains * d, each=32)

    def template(self, model: nn.Module, data: Any, params: RestrictedLLCParams, ctx: ProbeContext | None = None):
        """Components x chains x draws; the components resolved on the model (names only)."""
        names = [c.name for c in named_components(model, params.components)]
        return self._frame(params, *self._sizes(data, params, ctx), {}, {"component": names})

    def compute(self, model: nn.Module, data: Any, params: RestrictedLLCParams, ctx: ProbeContext):
        loss, x, y = self.inputs(model, data, params, ctx)
        res = estimate_restricted_llc(model, x, y, llc_loss(loss), params.components, params.component_batch,
                                      **self.sampler_settings(params))
        values = {name: np.stack([np.asarray(r[name], dtype=np.float64) for r in res])
                  for name in self.outputs if name not in ("warning", "loss_init")}
        values["loss_init"] = np.float64(res[0]["loss_init"])
        values["warning"] = np.array(["; ".join(r["warnings"]) for r in res], dtype=object)
        names = [str(r["component"]) for r in res]
        return fill_template(self._frame(params, loss, int(res[0]["n"]), {}, {"component": names}), values)
