"""Test helpers: a "third-party" model (its own class, not from grokscope) and tiny run builders.

Importable as ``tests.helpers`` from the repository root (so ``--model tests.helpers:tiny_net`` works
for subprocesses started there with the root on ``PYTHONPATH``).
"""

from __future__ import annotations

import functools
from pathlib import Path
from typing import Any

import torch
from torch import nn

DIGITS = {"name": "digits", "kwargs": {"n_train": 300, "n_test": 200}, "seed": 0}
MLP = {"arch": "mlp", "kwargs": {"in_dim": 64, "out_dim": 10, "depth": 1, "width": 12}}


class TinyNet(nn.Module):
    """A small classifier for 8x8 digits written the way a third party would: its own module names."""

    def __init__(self, in_dim: int = 64, hidden: int = 16, n_classes: int = 10):
        super().__init__()
        self.body = nn.Sequential(nn.Flatten(), nn.Linear(in_dim, hidden), nn.ReLU())
        self.head = nn.Linear(hidden, n_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.body(x))


def tiny_net(in_dim: int = 64, hidden: int = 16, n_classes: int = 10) -> TinyNet:
    """Factory of :class:`TinyNet` (``--model tests.helpers:tiny_net``)."""
    return TinyNet(in_dim, hidden, n_classes)


