"""Training-time regularisers and baselines the trainer can switch on with ``--reg NAME:ARGS``.

Interface used by the trainer (one object per run):

* ``transform_input(x, state)`` — e.g. Gaussian input noise; ``state`` holds ``train_acc``;
* ``penalty(model, x, y, logits)`` — a differentiable scalar added to the task loss (or None);
  its value is logged as ``reg`` in ``log.jsonl``; with ``wants_input_grad`` the batch ``x`` requires
  grad and ``logits = model(x)`` keeps its graph, so the penalty can reuse the forward pass;
* ``after_backward(model)`` — e.g. Grokfast's EMA gradient filter, called between backward and step.

``build_regulariser("grokalign:1e-3", loss_kind="ce", input_kind="continuous")`` parses the spec.
Formulas, defaults and how they compare with the papers' code:
``docs/algorithms.md#regularisers--grokalign-grokfast-noise``.

Available (``REGULARISERS``):

* ``grokalign[:λ[,n_proj]]`` — Walker et al.'s GrokAlign: ``λ · mean_b ‖J_{x_b}‖_F`` on the training
  mini-batch, ``‖J‖_F`` estimated with ``n_proj`` (default 1) random unit projections, one
  vector–Jacobian product each with the graph kept. λ defaults to 1e-3 for CE and 1e-4 for MSE.
  Token models: the Jacobian w.r.t. the embedding output (``model.embed``).
* ``grokfast[:α[,λ]]`` — Lee et al.'s Grokfast-EMA gradient filter (defaults α = 0.98, λ = 2.0, the
  Grokfast paper's; GrokAlign's comparison used ``grokfast:0.8,0.1``).
* ``noise:σ`` / ``noise:auto`` — Gaussian input noise; ``auto`` is GrokAlign's "adversarial training"
  baseline ``σ = max(0.06 (1 − train_acc), 0.03)``.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import nn


class Regulariser:
    """Does nothing; subclasses override what they need."""

    name = "none"
    # True: the trainer hands penalty() a batch that requires grad and the logits computed from it,
    # and back-propagates into the parameters only (the penalty then reuses the loss's forward pass)
    wants_input_grad = False

    def transform_input(self, x: torch.Tensor, state: dict[str, Any]) -> torch.Tensor:
        return x

    def penalty(self, model: nn.Module, x: torch.Tensor, y: torch.Tensor,
                logits: torch.Tensor) -> torch.Tensor | None:
        return None

    def after_backward(self, model: nn.Module) -> None:
        return None

    def describe(self) -> dict[str, Any]:
        return {"name": self.name}


REGULARISERS: dict[str, type[Regulariser]] = {}


def build_regulariser(spec: str | None, loss_kind: str = "ce", input_kind: str = "continuous") -> Regulariser | None:
    """Parse ``NAME[:ARGS]``; None/"none" gives None. Unknown names raise ValueError listing valid ones."""
    if not spec or spec == "none":
        return None
    name, _, args = spec.partition(":")
    if name not in REGULARISERS:
        raise ValueError(f"unknown regulariser {name!r}; valid: {', '.join(sorted(REGULARISERS)) or '(none yet)'}")
    return REGULARISERS[name].from_spec(args, loss_kind=loss_kind, input_kind=input_kind)  # type: ignore[attr-defined]


def _register(cls: type[Regulariser]) -> type[Regulariser]:
    REGULARISERS[cls.name] = cls
    return cls


def _numbers(name: str, args: str, fields: tuple[str, ...]) -> list[float]:
    """``args`` split on commas into at most ``len(fields)`` floats; errors name the spec."""
    parts = [a.strip() for a in args.split(",")] if args.strip() else []
    if len(parts) > len(fields):
        raise ValueError(f"regulariser {name!r}: too many arguments in {args!r}; "
                         f"expected {name}:{','.join(fields)}")
    out = []
    for field, text in zip(fields, parts):
        try:
            out.append(float(text))
        except ValueError:
            raise ValueError(f"regulariser {name!r}: {field}={text!r} is not a number "
                             f"(spec {name}:{args})") from None
    return out


# -------------------------------------------------------------------------------------------------
@_register
class GrokAlign(Regulariser):
    """``λ · mean_b sqrt(max(C/n_proj Σ_i ‖J_{x_b}ᵀ v_i‖², 1e-8))``, ``v_i`` fresh unit vectors per
    sample and step (the global torch RNG, so resumed runs repeat them), on a fresh forward pass.

    ``directions="orthogonal"`` (not reachable from the spec) draws orthonormal ``v_i`` instead; with
    ``n_proj = C`` the estimate is then exact — used by the tests.
    """

    name = "grokalign"
    wants_input_grad = True
    DEFAULT_LAMBDA = {"ce": 1e-3, "mse": 1e-4}

    def __init__(self, lam: float, n_proj: int = 1, input_kind: str = "continuous",
                 directions: str = "sphere"):
        if not lam >= 0:
            raise ValueError(f"regulariser 'grokalign': λ must be >= 0, got {lam}")
        if n_proj < 1:
            raise ValueError(f"regulariser 'grokalign': n_proj must be >= 1, got {n_proj}")
        self.lam, self.n_proj, self.input_kind, self.directions = float(lam), int(n_proj), input_kind, directions

    @classmethod
    def from_spec(cls, args: str, loss_kind: str = "ce", input_kind: str = "continuous") -> "GrokAlign":
        vals = _numbers(cls.name, args, ("lambda", "n_proj"))
        if vals:
            lam = vals[0]
        elif loss_kind in cls.DEFAULT_LAMBDA:
            lam = cls.DEFAULT_LAMBDA[loss_kind]
        else:
            raise ValueError(f"regulariser 'grokalign': no default λ for loss {loss_kind!r}; give grokalign:λ")
        n_proj = vals[1] if len(vals) > 1 else 1
        if n_proj != int(n_proj):
            raise ValueError(f"regulariser 'grokalign': n_proj={n_proj} must be an integer (spec grokalign:{args})")
        return cls(lam, int(n_proj), input_kind)

    def jacobian_norms(self, model: nn.Module, x: torch.Tensor, logits: torch.Tensor | None = None
                       ) -> torch.Tensor:
        """Per-sample estimates of ``‖J‖_F`` ``(n,)``, differentiable w.r.t. the parameters.

        When ``x`` requires grad and ``logits = model(x)`` was computed from it (the trainer's forward
        pass of the task loss), the estimate reuses that pass; otherwise it does a fresh one. Both
        draw the same directions and give the same value and gradient (to float rounding).
        """
        from grokscope.probes.align import jacobian_sq_norm_estimate, jacobian_sq_norm_from_outputs

        if (self.input_kind != "tokens" and logits is not None and x.requires_grad
                and logits.requires_grad and logits.ndim == 2):
            sq = jacobian_sq_norm_from_outputs(logits, x, self.n_proj, directions=self.directions,
                                               create_graph=True)
            return sq.clamp_min(1e-8).sqrt()
        if self.input_kind == "tokens":
            if not (hasattr(model, "embed") and hasattr(model, "forward_embedded")):
                raise TypeError(f"grokalign on token inputs needs {type(model).__name__}.embed()/"
                                "forward_embedded() (the Jacobian is taken w.r.t. the embedding output)")
            f, z = model.forward_embedded, model.embed(x)
        else:
            f, z = model, x
        sq = jacobian_sq_norm_estimate(f, z, self.n_proj, directions=self.directions, create_graph=True)
        return sq.clamp_min(1e-8).sqrt()

    def penalty(self, model: nn.Module, x: torch.Tensor, y: torch.Tensor,
                logits: torch.Tensor) -> torch.Tensor | None:
        return self.lam * self.jacobian_norms(model, x, logits).mean()

    def describe(self) -> dict[str, Any]:
        return {"name": self.name, "lambda": self.lam, "n_proj": self.n_proj,
                "jacobian_wrt": "embedding" if self.input_kind == "tokens" else "input"}


# -------------------------------------------------------------------------------------------------
@_register
class Grokfast(Regulariser):
    """Grokfast-EMA (Lee et al. 2024): per parameter, ``ema ← α·ema + (1−α)·g`` (``ema`` starts at
    the first gradient), then ``g ← g + λ·ema``, between ``backward()`` and the optimiser step."""

    name = "grokfast"

    def __init__(self, alpha: float = 0.98, lamb: float = 2.0):
        if not 0 <= alpha < 1:
            raise ValueError(f"regulariser 'grokfast': α must be in [0, 1), got {alpha}")
        self.alpha, self.lamb = float(alpha), float(lamb)
        self.ema: dict[str, torch.Tensor] = {}

    @classmethod
    def from_spec(cls, args: str, loss_kind: str = "ce", input_kind: str = "continuous") -> "Grokfast":
        return cls(*_numbers(cls.name, args, ("alpha", "lambda")))

    @torch.no_grad()
    def after_backward(self, model: nn.Module) -> None:
        for name, p in model.named_parameters():
            if not p.requires_grad or p.grad is None:
                continue
            g = p.grad
            if name in self.ema:
                self.ema[name] = self.ema[name] * self.alpha + g * (1 - self.alpha)
            else:
                self.ema[name] = g.detach().clone()
            g.add_(self.ema[name], alpha=self.lamb)

    def state_dict(self) -> dict[str, Any]:
        return {"ema": {k: v.detach().cpu().clone() for k, v in self.ema.items()}}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.ema = {k: v.clone() for k, v in state.get("ema", {}).items()}

    def describe(self) -> dict[str, Any]:
        return {"name": self.name, "alpha": self.alpha, "lambda": self.lamb}


# -------------------------------------------------------------------------------------------------
@_register
class GaussianNoise(Regulariser):
    """Training inputs ``x + σ·ε``, ``ε ~ N(0, I)``; ``σ = None`` is GrokAlign's schedule
    ``max(0.06 (1 − train_acc), 0.03)`` (the last evaluated train accuracy; 0 before the first)."""

    name = "noise"

    def __init__(self, sigma: float | None):
        if sigma is not None and not sigma >= 0:
            raise ValueError(f"regulariser 'noise': σ must be >= 0, got {sigma}")
        self.sigma = sigma

    @classmethod
    def from_spec(cls, args: str, loss_kind: str = "ce", input_kind: str = "continuous") -> "GaussianNoise":
        if input_kind == "tokens":
            raise ValueError("regulariser 'noise' needs continuous inputs; this dataset gives token ids "
                             "(use a one-hot encoding)")
        if args.strip() == "auto":
            return cls(None)
        vals = _numbers(cls.name, args, ("sigma",))
        if not vals:
            raise ValueError("regulariser 'noise' needs an argument: noise:σ or noise:auto")
        return cls(vals[0])

    @staticmethod
    def auto_sigma(train_acc: float | None) -> float:
        """GrokAlign's noise level ``max(0.06 (1 − train_acc), 0.03)`` (``train_acc`` None → 0)."""
        return max(0.06 * (1.0 - (train_acc or 0.0)), 0.03)

    def sigma_for(self, state: dict[str, Any]) -> float:
        return self.sigma if self.sigma is not None else self.auto_sigma(state.get("train_acc"))

    def transform_input(self, x: torch.Tensor, state: dict[str, Any]) -> torch.Tensor:
        sigma = self.sigma_for(state)
        return x + sigma * torch.randn_like(x) if sigma > 0 else x

    def describe(self) -> dict[str, Any]:
        return {"name": self.name, "sigma": "auto" if self.sigma is None else self.sigma,
                **({"rule": "max(0.06*(1-train_acc), 0.03)"} if self.sigma is None else {})}
