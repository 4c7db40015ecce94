"""The trainer: ``train_run(config, run_dir)`` writes a grokscope run (run.json, checkpoints, log.jsonl).

Loop, for ``s = start .. steps``: evaluate if ``s`` is an evaluation step (log.jsonl), save the
checkpoint of step ``s`` and the resume state if it is a save step, then do update ``s``
(``s`` counts the updates already done, so the step-0 checkpoint is the initialisation).

Resume state ``state/last.pt`` (written atomically after each checkpoint; plain tensors and Python
values only, read with ``weights_only=True``): the step, the optimiser state, the global torch RNG
state, the data-order generator state and epoch permutation, and the regulariser's state when it has
one. Weights come from that step's safetensors checkpoint. A resumed run therefore produces the same
bytes as an uninterrupted one.

One trainer per run folder: ``train_run`` holds the folder's lock (``.grokscope.lock``, the probe
engine's lock mechanism, :mod:`grokscope.engine.lock`) while it writes, so a second trainer on a live
run, with or without ``resume``, is refused naming the first; the lock of a killed trainer is stale
and taken over by the next one. Readers (the probe engine following a run) take no lock.
"""

from __future__ import annotations

import contextlib
import inspect
import io
import json
import math
import sys
import time
from pathlib import Path
from typing import Any, Callable, Iterator

import torch
from torch import nn

from grokscope import runs
from grokscope.engine.lock import RunLock, RunLocked, describe
from grokscope.errors import GrokscopeError
from grokscope.losses import task_loss

from .config import TrainConfig, TrainConfigError
from .orthograd import orthogonalise_grads_
from .schedule import eval_schedule, parse_schedule
from .threads import choose_threads

STATE_DIR = "state"
STATE_FILE = "last.pt"
STATE_FORMAT = 1

# model kwargs the dataset determines, filled in when a builder takes them and the spec omits them
_DERIVED_KWARGS: dict[str, Callable[[Any], Any]] = {
    "in_dim": lambda d: d.input_dim,
    "out_dim": lambda d: d.n_classes,
    "n_classes": lambda d: d.n_classes,
    "num_classes": lambda d: d.n_classes,
    "p": lambda d: d.meta.get("p"),
    "in_channels": lambda d: d.input_shape[0] if len(d.input_shape) == 3 else None,
}


class TrainingError(GrokscopeError, RuntimeError):
    """Training cannot start or continue (existing run, mismatched resume, divergence)."""


def state_path(run_dir: Path) -> Path:
    """``run_dir/state/last.pt``: the resume state of the latest checkpoint."""
    return Path(run_dir) / STATE_DIR / STATE_FILE


def resolve_model_spec(spec: dict[str, Any], data, trust=None) -> dict[str, Any]:
    """``spec`` with the kwargs the data fixes (``in_dim``, ``out_dim``, ``p``, ...) filled in.

    Only kwargs the builder accepts and the spec leaves out are added, so run.json ends up with the
    complete set of arguments needed to rebuild the model without the trainer.
    """
    from grokscope.models import factory_for

    kwargs = dict(spec.get("kwargs") or {})
    factory, _ = factory_for(spec, trust)
    try:
        params = inspect.signature(factory).parameters
    except (TypeError, ValueError):
        params = {}
    for name, get in _DERIVED_KWARGS.items():
        if name in params and name not in kwargs:
            value = get(data)
            if value is not None:
                kwargs[name] = int(value)
    out = {k: v for k, v in spec.items() if k != "kwargs"}
    out["kwargs"] = kwargs
    return out


def _dataset_spec(spec: dict[str, Any]) -> dict[str, Any]:
    return {"name": spec["name"], "kwargs": dict(spec.get("kwargs") or {}), "seed": int(spec.get("seed", 0))}


def _freeze(model: nn.Module, prefixes: list[str]) -> list[str]:
    """Turn off gradients of parameters whose names start with a prefix; return their names."""
    names = [n for n, _ in model.named_parameters()]
    frozen = []
    for prefix in prefixes:
        hit = [n for n in names if n == prefix or n.startswith(prefix)]
        if not hit:
            raise TrainConfigError(f"train config: freeze prefix {prefix!r} matches no parameter; "
                                   f"parameters: {', '.join(names)}")
        frozen += hit
    for n, p in model.named_parameters():
        if n in frozen:
            p.requires_grad_(False)
    return sorted(set(frozen))