class FunctionalNet(nn.Module):
    """:class:`TinyNet` with a second hidden layer, its nonlinearities written as calls (``F.relu``,
    ``clamp_``) the way many research scripts do: no activation modules."""

    def __init__(self, in_dim: int = 64, hidden: int = 16, n_classes: int = 10):
        super().__init__()
        self.fc1, self.fc2 = nn.Linear(in_dim, hidden), nn.Linear(hidden, hidden)
        self.head = nn.Linear(hidden, n_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = nn.functional.relu(self.fc1(x.flatten(1)))
        return self.head(self.fc2(h).clamp_(min=0))


def functional_net(in_dim: int = 64, hidden: int = 16, n_classes: int = 10) -> FunctionalNet:
    """Factory of :class:`FunctionalNet` (``--model tests.helpers:functional_net``)."""
    return FunctionalNet(in_dim, hidden, n_classes)


@functools.lru_cache(maxsize=4)
def digits_data(n_train: int = 300, seed: int = 0):
    """``load_dataset(DIGITS)`` (with another ``n_train``/``seed`` if asked), cached."""
    from grokscope.datasets import load_dataset

    return load_dataset({**DIGITS, "kwargs": {**DIGITS["kwargs"], "n_train": n_train}, "seed": seed})


def digits_tensors(n_train: int = 300, seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    """The training split of ``DIGITS``."""
    d = digits_data(n_train, seed)
    return d.x_train, d.y_train


def sgd_snapshots(model: nn.Module, steps: list[int], lr: float = 0.5, seed: int = 0
                  ) -> list[tuple[int, dict[str, torch.Tensor]]]:
    """Full-batch SGD on the digits training split; ``[(step, state_dict copy)]`` at each of ``steps``."""
    torch.manual_seed(seed)
    x, y = digits_tensors()
    opt = torch.optim.SGD(model.parameters(), lr=lr)
    out, t = [], 0
    for s in sorted(steps):
        while t < s:
            opt.zero_grad()
            nn.functional.cross_entropy(model(x), y).backward()
            opt.step()
            t += 1
        out.append((s, {k: v.detach().clone() for k, v in model.state_dict().items()}))
    return out


def make_run(run_dir: Path, steps: list[int], seed: int = 0, model: dict[str, Any] | None = None,
             dataset: dict[str, Any] | None = None) -> Path:
    """A grokscope run folder: run.json + ``checkpoints/step-*.safetensors`` of a tiny MLP trained
    with full-batch SGD on digits (the trainer is not needed)."""
    from grokscope import runs
    from grokscope.models import build_model

    spec = model or MLP
    torch.manual_seed(seed)
    net = build_model(spec)
    runs.write_run_json(run_dir, spec, dataset or DIGITS, {"loss": "ce"})
    for step, sd in sgd_snapshots(net, steps, seed=seed):
        runs.save_checkpoint(runs.checkpoint_path(run_dir, step), sd, step)
    return Path(run_dir)


class HFCausalLogits(nn.Module):
    """A Hugging Face causal LM as a plain module: ids ``(n, T)`` → its logits ``(n, T, V)`` (the tests'
    and benchmarks' way to give the estimators transformers' own model, without grokscope's wrapper)."""

    def __init__(self, lm: nn.Module):
        super().__init__()
        self.lm = lm

    def forward(self, ids: torch.Tensor) -> torch.Tensor:
        return self.lm(ids).logits


# -- probes used by the engine tests (registered through GROKSCOPE_PROBES) ------------------------

from dataclasses import dataclass as _dataclass  # noqa: E402

from grokscope.probes import Probe, ProbeContext  # noqa: E402


@_dataclass(frozen=True)
class DeltaParams:
    scale: float = 1.0


class DeltaProbe(Probe):
    """‖θ_step − θ_previous‖₂ over the state dict (NaN at the first checkpoint): uses load_previous."""

    name = "delta"
    description = "distance to the previous checkpoint"
    Params = DeltaParams
    outputs = {"delta": ()}
    needs_data = False
    needs_previous = True

    def compute(self, model, data, params: DeltaParams, ctx: ProbeContext):
        import numpy as np
        import xarray as xr

        prev = ctx.load_previous()
        if prev is None:
            value = float("nan")
        else:
            sd = model.state_dict()
            value = float(sum(((sd[k].double() - prev[k].double()) ** 2).sum() for k in sd) ** 0.5)
        return xr.Dataset({"delta": ((), np.float64(params.scale * value)),
                           "previous_step": ((), np.int64(-1 if ctx.previous_step is None else ctx.previous_step))})


@_dataclass(frozen=True)
class CrashParams:
    step: int = 2


class CrashProbe(Probe):
    """Ends its worker process (``os._exit``) at ``params.step``: a worker death, not an exception."""

    name = "crash"
    description = "kills the worker process at one step"
    Params = CrashParams
    outputs = {"value": ()}
    needs_data = False

    def compute(self, model, data, params: CrashParams, ctx: ProbeContext):
        import os

        import xarray as xr

        if ctx.step == params.step:
            os._exit(13)
        return xr.Dataset({"value": ((), float(ctx.step))})


@_dataclass(frozen=True)
class EmptyParams:
    fail_step: int = -1


class EmptyProbe(Probe):
    """A per-layer output over no layer at all (``lc`` on a model without a kinked layer), with a
    dataset attribute; raises at ``params.fail_step`` (a group whose first job fails)."""

    name = "empty"
    description = "an output with a zero-length dim"
    Params = EmptyParams
    outputs = {"density": ("layer",), "total": ()}
    needs_data = False

    def compute(self, model, data, params: EmptyParams, ctx: ProbeContext):
        import numpy as np
        import xarray as xr

        if ctx.step == params.fail_step:
            raise RuntimeError(f"no result at step {ctx.step}")
        return xr.Dataset({"density": (("layer",), np.zeros(0)), "total": ((), float(ctx.step))},
                          coords={"layer": np.array([], dtype=object)}, attrs={"frame_dtype": "float32"})


class ClashProbe(Probe):
    """Returns an output named like an engine variable: its store group cannot be created."""

    name = "clash"
    description = "an output the store refuses"
    Params = CrashParams
    outputs = {"done": ()}
    needs_data = False

    def compute(self, model, data, params, ctx: ProbeContext):
        import xarray as xr

        return xr.Dataset({"done": ((), 1.0)})


@_dataclass(frozen=True)
class SlowParams:
    seconds: float = 0.2


class SlowProbe(Probe):
    """Sleeps ``params.seconds`` per checkpoint, then stores the step: keeps a job stream running long
    enough for a test to interrupt it half-way, however fast the machine."""

    name = "slow"
    description = "a job that takes a while"
    Params = SlowParams
    outputs = {"value": ()}
    needs_data = False

    def compute(self, model, data, params: SlowParams, ctx: ProbeContext):
        import os
        import time
        from pathlib import Path

        import numpy as np
        import xarray as xr

        time.sleep(params.seconds)
        marks = os.environ.get("GROKSCOPE_TEST_MARKS")  # a folder: one file per finished job
        if marks:
            Path(marks, f"{os.getpid()}-{time.monotonic_ns()}").touch()
        return xr.Dataset({"value": ((), np.int64(ctx.step))})


TEST_PROBES = ("delta=tests.helpers:DeltaProbe,crash=tests.helpers:CrashProbe,"
               "empty=tests.helpers:EmptyProbe,clash=tests.helpers:ClashProbe,slow=tests.helpers:SlowProbe")
