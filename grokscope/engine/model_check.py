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

from .checkpoints import Checkpoint
from .outcomes import Failure
from grokscope.codepath import ImportSideEffects, watch_imports
from grokscope.trust import UntrustedCode

BATCH = 2  # training points of the check's forward pass
MAX_UNREADABLE = 3  # checkpoints tried in turn when the first ones cannot be read


class ModelCheckError(GrokscopeError, ValueError):
    """The model cannot be built, loaded or run on its data; one line naming the checkpoint and why."""


@dataclass(frozen=True)
class Checked:
    """What the check saw: the checkpoint used, the output's shape and dtype, and the task's facts
    (:func:`grokscope.datasets.task_facts`: classes, chance level, generalisation threshold)."""

    checkpoint: str
    shape: tuple[int, ...]
    dtype: str
    n_classes: int
    task: dict[str, Any] | None = None


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
    if data.is_lm:
        return _check_lm(model, data, ckpt, name)
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
    from grokscope.datasets import task_facts

    return Checked(ckpt.path, tuple(out.shape), str(out.dtype).replace("torch.", ""), n_classes,
                   task_facts(data))


def _check_lm(model: Any, data: Any, ckpt: Any, name: Any) -> Checked:
    """:class:`Checked` of a causal language model on a token-sequence dataset: next-token logits
    ``(n, T, V)`` with ``V`` at least the vocabulary size (:func:`grokscope.models.adapters.sequence_logits`)."""
    import torch

    from grokscope.datasets import task_facts
    from grokscope.models.adapters import sequence_logits

    ids, mask = data.tokens("train")
    ids, mask = ids[:BATCH], None if mask is None else mask[:BATCH]
    try:
        with torch.no_grad():
            out = sequence_logits(model.eval(), ids, mask)
    except Exception as e:  # noqa: BLE001 - whatever the model raises on token sequences
        first = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
        raise ModelCheckError(f"{name}: the model loaded from {ckpt.path} cannot read token sequences of shape "
                              f"{tuple(ids.shape)} as a causal language model ({type(e).__name__}: {first})") from None
    if out.shape[2] < data.vocab_size or not out.is_floating_point():
        raise ModelCheckError(f"{name}: the model loaded from {ckpt.path} returns {tuple(out.shape)} "
                              f"{str(out.dtype).replace('torch.', '')} for token ids {tuple(ids.shape)}; expected "
                              f"floating-point logits (n, T, vocab) with vocab >= {data.vocab_size}")
    return Checked(ckpt.path, tuple(out.shape), str(out.dtype).replace("torch.", ""), data.vocab_size,
                   task_facts(data))


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


def screen_tasks(tasks: list[Any], watch: bool = True
                 ) -> tuple[list[Any], dict[str, tuple[str, str]], dict[str, dict[str, Any]]]:
    """The tasks (:class:`.jobs.Task`) of the runs whose model passes :func:`check_run` (run once per
    run, on the checkpoints of its tasks, in this process, on the CPU),
    ``{run: (file, reason)}`` of the runs that fail it (their tasks are dropped) and ``{run: task
    facts}`` of the runs checked (:attr:`Checked.task`). With ``watch``, the run's folder, its
    checkpoints' folder and the working directory are listed before a model or dataset module named by
    import path is first imported, and checked after (:class:`grokscope.codepath.watch_imports`): a
    module that changed them when imported fails its run, named (not while following a run that a
    trainer is still writing: ``watch=False``)."""
    from pathlib import Path

    import torch


    from .jobs import _trust, probe_class

    by_run: dict[str, list[Any]] = {}
    for t in tasks:
        by_run.setdefault(t.run, []).append(t)
    failed: dict[str, tuple[str, str]] = {}
    facts: dict[str, dict[str, Any]] = {}
    for run, ts in by_run.items():
        needs_data = any(probe_class(p.name).needs_data for t in ts for p in t.probes)
        spec = ts[0].spec
        folders = ([Path(ts[0].where).parent] if ts[0].where.endswith(".json") else []) + \
            [Path(ts[0].checkpoint.path).parent, Path.cwd()] if watch else []
        targets = [(spec.get("model") or {}).get("factory"), (spec.get("dataset") or {}).get("name")]
        try:  # on the CPU: the client never initialises CUDA (a forked worker could not, after)
            with watch_imports(folders, targets if watch else [], ts[0].where):
                checked = check_run(spec, [t.checkpoint for t in ts], _trust(ts[0]), ts[0].where, "cpu",
                                    needs_data)
        except (ModelCheckError, ImportSideEffects) as e:
            failed[run] = (ts[0].where, f"model check failed, nothing computed for this run: {e}")
            continue
        if checked is not None and checked.task:
            facts[run] = checked.task
        elif needs_data:  # no checkpoint could be read: the task is the data's alone
            from grokscope.datasets import task_facts

            from .jobs import _data

            try:
                facts[run] = task_facts(_data(spec["dataset"], torch.device("cpu"), torch.float32,
                                              _trust(ts[0]), ts[0].where))
            except Exception:  # noqa: BLE001 - the jobs report the dataset's own error
                pass
    return [t for t in tasks if t.run not in failed], failed, facts


__all__ = ["Checked", "ModelCheckError", "check_model", "check_run", "screen_tasks"]


def screen_plan(p: Any, summary: Any, failed: set[str] | None = None, watch: bool = True) -> set[str]:
    """Drop from the driver's plan ``p`` the tasks of the runs whose model fails the check (those in
    ``failed`` when given, without checking again), recording one failure per run in ``summary``;
    returns the names of those runs. The task facts of each run checked go into its run attributes
    (``p.run_attrs[run]["task"]``, and the attributes of its new probe groups), which
    :func:`.prepare.apply` writes to the store."""
    if failed is None:
        kept, why, facts = screen_tasks(p.tasks, watch)
        for run, task in facts.items():
            if run in p.run_attrs:
                p.run_attrs[run]["task"] = task
        for (run, _probe), attrs in p.group_attrs.items():  # a group read alone (ds.grok) knows it too
            if run in facts:
                attrs["task"] = facts[run]
        for run, (file, reason) in why.items():
            summary.failures.append(Failure(run, None, "*", file, reason))
        failed = set(why)
    lost = sum(len(t.probes) for t in p.tasks if t.run in failed)
    p.tasks = [t for t in p.tasks if t.run not in failed]
    p.jobs -= lost
    summary.jobs = p.jobs
    return failed