def _optimizer(config: TrainConfig, params: list[nn.Parameter]) -> torch.optim.Optimizer:
    """The base optimiser (``orthograd`` is AdamW, ``orthograd-sgd`` SGD; :func:`_update` projects
    their gradients first)."""
    if config.optimizer in ("adamw", "orthograd"):
        return torch.optim.AdamW(params, lr=config.lr, betas=tuple(config.betas),
                                 weight_decay=config.weight_decay)
    return torch.optim.SGD(params, lr=config.lr, momentum=config.momentum,
                           weight_decay=config.weight_decay)


class _Batches:
    """Mini-batches in a seeded random order: a fresh permutation per epoch (``shuffle=False``: the
    training set's own order every epoch), equal-sized batches (the remainder of an epoch is
    dropped). Full batch (``batch_size`` None or ``>= n``) has no randomness. Its state round-trips
    through :meth:`state` / :meth:`load`."""

    def __init__(self, n: int, batch_size: int | None, seed: int, shuffle: bool = True):
        self.n, self.shuffle = n, shuffle
        self.bs = None if batch_size is None or batch_size >= n else batch_size
        self.gen = torch.Generator().manual_seed(seed + 1_000_003)
        self.perm: torch.Tensor | None = None
        self.pos = 0

    def next(self) -> torch.Tensor | None:
        """Indices of the next batch, or None for the full batch."""
        if self.bs is None:
            return None
        if self.perm is None or self.pos + self.bs > self.n:
            self.perm = torch.randperm(self.n, generator=self.gen) if self.shuffle else torch.arange(self.n)
            self.pos = 0
        idx = self.perm[self.pos:self.pos + self.bs]
        self.pos += self.bs
        return idx

    def state(self) -> dict[str, Any]:
        return {"gen": self.gen.get_state(), "perm": self.perm, "pos": self.pos}

    def load(self, st: dict[str, Any]) -> None:
        self.gen.set_state(st["gen"])
        self.perm, self.pos = st["perm"], int(st["pos"])


class _Progress:
    """Progress lines on stderr (at most one per ``every`` seconds, plus the last one)."""

    def __init__(self, enabled: bool, steps: int, start: int, every: float = 1.0):
        self.enabled, self.steps, self.every = enabled, steps, every
        self.t0, self.s0, self.last = time.perf_counter(), start, -math.inf

    def update(self, step: int, rec: dict[str, Any], force: bool = False) -> None:
        now = time.perf_counter()
        if not self.enabled or (now - self.last < self.every and not force):
            return
        self.last = now
        rate = (step - self.s0) / max(now - self.t0, 1e-9)
        eta = f"{(self.steps - step) / rate:5.0f}s" if rate > 0 else "    ?"
        sys.stderr.write(f"step {step:>{len(str(self.steps))}}/{self.steps}  {rate:7.1f} steps/s  "
                         f"train acc {100 * rec['train_acc']:5.1f}%  test acc {100 * rec['test_acc']:5.1f}%  "
                         f"train loss {rec['train_loss']:.3g}  eta {eta}\n")
        sys.stderr.flush()


def _set_threads(threads: int | str | None, model: nn.Module, rows: int, dev: torch.device) -> str:
    """Set torch's threads as ``train_run``'s ``threads`` asks; returns why, in a few words."""
    if threads == "auto":
        if dev.type != "cpu":
            return "torch's default: the model runs on " + dev.type

        n, why = choose_threads(sum(p.numel() for p in model.parameters()), rows)
        torch.set_num_threads(n)
        return f"chosen: {why}; --threads N to choose"
    if threads:
        torch.set_num_threads(int(threads))
        return "--threads"
    return "torch's setting"


@contextlib.contextmanager
def _run_lock(run_dir: Path) -> Iterator[RunLock]:
    """Hold ``run_dir``'s :class:`~grokscope.engine.lock.RunLock` (a live holder: :class:`TrainingError`
    naming it); a stale lock (its trainer was killed) is taken over, saying so on stderr. A folder
    this call created and left empty (training failed before writing) is removed again."""
    created = not run_dir.exists()
    lock = RunLock(run_dir)
    try:
        lock.acquire()
    except RunLocked as e:
        raise TrainingError(str(e)) from None
    try:
        if lock.took_over:
            sys.stderr.write(f"took over the stale lock of {run_dir} left by {describe(lock.took_over)} "
                             "(that process is gone)\n")
        yield lock
    finally:
        lock.release()
        if created and run_dir.is_dir() and not any(run_dir.iterdir()):
            run_dir.rmdir()


def _existing_run(run_dir: Path) -> bool:
    return any((run_dir / p).exists() for p in (runs.RUN_JSON, runs.LOG_JSONL, runs.CHECKPOINT_DIR, STATE_DIR))


