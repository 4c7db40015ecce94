"""``fourier``: Fourier structure of modular-arithmetic models (Nanda et al.; Musat).

Functional pieces (usable from a notebook; every matrix is float64):

* :func:`fourier_basis` — the real orthonormal Fourier basis ``B (p, p)`` of Z_p: row 0 constant,
  rows ``2k−1, 2k`` the normalised ``cos, sin(2πkx/p)`` for ``k = 1..(p−1)/2``.
* :func:`find_embedding` / :func:`locate_embedding` — the token embedding ``E (p, d)`` of a model.
* Embedding measures: :func:`fourier_norms` (Nanda's ``n_k``), :func:`musat_fourier` (Musat's ``F_k``),
  :func:`circle_geometry` (``norm_re``, ``norm_im``, ``aspect``, ``cos_re_im``, ``abs_cos`` and its
  summaries, ``norm_spread``), :func:`key_frequencies`, :func:`gini`, :func:`gini_fft_raw`.
* All-pairs measures (the model run on every ``(a, b)``): :func:`all_pairs_logits`,
  :func:`freq_component` / :func:`restricted_loss` / :func:`excluded_loss` (Nanda's trig circuit
  losses), :func:`neuron_frequencies` and :func:`logit_fourier_coefficients`.

:class:`FourierProbe` (``--metrics fourier``) runs all of them on a checkpoint. Definitions, and where
our choices differ from the authors' code, are in
``docs/algorithms.md#fourier--fourier-structure-of-modular-arithmetic``.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
from torch import nn

from grokscope.functional import eval_mode
from grokscope.losses import task_loss

from grokscope.datasets.modular import encode, pairs
from .base import (EventSpec, PanelSpec, Probe, ProbeContext, ProbeError, check_at_least, check_work, fill_template,
                   template_dataset)

F64 = torch.float64


# ============================================================================ basis and embedding
def n_freqs(p: int) -> int:
    """Number of non-constant frequencies ``K = (p − 1) // 2`` (k = 1..K)."""
    return (p - 1) // 2


def fourier_basis(p: int, dtype: torch.dtype = F64, device: torch.device | str | None = None) -> torch.Tensor:
    """Real orthonormal Fourier basis of Z_p as rows, ``(p, p)``.

    Row 0 is ``1/√p``; rows ``2k−1`` and ``2k`` are ``cos(2πkx/p)`` and ``sin(2πkx/p)`` scaled to unit
    norm, ``k = 1..(p−1)//2``; for even ``p`` the last row is the Nyquist ``cos(πx)/√p``.
    """
    if p < 1:
        raise ValueError(f"p must be >= 1, got {p}")
    x = torch.arange(p, dtype=F64)
    rows = [torch.full((p,), 1.0 / math.sqrt(p), dtype=F64)]
    for k in range(1, n_freqs(p) + 1):
        ang = 2 * math.pi * k * x / p
        rows += [torch.cos(ang) * math.sqrt(2.0 / p), torch.sin(ang) * math.sqrt(2.0 / p)]
    if p % 2 == 0:
        rows.append(torch.cos(math.pi * x) / math.sqrt(p))
    return torch.stack(rows).to(dtype=dtype, device=device)


@dataclass
class EmbeddingRef:
    """Where a model's token embedding lives.

    ``matrix (p, d)``: the embeddings of tokens ``0..p−1``; ``full (V, d)``: every row of the layer
    (including ``=`` for ``nn.Embedding``), used by the authors' raw FFT variant; ``module``: its name;
    ``note``: how it was read.
    """

    module: str
    matrix: torch.Tensor
    full: torch.Tensor
    note: str


