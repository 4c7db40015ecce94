"""Named training settings from the papers.

Which paper each one follows, and where it differs:
``docs/algorithms.md#training-presets-and-the-papers-settings``.

``PRESETS[name]`` holds :class:`TrainConfig` fields; ``preset_config(name, **overrides)`` builds the
config. Kwargs the data fixes (``in_dim``, ``out_dim``, ``p``) are left out: the trainer fills them in.
"""

from __future__ import annotations

import copy
from typing import Any

from .config import TrainConfig, TrainConfigError

DEFAULT_PRESET = "modadd-mlp"

PRESETS: dict[str, dict[str, Any]] = {
    # The default (the demo's run): memorises by step ~75 and generalises (test acc >= 0.99) at step
    # ~600-650 (seeds 0-2, measured), about a tenth of its 6 000 steps, so the phases after grokking
    # fill the rest of the window. With 40 % train and lr 3e-3 it grokked only near the end (step
    # ~5 650, or not at all within 6 000 steps on another CPU).
    "modadd-mlp": {
        "model": {"arch": "mlp", "kwargs": {"depth": 2, "width": 128}},
        "dataset": {"name": "modular", "kwargs": {"p": 59, "op": "add", "train_fraction": 0.6,
                                                  "encoding": "onehot_concat"}, "seed": 0},
        "optimizer": "adamw", "lr": 6e-3, "weight_decay": 1.0, "loss": "ce",
        "batch_size": None, "steps": 6000, "save": "log:100", "eval_every": "every:50",
    },
    # Nanda et al.: one-layer transformer on (a, b, =) tokens, p = 113, 30 % train.
    "modadd-transformer": {
        "model": {"arch": "transformer", "kwargs": {"d_model": 128, "n_heads": 4, "d_head": 32,
                                                    "d_mlp": 512, "init": "nanda"}},
        "dataset": {"name": "modular", "kwargs": {"p": 113, "op": "add", "train_fraction": 0.3,
                                                  "encoding": "tokens"}, "seed": 0},
        "optimizer": "adamw", "lr": 1e-3, "weight_decay": 1.0, "betas": (0.9, 0.98),
        "warmup_steps": 10, "loss": "ce", "batch_size": None, "steps": 48000, "save": "log:200",
        "eval_every": "every:100",
    },
    # Humayun et al.: 784-200x4-10 ReLU MLP, 1K MNIST images, batch 200, AdamW wd 0.01, MSE, 1e5 steps.
    "mnist-mlp": {
        "model": {"arch": "mlp", "kwargs": {"depth": 4, "width": 200, "activation_name": "relu"}},
        "dataset": {"name": "mnist", "kwargs": {"n_train": 1000}, "seed": 0},
        "optimizer": "adamw", "lr": 1e-3, "weight_decay": 0.01, "loss": "mse",
        "batch_size": 200, "steps": 100000, "save": "log:150",
    },
    # The same recipe on scikit-learn's offline 8x8 digits (in_dim 64).
    "digits-mlp": {
        "model": {"arch": "mlp", "kwargs": {"depth": 4, "width": 200, "activation_name": "relu"}},
        "dataset": {"name": "digits", "kwargs": {"n_train": 1000}, "seed": 0},
        "optimizer": "adamw", "lr": 1e-3, "weight_decay": 0.01, "loss": "mse",
        "batch_size": 200, "steps": 100000, "save": "log:150",
    },
    # Musat §4.6: two-layer bias-free ReLU net on e_a + e_b, p = 11, h = 128, 7 test pairs, full-batch
    # GD on the SUM-reduced MSE with L2 λ‖θ‖² (gradient 2λθ). Our "mse" averages over the n·p = 59·11
    # = 649 (sample, class) entries, so SGD lr = 649·η and weight_decay = 2λ/649 give exactly the
    # paper's update θ ← θ − η(∇L_sum + 2λθ). The paper's η = 1, λ = 1e-4 does not train here (every
    # ReLU dies in the first steps: outputs 0, train loss stuck at 1/p) and η = 0.01, λ = 1e-4 does not
    # generalise within 40k steps; η = 0.01, λ = 1e-2 memorises by step 100 and reaches 100 % test
    # accuracy by ~20k steps (seed 0).
    "musat-2layer": {
        "model": {"arch": "modular_mlp", "kwargs": {"width": 128, "depth": 1, "input": "onehot_sum",
                                                    "bias": False}},
        "dataset": {"name": "modular", "kwargs": {"p": 11, "op": "add", "train_fraction": 0.9,
                                                  "encoding": "onehot_sum"}, "seed": 0},
        "optimizer": "sgd", "lr": 0.01 * 649, "weight_decay": 2 * 1e-2 / 649, "momentum": 0.0,
        "loss": "mse", "batch_size": None, "steps": 20000, "save": "log:150", "eval_every": "every:100",
    },
    # GrokAlign (Walker et al.) MNIST: the first 1024 train / 1024 test images of the official files,
    # normalised, 3 hidden x 196 bias-free, init x8, MSE,
    # AdamW wd 0.01, batch 256 unshuffled (their DataLoader), float64. Add --reg grokalign:1e-4 (MSE)
    # for the accelerated run.
    "grokalign-mnist": {
        "model": {"arch": "mlp", "kwargs": {"depth": 3, "width": 196, "bias": False, "init_scale": 8.0}},
        "dataset": {"name": "mnist", "kwargs": {"n_train": 1024, "n_test": 1024, "normalize": True,
                                                "selection": "first"}, "seed": 0},
        "optimizer": "adamw", "lr": 1e-3, "weight_decay": 0.01, "loss": "mse", "batch_size": 256,
        "shuffle": False, "steps": 100000, "dtype": "float64", "save": "log:150",
    },
    # Olsson et al.'s induction-head phase change, small enough for 2 CPU cores: a two-layer
    # attention-only transformer (d_model 32, 4 heads) on repeated random spans (vocab 16, span 8,
    # T = 16), AdamW lr 1e-3 no weight decay, batch 32; checkpoints every 20 steps over the change.
    "induction": {
        "model": {"arch": "attn_only", "kwargs": {"d_model": 32, "n_heads": 4, "d_head": 8, "n_layers": 2}},
        "dataset": {"name": "induction", "kwargs": {"vocab": 16, "span": 8, "n_train": 2048, "n_test": 256},
                    "seed": 0},
        "optimizer": "adamw", "lr": 1e-3, "weight_decay": 0.0, "loss": "ce", "batch_size": 32,
        "steps": 400, "save": "every:20",
    },
}

