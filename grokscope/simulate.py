"""``grokscope simulate musat``: Musat's closed-form first-layer dynamics, written as an ordinary run.

Musat (*The Geometry of Grokking*, §5–7, App. E) isolates the first layer ``E`` of a two-layer,
bias-free ReLU network ``Ŷ = σ(X E) W`` trained with MSE and a vanishing weight decay: the readout is
the minimum-norm interpolant ``W = Hᵀ(HHᵀ)⁻¹Y`` (``H = σ(XE)``, zero training loss throughout) and
``E`` follows the gradient flow of ``R(E) = λ‖E‖² + λ·Tr(Yᵀ(HHᵀ)⁻¹Y)``, rescaled by ``2λ``:

.. math::  ΔE = Xᵀ\\big((A Y Yᵀ A H) ⊙ σ′(XE)\\big) − E, \\qquad A = (HHᵀ)^{-1}

(eq. 20 with the sign of App. E's last line corrected; see
``docs/algorithms.md#simulate--musat-closed-form-dynamics``). The simulation
runs ``E ← E + η ΔE`` on the training pairs of modular addition with inputs ``e_a + e_b`` over the
unordered pairs ``a ≤ b < p``, in float64.

The result is a grokscope run (``run.json`` for ``modular_mlp`` with ``input="onehot_sum"``, the
``modular`` dataset with the same seeded split, safetensors checkpoints holding
``embed_linear.weight = Eᵀ`` and ``unembed.weight = Wᵀ``, and ``log.jsonl``), so every probe applies.
"""

from __future__ import annotations

import math
import shutil
import time
from pathlib import Path
from typing import Any, Callable

import torch

from grokscope.errors import GrokscopeError
from grokscope.training.schedule import ScheduleError, eval_schedule, parse_schedule


class SimulateError(GrokscopeError, ValueError):
    """Bad simulation settings, or an output folder that would be overwritten."""


