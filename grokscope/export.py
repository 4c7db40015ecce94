"""``grokscope export``: every scalar of a probe store, at its own step, into the trackers people watch.

A store holds, per run and probe, variables over ``step`` and other dims (``split``, ``layer``,
``radius`` …). :func:`scalar_series` flattens them into one series per scalar: the tag
``probe/var/dim=label,dim=label`` (``acc/accuracy/split=test``, ``spectral/alpha/layer=1``), the steps
whose job is done and the values there (non-finite values are left out and counted).

* TensorBoard (:func:`to_tensorboard`): one event file per run under ``DIR/<run>/``, written with
  tensorboard's own ``EventFileWriter`` in increasing step order (TensorBoard does not promise to show
  steps written out of order), each value as a ``simple_value`` scalar (float32, what
  ``SummaryWriter.add_scalar`` writes).
* Weights & Biases (:func:`to_wandb`): one W&B run per store run. W&B refuses a log to a step below
  its own counter ("Tried to log to step N…", wandb#7967, #9449), the normal case for probes computed
  after training; so the step is a metric of its own, ``grokscope/step``, and every probe's metrics
  are declared against it (``define_metric("acc/*", step_metric="grokscope/step")``): no point is
  dropped, whatever order the steps come in. ``mode="offline"`` (or ``WANDB_MODE=offline``) writes
  the run folder without network; ``wandb sync`` uploads it later.

Neither tracker is a dependency of grokscope: ``pip install 'grokscope[tensorboard]'`` /
``'grokscope[wandb]'``. This module imports neither torch nor the trackers until asked.
"""

from __future__ import annotations

import time
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from grokscope.errors import GrokscopeError

STEP_METRIC = "grokscope/step"
SKIP_VARS = ("done", "error")


class ExportError(GrokscopeError, ValueError):
    """A store, run or tracker that cannot be exported to; the message names it."""


@dataclass
class Series:
    """One scalar over steps: ``run``, ``probe``, ``tag`` (``probe/var[/dim=label,...]``), ``steps`` and
    ``values`` (finite values only, in increasing step order) and how many non-finite values were left out."""

    run: str
    probe: str
    tag: str
    steps: np.ndarray
    values: np.ndarray
    n_nonfinite: int = 0


@dataclass
class ExportSummary:
    """What an export wrote: runs, series, points, non-finite values left out, and where."""

    target: str
    where: str
    runs: list[str] = field(default_factory=list)
    series: int = 0
    points: int = 0
    nonfinite: int = 0
    skipped_vars: list[str] = field(default_factory=list)
    paths: list[str] = field(default_factory=list)

    def describe(self) -> str:
        """One line for the command line."""
        extra = f"; {self.nonfinite} non-finite values left out" if self.nonfinite else ""
        skipped = f"; skipped {', '.join(self.skipped_vars)}" if self.skipped_vars else ""
        return (f"{self.target}: {self.points} points of {self.series} scalars from {len(self.runs)} run(s) "
                f"into {self.where}{extra}{skipped}")


def _label(v: Any) -> str:
    if isinstance(v, (float, np.floating)):
        return f"{float(v):g}"
    if isinstance(v, bytes):
        return v.decode()
    return str(v)


def scalar_series(store: Any, runs: Sequence[str] | str | None = None, probes: Sequence[str] | None = None,
                  max_per_var: int = 256, skipped: list[str] | None = None) -> Iterator[Series]:
    """Every numeric scalar of the store (a path or an opened DataTree) as :class:`Series`, run by run
    (paths as ``grokscope plot`` names them; ``runs`` keeps some), probe by probe (``probes`` keeps
    some), variable by variable. A variable with more than ``max_per_var`` scalars per step (per-sample
    arrays) is left out and named in ``skipped``."""
    from grokscope.plots.runs import PlotError, open_store, select_runs

    try:
        tree = open_store(store)
        selected = select_runs(tree, runs)
    except PlotError as e:
        raise ExportError(str(e)) from e
    for run, node in selected:
        for probe, child in sorted(node.children.items()):
            if probes and probe not in probes:
                continue
            ds = child.to_dataset()
            if "step" not in ds.dims:
                continue
            steps = np.asarray(ds["step"].values, dtype=np.int64)
            for var in sorted(ds.data_vars):
                da = ds[var]
                if var in SKIP_VARS or "step" not in da.dims or not np.issubdtype(da.dtype, np.number):
                    continue
                other = [d for d in da.dims if d != "step"]
                size = int(np.prod([da.sizes[d] for d in other])) if other else 1
                if size > max_per_var:
                    if skipped is not None:
                        skipped.append(f"{run}/{probe}/{var} ({size} values a step)")
                    continue
                values = np.asarray(da.transpose("step", *other).values, dtype=np.float64).reshape(len(steps), -1)
                labels = [np.asarray(ds[d].values) if d in ds.coords else np.arange(da.sizes[d]) for d in other]
                for j, idx in enumerate(np.ndindex(*[da.sizes[d] for d in other]) if other else [()]):
                    suffix = ",".join(f"{d}={_label(labels[k][i])}" for k, (d, i) in enumerate(zip(other, idx)))
                    col = values[:, j]
                    ok = np.isfinite(col)
                    yield Series(run, probe, f"{probe}/{var}" + (f"/{suffix}" if suffix else ""),
                                 steps[ok], col[ok], int((~ok).sum()))