def locate_embedding(model: nn.Module, p: int) -> EmbeddingRef:
    """Find the embedding: the first ``nn.Embedding`` (rows ``0..p−1``, ``=`` dropped) or, failing
    that, the first ``nn.Linear`` acting on one-hot / ``e_a + e_b`` inputs (``weight.T`` rows for tokens
    ``0..p−1``; for a ``2p``-wide ``onehot_concat`` input, the first ``p`` columns — operand ``a``).

    "First" is module registration order (:meth:`nn.Module.named_modules`). Raises :class:`ProbeError`
    if neither exists or the first candidate has the wrong size.
    """
    for name, m in model.named_modules():
        if isinstance(m, nn.Embedding):
            if m.num_embeddings < p:
                raise ProbeError(f"embedding {name!r} has {m.num_embeddings} rows, fewer than p = {p}")
            w = m.weight.detach()
            note = f"{name}: nn.Embedding rows 0..{p - 1}" + (" ('=' dropped)" if m.num_embeddings > p else "")
            return EmbeddingRef(name, w[:p], w, note)
        if isinstance(m, nn.Linear):
            w = m.weight.detach().T  # (in_features, d)
            if m.in_features == p:
                return EmbeddingRef(name, w, w, f"{name}: Linear on one-hot / e_a+e_b inputs, weight.T")
            if m.in_features == 2 * p:
                return EmbeddingRef(name, w[:p], w[:p],
                                    f"{name}: Linear on onehot_concat inputs, weight.T rows 0..{p - 1} "
                                    "(operand a only)")
            raise ProbeError(f"the first Linear layer {name!r} has in_features={m.in_features}; an embedding "
                             f"of Z_{p} needs p={p} (one-hot / e_a+e_b) or 2p={2 * p} (onehot_concat)")
    raise ProbeError(f"{type(model).__name__} has no nn.Embedding and no nn.Linear: cannot find an embedding")


def find_embedding(model: nn.Module, p: int) -> torch.Tensor:
    """The embedding ``E (p, d)`` of tokens ``0..p−1`` (float64, detached); see :func:`locate_embedding`."""
    return locate_embedding(model, p).matrix.to(F64)


def find_readout(model: nn.Module, p: int) -> torch.Tensor | None:
    """The neuron→logit map ``W_L (p, n_neurons)``, or None: ``unembed.weight @ mlp_out.weight`` for the
    transformer (Nanda's ``W_L``), ``unembed.weight`` for ``modular_mlp``, else the weight of the last
    ``nn.Linear`` with ``p`` outputs."""
    unembed = getattr(model, "unembed", None)
    if isinstance(unembed, nn.Linear) and unembed.out_features == p:
        w = unembed.weight.detach().to(F64)
        mlp_out = getattr(model, "mlp_out", None)
        if isinstance(mlp_out, nn.Linear) and mlp_out.out_features == unembed.in_features:
            w = w @ mlp_out.weight.detach().to(F64)
        return w
    last = None
    for m in model.modules():
        if isinstance(m, nn.Linear) and m.out_features == p:
            last = m
    return None if last is None else last.weight.detach().to(F64)


# ============================================================================ embedding measures
def fourier_coefficients(E: torch.Tensor) -> torch.Tensor:
    """``B E`` ``(p, d)``: the embedding in the real Fourier basis (row ``2k−1`` cos k, ``2k`` sin k)."""
    E = E.to(F64)
    return fourier_basis(E.shape[0], device=E.device) @ E


def fourier_norms(E: torch.Tensor) -> torch.Tensor:
    """Nanda's per-frequency norms ``n_k = ‖[C_{2k−1}; C_{2k}]‖_F`` of ``C = B E``, ``k = 1..K`` → ``(K,)``.

    ``E (p, d)`` has one row per token. ``Σ_k n_k² + ‖C_0‖² = ‖E‖_F²`` (for odd ``p``).
    """
    C = fourier_coefficients(E)
    K = n_freqs(E.shape[0])
    return (C[1:2 * K + 1].reshape(K, 2, -1) ** 2).sum(dim=(1, 2)).sqrt()


def musat_fourier(E: torch.Tensor) -> torch.Tensor:
    """Musat's ``F_k = (1/p) Σ_j e^{−i2πjk/p} E_j`` for ``k = 1..K`` → complex ``(K, d)``."""
    E = E.to(F64)
    p = E.shape[0]
    return torch.fft.fft(E, dim=0)[1:n_freqs(p) + 1] / p


def _cos_matrix(V: torch.Tensor) -> torch.Tensor:
    """Cosine similarity of the rows of ``V`` ``(m, d)`` → ``(m, m)``; NaN where a row is zero."""
    n = V.norm(dim=1, keepdim=True)
    U = V / torch.where(n > 0, n, torch.nan)
    return U @ U.T