DESCRIPTIONS = {
    "modadd-mlp": "a + b mod 59, one-hot pairs, 60 % train, 2x128 MLP, AdamW lr 6e-3 wd 1 (default; groks at ~10 % of its 6 000 steps)",
    "modadd-transformer": "Nanda et al.'s one-layer transformer, a + b mod 113, 30 % train, 48k steps",
    "mnist-mlp": "Humayun et al.'s 4x200 ReLU MLP on 1K MNIST images, MSE, batch 200 (needs MNIST files)",
    "digits-mlp": "the mnist-mlp recipe on the offline 8x8 digits",
    "musat-2layer": "Musat's two-layer net on e_a + e_b mod 11, full-batch GD on MSE with L2 (η, λ changed)",
    "grokalign-mnist": "GrokAlign's MNIST MLP (x8 init, MSE, float64); add --reg grokalign:1e-4",
    "induction": "2-layer attention-only transformer on repeated random spans: the induction-head phase change (400 steps)",
}


_MERGES = ("model_kwargs", "dataset_kwargs", "model_arch", "dataset_name", "dataset_seed")


def preset_names() -> list[str]:
    return sorted(PRESETS)


def preset_dict(name: str) -> dict[str, Any]:
    """A deep copy of the preset's fields; unknown names raise :class:`TrainConfigError` listing valid ones."""
    if name not in PRESETS:
        raise TrainConfigError(f"unknown preset {name!r}; valid presets: {', '.join(preset_names())}")
    return copy.deepcopy(PRESETS[name])


def preset_config(name: str = DEFAULT_PRESET, **overrides: Any) -> TrainConfig:
    """The :class:`TrainConfig` of preset ``name`` with ``overrides`` applied (see :func:`apply_overrides`)."""
    return apply_overrides(preset_dict(name), where=f"preset {name!r}", **overrides)


def apply_overrides(base: dict[str, Any], where: str = "config", **overrides: Any) -> TrainConfig:
    """A :class:`TrainConfig` from the fields ``base`` with ``overrides`` applied.

    Overrides are TrainConfig fields (``steps=500``, ``lr=3e-3``, ``model={...}``) plus merges:
    ``model_kwargs={...}`` / ``dataset_kwargs={...}`` update the kwargs key by key; ``model_arch=`` (a
    built-in name or ``pkg.module:factory``) / ``dataset_name=`` switch the model / dataset (dropping
    the old one's kwargs when the name changes);
    ``dataset_seed=`` sets the split seed. Unknown names raise :class:`TrainConfigError`.
    """
    d = copy.deepcopy(base)
    merges = {k: overrides.pop(k) for k in _MERGES if k in overrides}
    unknown = sorted(set(overrides) - set(TrainConfig.field_names()))
    if unknown:
        raise TrainConfigError(f"unknown override(s) {', '.join(unknown)} for {where}; valid: "
                               f"{', '.join(TrainConfig.field_names() + list(_MERGES))}")
    d.update(copy.deepcopy(overrides))
    name = merges.get("model_arch")
    if name and name not in (d["model"].get("arch"), d["model"].get("factory")):
        d["model"] = {("factory" if ":" in name else "arch"): name, "kwargs": {}}
    if merges.get("dataset_name") and merges["dataset_name"] != d["dataset"].get("name"):
        d["dataset"] = {"name": merges["dataset_name"], "kwargs": {}, "seed": d["dataset"].get("seed", 0)}
    if merges.get("dataset_seed") is not None:
        d["dataset"]["seed"] = int(merges["dataset_seed"])
    for key, section in (("model_kwargs", "model"), ("dataset_kwargs", "dataset")):
        if merges.get(key):
            d[section] = {**d[section], "kwargs": {**(d[section].get("kwargs") or {}), **merges[key]}}
    return TrainConfig.from_dict(d, where=where)