def _clean_temp_files(run_dir: Path) -> None:
    """Remove temporary files a killed writer left behind (``.NAME.XXXX.tmp``)."""
    for folder in (run_dir / runs.CHECKPOINT_DIR, run_dir / STATE_DIR, run_dir):
        if folder.is_dir():
            for p in folder.glob(".*.tmp"):
                p.unlink(missing_ok=True)


def _save_state(run_dir: Path, step: int, opt: torch.optim.Optimizer, batches: _Batches,
                extra: dict[str, Any], reg) -> None:
    state: dict[str, Any] = {
        "format": STATE_FORMAT, "step": int(step), "optimizer": opt.state_dict(),
        "torch_rng": torch.get_rng_state(), "batches": batches.state(), **extra,
    }
    if torch.cuda.is_available() and torch.cuda.is_initialized():
        state["cuda_rng"] = torch.cuda.get_rng_state_all()
    if reg is not None and hasattr(reg, "state_dict"):
        state["regulariser"] = reg.state_dict()
    buf = io.BytesIO()
    torch.save(state, buf)
    runs.atomic_write_bytes(state_path(run_dir), buf.getvalue())


def _load_state(run_dir: Path) -> dict[str, Any] | None:
    path = state_path(run_dir)
    if not path.is_file():
        return None
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as e:  # noqa: BLE001 - any unreadable file gets the same clear message
        raise TrainingError(f"{path}: unreadable resume state ({e}); delete it to restart the run") from e
    if not isinstance(state, dict) or state.get("format") != STATE_FORMAT:
        raise TrainingError(f"{path}: not a grokscope resume state (format {STATE_FORMAT})")
    return state


def _load_weights(model: nn.Module, path: Path, step: int) -> None:
    from safetensors import safe_open
    from safetensors.torch import load_file

    if not path.is_file():
        raise TrainingError(f"{path}: the checkpoint the resume state points at is missing")
    with safe_open(str(path), framework="pt") as f:
        meta = f.metadata() or {}
    if meta.get("step") != str(step):
        raise TrainingError(f"{path}: metadata step {meta.get('step')!r} does not match the resume state ({step})")
    tensors = load_file(str(path))
    own = model.state_dict()
    missing = sorted(set(own) - set(tensors))
    if missing:
        raise TrainingError(f"{path}: missing tensors {missing[:5]} for this model")
    with torch.no_grad():
        for k, v in own.items():
            v.copy_(tensors[k])


def _config_diff(a: dict[str, Any], b: dict[str, Any]) -> list[str]:
    # a field that run.json lacks (added later) was trained with its default
    defaults = json.loads(json.dumps(TrainConfig.defaults()))
    a, b = {**defaults, **a}, {**defaults, **b}
    keys = sorted((set(a) | set(b)) - {"reg_params"})  # derived from "reg", absent in older runs
    norm = lambda v: json.loads(json.dumps(v))  # noqa: E731 - tuples vs lists
    return [f"{k}: {a.get(k)!r} (run.json) vs {b.get(k)!r} (now)" for k in keys if norm(a.get(k)) != norm(b.get(k))]


def _run_json_diff(run_dir: Path, model_spec: dict[str, Any], dataset_spec: dict[str, Any],
                   hyper: dict[str, Any]) -> list[str]:
    old = runs.read_run_json(run_dir)
    return _config_diff({"model": old["model"], "dataset": old["dataset"], **old["train"]},
                        {"model": model_spec, "dataset": dataset_spec, **hyper})


def config_differences(config: TrainConfig, run_dir: str | Path, trust=None) -> list[str]:
    """How the run in ``run_dir`` (its run.json) differs from ``config``, one line per field
    (``"lr: 0.001 (run.json) vs 0.01 (now)"``); empty when ``config`` would resume it."""
    from grokscope.datasets import load_dataset

    dataset_spec = _dataset_spec(config.dataset)
    model_spec = resolve_model_spec(config.model, load_dataset(dataset_spec, trust), trust)
    return _run_json_diff(Path(run_dir), model_spec, dataset_spec, config.hyperparameters())


def evaluate(model: nn.Module, data, loss: str) -> dict[str, float]:
    """Train and test loss/accuracy with the ``acc`` probe's own function (so probes match the log)."""
    from grokscope.probes.acc import loss_and_accuracy

    out = {}
    for split in ("train", "test"):
        x, y = data.split(split)
        lo, ac = loss_and_accuracy(model, x, y, loss)
        out[f"{split}_loss"], out[f"{split}_acc"] = lo, ac
    return out