def _by_run(series: Iterator[Series]) -> dict[str, list[Series]]:
    out: dict[str, list[Series]] = {}
    for s in series:
        out.setdefault(s.run, []).append(s)
    return out


def _points_by_step(series: list[Series]) -> list[tuple[int, dict[str, float]]]:
    """``[(step, {tag: value})]`` in increasing step order."""
    by_step: dict[int, dict[str, float]] = {}
    for s in series:
        for st, v in zip(s.steps.tolist(), s.values.tolist()):
            by_step.setdefault(int(st), {})[s.tag] = float(v)
    return sorted(by_step.items())


def _safe(run: str) -> str:
    return run.replace("/", "__") or "root"


def to_tensorboard(store: Any, out_dir: str | Path, runs: Sequence[str] | str | None = None,
                   probes: Sequence[str] | None = None, max_per_var: int = 256) -> ExportSummary:
    """Write every scalar of ``store`` as TensorBoard event files under ``out_dir/<run>/`` (see the
    module docstring); returns what was written."""
    try:
        from tensorboard.compat.proto import event_pb2, summary_pb2
        from tensorboard.summary.writer.event_file_writer import EventFileWriter
    except ImportError as e:
        raise ExportError("export --to tensorboard needs the tensorboard package: "
                          "pip install 'grokscope[tensorboard]'") from e
    out_dir = Path(out_dir)
    summary = ExportSummary("tensorboard", str(out_dir))
    grouped = _by_run(scalar_series(store, runs, probes, max_per_var, summary.skipped_vars))
    now = time.time()
    for run, series in grouped.items():
        logdir = out_dir / _safe(run)
        logdir.mkdir(parents=True, exist_ok=True)
        writer = EventFileWriter(str(logdir))
        try:
            for step, values in _points_by_step(series):
                vals = [summary_pb2.Summary.Value(tag=t, simple_value=v) for t, v in values.items()]
                writer.add_event(event_pb2.Event(wall_time=now, step=step, summary=summary_pb2.Summary(value=vals)))
        finally:
            writer.close()
        summary.paths.append(str(logdir))
        _count(summary, run, series)
    return summary


def _count(summary: ExportSummary, run: str, series: list[Series]) -> None:
    summary.runs.append(run)
    summary.series += len(series)
    summary.points += sum(len(s.steps) for s in series)
    summary.nonfinite += sum(s.n_nonfinite for s in series)


def to_wandb(store: Any, out_dir: str | Path | None = None, project: str = "grokscope", mode: str | None = None,
             runs: Sequence[str] | str | None = None, probes: Sequence[str] | None = None,
             max_per_var: int = 256, entity: str | None = None) -> ExportSummary:
    """Log every scalar of ``store`` to Weights & Biases, one W&B run per store run (named after it,
    its group attributes as config), each probe's metrics against the custom step ``grokscope/step``
    (see the module docstring). ``out_dir``: wandb's ``dir`` (its run folders go under
    ``out_dir/wandb``); ``mode``: ``online`` | ``offline`` | None (wandb's own default, ``WANDB_MODE``)."""
    try:
        import wandb
    except ImportError as e:
        raise ExportError("export --to wandb needs the wandb package: pip install 'grokscope[wandb]'") from e
    if out_dir is not None:
        Path(out_dir).mkdir(parents=True, exist_ok=True)
    summary = ExportSummary("wandb", str(out_dir or "wandb's default folder"))
    grouped = _by_run(scalar_series(store, runs, probes, max_per_var, summary.skipped_vars))
    for run, series in grouped.items():
        kwargs: dict[str, Any] = {"project": project, "name": run, "config": {"grokscope_run": run},
                                  "reinit": "finish_previous"}
        if out_dir is not None:
            kwargs["dir"] = str(out_dir)
        if mode is not None:
            kwargs["mode"] = mode
        if entity is not None:
            kwargs["entity"] = entity
        wb = wandb.init(**kwargs)
        try:
            wb.define_metric(STEP_METRIC)
            for probe in sorted({s.probe for s in series}):
                wb.define_metric(f"{probe}/*", step_metric=STEP_METRIC)
            for step, values in _points_by_step(series):
                wb.log({STEP_METRIC: step, **values})
            if getattr(wb, "dir", None):
                summary.paths.append(str(Path(wb.dir).parent))
        finally:
            wb.finish()
        _count(summary, run, series)
    return summary

