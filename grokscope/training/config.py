"""``TrainConfig``: every hyper-parameter of a training run, validated, and its round trip to run.json."""

from __future__ import annotations

import copy
import math
from dataclasses import MISSING, asdict, dataclass, field, fields
from typing import Any

from grokscope.errors import GrokscopeError
from grokscope.losses import LOSSES

from .schedule import DEFAULT_SAVE, ScheduleError, eval_schedule, parse_schedule

OPTIMIZERS = ("adamw", "sgd", "orthograd", "orthograd-sgd")  # orthograd*: ⊥Grad on AdamW / SGD
DTYPES = ("float32", "float64")


class TrainConfigError(GrokscopeError, ValueError):
    """A training configuration is inconsistent; the message names the field and the bad value."""


@dataclass
class TrainConfig:
    """Everything that determines a training run (with the seed, its checkpoints bit for bit on CPU).

    ``model`` is a model spec ``{"arch": NAME | "factory": "pkg.mod:fn", "kwargs": {...}}``; kwargs
    the data fixes (``in_dim``, ``out_dim``, ``p``, ...) may be left out and are filled in from the
    dataset. ``dataset`` is ``{"name": NAME, "kwargs": {...}, "seed": S}`` (``seed`` fixes the
    train/test split, ``TrainConfig.seed`` the initialisation and the data order).
    ``batch_size`` None or 0 means full batch; ``shuffle`` draws a fresh random order of the training
    set every epoch (False: the training set's own order, the same batches every epoch, as a PyTorch
    ``DataLoader(shuffle=False)``). ``save`` and ``eval_every`` are schedule specs
    (``log:N``, ``every:K``, ``1,10,100``; see :mod:`grokscope.training.schedule`); evaluation
    happens at every save step too. ``warmup_steps`` ramps the learning rate linearly,
    ``lr · min(1, (t + 1) / warmup_steps)`` at update ``t``. ``grad_clip`` clips the global gradient
    norm, ``grad_clip_value`` every gradient entry. ``reg`` is a regulariser spec ``NAME[:ARGS]``.
    ``freeze`` lists parameter-name prefixes left out of training (e.g. ``["embed_tokens"]``).
    """

    model: dict[str, Any]
    dataset: dict[str, Any]
    optimizer: str = "adamw"
    lr: float = 1e-3
    weight_decay: float = 0.0
    betas: tuple[float, float] = (0.9, 0.999)
    momentum: float = 0.0
    warmup_steps: int = 0
    loss: str = "ce"
    batch_size: int | None = None
    shuffle: bool = True
    steps: int = 1000
    grad_clip: float | None = None
    grad_clip_value: float | None = None
    dtype: str = "float32"
    seed: int = 0
    save: str = DEFAULT_SAVE
    eval_every: str | int | None = None
    reg: str | None = None
    freeze: list[str] = field(default_factory=list)

    def __post_init__(self) -> None:
        self.model = copy.deepcopy(dict(self.model))
        self.dataset = copy.deepcopy(dict(self.dataset))
        self.betas = tuple(float(b) for b in self.betas)  # type: ignore[assignment]
        self.freeze = list(self.freeze or [])
        if self.batch_size == 0:
            self.batch_size = None

    # ------------------------------------------------------------------ validation
    def validate(self) -> "TrainConfig":
        """Check every field; raise :class:`TrainConfigError` naming the first bad one. Returns self."""
        def bad(name: str, why: str) -> TrainConfigError:
            return TrainConfigError(f"train config: {name}={getattr(self, name)!r}: {why}")

        if not isinstance(self.model, dict) or not (self.model.get("arch") or self.model.get("factory")):
            raise bad("model", "needs 'arch' (a built-in name) or 'factory' ('pkg.module:fn')")
        if not isinstance(self.model.get("kwargs", {}), dict):
            raise bad("model", "'kwargs' must be a JSON object")
        if not isinstance(self.dataset, dict) or not self.dataset.get("name"):
            raise bad("dataset", "needs a 'name'")
        if not isinstance(self.dataset.get("kwargs", {}), dict):
            raise bad("dataset", "'kwargs' must be a JSON object")
        if self.optimizer not in OPTIMIZERS:
            raise bad("optimizer", f"valid: {', '.join(OPTIMIZERS)}")
        if self.loss not in LOSSES:
            raise bad("loss", f"valid: {', '.join(LOSSES)}")
        if self.dtype not in DTYPES:
            raise bad("dtype", f"valid: {', '.join(DTYPES)}")
        for name in ("lr", "weight_decay", "momentum"):
            v = getattr(self, name)
            if not isinstance(v, (int, float)) or not math.isfinite(v) or v < 0:
                raise bad(name, "must be a finite number >= 0")
        if self.lr <= 0:
            raise bad("lr", "must be > 0")
        if len(self.betas) != 2 or not all(0 <= b < 1 for b in self.betas):
            raise bad("betas", "must be two numbers in [0, 1)")
        if not isinstance(self.steps, int) or self.steps < 0:
            raise bad("steps", "must be an integer >= 0")
        if not isinstance(self.warmup_steps, int) or self.warmup_steps < 0:
            raise bad("warmup_steps", "must be an integer >= 0")
        if self.batch_size is not None and (not isinstance(self.batch_size, int) or self.batch_size < 0):
            raise bad("batch_size", "must be a positive integer, or 0/None for full batch")
        if not isinstance(self.shuffle, bool):
            raise bad("shuffle", "must be true or false")
        for name in ("grad_clip", "grad_clip_value"):
            v = getattr(self, name)
            if v is not None and (not isinstance(v, (int, float)) or not v > 0):
                raise bad(name, "must be a number > 0 (or None for no clipping)")
        if not isinstance(self.seed, int):
            raise bad("seed", "must be an integer")
        if not all(isinstance(f, str) and f for f in self.freeze):
            raise bad("freeze", "must be a list of parameter-name prefixes")
        try:
            eval_schedule(parse_schedule(self.save, self.steps), self.eval_every, self.steps)
        except ScheduleError as e:
            raise TrainConfigError(f"train config: {e}") from None
        return self

    # ------------------------------------------------------------------ run.json round trip
    def hyperparameters(self) -> dict[str, Any]:
        """The ``train`` section of run.json: every field but ``model`` and ``dataset`` (JSON-ready)."""
        d = asdict(self)
        d.pop("model")
        d.pop("dataset")
        d["betas"] = list(self.betas)
        return d

    def to_dict(self) -> dict[str, Any]:
        """All fields as plain JSON-ready values."""
        d = self.hyperparameters()
        d["model"] = copy.deepcopy(self.model)
        d["dataset"] = copy.deepcopy(self.dataset)
        return d

    @classmethod
    def field_names(cls) -> list[str]:
        return [f.name for f in fields(cls)]

    @classmethod
    def defaults(cls) -> dict[str, Any]:
        """The training fields that have a default, with it (what a run.json written before a field
        existed was trained with, as :meth:`from_run_json` reads it)."""
        return {f.name: f.default if f.default is not MISSING else f.default_factory()
                for f in fields(cls) if f.default is not MISSING or f.default_factory is not MISSING}

    @classmethod
    def from_dict(cls, d: dict[str, Any], where: str = "config") -> "TrainConfig":
        """Build from :meth:`to_dict` output; unknown keys raise :class:`TrainConfigError`."""
        unknown = sorted(set(d) - set(cls.field_names()))
        if unknown:
            raise TrainConfigError(f"{where}: unknown training field(s) {', '.join(unknown)}; "
                                   f"valid: {', '.join(cls.field_names())}")
        if "model" not in d or "dataset" not in d:
            raise TrainConfigError(f"{where}: needs 'model' and 'dataset'")
        return cls(**d)

    @classmethod
    def from_run_json(cls, doc: dict[str, Any], where: str = "run.json") -> "TrainConfig":
        """Rebuild the config a run was trained with from its run.json document."""
        train = dict(doc.get("train") or {})
        if not train:
            raise TrainConfigError(f"{where}: has no 'train' section (not written by `grokscope train`)")
        return cls.from_dict({**train, "model": doc["model"], "dataset": doc["dataset"]}, where)