def train_run(config: TrainConfig, run_dir: str | Path, resume: bool = False, progress: bool = True,
              device: str = "cpu", trust=None, threads: int | str | None = None) -> Path:
    """Train ``config`` into ``run_dir`` and return ``run_dir``.

    ``threads``: torch threads (``"auto"``: :func:`.threads.choose_threads` from the model's size, the
    batch and the machine's free cores; None: leave torch's setting). With ``progress`` the first
    line on stderr names the folder and the threads used, and why.

    ``trust`` (a :class:`grokscope.trust.Trust`; None: the user's allow-list) decides which model or
    dataset callables named by import path may be imported.

    Writes ``run.json`` (model spec with the data-derived kwargs filled in, dataset spec, and the
    hyper-parameters as ``train``), ``checkpoints/step-*.safetensors`` at the save schedule (step 0
    included), ``log.jsonl`` (``step, train_loss, train_acc, test_loss, test_acc, wall`` and ``reg``
    when a regulariser is on, at every evaluation step) and ``state/last.pt``.

    ``resume=True`` continues the run in ``run_dir`` from its last saved checkpoint (or starts it if
    nothing was saved yet); the config must equal the one in its run.json. Without ``resume`` an
    existing run in ``run_dir`` is an error; so is a run folder another live trainer holds (its lock
    names it). Raises DatasetError / ModelError for bad specs,
    :class:`TrainConfigError` for bad fields and :class:`TrainingError` for run-folder problems.
    """
    from grokscope.datasets import load_dataset
    from grokscope.models import build_model

    from .regularisers import build_regulariser

    config.validate()
    run_dir = Path(run_dir)
    dev = torch.device(device)
    dtype = getattr(torch, config.dtype)

    # --- build everything that can fail on bad input before touching the folder
    data = load_dataset(_dataset_spec(config.dataset), trust)
    model_spec = resolve_model_spec(config.model, data, trust)
    dataset_spec = _dataset_spec(config.dataset)
    hyper = config.hyperparameters()
    save_steps = parse_schedule(config.save, config.steps)
    eval_steps = set(eval_schedule(save_steps, config.eval_every, config.steps))
    save_set = set(save_steps)
    try:
        reg = build_regulariser(config.reg, config.loss, data.input_kind)
    except ValueError as e:
        raise TrainConfigError(f"train config: reg={config.reg!r}: {e}") from e
    if reg is not None:  # the resolved parameters (defaults filled in), next to the spec string
        hyper["reg_params"] = reg.describe()

    with _run_lock(run_dir):  # one trainer per run folder, from the existing-run check to the last write
        if _existing_run(run_dir):
            if not resume:
                raise TrainingError(f"{run_dir} already holds a run; pass --resume to continue it "
                                    "or choose another output folder")
            rj = run_dir / runs.RUN_JSON
            if rj.is_file():
                diff = _run_json_diff(run_dir, model_spec, dataset_spec, hyper)
                if diff:
                    raise TrainingError(f"{rj}: cannot resume with a different configuration:\n  "
                                        + "\n  ".join(diff))

        fork_devices = [dev.index or 0] if dev.type == "cuda" else []
        with torch.random.fork_rng(devices=fork_devices):
            torch.manual_seed(config.seed)
            model = build_model(model_spec, trust)
            frozen = _freeze(model, config.freeze)
            model = model.to(device=dev, dtype=dtype)
            data = _cast(data, dtype)
            if dev.type != "cpu":
                data = data.to(dev)
            trainable = [p for p in model.parameters() if p.requires_grad]
            if not trainable:
                raise TrainConfigError(f"train config: freeze={config.freeze!r} leaves nothing to train")
            opt = _optimizer(config, trainable)
            x_train, y_train = data.split("train")
            batches = _Batches(len(x_train), config.batch_size, config.seed, config.shuffle)
            why = _set_threads(threads, model, config.batch_size or len(x_train), dev)
            if progress:
                sys.stderr.write(f"training into {run_dir} ({'resuming' if resume else 'new run'}) with "
                                 f"{torch.get_num_threads()} torch thread(s) ({why})\n")

            start, wall0, last_reg, train_acc = 0, 0.0, None, None
            run_dir.mkdir(parents=True, exist_ok=True)
            _clean_temp_files(run_dir)
            state = _load_state(run_dir) if resume else None
            if state is not None:
                start = int(state["step"])
                log = runs.read_log(run_dir)
                if start == config.steps and log and log[-1].get("step") == start:
                    return run_dir  # finished: nothing to redo
                _load_weights(model, runs.checkpoint_path(run_dir, start), start)
                opt.load_state_dict(state["optimizer"])
                torch.set_rng_state(state["torch_rng"])
                if "cuda_rng" in state and dev.type == "cuda":
                    torch.cuda.set_rng_state_all(state["cuda_rng"])
                batches.load(state["batches"])
                if reg is not None and "regulariser" in state and hasattr(reg, "load_state_dict"):
                    reg.load_state_dict(state["regulariser"])
                wall0, last_reg, train_acc = float(state["wall"]), state["last_reg"], state["train_acc"]
            # the log keeps what was evaluated before the resume point; later records are redone
            kept = [r for r in runs.read_log(run_dir) if r.get("step", -1) < start]
            runs.atomic_write_bytes(run_dir / runs.LOG_JSONL,
                                    "".join(json.dumps(r, sort_keys=True) + "\n" for r in kept).encode())
            runs.write_run_json(run_dir, model_spec, dataset_spec, hyper)

            meter = _Progress(progress, config.steps, start)
            t0 = time.perf_counter()
            model.train()
            for step in range(start, config.steps + 1):
                if step in eval_steps:
                    rec = {"step": step, **evaluate(model, data, config.loss),
                           "wall": round(wall0 + time.perf_counter() - t0, 4)}
                    if reg is not None and last_reg is not None:
                        rec["reg"] = last_reg
                    runs.append_log(run_dir, rec)
                    train_acc = rec["train_acc"]
                    meter.update(step, rec, force=step == config.steps)
                    if not math.isfinite(rec["train_loss"]):
                        raise TrainingError(f"training diverged: train loss {rec['train_loss']} at step {step} "
                                            f"(lower --lr or add --grad-clip)")
                if step in save_set:
                    runs.save_checkpoint(runs.checkpoint_path(run_dir, step), model.state_dict(), step)
                    _save_state(run_dir, step, opt, batches,
                                {"wall": wall0 + time.perf_counter() - t0, "last_reg": last_reg,
                                 "train_acc": train_acc, "frozen": frozen}, reg)
                if step == config.steps:
                    break
                last_reg = _update(model, opt, config, reg, batches, x_train, y_train, step, train_acc)
    return run_dir