def circle_geometry(E: torch.Tensor) -> dict[str, torch.Tensor]:
    """Musat's circle measures of the embedding ``E (p, d)`` from ``F_k`` (:func:`musat_fourier`).

    Returns ``norm_re``, ``norm_im`` ``(K,)`` (‖Re F_k‖, ‖Im F_k‖); ``aspect = min/max`` of the two;
    ``cos_re_im = |⟨Re, Im⟩| / (‖Re‖‖Im‖)``; ``abs_cos (K, 2, K, 2)``: cosine similarity of the
    elementwise magnitudes ``|Re F_k|``, ``|Im F_k|`` (part 0 = re, 1 = im); ``abs_cos_same``: mean over
    k of ``cos(|Re F_k|, |Im F_k|)``; ``abs_cos_cross``: mean over pairs from different frequencies;
    ``norm_spread = (max − min) / mean`` of all ``2K`` norms.
    """
    F = musat_fourier(E)
    re, im = F.real, F.imag
    K = re.shape[0]
    norm_re, norm_im = re.norm(dim=1), im.norm(dim=1)
    hi = torch.maximum(norm_re, norm_im)
    aspect = torch.minimum(norm_re, norm_im) / torch.where(hi > 0, hi, torch.nan)
    cos_re_im = (re * im).sum(dim=1).abs() / torch.where(norm_re * norm_im > 0, norm_re * norm_im, torch.nan)
    V = torch.stack([re.abs(), im.abs()], dim=1).reshape(2 * K, -1)  # rows: re1, im1, re2, im2, ...
    C = _cos_matrix(V)
    abs_cos = C.reshape(K, 2, K, 2)
    same = abs_cos[torch.arange(K), 0, torch.arange(K), 1].mean() if K else torch.tensor(torch.nan)
    freq_of = torch.arange(2 * K, device=E.device) // 2
    cross_mask = freq_of[:, None] != freq_of[None, :]
    cross = C[cross_mask].mean() if K > 1 else torch.tensor(torch.nan)
    norms = torch.cat([norm_re, norm_im])
    spread = (norms.max() - norms.min()) / norms.mean() if K else torch.tensor(torch.nan)
    return {"norm_re": norm_re, "norm_im": norm_im, "aspect": aspect, "cos_re_im": cos_re_im,
            "abs_cos": abs_cos, "abs_cos_same": same, "abs_cos_cross": cross, "norm_spread": spread}


def key_frequencies(norms: torch.Tensor, n_key: int = 5) -> torch.Tensor:
    """The ``n_key`` frequencies (1-based ``k``) with the largest ``norms`` ``(K,)``, largest first."""
    n_key = min(int(n_key), norms.shape[0])
    return torch.argsort(norms, descending=True, stable=True)[:n_key] + 1


def gini(values: torch.Tensor) -> float:
    """Gini coefficient of ``|values|`` (flattened): ``2Σ i·a_(i) / (n Σa) − (n+1)/n`` over the ascending
    sort ``a_(1) ≤ … ≤ a_(n)``. 0 for equal values, ``(n−1)/n`` for a single non-zero; NaN if all zero."""
    a = torch.sort(values.detach().to(F64).abs().reshape(-1)).values
    n = a.numel()
    total = a.sum()
    if n == 0 or not total > 0:
        return float("nan")
    i = torch.arange(1, n + 1, dtype=F64, device=a.device)
    return float(2 * (i * a).sum() / (n * total) - (n + 1) / n)


def gini_fft_raw(M: torch.Tensor) -> float:
    """The authors' raw variant: complex FFT of ``M (V, d)`` along the token axis (``V`` rows: every
    token the layer has, ``=`` included), the norm over ``d`` of each of the ``V`` bins (conjugate
    duplicates and the constant bin included), and the Gini of those ``V`` values."""
    spec = torch.fft.fft(M.detach().to(F64), dim=0)
    return gini(spec.abs().pow(2).sum(dim=1).sqrt())


