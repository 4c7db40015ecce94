"""``collapse``: softmax collapse and naive loss minimisation (Prieto et al., ICLR 2025).

Per split (a seeded subset of ``n_points``):

* ``collapse_frac`` — the fraction of samples whose per-sample cross-entropy, computed in
  ``precision`` (float32: what a float32 trainer computes), is exactly 0. Then ``log_softmax`` of the
  correct class is exactly 0 and so is its gradient ``p_y − 1``: the sample no longer pulls its correct
  logit up (the paper's "softmax collapse"; on a correctly classified sample it is the same event as
  their float32 ``Σ_j exp(z_j − z_max) == 1``);
* ``zero_grad_frac`` — the stricter fraction whose whole gradient w.r.t. the logits (torch's autograd
  of the same per-sample loss) is exactly zero in every class (every ``exp(z_j − z_y)`` underflows);
* ``margin(quantile)`` — quantiles of the correct-class margin ``z_y − max_{j≠y} z_j`` (float64);
* ``nlm_cos_weights`` — ``cos(−∇_θ L, θ)``: the training direction against the "naive loss
  minimisation" direction of the paper, the parameter vector itself (all floating parameters,
  flattened); exact for positively homogeneous networks, where ``f(x; cθ) = c^L f(x; θ)``;
* ``nlm_cos_logits`` — ``cos(−∇_z L, z − mean_j z)`` over all (sample, class) entries: the same
  question asked in logit space, where scaling the (centred) logits is the naive direction for any
  network.

``L`` in the cosines is the mean task loss on the split's subset in the model's dtype (as the trainer
computes it). ``loss`` selects cross-entropy or StableMax for every quantity (``auto``: the run's loss
if it is one of them, else ``ce``).

Definitions and defaults: ``docs/algorithms.md#collapse--softmax-collapse-and-naive-loss-minimisation``.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from grokscope.functional import eval_mode, split_subset
from grokscope.losses import stablemax_cross_entropy, task_loss

from .base import (EventSpec, PanelSpec, Probe, ProbeContext, ProbeError, check_choice, check_work, fill_template,
                   template_dataset)

LOSSES = ("ce", "stablemax")
PRECISIONS = {"float16": torch.float16, "bfloat16": torch.bfloat16, "float32": torch.float32,
              "float64": torch.float64}


def per_sample_loss(logits: torch.Tensor, y: torch.Tensor, loss: str) -> torch.Tensor:
    """Per-sample CE or StableMax CE ``(n,)`` of ``logits (n, C)``, computed in the logits' own dtype."""
    if loss == "ce":
        return F.cross_entropy(logits, y, reduction="none")
    if loss == "stablemax":
        return stablemax_cross_entropy(logits, y, "none", dtype=None)
    raise ValueError(f"loss must be one of {LOSSES}, got {loss!r}")


def collapse_flags(logits: torch.Tensor, y: torch.Tensor, loss: str = "ce",
                   dtype: torch.dtype = torch.float32) -> tuple[torch.Tensor, torch.Tensor]:
    """``(zero_loss, zero_grad)``, bool ``(n,)`` each: the per-sample loss of ``logits`` cast to
    ``dtype`` is exactly 0 / its gradient w.r.t. the (cast) logits is exactly 0 in every class."""
    z = logits.detach().to(dtype).requires_grad_(True)
    with torch.enable_grad():
        per = per_sample_loss(z, y, loss)
        (g,) = torch.autograd.grad(per.sum(), z)  # rows are independent: row i is ∂ loss_i / ∂ z_i
    return (per.detach() == 0), (g == 0).all(dim=1)


