"""``pgd``: robust accuracy under projected gradient descent attacks (Madry et al.; Humayun et al. §1).

For every radius ``ε`` of a list and every restart, starting from ``x₀ = clip_box(x + U)`` with ``U``
uniform in the ε-ball (or ``x₀ = x``), iterate ``T`` times

* L∞: ``x_{t+1} = clip_box(x + clip_[-ε, ε](x_t + α sign ∇ₓ L(f(x_t), y) − x))``
* L2: ``x_{t+1} = clip_box(x + Π_ε(x_t + α g/‖g‖ − x))`` (``Π_ε``: scale into the L2 ball)

with ``L`` the cross-entropy on logits (also for MSE-trained nets, as in the authors' code) or the
margin ``max_{j≠y} f_j − f_y``. The *last* iterate is classified (as in the authors' code, not the
best one); a sample is robust at ``ε`` when it is classified correctly after every restart.

All radii and restarts are stacked into one batch (no Python loop over samples, radii or restarts;
only over steps). Random starts come from a ``torch.Generator`` seeded with ``seed`` so every
checkpoint sees the same starts. The box is the dataset's input range (never assumed [0, 1]); a clean
point outside the box widens the box to include it, so iterates always stay in the ε-ball around it.
Token models are attacked in embedding space (:func:`grokscope.models.adapters.continuous_view`) with
no box (embeddings are unbounded). There ε is by default relative to the embedding scale
(``eps_unit="auto"`` = ``embedding_rms``: the attack radius is ``ε · RMS`` of the embedded training
inputs at that checkpoint, :func:`grokscope.models.adapters.radius_scale`, stored as ``eps_abs``), so
the default radii mean the same on a model whose embeddings average 0.02 as on one at 1;
``eps_unit=absolute`` gives ε in embedding units (the paper's GPT run used ε = 0.03 there).

``attack="apgd"`` runs APGD-CE instead (:mod:`grokscope.functional.apgd`) with the same rows, starts and box.

Formulas, defaults and deviations from the authors' code:
``docs/algorithms.md#pgd--robust-accuracy-under-pgd``.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Callable, Sequence

import numpy as np
import torch
from torch import nn

from grokscope.functional import eval_mode, split_subset, subset_size
from grokscope.functional.attacks import (LOSSES, NORMS, attack_loss, attack_rows, check_attack_args, per_row,
                                          seeded_starts, start_points)
from grokscope.models.adapters import RADIUS_UNITS, continuous_view, radius_scale, radius_unit

from .base import (EventSpec, PanelSpec, Probe, ProbeContext, ProbeError, check_at_least, check_choice, check_work,
                   fill_template, template_dataset)

ATTACKS = ("pgd", "apgd")


def pgd_perturb(f: Callable[[torch.Tensor], torch.Tensor], x: torch.Tensor, y: torch.Tensor,
                eps_list: Sequence[float], alpha: float, steps: int, norm: str = "linf",
                restarts: int = 1, random_start: bool = True, low: torch.Tensor | float | None = None,
                high: torch.Tensor | float | None = None, seed: int = 0, loss: str = "ce",
                alpha_relative: bool = False, starts: torch.Tensor | None = None) -> torch.Tensor:
    """The last PGD iterates for every (ε, restart, sample): shape ``(n_eps, restarts, *x.shape)``.

    ``low``/``high``: box bounds broadcastable to ``x[0]`` (None: unbounded). ``alpha_relative``:
    the step is ``alpha · ε`` instead of ``alpha``. Random starts are ``x + ε · starts`` with
    ``starts`` from :func:`unit_starts` (drawn from a generator seeded with ``seed`` if not given), then
    clipped to the box. Gradients are taken w.r.t. the input only; the parameters of ``f`` are not
    touched.
    """
    check_attack_args(norm, loss, restarts, steps)
    xs, ys, eps, project = attack_rows(x, y, eps_list, restarts, norm, low, high)
    step = eps * alpha if alpha_relative else torch.full_like(eps, float(alpha))
    adv = start_points(x, xs, eps, restarts, norm, random_start, project, seed, starts)
    n_eps = len(eps_list)
    for _ in range(steps):
        adv.requires_grad_(True)
        with torch.enable_grad():
            obj = attack_loss(f(adv), ys, loss).sum()
            (g,) = torch.autograd.grad(obj, adv)
        adv = adv.detach()
        if norm == "linf":
            adv = adv + per_row(step, adv) * g.sign()
        else:
            gn = g.flatten(1).norm(dim=1).clamp_min(1e-30)
            adv = adv + per_row(step / gn, adv) * g
        adv = project(adv)
    return adv.detach().view(n_eps, restarts, *x.shape)


def pgd_attack(f: Callable[[torch.Tensor], torch.Tensor], x: torch.Tensor, y: torch.Tensor,
               eps_list: Sequence[float], alpha: float, steps: int, norm: str = "linf", restarts: int = 1,
               random_start: bool = True, low: torch.Tensor | float | None = None,
               high: torch.Tensor | float | None = None, seed: int = 0, loss: str = "ce",
               batch_size: int | None = None, alpha_relative: bool = False) -> torch.Tensor:
    """Robust correctness: bool ``(n_eps, n)``, True where the last PGD iterate of *every* restart is
    classified as ``y``. Batched over radii and restarts; ``batch_size`` caps the samples per batch
    (each batch holds ``n_eps · restarts · batch_size`` rows). ``alpha_relative``: the step at radius
    ε is ``alpha · ε``. See :func:`pgd_perturb`.

    The random starts of all samples are drawn at once from a generator seeded with ``seed``
    (:func:`seeded_starts`), so they do not depend on ``batch_size``.
    """
    n = x.shape[0]
    bs = batch_size or n
    starts = seeded_starts(x, restarts, norm, seed) if random_start else None
    out = []
    for i in range(0, n, bs):
        xb, yb = x[i:i + bs], y[i:i + bs]
        adv = pgd_perturb(f, xb, yb, eps_list, alpha, steps, norm, restarts, random_start, low, high,
                          seed, loss, alpha_relative, starts=None if starts is None else starts[i:i + bs])
        with torch.no_grad():
            pred = f(adv.reshape(-1, *xb.shape[1:])).argmax(dim=-1).view(len(eps_list), restarts, -1)
        out.append((pred == yb).all(dim=1))
    if not out:
        return torch.zeros(len(eps_list), 0, dtype=torch.bool)
    return torch.cat(out, dim=1).cpu()


# Madry et al.'s step: α = 2.5 ε / steps, so that the steps add up to 2.5 ε — enough to cross the
# ball (2ε from a random start to the far face) with room to move inside it, at every radius.
MADRY_ALPHA_SCALE = 2.5


def step_sizes(eps: Sequence[float], alpha: float, steps: int, alpha_scale: float = MADRY_ALPHA_SCALE
               ) -> list[float]:
    """The PGD step at each radius: ``alpha`` for all when ``alpha > 0``, else ``alpha_scale · ε / steps``."""
    if alpha > 0:
        return [float(alpha)] * len(eps)
    return [alpha_scale * float(e) / max(steps, 1) for e in eps]


@dataclass(frozen=True)
class PGDParams:
    """Parameters of the ``pgd`` probe (radii: Humayun et al.; use ``steps=100`` for MNIST MLPs).

    ``alpha = 0`` (default): the step scales with the radius, ``alpha_scale · ε / steps`` (Madry et
    al.'s 2.5 ε / steps), so ``α · steps ≥ ε`` at every radius. ``alpha > 0``: that one step for every
    radius (Humayun et al. used 0.0156, which cannot reach ε > 0.156 in 10 steps).
    """

    eps: tuple[float, ...] = (0.03, 0.06, 0.10, 0.13, 0.16, 0.20)
    alpha: float = 0.0
    alpha_scale: float = MADRY_ALPHA_SCALE
    steps: int = 10
    norm: str = "linf"
    restarts: int = 1
    random_start: bool = True
    splits: tuple[str, ...] = ("test",)
    n_points: int = 1024   # a seeded subset of each split (all of it if smaller)
    seed: int = 0
    loss: str = "ce"
    batch_size: int = 0    # samples per attack batch (0: automatic, ~8k rows)
    attack: str = "pgd"    # pgd | apgd (APGD-CE, Croce & Hein 2020: grokscope/functional/apgd.py; alpha unused)
    eps_unit: str = "auto"  # auto | absolute | embedding_rms (auto: embedding_rms for token models)


class PGDProbe(Probe):
    """PGD (or, with ``attack="apgd"``, APGD-CE) robust accuracy per radius. Outputs ``robust_acc(split, eps)``, ``correct(split, eps,
    sample)`` (int8: 1 robust, 0 not, -1 padding where a split has fewer points) and ``n_samples(split)``."""

    name = "pgd"
    panel_order = 30
    quick_params = {"n_points": "16", "steps": "3"}
    description = "robust accuracy under L-inf / L2 PGD attacks at several radii"
    Params = PGDParams
    outputs = {"robust_acc": ("split", "eps"), "correct": ("split", "eps", "sample"), "n_samples": ("split",),
               "eps_abs": ("eps",)}
    needs_grad = True

    panels = (
        PanelSpec("robust_acc", "PGD robust accuracy ({norm})", "fraction correct under attack", "eps",
                  ylim=(-0.03, 1.03), prefer=(("split", "test"),), onsets=("generalisation", "robustness"),
                  higher_is_better=True),
    )
    events = (EventSpec("robustness@{:g}", "robust_acc", "rise", "robust accuracy reaching the robustness threshold",
                        "test", threshold="robust", per="eps"),)

    # stores written before ``eps_unit`` existed used absolute radii
    added_params = {"eps_unit": "absolute"}
    unit_params = ("eps_unit",)

    @classmethod
    def check_params(cls, params: PGDParams) -> None:
        check_choice("pgd.norm", params.norm, NORMS)
        check_choice("pgd.loss", params.loss, LOSSES)
        check_choice("pgd.attack", params.attack, ATTACKS)
        if not params.eps or any(float(e) < 0 for e in params.eps):
            raise ProbeError(f"pgd.eps must be a non-empty list of radii >= 0, got {params.eps!r}")
        if params.alpha < 0 or (params.alpha == 0 and params.alpha_scale <= 0):
            raise ProbeError(f"pgd.alpha must be > 0 (a fixed step) or 0 (alpha_scale · ε / steps with "
                             f"alpha_scale > 0), got alpha={params.alpha!r}, alpha_scale={params.alpha_scale!r}")
        if not params.splits or any(str(s) not in ("train", "test") for s in params.splits):
            raise ProbeError(f"pgd.splits must be train and/or test, got {params.splits!r}")
        check_choice("pgd.eps_unit", params.eps_unit, RADIUS_UNITS)
        check_at_least("pgd", params, steps=1, restarts=1, n_points=1, batch_size=0)
        check_work("pgd", "pgd.n_points x pgd.restarts", params.n_points * params.restarts)
        check_work("pgd", "pgd.batch_size", params.batch_size)

    def _frame(self, params: PGDParams, unit: str, n_max: int):  # -> xr.Dataset
        """The result's frame (zeros) for radii in ``unit`` (``absolute``/``embedding_rms``) and a
        sample dim of ``n_max`` (the largest split subset): what :meth:`template` declares and
        :meth:`compute` fills."""
        return template_dataset(
            self.outputs,
            coords={"split": [str(s) for s in params.splits], "eps": [float(e) for e in params.eps],
                    "sample": np.arange(n_max)},
            dtypes={"correct": np.int8, "n_samples": np.int64},
            attrs={"alpha_per_eps": step_sizes(params.eps, params.alpha, params.steps, params.alpha_scale),
                   "eps_unit": unit + (": eps x RMS of the embedded training inputs (eps_abs, per step)"
                                       if unit == "embedding_rms" else ": input units")})

    def template(self, model: nn.Module, data: Any, params: PGDParams, ctx: ProbeContext | None = None):
        """Splits x radii, and a sample dim of the largest split subset (``n_points``, or the split's
        size if smaller): sizes from the parameters and the data's split sizes."""
        n_max = max(subset_size(len(data.split(str(s))[0]), params.n_points) for s in params.splits)
        return self._frame(params, radius_unit(params.eps_unit, data.input_kind), n_max)

    def compute(self, model: nn.Module, data: Any, params: PGDParams, ctx: ProbeContext):
        splits = [str(s) for s in params.splits]
        relative = params.alpha == 0
        alpha = params.alpha_scale / max(params.steps, 1) if relative else params.alpha
        device = next((p.device for p in model.parameters()), torch.device("cpu"))
        results = []
        unit = radius_unit(params.eps_unit, data.input_kind)
        with eval_mode(model):
            scale = (1.0 if unit == "absolute" else
                     radius_scale(model, data.x_train[:4096].to(device), data.input_kind, unit))
            eps = [float(e) * scale for e in params.eps]
            for split in splits:
                x, y = split_subset(data, split, params.n_points, params.seed)
                f, z = continuous_view(model, x.to(device), data.input_kind)
                z = z.to(next((p.dtype for p in model.parameters() if p.is_floating_point()), z.dtype))
                low = high = None
                if data.input_kind != "tokens":
                    low, high = data.box_low.to(device, z.dtype), data.box_high.to(device, z.dtype)
                per_sample_rows = len(eps) * params.restarts
                bs = params.batch_size or max(1, 8192 // per_sample_rows)
                if params.attack == "apgd":
                    from grokscope.functional.apgd import apgd_attack

                    results.append(apgd_attack(f, z, y.to(device), eps, params.steps, params.norm,
                                               params.restarts, params.random_start, low, high, params.seed,
                                               params.loss, bs))
                    continue
                results.append(pgd_attack(f, z, y.to(device), eps, alpha, params.steps,
                                          params.norm, params.restarts, params.random_start, low, high,
                                          params.seed, params.loss, bs, alpha_relative=relative))
        n_samples = np.array([r.shape[1] for r in results], dtype=np.int64)
        n_max = int(n_samples.max())
        correct = np.full((len(splits), len(params.eps), n_max), -1, dtype=np.int8)
        for s, r in enumerate(results):
            correct[s, :, : r.shape[1]] = r.numpy()
        with np.errstate(invalid="ignore"):
            robust = np.array([r.double().mean(dim=1).numpy() if r.shape[1] else
                               np.full(len(params.eps), np.nan) for r in results])
        return fill_template(self._frame(params, unit, n_max),
                             {"robust_acc": robust, "correct": correct, "n_samples": n_samples,
                              "eps_abs": np.array(eps, dtype=np.float64)})