# ----------------------------------------------------------------------------- the maths (float64)
def hidden_features(E: torch.Tensor, X: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """``(Z, H)`` with pre-activations ``Z = X E`` ``(n, h)`` and ``H = relu(Z)``."""
    Z = X @ E
    return Z, torch.relu(Z)


def _solve_gram(H: torch.Tensor, Y: torch.Tensor) -> torch.Tensor:
    """``(HHᵀ)⁻¹ Y`` ``(n, c)`` by Cholesky (falls back to a general solve if HHᵀ is not PD)."""
    G = H @ H.T
    L, info = torch.linalg.cholesky_ex(G)
    if int(info) == 0:
        return torch.cholesky_solve(Y, L)
    return torch.linalg.solve(G, Y)


def musat_readout(E: torch.Tensor, X: torch.Tensor, Y: torch.Tensor) -> torch.Tensor:
    """The minimum-norm interpolating readout ``W = Hᵀ(HHᵀ)⁻¹Y`` ``(h, c)`` for ``H = relu(XE)``.

    ``E (d_in, h)``, ``X (n, d_in)``, ``Y (n, c)``; needs ``h ≥ n`` and ``HHᵀ`` invertible.
    """
    _, H = hidden_features(E, X)
    return H.T @ _solve_gram(H, Y)


def musat_update(E: torch.Tensor, X: torch.Tensor, Y: torch.Tensor) -> torch.Tensor:
    """Eq. 20 (corrected): ``ΔE = Xᵀ((A Y Yᵀ A H) ⊙ σ′(XE)) − E`` with ``A = (HHᵀ)⁻¹``; shape of ``E``.

    Equals ``−∇R(E) / (2λ)`` for ``R(E) = λ‖E‖² + λ·Tr(Yᵀ(HHᵀ)⁻¹Y)`` (ReLU, σ′ = 1[XE > 0]).
    """
    Z, H = hidden_features(E, X)
    AY = _solve_gram(H, Y)                      # (n, c) = A Y
    M_H = AY @ (AY.T @ H)                       # (n, h) = A Y Yᵀ A H   (A symmetric)
    return X.T @ (M_H * (Z > 0).to(E.dtype)) - E


def musat_objective(E: torch.Tensor, X: torch.Tensor, Y: torch.Tensor, lam: float = 1.0) -> torch.Tensor:
    """``R(E) = λ‖E‖_F² + λ·Tr(Yᵀ(HHᵀ)⁻¹Y)`` (a scalar), the quantity the closed-form flow descends."""
    _, H = hidden_features(E, X)
    return lam * (E * E).sum() + lam * (Y * torch.linalg.solve(H @ H.T, Y)).sum()


# ----------------------------------------------------------------------------- the run
def musat_specs(p: int, hidden: int, seed: int) -> tuple[dict[str, Any], dict[str, Any]]:
    """``(model_spec, dataset_spec)`` of the run.json a Musat simulation writes."""
    model = {"arch": "modular_mlp", "kwargs": {"p": p, "width": hidden, "depth": 1, "input": "onehot_sum",
                                               "activation_name": "relu", "bias": False}}
    dataset = {"name": "modular", "kwargs": {"p": p, "op": "add", "train_fraction": 0.7,
                                             "encoding": "onehot_sum"}, "seed": seed}
    return model, dataset


def simulate_musat(out: Path, p: int = 23, hidden: int = 256, lr: float = 2e-3, steps: int = 2000,
                   seed: int = 0, save: str = "log:40", eval_every: str | int | None = "every:50",
                   overwrite: bool = False,
                   progress: Callable[[dict[str, Any]], None] | None = None) -> Path:
    """Run Musat's §7 simulation and write it to the run folder ``out``; returns ``out``.

    ``E (p, hidden) ~ N(0, std p^{-1/2})`` (seeded), then ``steps`` updates ``E ← E + lr·ΔE`` on the
    training split of ``load_dataset`` (the same split every probe sees). Checkpoints at the steps of
    ``save`` (a schedule spec, see :mod:`grokscope.training.schedule`); ``log.jsonl`` at those steps
    and at ``eval_every``, with train/test MSE and accuracy of the float32 model the probes load.
    ``progress`` is called with each log record.
    """
    from grokscope.datasets import load_dataset
    from grokscope.models import build_model
    from grokscope.probes.acc import loss_and_accuracy
    from grokscope.runs import (
        CHECKPOINT_DIR,
        LOG_JSONL,
        RUN_JSON,
        append_log,
        checkpoint_path,
        save_checkpoint,
        write_run_json,
    )

    if p < 3:
        raise SimulateError(f"--p must be a prime >= 3, got {p}")
    if not (lr > 0 and math.isfinite(lr)):
        raise SimulateError(f"--lr must be a finite number > 0, got {lr}")
    if steps < 0:
        raise SimulateError(f"--steps must be >= 0, got {steps}")
    try:
        save_steps = parse_schedule(save, steps)
        log_steps = eval_schedule(save_steps, eval_every, steps)
    except ScheduleError as e:
        raise SimulateError(str(e)) from None

    model_spec, data_spec = musat_specs(p, hidden, seed)
    data = load_dataset(data_spec)  # raises DatasetError for a non-prime p
    n_train = len(data.y_train)
    if hidden < n_train:
        raise SimulateError(f"--hidden {hidden} must be at least the number of training pairs ({n_train}) "
                            "for the minimum-norm interpolant Hᵀ(HHᵀ)⁻¹Y to exist")

    out = Path(out)
    if (out / RUN_JSON).exists() or (out / CHECKPOINT_DIR).exists():
        if not overwrite:
            raise SimulateError(f"{out} already holds a run (run.json or checkpoints/); "
                                "pass --overwrite to replace it")
        shutil.rmtree(out / CHECKPOINT_DIR, ignore_errors=True)
        for name in (RUN_JSON, LOG_JSONL):
            (out / name).unlink(missing_ok=True)
    out.mkdir(parents=True, exist_ok=True)

    train_info = {"simulate": "musat", "loss": "mse", "lr": lr, "steps": steps, "seed": seed,
                  "save": save, "eval_every": eval_every, "dtype": "float64",
                  "update": "E <- E + lr * (X^T((A Y Y^T A H) * relu'(XE)) - E), A = (HH^T)^-1 (Musat eq. 20)",
                  "readout": "W = H^T (H H^T)^-1 Y (minimum-norm interpolant)",
                  "init": "E ~ N(0, std p^-1/2)"}
    write_run_json(out, model_spec, data_spec, train_info)

    X = data.x_train.to(torch.float64)
    Y = torch.nn.functional.one_hot(data.y_train, p).to(torch.float64)
    g = torch.Generator().manual_seed(seed)
    E = torch.randn(p, hidden, generator=g, dtype=torch.float64) / math.sqrt(p)

    model = build_model(model_spec)
    model.eval()
    save_set, log_set = set(save_steps), set(log_steps)
    t0 = time.perf_counter()
    for step in range(steps + 1):
        if step in save_set or step in log_set:
            W = musat_readout(E, X, Y)
            state = {"embed_linear.weight": E.T.to(torch.float32), "unembed.weight": W.T.to(torch.float32)}
            model.load_state_dict(state, strict=True)
            if step in save_set:
                save_checkpoint(checkpoint_path(out, step), model.state_dict(), step,
                                metadata={"source": "grokscope simulate musat"})
            if step in log_set:
                rec: dict[str, Any] = {"step": step}
                for split in ("train", "test"):
                    lo, ac = loss_and_accuracy(model, *data.split(split), loss="mse")
                    rec[f"{split}_loss"], rec[f"{split}_acc"] = lo, ac
                rec["embed_sq"] = float((E * E).sum())
                rec["readout_sq"] = float((W * W).sum())
                rec["wall"] = round(time.perf_counter() - t0, 3)
                append_log(out, rec)
                if progress is not None:
                    progress(rec)
        if step < steps:
            E = E + lr * musat_update(E, X, Y)
            if not bool(torch.isfinite(E).all()):
                raise SimulateError(f"the simulation diverged at step {step + 1} (non-finite E); "
                                    f"try a smaller --lr than {lr}")
    return out


# ----------------------------------------------------------------------------- CLI