def logit_margins(logits: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    """``z_y − max_{j≠y} z_j`` per sample, float64 ``(n,)`` (negative where misclassified)."""
    z = logits.detach().double()
    true = z.gather(1, y[:, None]).squeeze(1)
    other = z.scatter(1, y[:, None], float("-inf")).amax(dim=1)
    return true - other


def nlm_cosines(model: nn.Module, x: torch.Tensor, y: torch.Tensor, loss: str = "ce",
                batch_size: int = 4096) -> tuple[float, float]:
    """``(cos(−∇_θ L, θ), cos(−∇_z L, z − mean_j z))`` for the mean loss ``L`` on ``(x, y)``.

    ``θ``: every floating parameter, flattened and concatenated; the logit-space cosine runs over all
    ``n × C`` entries. Gradients are accumulated over chunks of ``batch_size`` (the same as one
    full-batch backward pass). NaN where a vector is zero. The parameters' ``.grad`` is not touched.
    """
    params = [p for p in model.parameters() if p.is_floating_point()]
    n = len(x)
    grads = [torch.zeros_like(p) for p in params]
    dot_z = sq_gz = sq_z = 0.0
    with torch.enable_grad():
        for i in range(0, n, batch_size):
            logits = model(x[i:i + batch_size])
            lo = task_loss(logits, y[i:i + batch_size], loss, reduction="sum") / n
            *gp, gz = torch.autograd.grad(lo, params + [logits])
            for acc, g in zip(grads, gp):
                acc.add_(g)
            zc = (logits - logits.mean(dim=1, keepdim=True)).detach().double()
            gz = gz.double()
            dot_z += float(-(gz * zc).sum())
            sq_gz += float((gz ** 2).sum())
            sq_z += float((zc ** 2).sum())
    theta = torch.cat([p.detach().reshape(-1).double() for p in params])
    g = torch.cat([gr.reshape(-1).double() for gr in grads])
    denom_w = float(g.norm() * theta.norm())
    cos_w = float(-(g @ theta)) / denom_w if denom_w > 0 else float("nan")
    denom_z = (sq_gz * sq_z) ** 0.5
    cos_z = dot_z / denom_z if denom_z > 0 else float("nan")
    return cos_w, cos_z


def collapse_measures(model: nn.Module, x: torch.Tensor, y: torch.Tensor, loss: str = "ce",
                      precision: str = "float32", quantiles: tuple[float, ...] = (0.5,),
                      batch_size: int = 4096) -> dict[str, Any]:
    """Every quantity of :class:`CollapseProbe` for one split ``(x, y)`` (model in eval mode)."""
    if len(x) == 0:
        nan = float("nan")
        return {"collapse_frac": nan, "zero_grad_frac": nan, "margin": np.full(len(quantiles), nan),
                "nlm_cos_weights": nan, "nlm_cos_logits": nan, "n": 0}
    dtype = PRECISIONS[precision]
    zl, zg, margins = [], [], []
    with torch.no_grad():
        for i in range(0, len(x), batch_size):
            logits = model(x[i:i + batch_size])
            a, b = collapse_flags(logits, y[i:i + batch_size], loss, dtype)
            zl.append(a)
            zg.append(b)
            margins.append(logit_margins(logits, y[i:i + batch_size]))
    m = torch.cat(margins).numpy()
    cos_w, cos_z = nlm_cosines(model, x, y, loss, batch_size)
    return {"collapse_frac": float(torch.cat(zl).double().mean()),
            "zero_grad_frac": float(torch.cat(zg).double().mean()),
            "margin": np.quantile(m, np.asarray(quantiles, dtype=np.float64)),
            "nlm_cos_weights": cos_w, "nlm_cos_logits": cos_z, "n": len(x)}


@dataclass(frozen=True)
class CollapseParams:
    splits: tuple[str, ...] = ("train", "test")
    n_points: int = 4096       # a seeded subset of each split (all of it if smaller)
    seed: int = 0
    loss: str = "auto"         # ce | stablemax | auto (the run's loss if ce/stablemax, else ce)
    precision: str = "float32" # dtype of the collapse fractions (the cosines use the model's dtype)
    quantiles: tuple[float, ...] = (0.0, 0.1, 0.25, 0.5, 0.75, 0.9, 1.0)
    batch_size: int = 4096


class CollapseProbe(Probe):
    """Softmax collapse fractions, logit-margin quantiles and the naive-loss-minimisation cosines."""

    name = "collapse"
    panel_order = 90
    quick_params = {"n_points": "16"}
    quick_task = "modular"
    precision_mode = "strict"  # sign patterns / exact zeros: no TF32, no autocast (functional.precision)
    description = "softmax collapse (zero float32 loss/gradient), logit margins, gradient vs NLM direction"
    Params = CollapseParams
    outputs = {"collapse_frac": ("split",), "zero_grad_frac": ("split",), "margin": ("split", "quantile"),
               "nlm_cos_weights": ("split",), "nlm_cos_logits": ("split",), "n_samples": ("split",)}
    needs_grad = True

    panels = (
        PanelSpec("collapse_frac", "Softmax collapse ({precision})", "fraction with loss exactly 0", "split",
                  ylim=(-0.03, 1.03), higher_is_better=False),
        PanelSpec("margin", "Logit margin (median)", "z_y − max other z_j", "split",
                  prefer=(("quantile", 0.5),)),
        PanelSpec("nlm_cos_weights", "Gradient vs naive loss minimisation", "cos(−∇L, θ)", "split",
                  ylim=(-1.03, 1.03)),
        PanelSpec("zero_grad_frac", "Zero logit gradient ({precision})", "fraction with ∇_z L = 0", "split",
                  ylim=(-0.03, 1.03), headline=False, higher_is_better=False),
        PanelSpec("nlm_cos_logits", "Logit gradient vs logit scaling", "cos(−∇_z L, z − mean z)", "split",
                  ylim=(-1.03, 1.03), headline=False),
    )
    events = (
        EventSpec("softmax_collapse", "collapse_frac", "rise",
                  "the rise of the softmax-collapse fraction on training points", split="train"),
        EventSpec("nlm_alignment", "nlm_cos_weights", "rise",
                  "the alignment of the training gradient with the weights (naive loss minimisation)",
                  split="train"),
    )

    @classmethod
    def check_params(cls, params: CollapseParams) -> None:
        check_choice("collapse.loss", params.loss, ("auto",) + tuple(LOSSES))
        check_choice("collapse.precision", params.precision, PRECISIONS)
        if not params.splits or any(str(s) not in ("train", "test") for s in params.splits):
            raise ProbeError(f"collapse.splits must be train and/or test, got {params.splits!r}")
        if not params.quantiles or any(not 0 <= float(q) <= 1 for q in params.quantiles):
            raise ProbeError(f"collapse.quantiles must be numbers in [0, 1], got {params.quantiles!r}")
        if params.n_points < 1 or params.batch_size < 1:
            raise ProbeError(f"collapse.n_points and collapse.batch_size must be >= 1, got "
                             f"{params.n_points} and {params.batch_size}")
        check_work("collapse", "collapse.batch_size", params.batch_size)

    def check(self, model: nn.Module, data: Any, params: CollapseParams) -> None:
        if getattr(data, "n_classes", 2) < 2:
            raise ProbeError("collapse needs a classifier with at least 2 classes")

    @staticmethod
    def resolve_loss(params: CollapseParams, ctx: ProbeContext | None) -> str:
        """``params.loss``, with ``auto`` → the run's loss if it is ce/stablemax, else ``ce`` (also
        without a run spec: ``ctx`` None)."""
        if params.loss != "auto":
            return params.loss
        run_loss = ((ctx.run_spec if ctx is not None else {}).get("train") or {}).get("loss", "ce")
        return run_loss if run_loss in LOSSES else "ce"

    def _frame(self, params: CollapseParams, loss: str):  # -> xr.Dataset
        """The result's frame (zeros): splits x quantiles, and ``loss``, the loss the fractions used."""
        return template_dataset(self.outputs,
                                coords={"split": [str(s) for s in params.splits],
                                        "quantile": [float(q) for q in params.quantiles]},
                                dtypes={"n_samples": np.int64}, attrs={"loss": loss})

    def template(self, model: nn.Module, data: Any, params: CollapseParams, ctx: ProbeContext | None = None):
        """Splits x quantiles, and the loss the fractions use (``auto``: the run's): no size depends on
        the model or the data."""
        return self._frame(params, self.resolve_loss(params, ctx))

    def compute(self, model: nn.Module, data: Any, params: CollapseParams, ctx: ProbeContext):
        loss = self.resolve_loss(params, ctx)
        splits = [str(s) for s in params.splits]
        quantiles = [float(q) for q in params.quantiles]
        device = next((p.device for p in model.parameters()), torch.device("cpu"))
        rows = []
        with eval_mode(model):
            for split in splits:
                x, y = split_subset(data, split, params.n_points, params.seed)
                rows.append(collapse_measures(model, x.to(device), y.to(device), loss, params.precision,
                                              tuple(quantiles), params.batch_size))
        one = lambda k: np.array([r[k] for r in rows], dtype=np.float64)  # noqa: E731
        return fill_template(self._frame(params, loss),
                             {"collapse_frac": one("collapse_frac"), "zero_grad_frac": one("zero_grad_frac"),
                              "margin": np.stack([r["margin"] for r in rows]).astype(np.float64),
                              "nlm_cos_weights": one("nlm_cos_weights"), "nlm_cos_logits": one("nlm_cos_logits"),
                              "n_samples": np.array([r["n"] for r in rows], dtype=np.int64)})