# ============================================================================ all-pairs measures
def all_pairs_inputs(p: int, encoding: str, device: torch.device | str | None = None
                     ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """``(x, a, b)`` for all ``p²`` ordered pairs, ``a``-major (row ``a·p + b``), encoded as the dataset
    encodes them (``tokens``, ``onehot_concat`` or ``onehot_sum``)."""
    a, b = pairs(p, "add", unordered=False)
    return encode(a, b, p, encoding).to(device), a.to(device), b.to(device)


@torch.no_grad()
def all_pairs_logits(model: nn.Module, p: int, encoding: str, batch_size: int = 4096) -> torch.Tensor:
    """The model's outputs on all ``p²`` pairs ``(p², C)`` float64, row ``a·p + b`` (eval mode)."""
    device = next(model.parameters()).device
    x, _, _ = all_pairs_inputs(p, encoding, device)
    with eval_mode(model):
        out = torch.cat([model(x[i:i + batch_size]) for i in range(0, len(x), batch_size)])
    return out.to(F64)


def freq_directions(p: int, k: int, device: torch.device | str | None = None) -> torch.Tensor:
    """Unit vectors of ``cos(w_k(a+b))`` and ``sin(w_k(a+b))`` over the ``p²`` pairs (a-major) → ``(2, p²)``."""
    B = fourier_basis(p, device=device)
    c, s = B[2 * k - 1], B[2 * k]
    cos_dir = (torch.outer(c, c) - torch.outer(s, s)).reshape(-1) / math.sqrt(2)
    sin_dir = (torch.outer(s, c) + torch.outer(c, s)).reshape(-1) / math.sqrt(2)
    return torch.stack([cos_dir, sin_dir])


def freq_component(logits: torch.Tensor, p: int, freqs: list[int] | torch.Tensor) -> torch.Tensor:
    """The part of every logit column ``(p², C)`` along ``cos/sin(w_k(a+b))`` for ``k`` in ``freqs``."""
    out = torch.zeros_like(logits)
    for k in [int(k) for k in freqs]:
        D = freq_directions(p, k, logits.device).to(logits.dtype)  # (2, p²)
        out += D.T @ (D @ logits)
    return out


def _addition_labels(p: int, device: torch.device | str | None) -> torch.Tensor:
    a, b = pairs(p, "add", unordered=False)
    return ((a + b) % p).to(device)


def restricted_loss(logits: torch.Tensor, p: int, freqs: list[int] | torch.Tensor, loss: str = "ce") -> float:
    """Nanda's restricted loss: keep only the ``cos/sin(w_k(a+b))`` parts of the logits for ``k`` in
    ``freqs`` (plus the mean of what was removed, per output), loss over all ``p²`` pairs of ``a + b``."""
    kept = freq_component(logits, p, freqs)
    kept = kept + (logits - kept).mean(dim=0, keepdim=True)
    return float(task_loss(kept, _addition_labels(p, logits.device), loss))


def excluded_loss(logits: torch.Tensor, p: int, freqs: list[int] | torch.Tensor, rows: torch.Tensor,
                  loss: str = "ce") -> float:
    """Nanda's excluded loss: remove the ``cos/sin(w_k(a+b))`` parts for ``k`` in ``freqs`` (no bias
    correction) and take the loss of ``a + b`` on the pair rows ``rows`` (the training pairs)."""
    left = logits - freq_component(logits, p, freqs)
    y = _addition_labels(p, logits.device)
    return float(task_loss(left[rows], y[rows], loss))


def logit_fourier_coefficients(logits: torch.Tensor, p: int) -> torch.Tensor:
    """``⟨L, ĉ_w⟩`` for the unit ``ĉ_w ∝ cos(2πw(a+b−c)/p)`` over ``(p², p)``, ``w = 1..K`` → ``(K,)``."""
    a, b = pairs(p, "add", unordered=False)
    s = (a + b).to(F64).to(logits.device)[:, None] - torch.arange(p, dtype=F64, device=logits.device)[None, :]
    out = []
    for w in range(1, n_freqs(p) + 1):
        c = torch.cos(2 * math.pi * w * s / p)
        out.append((logits[:, :p] * c).sum() / c.norm())
    return torch.stack(out) if out else torch.zeros(0, dtype=F64)


def find_neuron_module(model: nn.Module, name: str = "auto") -> tuple[str, nn.Module]:
    """The activation module whose output feeds the readout: ``name`` if given, else the last
    activation module in registration order: grokscope's ReLU/GELU/LeakyReLU, any module
    :func:`grokscope.functional.kinks.module_kinks` recognises (torch's activations, and those of other
    libraries by what they compute: GPT-2's ``transformer.h.N.mlp.act``, BERT's
    ``encoder.layer.N.intermediate.intermediate_act_fn``, ...)."""
    from grokscope.functional.kinks import module_kinks
    from grokscope.models.layers import ACTIVATIONS

    modules = dict(model.named_modules())
    if name != "auto":
        if name not in modules:
            raise ProbeError(f"fourier.neuron_module={name!r} is not a module of {type(model).__name__}; "
                             f"modules: {', '.join(n for n in modules if n)}")
        return name, modules[name]
    kinds = tuple(c for c in ACTIVATIONS.values() if c is not nn.Identity)
    found = [(n, m) for n, m in modules.items()
             if n and (isinstance(m, kinds) or module_kinks(m) is not None)]
    if not found:
        hint = [n for n in modules if any(w in n.rsplit(".", 1)[-1].lower() for w in ("act", "mlp", "fc"))]
        raise ProbeError(f"{type(model).__name__} has no activation module for the neuron frequencies; set "
                         "fourier.neuron_module=NAME (the module whose outputs are the MLP neurons"
                         + (f", e.g. one of {', '.join(hint[:6])}" if hint else "")
                         + ") or fourier.all_pairs=false")
    return found[-1]


@torch.no_grad()
def neuron_activations(model: nn.Module, module: nn.Module, p: int, encoding: str,
                       batch_size: int = 4096) -> torch.Tensor:
    """Outputs of ``module`` on all ``p²`` pairs at the last position → ``(p, p, n_neurons)`` float64."""
    x, _, _ = all_pairs_inputs(p, encoding, next(model.parameters()).device)
    return module_outputs(model, module, x, batch_size).reshape(p, p, -1)


def neuron_count(model: nn.Module, module: nn.Module, p: int, encoding: str) -> int:
    """How many neurons :func:`neuron_activations` gives (``module``'s outputs at the last position),
    from one forward pass of the pair ``(0, 0)``."""
    x, _, _ = all_pairs_inputs(p, encoding, next(model.parameters()).device)
    return int(module_outputs(model, module, x[:1], 1).shape[1])


@torch.no_grad()
def module_outputs(model: nn.Module, module: nn.Module, x: torch.Tensor, batch_size: int = 4096) -> torch.Tensor:
    """Outputs of ``module`` (at the last position of a sequence) when ``model`` runs on ``x`` in eval
    mode, ``batch_size`` rows at a time → ``(len(x), n_neurons)`` float64."""
    got: list[torch.Tensor] = []

    def hook(_m, _inp, out):
        out = out[:, -1] if out.dim() == 3 else out
        got.append(out.reshape(out.shape[0], -1).to(F64))

    handle = module.register_forward_hook(hook)
    try:
        with eval_mode(model):
            for i in range(0, len(x), batch_size):
                model(x[i:i + batch_size])
    finally:
        handle.remove()
    if len(got) != -(-len(x) // batch_size):
        raise ProbeError(f"module {type(module).__name__} ran {len(got)} times on {len(x)} inputs in "
                         f"batches of {batch_size}; its outputs are the neurons only if it runs once per batch")
    return torch.cat(got)


def neuron_frequencies(acts: torch.Tensor) -> torch.Tensor:
    """Fraction of each neuron's (centred) variance over the ``(a, b)`` grid explained by frequency k:
    energy of the 2-D Fourier block ``{const, cos k, sin k}²`` / total → ``(n_neurons, K)``.

    ``acts (p, p, n)``. Unlike Nanda's code, ``k = (p−1)/2`` is included; a constant neuron gives NaN.
    """
    p = acts.shape[0]
    A = acts.to(F64) - acts.to(F64).mean(dim=(0, 1), keepdim=True)
    B = fourier_basis(p, device=A.device)
    hat = torch.einsum("ia,abn,jb->ijn", B, A, B)
    energy = hat.pow(2)
    total = energy.sum(dim=(0, 1))
    fracs = []
    for k in range(1, n_freqs(p) + 1):
        idx = torch.tensor([0, 2 * k - 1, 2 * k], device=A.device)
        fracs.append(energy[idx][:, idx].sum(dim=(0, 1)))
    frac = torch.stack(fracs, dim=1) if fracs else torch.zeros(A.shape[2], 0, dtype=F64)
    return frac / torch.where(total > 0, total, torch.nan)[:, None]


# ============================================================================ the probe
# the variables only ``all_pairs`` computes
ALL_PAIRS_VARS = ("full_loss", "restricted_loss", "excluded_loss", "excluded_loss_all", "logit_coef",
                  "neuron_freq", "neuron_frac", "neurons_per_freq")

DESCRIPTIONS = {
    "fourier_norms": "embedding norm per frequency k in the real Fourier basis (Nanda's n_k)",
    "fourier_norm_const": "norm of the constant (k = 0) component of the embedding",
    "norm_re": "||Re F_k||, F_k = (1/p) sum_j exp(-2 pi i j k / p) E_j (Musat)",
    "norm_im": "||Im F_k|| (Musat)",
    "aspect": "min/max(norm_re, norm_im): 1 = a round circle",
    "cos_re_im": "|cos(Re F_k, Im F_k)|: 0 = orthogonal axes",
    "abs_cos": "cosine similarity of the elementwise magnitudes |Re F_k|, |Im F_k| (part re/im)",
    "abs_cos_same": "mean over k of cos(|Re F_k|, |Im F_k|)",
    "abs_cos_cross": "mean of abs_cos over pairs from different frequencies",
    "norm_spread": "(max - min) / mean of the 2K norms norm_re, norm_im",
    "key_freq": "the n_key frequencies with the largest fourier_norms, largest first",
    "gini_real": "Gini coefficient of fourier_norms (real basis, tokens 0..p-1)",
    "gini_fft_raw": "Gini over every complex FFT bin of all embedding rows ('=' included; authors' variant)",
    "gini_readout_real": "Gini of the real-basis Fourier norms of the neuron-to-logit map W_L over the p outputs",
    "gini_readout_fft_raw": "Gini over the complex FFT bins of W_L (authors' variant)",
    "full_loss": "loss of a + b over all p^2 pairs",
    "restricted_loss": "loss over all p^2 pairs keeping only the key frequencies' cos/sin(w(a+b)) logit "
                       "components (plus the mean of the rest)",
    "excluded_loss": "train loss with frequency k's cos/sin(w(a+b)) logit components removed",
    "excluded_loss_all": "train loss with every key frequency's components removed",
    "logit_coef": "<logits, unit cos(2 pi w (a + b - c) / p)> over (p^2, p)",
    "neuron_freq": "the frequency explaining most of the neuron's centred activation energy over (a, b)",
    "neuron_frac": "fraction of the neuron's energy in the {1, cos k, sin k}^2 block of neuron_freq",
    "neurons_per_freq": "neurons whose best frequency is k with neuron_frac >= neuron_threshold",
}


@dataclass(frozen=True)
class FourierParams:
    n_key: int = 5               # key frequencies: the n_key largest embedding Fourier norms
    all_pairs: bool = True       # also run the model on all p² pairs (losses, neurons, logit coefficients)
    neuron_module: str = "auto"  # activation module feeding the readout ("auto": the last activation)
    neuron_threshold: float = 0.85  # a neuron counts for frequency k in neurons_per_freq if its fraction ≥ this
    loss: str = "auto"           # loss of the restricted/excluded losses ("auto": the run's, else "ce")
    batch_size: int = 4096


class FourierProbe(Probe):
    name = "fourier"
    panel_order = 50
    quick_task = "modular"
    description = ("Fourier structure of a modular-arithmetic model: embedding norms per frequency, Musat's "
                   "circle geometry, key frequencies, Gini, restricted/excluded loss, neuron frequencies")
    Params = FourierParams
    outputs = {
        "fourier_norms": ("freq",), "fourier_norm_const": (),
        "norm_re": ("freq",), "norm_im": ("freq",), "aspect": ("freq",), "cos_re_im": ("freq",),
        "abs_cos": ("freq", "part", "freq_b", "part_b"), "abs_cos_same": (), "abs_cos_cross": (),
        "norm_spread": (), "key_freq": ("key",), "gini_real": (), "gini_fft_raw": (),
        "gini_readout_real": (), "gini_readout_fft_raw": (),
        # with all_pairs:
        "full_loss": (), "restricted_loss": (), "excluded_loss": ("freq",), "excluded_loss_all": (),
        "logit_coef": ("freq",), "neuron_freq": ("neuron",), "neuron_frac": ("neuron",),
        "neurons_per_freq": ("freq",),
    }
    needs_data = True

    panels = (
        PanelSpec("fourier_norms", "Fourier norms of the embedding", "frequency k", kind="heatmap"),
        PanelSpec("gini_real", "Fourier Gini", "Gini of the norms (1 = one frequency)", ylim=(0, 1)),
    )
    events = (EventSpec("gini_rise", "gini_real", "rise", "the rise of the Fourier Gini"),)

    @classmethod
    def check_params(cls, params: FourierParams) -> None:
        if params.n_key < 1:
            raise ProbeError(f"fourier.n_key must be >= 1, got {params.n_key}")
        check_at_least("fourier", params, batch_size=1)
        check_work("fourier", "fourier.batch_size", params.batch_size)
        if not 0 <= params.neuron_threshold <= 1:
            raise ProbeError(f"fourier.neuron_threshold must be in [0, 1], got {params.neuron_threshold}")

    def check(self, model: nn.Module, data: Any, params: FourierParams) -> None:
        """Refuses, before any job, a dataset that is not modular arithmetic (one line for the run)."""
        self._modular_meta(data)

    @staticmethod
    def _modular_meta(data: Any) -> tuple[int, str, str]:
        meta = getattr(data, "meta", None) or {}
        if not all(k in meta for k in ("p", "op", "encoding")):
            raise ProbeError(f"probe 'fourier' needs a modular-arithmetic dataset (data.meta with p, op, "
                             f"encoding); dataset {getattr(data, 'name', '?')!r} has none")
        return int(meta["p"]), str(meta["op"]), str(meta["encoding"])

    @staticmethod
    def resolve_loss(params: FourierParams, ctx: ProbeContext | None) -> str:
        """``params.loss``, with ``auto`` → the run's training loss, else ``ce`` (also without a run spec)."""
        if params.loss != "auto":
            return params.loss
        return ((ctx.run_spec if ctx is not None else {}).get("train") or {}).get("loss", "ce")

    def _frame(self, data: Any, params: FourierParams, ref: EmbeddingRef, n_key: int,
               pairs_info: tuple[str, str, int] | None):  # -> xr.Dataset
        """The result's frame (zeros): ``K = (p − 1) // 2`` frequencies, ``n_key`` key frequencies, the
        embedding ``ref``'s note and row count; with ``pairs_info`` = ``(loss, neuron module, neurons)``
        (``all_pairs``) the all-pairs variables too, over that many neurons."""
        p, op, encoding = self._modular_meta(data)
        freq = np.arange(1, n_freqs(p) + 1)
        attrs: dict[str, Any] = {
            "embedding": ref.note, "p": p, "op": op, "encoding": encoding,
            "key_freq": "the n_key largest embedding Fourier norms, largest first",
            "gini_real": "Gini of the (p-1)/2 real-basis Fourier norms of tokens 0..p-1",
            "gini_fft_raw": f"Gini over all {ref.full.shape[0]} complex FFT bins of the embedding rows "
                            "(authors' variant)"}
        coords: dict[str, Any] = {"freq": freq, "freq_b": freq, "part": ["re", "im"], "part_b": ["re", "im"],
                                  "key": np.arange(n_key)}
        outputs = {k: v for k, v in self.outputs.items() if pairs_info is not None or k not in ALL_PAIRS_VARS}
        var_attrs = {k: {"description": DESCRIPTIONS[k]} for k in outputs}
        for k in ("fourier_norms", "gini_real", "gini_fft_raw", "key_freq"):
            var_attrs[k]["embedding"] = ref.note
        if pairs_info is not None:
            loss, module, n_neurons = pairs_info
            coords["neuron"] = np.arange(n_neurons)
            if op != "add":
                attrs["all_pairs_losses"] = f"NaN: the trig circuit losses are defined for op 'add', not {op!r}"
            attrs.update({"loss": loss, "neuron_module": module,
                          "excluded_loss": "per frequency k (every k, not only key ones), on the train pairs",
                          "restricted_loss": "key frequencies kept, bias-corrected, over all p^2 pairs"})
            for k in ("full_loss", "restricted_loss", "excluded_loss", "excluded_loss_all"):
                var_attrs[k]["loss"] = loss
                if "all_pairs_losses" in attrs:
                    var_attrs[k]["note"] = attrs["all_pairs_losses"]
            for k in ("neuron_freq", "neuron_frac", "neurons_per_freq"):
                var_attrs[k]["module"] = module
        return template_dataset(outputs, coords=coords, attrs=attrs, var_attrs=var_attrs,
                                dtypes={k: np.int64 for k in ("key_freq", "neuron_freq", "neurons_per_freq")})

    def template(self, model: nn.Module, data: Any, params: FourierParams, ctx: ProbeContext | None = None):
        """Sizes from ``p`` (the dataset's), ``n_key`` and, with ``all_pairs``, the neuron module's
        width (one forward pass of one pair); the embedding found as :meth:`compute` finds it."""
        p, _op, encoding = self._modular_meta(data)
        pairs_info = None
        if params.all_pairs:
            name, module = find_neuron_module(model, params.neuron_module)
            pairs_info = (self.resolve_loss(params, ctx), name, neuron_count(model, module, p, encoding))
        return self._frame(data, params, locate_embedding(model, p), min(params.n_key, n_freqs(p)), pairs_info)

    def compute(self, model: nn.Module, data: Any, params: FourierParams, ctx: ProbeContext):
        p, op, encoding = self._modular_meta(data)
        K = n_freqs(p)
        ref = locate_embedding(model, p)
        E = ref.matrix.to(F64)
        norms = fourier_norms(E)
        const = fourier_coefficients(E)[0].norm()
        geo = circle_geometry(E)
        keys = key_frequencies(norms, params.n_key)
        W_L = find_readout(model, p)
        nan = float("nan")

        def np_(t):
            return t.detach().cpu().numpy() if isinstance(t, torch.Tensor) else np.asarray(t)

        values: dict[str, Any] = {
            "fourier_norms": np_(norms), "fourier_norm_const": np_(const),
            "norm_re": np_(geo["norm_re"]), "norm_im": np_(geo["norm_im"]),
            "aspect": np_(geo["aspect"]), "cos_re_im": np_(geo["cos_re_im"]), "abs_cos": np_(geo["abs_cos"]),
            "abs_cos_same": np_(geo["abs_cos_same"]), "abs_cos_cross": np_(geo["abs_cos_cross"]),
            "norm_spread": np_(geo["norm_spread"]),
            "key_freq": np_(keys).astype(np.int64),
            "gini_real": np.float64(gini(norms)),
            "gini_fft_raw": np.float64(gini_fft_raw(ref.full)),
            "gini_readout_real": np.float64(gini(fourier_norms(W_L)) if W_L is not None else nan),
            "gini_readout_fft_raw": np.float64(gini_fft_raw(W_L) if W_L is not None else nan),
        }
        pairs_info = None
        if params.all_pairs:
            loss_kind = self.resolve_loss(params, ctx)
            logits = all_pairs_logits(model, p, encoding, params.batch_size)
            if logits.shape[1] < p:
                raise ProbeError(f"the model has {logits.shape[1]} outputs, fewer than p = {p}")
            logits = logits[:, :p]
            if op == "add":
                rows = (torch.as_tensor(data.meta["a_train"]) * p + torch.as_tensor(data.meta["b_train"])).to(logits.device)
                y_all = _addition_labels(p, logits.device)
                full = float(task_loss(logits, y_all, loss_kind))
                restricted = restricted_loss(logits, p, keys, loss_kind)
                excl = np.array([excluded_loss(logits, p, [k], rows, loss_kind) for k in range(1, K + 1)])
                excl_all = excluded_loss(logits, p, keys, rows, loss_kind)
                coef = np_(logit_fourier_coefficients(logits, p))
            else:
                full = restricted = excl_all = nan
                excl = np.full(K, nan)
                coef = np.full(K, nan)
            name, module = find_neuron_module(model, params.neuron_module)
            frac = neuron_frequencies(neuron_activations(model, module, p, encoding, params.batch_size))
            best = torch.nan_to_num(frac, nan=-1.0).argmax(dim=1)
            best_frac = frac.gather(1, best[:, None])[:, 0]
            counts = torch.zeros(K, dtype=torch.int64)
            for k, f in zip(best.tolist(), best_frac.tolist()):
                if f >= params.neuron_threshold:
                    counts[k] += 1
            values.update({
                "full_loss": np.float64(full), "restricted_loss": np.float64(restricted),
                "excluded_loss": excl, "excluded_loss_all": np.float64(excl_all), "logit_coef": coef,
                "neuron_freq": (np_(best) + 1).astype(np.int64), "neuron_frac": np_(best_frac),
                "neurons_per_freq": np_(counts),
            })
            pairs_info = (loss_kind, name, int(frac.shape[0]))
        return fill_template(self._frame(data, params, ref, len(keys), pairs_info), values)