def _cast(data, dtype: torch.dtype):
    """``data`` with its floating-point inputs in ``dtype`` (token ids stay int64)."""
    if data.x_train.is_floating_point() and data.x_train.dtype != dtype:
        data = data.to("cpu")
        data.x_train, data.x_test = data.x_train.to(dtype), data.x_test.to(dtype)
    return data


def _update(model: nn.Module, opt: torch.optim.Optimizer, config: TrainConfig, reg, batches: _Batches,
            x_train: torch.Tensor, y_train: torch.Tensor, step: int, train_acc: float | None) -> float | None:
    """One optimiser update (update number ``step``); returns the regulariser's penalty or None."""
    lr = config.lr * min(1.0, (step + 1) / config.warmup_steps) if config.warmup_steps else config.lr
    for g in opt.param_groups:
        g["lr"] = lr
    idx = batches.next()
    xb, yb = (x_train, y_train) if idx is None else (x_train[idx], y_train[idx])
    if reg is not None:
        xb = reg.transform_input(xb, {"train_acc": train_acc, "step": step})
    wants_grad = reg is not None and reg.wants_input_grad and xb.is_floating_point()
    if wants_grad:
        xb = xb.detach().requires_grad_(True)
    logits = model(xb)
    loss = task_loss(logits, yb, config.loss)
    penalty = None
    if reg is not None:
        pen = reg.penalty(model, xb, yb, logits)
        if pen is not None:
            loss = loss + pen
            penalty = float(pen.detach())
    opt.zero_grad(set_to_none=True)
    if wants_grad:  # into the parameters only: no gradient for the batch
        loss.backward(inputs=[p for p in model.parameters() if p.requires_grad])
    else:
        loss.backward()
    if reg is not None:
        reg.after_backward(model)
    params = [p for p in model.parameters() if p.grad is not None]
    if config.grad_clip_value is not None:
        torch.nn.utils.clip_grad_value_(params, config.grad_clip_value)
    if config.grad_clip is not None:
        torch.nn.utils.clip_grad_norm_(params, config.grad_clip)
    if config.optimizer.startswith("orthograd"):
        orthogonalise_grads_(params)
    opt.step()
    return penalty
