"""The model check: build a run's model, load one checkpoint, run one forward on a batch of its data.

``grokscope init`` runs it before writing run.json and ``grokscope probe`` before any cluster starts
(once per run), so a wrong model spec, a checkpoint whose keys or shapes do not fit, inputs the model
rejects or an output that is not ``(batch, n_classes)`` logits is one line naming the checkpoint and
the problem, not one failure per job on the workers. The check builds the model and data through the
same per-process caches as the jobs (:mod:`.jobs`), so the probe preflight that follows reuses them.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from grokscope.errors import GrokscopeError

from .discovery import Checkpoint
from .outcomes import Failure

BATCH = 2  # training points of the check's forward pass
MAX_UNREADABLE = 3  # checkpoints tried in turn when the first ones cannot be read


class ModelCheckError(GrokscopeError, ValueError):
    """The model cannot be built, loaded or run on its data; one line naming the checkpoint and why."""


@dataclass(frozen=True)
class Checked:
    """What the check saw: the checkpoint used and the output's shape and dtype."""

    checkpoint: str
    shape: tuple[int, ...]
    dtype: str
    n_classes: int


def check_model(spec: dict[str, Any], ckpt: Checkpoint, trust: Any, where: str, device: str = "cpu",
                needs_data: bool = True) -> Checked:
    """Build ``spec["model"]``, load ``ckpt`` into it, run it on ``BATCH`` training points of
    ``spec["dataset"]`` (cast to the dtype the jobs use) and check that it returns floating logits of
    shape ``(BATCH, C)`` with ``C >= n_classes``. Raises :class:`ModelCheckError` (one line naming the
    checkpoint; a file that cannot be read raises ``CheckpointError`` instead, see
    :func:`check_run`). ``where`` names the spec's origin (``--model``, a run.json) in errors.
    ``needs_data=False`` (every probe asked for reads only the weights): the dataset is neither loaded
    nor run through the model; the check ends once the checkpoint loads (shape ``()``, 0 classes)."""
    import torch

    from grokscope.datasets import DatasetError
    from grokscope.models import ModelError
    from grokscope.trust import UntrustedCode

    from .jobs import _data, _model
    from .loading import CheckpointDtypeError, CheckpointError, float_dtype, load_into, read_state_dict

    dev = torch.device(device)
    try:
        model = _model(spec["model"], dev, trust, where)
    except (ModelError, UntrustedCode) as e:
        raise ModelCheckError(str(e)) from None
    sd = read_state_dict(ckpt)  # CheckpointError: the file, not the model
    try:
        load_into(model, sd, ckpt.path)
    except CheckpointDtypeError:
        raise  # this file's fault (integer weights), not the model's: its own step fails
    except CheckpointError as e:
        raise ModelCheckError(str(e)) from None
    dtype = float_dtype(sd)
    if not needs_data:
        return Checked(ckpt.path, (), str(dtype).replace("torch.", ""), 0)
    try:
        data = _data(spec["dataset"], dev, dtype, trust, where)
    except (DatasetError, UntrustedCode) as e:
        raise ModelCheckError(str(e)) from None
    x = data.x_train[:BATCH]
    name = spec["dataset"].get("name")
    try:
        with torch.no_grad():
            out = model.eval()(x)
    except Exception as e:  # noqa: BLE001 - whatever the model raises on a wrong input shape or dtype
        first = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
        raise ModelCheckError(f"{name}: the model loaded from {ckpt.path} rejects its inputs of shape "
                              f"{tuple(data.x_train.shape[1:])} and dtype {str(x.dtype).replace('torch.', '')} "
                              f"({type(e).__name__}: {first})") from None
    if not isinstance(out, torch.Tensor):
        raise ModelCheckError(f"{name}: the model loaded from {ckpt.path} returns a {type(out).__name__}, not "
                              f"a tensor of logits (BATCH, n_classes); wrap it so that forward returns the "
                              "logits")
    n_classes = int(data.n_classes)
    if not (out.dim() == 2 and out.shape[0] == x.shape[0] and out.shape[1] >= n_classes):
        raise ModelCheckError(f"{name}: the model loaded from {ckpt.path} returns {tuple(out.shape)} for "
                              f"{x.shape[0]} inputs; expected ({x.shape[0]}, n_classes) with n_classes >= "
                              f"{n_classes}")
    if not out.is_floating_point():
        raise ModelCheckError(f"{name}: the model loaded from {ckpt.path} returns {out.dtype} outputs; "
                              "expected floating-point logits")
    return Checked(ckpt.path, tuple(out.shape), str(out.dtype).replace("torch.", ""), n_classes)


def check_run(spec: dict[str, Any], checkpoints: list[Checkpoint], trust: Any, where: str,
              device: str = "cpu", needs_data: bool = True) -> Checked | None:
    """:func:`check_model` on the first readable of ``checkpoints`` (up to ``MAX_UNREADABLE`` tried;
    an unreadable file is left to its own job). None when none could be read."""
    from .loading import CheckpointError

    for ck in checkpoints[:MAX_UNREADABLE]:
        try:
            return check_model(spec, ck, trust, where, device, needs_data)
        except CheckpointError:
            continue
    return None


def screen_tasks(tasks: list[Any]) -> tuple[list[Any], dict[str, tuple[str, str]]]:
    """The tasks (:class:`.jobs.Task`) of the runs whose model passes :func:`check_run` (run once per
    run, on the checkpoints of its tasks, in this process, on the CPU), and
    ``{run: (file, reason)}`` of the runs that fail it (their tasks are dropped)."""
    from .jobs import _trust, probe_class

    by_run: dict[str, list[Any]] = {}
    for t in tasks:
        by_run.setdefault(t.run, []).append(t)
    failed: dict[str, tuple[str, str]] = {}
    for run, ts in by_run.items():
        needs_data = any(probe_class(p.name).needs_data for t in ts for p in t.probes)
        try:  # on the CPU: the client never initialises CUDA (a forked worker could not, after)
            check_run(ts[0].spec, [t.checkpoint for t in ts], _trust(ts[0]), ts[0].where, "cpu", needs_data)
        except ModelCheckError as e:
            failed[run] = (ts[0].where, f"model check failed, nothing computed for this run: {e}")
    return [t for t in tasks if t.run not in failed], failed


__all__ = ["Checked", "ModelCheckError", "check_model", "check_run", "screen_tasks"]


def screen_plan(p: Any, summary: Any, failed: set[str] | None = None) -> set[str]:
    """Drop from the driver's plan ``p`` the tasks of the runs whose model fails the check (those in
    ``failed`` when given, without checking again), recording one failure per run in ``summary``;
    returns the names of those runs."""
    if failed is None:
        kept, why = screen_tasks(p.tasks)
        for run, (file, reason) in why.items():
            summary.failures.append(Failure(run, None, "*", file, reason))
        failed = set(why)
    lost = sum(len(t.probes) for t in p.tasks if t.run in failed)
    p.tasks = [t for t in p.tasks if t.run not in failed]
    p.jobs -= lost
    summary.jobs = p.jobs
    return failed
