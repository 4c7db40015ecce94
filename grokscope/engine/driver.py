"""The driver: plan the jobs, run them on Dask (or in-process), write every result into the store.

``probe_runs(path, config)`` is what ``grokscope probe`` calls:

1. discover runs and checkpoints (:mod:`.discovery`); the model/data spec of each run comes from its
   ``run.json`` or from the command line (a command-line spec that a run's run.json overrides is
   warned about: :func:`ignored_spec`);
2. lock the store (:mod:`.lock`), refuse groups whose stored parameters or run spec differ from the
   request (``--overwrite`` deletes and recomputes them), grow ``step`` where new checkpoints appeared,
   and skip every (run, step, probe) whose ``done`` flag is set or that the probe's ``--steps``
   selection leaves out (:mod:`.selection`; a group still spans every checkpoint of its run);
3. submit one task per pending (run, checkpoint) (:func:`.jobs.run_task`) to a Dask client: an
   in-process ``LocalCluster`` of worker processes by default, ``--scheduler ADDRESS`` for an existing
   cluster, ``--scheduler sync`` to run in this process; ``--device cuda`` asks for ``GPU=1``;
4. as tasks complete (``distributed.as_completed``), write each job's result or error into the store
   (this process is the store's only writer) and set its ``done`` flag after its data; results are
   committed in batches every ``flush_interval`` seconds, or every ten times the last commit's
   duration when that is longer (commits of many groups are slow), so a killed driver loses at most
   the jobs in flight and those since the last commit;
5. return a :class:`Summary` (the CLI prints it and exits non-zero when any job failed).

``probe_runs(..., follow=alive)`` keeps searching the path while ``alive()`` is true and adds the
jobs of new checkpoints as they appear (``grokscope demo`` and ``grokscope probe --follow`` probe a
run while it trains).
"""

from __future__ import annotations

import errno
import signal
import threading
import time
from collections import defaultdict
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Iterator

import grokscope
from grokscope.presentation import to_attrs

from .cluster import check_scheduler, dask_client, visible_gpus
from .config import EngineConfig, EngineError
from .discovery import Checkpoint, Problem, Run, find_runs
from .jobs import HashTask, Outcome, ProbeRequest, Task, describe_error, hash_task, run_task
from .lock import StoreLock
from .model_check import screen_plan
from .selection import parse_selection, select_steps
from .store import DamagedStore, GroupInfo, ProbeStore, StoreError, check_store_path, normalise



class StoreWriteError(EngineError):
    """The store cannot be written (disk full, read-only, no permission): the run stops, the lock is
    released, what was committed stays."""


class Interrupted(EngineError):
    """The run was stopped (Ctrl-C, SIGTERM) after committing what had finished; ``code`` is the exit
    status a shell gives a process ended by that signal (130, 143)."""

    def __init__(self, message: str, code: int = 130):
        super().__init__(message)
        self.code = code


class _Terminated(KeyboardInterrupt):
    """SIGTERM, raised in the driver's thread by :func:`_sigterm_stops`, handled like a Ctrl-C."""


class SchedulerLost(EngineError):
    """The Dask scheduler went away during the run (after committing what had finished)."""


@contextmanager
def _sigterm_stops() -> Iterator[None]:
    """While in this block (main thread only), SIGTERM stops the run as a Ctrl-C does: what finished is
    committed, the lock released, the cluster closed, and the run ends in one line (exit 143)."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return

    def stop(signum: int, frame: Any) -> None:
        raise _Terminated()

    before = signal.signal(signal.SIGTERM, stop)
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, before)


def _scheduler_gone(e: BaseException) -> bool:
    """Whether ``e`` says the connection to the Dask scheduler is gone (its comm closed, the client
    cancelled our futures, a reconnect that timed out)."""
    names = {type(x).__name__ for x in (e, e.__cause__, e.__context__) if x is not None}
    return bool(names & {"CommClosedError", "CancelledError", "FutureCancelledError", "StreamClosedError"})


# errors of the machine, not of a job: every later write would fail the same way
ENVIRONMENTAL = {errno.ENOSPC, errno.EDQUOT, errno.EROFS, errno.EACCES, errno.EPERM, errno.EIO, errno.EFBIG}


def environmental(e: BaseException) -> bool:
    """Whether ``e`` (or what caused it) is an :data:`ENVIRONMENTAL` ``OSError``."""
    while e is not None:
        if isinstance(e, OSError) and e.errno in ENVIRONMENTAL:
            return True
        e = e.__cause__ or e.__context__  # type: ignore[assignment]
    return False


def _os_cause(e: BaseException) -> OSError:
    while not (isinstance(e, OSError) and e.errno in ENVIRONMENTAL):
        e = e.__cause__ or e.__context__  # type: ignore[assignment]
    return e


@dataclass
class Failure:
    """A job (or a whole run) that did not produce a result, and why."""

    run: str
    step: int | None
    probe: str
    file: str
    reason: str

    def line(self) -> str:
        where = f"{self.run} step {self.step}" if self.step is not None else self.run
        return f"{where} [{self.probe}] {self.file}: {self.reason}"


@dataclass
class Summary:
    """What a probe run did."""

    store: Path
    runs: int = 0
    jobs: int = 0  # jobs submitted this time
    skipped: int = 0  # jobs already done in the store
    excluded: int = 0  # (checkpoint, probe) pairs left out by the probes' step selections
    completed: int = 0
    failures: list[Failure] = field(default_factory=list)
    warnings: list[str] = field(default_factory=list)
    seconds: float = 0.0
    probe_seconds: float = 0.0  # time spent inside probe.compute, summed over jobs
    seconds_by_probe: dict[str, float] = field(default_factory=dict)  # the same per probe
    took_over: dict[str, Any] | None = None
    scheduler: str = ""
    writer: Any = field(default=None, repr=False)  # the run's _Writer, once there is one

    @property
    def ok(self) -> bool:
        return not self.failures


@dataclass
class _Plan:
    """What :func:`plan` found to do; :func:`apply` makes the store ready for it (nothing before)."""

    tasks: list[Task]
    jobs: int
    skipped: int
    excluded: int
    runs: dict[str, Run]
    specs: dict[str, dict[str, Any]]
    group_attrs: dict[tuple[str, str], dict[str, Any]]
    failures: list[Failure]
    warnings: list[str]
    run_attrs: dict[str, dict[str, Any]] = field(default_factory=dict)  # written on every planned run
    clear_runs: list[str] = field(default_factory=list)  # runs whose groups --overwrite deletes (spec changed)
    clear_groups: list[tuple[str, str]] = field(default_factory=list)  # groups --overwrite deletes
    grow: dict[tuple[str, str], list[int]] = field(default_factory=dict)  # existing groups: every step


# -- planning -------------------------------------------------------------------------------------

def _run_spec(run: Run, cli_spec: dict[str, Any] | None) -> tuple[dict[str, Any] | None, str]:
    if run.spec_error:
        return None, run.spec_error
    if run.spec is not None:
        return run.spec, ""
    if cli_spec is not None:
        return cli_spec, ""
    return None, (f"{run.path}: no run.json and no --model/--dataset given (write one with "
                  f"`grokscope init {run.path} --model ... --dataset ...`)")


_SPEC_FLAGS = (("model", "--model/--model-kwargs"), ("dataset", "--dataset/--dataset-kwargs/--dataset-seed"))


def ignored_spec(runs: list[Run], cli_spec: dict[str, Any] | None) -> tuple[str | None, list[str]]:
    """What the command line's model/dataset spec means for ``runs``: ``(refusal, warnings)``.

    A run with its own run.json uses that; where the command line names another model or dataset
    for it, the flags are ignored for that run and it gets a warning naming the flags and what is
    used instead (``refusal`` is always None: the flags also vouch for a factory, so they are kept).
    """
    if cli_spec is None:
        return None, []
    notes, first = [], None
    for run in runs:
        if run.spec is None:
            continue
        flags = [f"{flag} ({_spec_name(cli_spec.get(key))})" for key, flag in _SPEC_FLAGS
                 if normalise(cli_spec.get(key)) != normalise(run.spec.get(key))]
        if flags:
            first = first or run
            notes.append(f"{' and '.join(flags)} ignored for run {run.name!r}: {run.path / 'run.json'} gives "
                         f"model {_spec_name(run.spec.get('model'))}, dataset {_spec_name(run.spec.get('dataset'))}, "
                         "which are used")
    if not notes:
        return None, []
    # a warning, not a refusal: naming a factory on the command line is also how a user vouches for it
    hint = f" (drop the flags, or rewrite the run.json with `grokscope init {first.path} --force --model ... --dataset ...`)"
    return None, [n + hint for n in notes]


def _spec_name(spec: Any) -> str:
    """A model/dataset spec in a few words: its name and kwargs."""
    if not isinstance(spec, dict):
        return repr(spec)
    name = spec.get("arch") or spec.get("factory") or spec.get("name")
    parts = [f"{k}={v!r}" for k, v in sorted((spec.get("kwargs") or {}).items())]
    parts += [f"seed={spec['seed']}"] if "seed" in spec else []
    return f"{name!r}" + (f" ({', '.join(parts)})" if parts else "")


def _data_words(spec: dict[str, Any]) -> str:
    from grokscope.datasets import describe_data

    return describe_data(spec.get("dataset"))


def _spec_file(run: Run) -> str:
    return str(run.path / "run.json") if run.spec is not None else "the command line"


def _untrusted(run: Run, spec: dict[str, Any], trust: Any) -> str:
    """Why ``spec`` names code the user has not vouched for (one line), or ""; imports nothing."""
    from grokscope.datasets import DatasetError, check_dataset_spec
    from grokscope.models import ModelError, check_model_spec
    from grokscope.trust import Trust, UntrustedCode

    t = trust if trust is not None else Trust()
    try:
        check_model_spec(spec.get("model") or {}, t, _spec_file(run))
        check_dataset_spec(spec.get("dataset") or {}, t, _spec_file(run))
    except (UntrustedCode, ModelError, DatasetError) as e:
        return str(e)
    return ""


def _group_attrs(run: Run, spec: dict[str, Any], req: ProbeRequest) -> dict[str, Any]:
    from grokscope.probes import params_attrs

    from .jobs import probe_class

    cls = probe_class(req.name)
    params = params_attrs(req.params)
    attrs = {"probe": req.name, "description": cls.description, "params": params,
             "params_json": _dumps(params), "probe_version": int(cls.version),
             "presentation": to_attrs(cls.panel_specs(), cls.event_specs()),
             "grokscope_version": grokscope.__version__,
             "model": spec.get("model", {}), "dataset": spec.get("dataset", {}),
             "dataset_seed": int((spec.get("dataset") or {}).get("seed", 0)),
             "run": run.name, "run_rel": run.rel}
    if "seed" in params:
        attrs["seed"] = params["seed"]
    return normalise(attrs)


def _dumps(obj: Any) -> str:
    import json
    return json.dumps(normalise(obj), sort_keys=True)


def _comparable_params(probe: str, stored: dict[str, Any], wanted: dict[str, Any], spec: dict[str, Any],
                       trust: Any) -> tuple[dict[str, Any], dict[str, Any]]:
    """A stored group's parameters and the requested ones, made comparable: a parameter the probe
    added after the group was written (``Probe.added_params``) is read into the stored ones at the
    value its results were computed with, and both sides' data-dependent ``auto`` choices are resolved
    for this run's inputs (which loads the run's dataset, only in that case)."""
    from .jobs import probe_class

    cls = probe_class(probe)
    missing = {k: v for k, v in cls.added_params.items() if k not in stored and k in wanted}
    if not missing:
        return stored, wanted
    from grokscope.datasets import load_dataset

    try:
        kind = load_dataset(spec.get("dataset") or {}, trust).input_kind
    except Exception:  # noqa: BLE001 - the jobs report the dataset's error; here the group is refused
        return {**stored, **missing}, wanted
    return cls.resolve_params({**stored, **missing}, kind), cls.resolve_params(wanted, kind)


def _diff(stored: dict[str, Any], wanted: dict[str, Any]) -> list[str]:
    keys = sorted(set(stored) | set(wanted))
    return [f"{k}: stored {stored.get(k, '<absent>')!r}, requested {wanted.get(k, '<absent>')!r}"
            for k in keys if stored.get(k) != wanted.get(k)]


def plan(runs: list[Run], store: ProbeStore, cfg: EngineConfig, threads: int,
         stale: frozenset[tuple[str, int, str]] = frozenset()) -> _Plan:
    """The tasks still to do: every (run, step, probe) not done, or in ``stale``, and what
    :func:`apply` must change in the store first. Reads the store, never writes it. Raises
    :class:`StoreError` listing every group whose stored parameters or run spec differ from the
    request (unless ``cfg.overwrite``: ``apply`` then deletes those groups)."""
    failures: list[Failure] = []
    warnings: list[str] = []
    refusals: list[str] = []
    ready: list[tuple[Run, dict[str, Any]]] = []
    for run in runs:
        for pr in run.problems:
            warnings.append(f"{run.name}: {pr.path}: {pr.reason}")
        spec, why = _run_spec(run, cfg.spec)
        if spec is None:
            failures.append(Failure(run.name, None, "*", str(run.path), why))
            continue
        why = _untrusted(run, spec, cfg.trust)
        if why:
            failures.append(Failure(run.name, None, "*", _spec_file(run), why))
            continue
        if not run.checkpoints:
            warnings.append(f"{run.name}: no checkpoints with a step in {run.checkpoint_dir}")
            continue
        ready.append((run, spec))
        stored = store.run_attrs(run.name) or {}
        if stored.get("path") and stored["path"] != str(run.path.resolve()):
            warnings.append(f"{run.name}: the store's results came from {stored['path']}, this run is "
                            f"{run.path.resolve()} (same group name; pass another --out if they differ)")
        want = normalise({"model": spec.get("model"), "dataset": spec.get("dataset")})
        if stored.get("model") is not None:
            d = _diff({"model": stored.get("model"), "dataset": stored.get("dataset")}, want)
            if d and not cfg.overwrite:
                refusals.append(f"run {run.name!r}: the store was computed with another model/dataset "
                                f"spec ({'; '.join(d)})")
        for req in cfg.probes:
            try:
                info = store.group(run.name, req.name)
            except DamagedStore:
                if cfg.overwrite:  # the group is deleted and recomputed: its damage does not matter
                    continue
                raise
            if info is None:
                continue
            wanted = _group_attrs(run, spec, req)
            stored_params, wanted_params = _comparable_params(req.name, info.attrs.get("params") or {},
                                                              wanted["params"], spec, cfg.trust)
            # stores written before probes had versions hold version 1 results
            d = _diff({**stored_params, "probe version": info.attrs.get("probe_version", 1)},
                      {**wanted_params, "probe version": wanted["probe_version"]})
            if d and not cfg.overwrite:
                refusals.append(f"{run.name}/{req.name}: stored parameters differ ({'; '.join(d)})")
    if refusals:
        raise StoreError(f"store {store.path} refuses this request:\n  " + "\n  ".join(refusals)
                         + "\nuse another --out, keep the stored parameters, or pass --overwrite to "
                           "delete those results and recompute them")
    tasks: list[Task] = []
    group_attrs: dict[tuple[str, str], dict[str, Any]] = {}
    run_attrs: dict[str, dict[str, Any]] = {}
    clear_runs: list[str] = []
    clear_groups: list[tuple[str, str]] = []
    grow: dict[tuple[str, str], list[int]] = {}
    n_jobs = skipped = excluded = 0
    for run, spec in ready:
        stored = store.run_attrs(run.name) or {}
        want = normalise({"model": spec.get("model"), "dataset": spec.get("dataset")})
        if cfg.overwrite and stored.get("model") is not None and _diff(
                {"model": stored.get("model"), "dataset": stored.get("dataset")}, want):
            clear_runs.append(run.name)
        run_attrs[run.name] = {"path": str(run.path.resolve()), "rel": run.rel,
                               "model": spec.get("model"), "dataset": spec.get("dataset"),
                               "train": spec.get("train", {}), "data": _data_words(spec),
                               "grokscope_version": grokscope.__version__}
        pending: dict[int, list[ProbeRequest]] = defaultdict(list)
        for req in cfg.probes:
            group_attrs[(run.name, req.name)] = _group_attrs(run, spec, req)
            chosen, missing = select_steps(req.steps, run.steps)  # type: ignore[arg-type]
            wanted_steps = set(chosen)
            excluded += len(run.checkpoints) - len(wanted_steps)
            if missing:
                warnings.append(f"{run.name}: {req.name} --steps {req.steps}: no checkpoint at step(s) "
                                f"{', '.join(map(str, missing[:10]))}{' ...' if len(missing) > 10 else ''}")
            info = None
            if cfg.overwrite and not cfg.dry_run:
                clear_groups.append((run.name, req.name))
            else:
                info = store.group(run.name, req.name)
                if info is not None:
                    grow[(run.name, req.name)] = list(run.steps)
            for ck in run.checkpoints:
                if ck.step not in wanted_steps:
                    continue
                # a step the group lacks (apply() appends it) is pending like one not done
                i = info.index.get(ck.step) if info is not None else None  # type: ignore[arg-type]
                if info is not None and i is not None and info.done[i] and \
                        (run.name, ck.step, req.name) not in stale:
                    skipped += 1
                else:
                    pending[ck.step].append(req)  # type: ignore[index]
                    n_jobs += 1
        prev: Checkpoint | None = None
        for ck in run.checkpoints:
            if pending.get(ck.step):  # type: ignore[arg-type]
                tasks.append(Task(run=run.name, spec=spec, checkpoint=ck, previous=prev,
                                  probes=tuple(pending[ck.step]), device=cfg.device,  # type: ignore[index]
                                  threads=threads, trust=cfg.trust, where=_spec_file(run)))
            prev = ck
    return _Plan(tasks=tasks, jobs=n_jobs, skipped=skipped, excluded=excluded, runs={r.name: r for r, _ in ready},
                 specs={r.name: spec for r, spec in ready}, group_attrs=group_attrs, failures=failures,
                 warnings=warnings, run_attrs=run_attrs, clear_runs=clear_runs, clear_groups=clear_groups,
                 grow=grow)


def apply(p: _Plan, store: ProbeStore, templates: dict[tuple[str, str], Any] | None = None) -> None:
    """Make ``store`` ready for plan ``p`` (driver only, under the store's lock): delete what
    ``--overwrite`` replaces, write each run's attributes, grow existing groups to every checkpoint
    of their run, and write the template of each group that does not exist yet and whose probe
    declared one (``templates``: ``{(run, probe): Dataset}`` of :func:`check_probes`), so the group
    has its variables and attributes whatever its first job does. A template that cannot be written
    is left to the first result (the writer names the cause then)."""
    for run in p.clear_runs:
        for child in list((store.path / run).iterdir()):
            if child.is_dir():
                store.delete_group(run, child.name)
    for run, attrs in p.run_attrs.items():
        store.set_run_attrs(run, attrs)
    for run, probe in p.clear_groups:
        store.delete_group(run, probe)
    for (run, probe), steps in p.grow.items():
        info = store.group(run, probe)
        if info is not None:
            store.grow(info, steps)
    for (run, probe), template in (templates or {}).items():
        if run not in p.runs or (run, probe) not in p.group_attrs or store.group(run, probe) is not None:
            continue
        try:
            store.create_group(run, probe, p.runs[run].steps, p.group_attrs[(run, probe)], template)
        except Exception as e:  # noqa: BLE001 - the first result tries again and names the cause
            if environmental(e):
                raise
            store.groups.pop((run, probe), None)


PREFLIGHT_TRIES = 3  # checkpoints tried per (run spec, probe set) until one loads


def check_probes(tasks: list[Task], runs: dict[str, Run] | None = None) -> dict[tuple[str, str], Any]:
    """Run each probe's ``check`` once per distinct (run spec, probe set), in this process, before any
    job is sent, and collect the templates the probes declare (``Probe.template``): a parameter that
    this model or data cannot take (``lc.n_dirs`` above the input dimension ...) raises
    :class:`EngineError` with one line. The first checkpoint that needs it is used, or, when that one
    does not load, the next ones of its run (``runs``; at most :data:`PREFLIGHT_TRIES` in all);
    the model itself was checked before (:mod:`.model_check`), problems of one checkpoint are left to
    its jobs. Returns ``{(run, probe): template}`` for every task's run and probe that has one."""
    from dataclasses import replace

    from grokscope.probes import ProbeError

    from .jobs import preflight

    found: dict[str, dict[str, Any]] = {}
    out: dict[tuple[str, str], Any] = {}
    for task in tasks:
        key = _dumps([task.spec, [[r.name, repr(r.params)] for r in task.probes]])
        if key not in found:
            if task.device != "cpu":
                import torch

                if not torch.cuda.is_available():
                    task = replace(task, device="cpu")
            run = (runs or {}).get(task.run)
            others = [ck for ck in (run.checkpoints if run is not None else []) if ck != task.checkpoint]
            found[key] = {}
            for candidate in [task] + [replace(task, checkpoint=ck, previous=None)
                                       for ck in others[: PREFLIGHT_TRIES - 1]]:
                try:
                    found[key] = preflight(candidate)
                    break
                except ProbeError as e:
                    raise EngineError(f"{task.run}: {e} (checked on {candidate.checkpoint.path}; nothing "
                                      "was computed)") from None
                except Exception:  # noqa: BLE001 - reported per job, with the checkpoint named
                    continue
        for name, template in found[key].items():
            out[(task.run, name)] = template
    return out


More = Callable[[], tuple[list[Task], bool]]


def _results(client: Any, tasks: list[Task], device: str, more: More | None = None, poll: float = 1.0
             ) -> Iterator[tuple[Task, list[Outcome] | BaseException]]:
    """``(task, outcomes or the exception that ended the task)`` in completion order.

    With ``more``: called every ``poll`` seconds for ``(tasks to add, whether that was the last
    call)``; the iteration ends when the last call was made and every task is done.
    """
    following = more is not None
    if client is None:
        queue = list(tasks)
        while queue or following:
            while queue:
                t = queue.pop(0)
                yield t, run_task(t)
            if following:
                new, last = more()  # type: ignore[misc]
                following = not last
                if not new and following:
                    time.sleep(poll)
                queue.extend(new)
        return
    from distributed import as_completed

    resources = {"GPU": 1} if device.startswith("cuda") else None
    by_key: dict[str, Task] = {}

    def submit(batch: list[Task]) -> list[Any]:
        futures = client.map(run_task, batch, pure=False, resources=resources)
        by_key.update({f.key: t for f, t in zip(futures, batch)})
        return futures

    completed = as_completed(submit(tasks))
    next_poll = time.monotonic() + poll

    def collect(fut: Any) -> tuple[Task, list[Outcome] | BaseException]:
        task = by_key.pop(fut.key)
        if fut.status == "error":
            res: list[Outcome] | BaseException = fut.exception()
        else:
            try:
                res = fut.result()
            except Exception as e:  # noqa: BLE001 - e.g. a result that cannot be deserialised
                res = e
        fut.release()
        return task, res

    if not following:
        for fut in completed:
            yield collect(fut)
        return
    while True:
        if completed.has_ready():
            for fut in completed.next_batch(block=False):
                yield collect(fut)
            continue
        if following and time.monotonic() >= next_poll:
            new, last = more()  # type: ignore[misc]
            following = not last
            next_poll = time.monotonic() + poll
            if new:
                completed.update(submit(new))
                continue
        if not following and completed.is_empty():
            return
        time.sleep(0.05)


# -- execution ------------------------------------------------------------------------------------

# A commit rewrites the shards it touches (zarr re-encodes every chunk of a shard), so its cost
# grows with the number of groups and steps; the wait between commits is stretched to this many times
# the last commit's duration (a killed driver then loses at most that much more work).
COMMIT_SHARE_INV = 10


class _Writer:
    """Buffers outcomes per (run, probe) group, commits them to the store in batches, and keeps the
    summary's counts: a job is completed once its result is accepted for a group of the store.

    One probe's group that cannot be created, grown or written fails that probe's jobs (the cause
    named) and no other. An :data:`ENVIRONMENTAL` error (disk full, read-only, ...) ends the run as
    :class:`StoreWriteError`.
    """

    def __init__(self, store: ProbeStore, p: _Plan, interval: float, summary: Summary):
        self.store, self.plan, self.interval, self.summary = store, p, interval, summary
        self.wait = interval  # the interval, stretched when commits are slow (see flush)
        self.buffer: dict[tuple[str, str], list[tuple[int, Outcome, str]]] = defaultdict(list)
        self.broken: dict[tuple[str, str], str] = {}  # groups that could not be created, and why
        self.last = time.monotonic()
        self.pending = 0

    def _fail(self, o: Outcome, file: str, why: str, counted: bool = False) -> None:
        if counted:
            self.summary.completed -= 1
        o.error, o.result = why, None
        self.summary.failures.append(Failure(o.run, o.step, o.probe, file, why))

    def add(self, o: Outcome, file: str) -> Outcome:
        key = (o.run, o.probe)
        if key in self.broken:
            self._fail(o, file, self.broken[key])
            return o
        info: GroupInfo | None = None
        try:
            info = self.store.group(*key)
            if info is None:
                run = self.plan.runs[o.run]
                info = self.store.create_group(o.run, o.probe, run.steps, self.plan.group_attrs[key],
                                               o.result if o.ok else None)
            elif o.ok and any(v not in info.data_vars for v in o.result.data_vars):
                self.flush()  # the group's arrays are re-opened after adding variables
                info = self.store.add_data_vars(info, o.result)
            if o.ok:
                why = self.store.check_result(info, o.result)
                if why:
                    o.error, o.result = why, None
        except Exception as e:  # noqa: BLE001 - one probe's group must not end the run
            if environmental(e):
                raise
            why = f"cannot write the store group {o.run}/{o.probe}: {describe_error(e)}"
            if info is None:
                self.broken[key] = why
                self.store.groups.pop(key, None)
                self._fail(o, file, why)
                return o
            o.error, o.result = why, None
        if o.ok:
            self.summary.completed += 1
        else:
            self.summary.failures.append(Failure(o.run, o.step, o.probe, file, o.error))
        self.buffer[key].append((o.step, o, file))
        self.pending += 1
        if time.monotonic() - self.last >= self.wait or self.pending >= 4096:
            self.flush()
        return o

    def flush(self) -> None:
        t0 = time.monotonic()
        for key, items in list(self.buffer.items()):
            info = self.store.group(*key)
            if info is None or not items:
                continue
            try:
                self.store.write(info, [(step, o) for step, o, _ in items])
            except Exception as e:  # noqa: BLE001
                if environmental(e):
                    raise
                why = f"cannot write the results into the store group {key[0]}/{key[1]}: {describe_error(e)}"
                for _, o, file in items:
                    if o.ok:
                        self._fail(o, file, why, counted=True)
                self.store.groups.pop(key, None)  # re-read from the store next time
            del self.buffer[key]
        self.pending = 0
        self.last = time.monotonic()
        if self.interval > 0:  # commits take at most ~1/COMMIT_SHARE_INV of the driver's time
            self.wait = max(self.interval, COMMIT_SHARE_INV * (self.last - t0))

    def uncommitted(self) -> int:
        return sum(len(v) for v in self.buffer.values())


def probe_runs(path: Path, cfg: EngineConfig,
               progress: Callable[[int, int, int, float], None] | None = None,
               start: Callable[[int, int, str], None] | None = None,
               follow: Callable[[], bool] | None = None, poll: float = 1.0) -> Summary:
    """Run ``cfg.probes`` over every checkpoint under ``path`` into the store ``cfg.out``.

    ``start(jobs, skipped, scheduler)`` is called once the plan is known; ``progress(n_new_done,
    done, failed, rate)`` after every completed task. Raises :class:`StoreError` (refusals, an
    ``--out`` that is not a grokscope store), :class:`~.lock.StoreLocked`, :class:`EngineError` or a
    discovery error before any computation; :class:`StoreWriteError` when the store cannot be
    written (disk full, read-only) and :class:`Interrupted` on Ctrl-C, both after committing what
    could be and releasing the lock.

    With ``cfg.recheck`` the checkpoints of done jobs are hashed again (by the workers) and a job
    whose checkpoint's content hash differs from the stored ``checkpoint_hash`` is recomputed, with
    a warning naming it.

    ``follow``: while ``follow()`` is true (e.g. a training run is still writing checkpoints), the
    runs under ``path`` are searched again every ``poll`` seconds and the new checkpoints' jobs are
    added to the ones running; after it turns false, one last search, then the call returns when
    every job is done. ``summary.jobs`` then counts every job submitted and ``summary.warnings`` are
    those of the last search.
    """
    t0 = time.perf_counter()
    from grokscope.probes import ProbeError, get_probe, validate_params

    for req in cfg.probes:
        try:
            parse_selection(req.steps)
            validate_params(get_probe(req.name), req.params)  # before the store is touched
        except ProbeError as e:
            raise EngineError(str(e)) from None
        except ValueError as e:
            raise EngineError(f"probe {req.name}: {e}") from None
    # workers may run elsewhere (another host, another working directory): absolute paths only
    path = Path(path).absolute()
    out = Path(cfg.out).absolute()
    check_store_path(out)
    links: list[Problem] = []  # folders left out: links leading outside path, or loops
    runs = find_runs(path, links)
    refusal, ignored = ignored_spec(runs, cfg.spec)
    ignored = [f"{x.path}: {x.reason}" for x in links] + ignored
    if refusal:
        raise EngineError(refusal)
    if cfg.device.startswith("cuda") and cfg.scheduler in (None, "", "local") and not visible_gpus():
        raise EngineError("--device cuda: this host shows no GPU (CUDA_VISIBLE_DEVICES / nvidia-smi "
                          "-L); use --device cpu or --scheduler ADDRESS of a cluster with GPU workers")
    if cfg.scheduler not in (None, "", "local", "sync") and not cfg.dry_run:
        check_scheduler(cfg.scheduler)  # before the store is touched: a Dask scheduler, answering
    summary = Summary(store=out)
    lock = StoreLock(out)
    try:
        with _sigterm_stops():
            return _probe(path, cfg, runs, ignored, summary, lock, out, progress, start, follow, poll)
    except KeyboardInterrupt as e:
        code, what = (143, "stopped by SIGTERM") if isinstance(e, _Terminated) else (130, "interrupted")
        raise Interrupted(_stopped(what, out, summary, summary.writer), code) from None
    finally:
        lock.release()
        summary.seconds = time.perf_counter() - t0


def _probe(path: Path, cfg: EngineConfig, runs: list[Run], ignored: list[str], summary: Summary,
           lock: StoreLock, out: Path, progress: Callable[[int, int, int, float], None] | None,
           start: Callable[[int, int, str], None] | None, follow: Callable[[], bool] | None,
           poll: float) -> Summary:
    """The body of :func:`probe_runs`, from taking the lock to the last commit (see there)."""
    writer: _Writer | None = None
    external = cfg.scheduler not in (None, "", "local", "sync")  # a scheduler this run did not start
    try:
        if not cfg.dry_run:  # a dry run only reads: no lock, nothing created
            lock.acquire()
        summary.took_over = lock.took_over
        store = ProbeStore(out, read_only=cfg.dry_run)
        p = plan(runs, store, cfg, threads=cfg.threads or 1)
        writer = summary.writer = _Writer(store, p, cfg.flush_interval, summary)
        _record_plan(summary, p)
        summary.warnings[:0] = ignored
        unfit = screen_plan(p, summary)  # one line per run whose model does not fit its checkpoints
        templates = check_probes(p.tasks, p.runs)
        has_done = cfg.recheck and p.skipped > 0
        if not cfg.dry_run:  # the store changes only now, after every check passed
            apply(p, store, templates)
        if cfg.dry_run or (not p.tasks and not has_done and follow is None):
            if start:
                start(p.jobs, p.skipped, "none")
            return summary
        with dask_client(cfg) as (client, threads, desc):
            from dataclasses import replace

            summary.scheduler = desc
            if has_done and not cfg.dry_run:
                stale, lines = recheck(client, p, store, cfg)
                if stale:
                    p = plan(runs, store, cfg, threads=cfg.threads or 1, stale=frozenset(stale))
                    apply(p, store)
                    writer.plan = p
                    _record_plan(summary, p)
                    screen_plan(p, summary, unfit)
                summary.warnings.extend(lines)
            tasks = [t if t.threads == threads else replace(t, threads=threads) for t in p.tasks]
            if start:
                start(p.jobs, p.skipped, desc)
            if not tasks and follow is None:
                return summary
            more = _follower(path, store, cfg, p, writer, summary, follow, threads) if follow else None
            t1 = time.perf_counter()
            done = 0
            failed0 = len(summary.failures)
            try:
                for task, res in _results(client, tasks, cfg.device, more, poll):
                    if isinstance(res, BaseException) and _scheduler_gone(res) and external:
                        raise res  # not this job's failure: the run stops (SchedulerLost, below)
                    if isinstance(res, BaseException):
                        reason = _task_death(res)
                        res = [Outcome(run=task.run, step=int(task.checkpoint.step), probe=r.name,  # type: ignore[arg-type]
                                       label=task.checkpoint.label, error=reason) for r in task.probes]
                    for o in res:
                        writer.add(o, task.checkpoint.path)
                        summary.probe_seconds += o.seconds
                        summary.seconds_by_probe[o.probe] = summary.seconds_by_probe.get(o.probe, 0.0) + o.seconds
                    done += len(res)
                    if progress:
                        progress(len(res), done, len(summary.failures) - failed0,
                                 done / max(time.perf_counter() - t1, 1e-9))
            finally:
                writer.flush()  # also on Ctrl-C and errors: what finished is committed
    except KeyboardInterrupt:
        raise
    except BaseException as e:  # asyncio's CancelledError (a lost scheduler) is no Exception
        if _scheduler_gone(e) and external:
            raise SchedulerLost(_stopped(f"lost the Dask scheduler {cfg.scheduler} ({type(e).__name__})",
                                         out, summary, writer)) from None
        if not isinstance(e, Exception) or not environmental(e):
            raise
        cause = _os_cause(e)
        where = f" ({cause.filename})" if cause.filename else ""
        raise StoreWriteError(_stopped(f"cannot write the store: {cause.strerror or cause}{where}", out,
                                       summary, writer)) from None
    return summary


def _record_plan(summary: Summary, p: _Plan) -> None:
    summary.runs, summary.jobs, summary.skipped, summary.excluded = len(p.runs), p.jobs, p.skipped, p.excluded
    known = {(f.run, f.file, f.reason) for f in summary.failures}
    summary.failures.extend(f for f in p.failures if (f.run, f.file, f.reason) not in known)
    summary.warnings[:] = list(p.warnings)


def _stopped(what: str, out: Path, summary: Summary, writer: _Writer | None) -> str:
    """The one line a stopped run ends with: why, what is safe, what to do."""
    lost = writer.uncommitted() if writer is not None else 0
    lost_text = f", {lost} finished job(s) could not be committed" if lost else ""
    return (f"{out}: {what}; {summary.completed - lost} job(s) of this run committed{lost_text}, the "
            "store is consistent and the lock released: rerun the same command to continue")


HASH_BATCH = 256  # checkpoints per re-hashing task


def recheck(client: Any, p: _Plan, store: ProbeStore, cfg: EngineConfig
            ) -> tuple[set[tuple[str, int, str]], list[str]]:
    """The done jobs whose checkpoint changed since they were computed, and a line for each
    changed checkpoint: ``({(run, step, probe)}, lines)``. The checkpoints are hashed by the workers
    (:func:`.jobs.hash_task`, batches of ``HASH_BATCH``); rows without a stored hash are trusted."""
    import numpy as np

    stored: dict[tuple[str, int], dict[str, str]] = defaultdict(dict)
    for name, run in p.runs.items():
        for req in cfg.probes:
            info = store.group(name, req.name)
            if info is None or not info.done.any():
                continue
            hashes = np.asarray(info.arrays["checkpoint_hash"][: len(info.steps)], dtype=object)
            for step, i in info.index.items():
                if info.done[i] and hashes[i]:
                    stored[(name, step)][req.name] = str(hashes[i])
    tasks: list[tuple[str, HashTask]] = []
    for name, run in p.runs.items():
        cks = [ck for ck in run.checkpoints if (name, ck.step) in stored]
        for k in range(0, len(cks), HASH_BATCH):
            tasks.append((name, HashTask(spec=p.specs[name], checkpoints=tuple(cks[k:k + HASH_BATCH]),
                                         trust=cfg.trust, where=_spec_file(run))))
    if not tasks:
        return set(), []
    if client is None:
        results = [hash_task(t) for _, t in tasks]
    else:
        futures = client.map(hash_task, [t for _, t in tasks], pure=False)
        results = client.gather(futures, errors="skip")
        if len(results) != len(futures):  # a worker died: those checkpoints stay trusted
            results = [f.result() if f.status == "finished" else {} for f in futures]
    stale: set[tuple[str, int, str]] = set()
    lines = []
    for (name, task), now in zip(tasks, results):
        labels = {ck.step: ck.label for ck in task.checkpoints}
        for step, digest in sorted(now.items()):
            changed = sorted(probe for probe, old in stored[(name, step)].items() if old != digest)
            if not changed:
                continue
            stale.update((name, step, probe) for probe in changed)
            old = stored[(name, step)][changed[0]]
            new = f"content hash now {digest[:12]}" if digest else "now unreadable"
            lines.append(f"{name} step {step} ({labels[step]}): checkpoint changed since it was probed "
                         f"(stored hash {old[:12]}, {new}); recomputing {', '.join(changed)}")
    return stale, lines


def _follower(path: Path, store: ProbeStore, cfg: EngineConfig, first: _Plan, writer: _Writer,
              summary: Summary, follow: Callable[[], bool], threads: int) -> More:
    """The ``more`` callback of :func:`_results` for ``probe_runs(..., follow=...)``: each call
    searches ``path`` again and returns the tasks of the jobs not submitted yet, and whether
    ``follow()`` was false (then this search was the last)."""
    from dataclasses import replace

    from .discovery import DiscoveryError

    again = replace(cfg, overwrite=False)  # never delete what this call is writing
    submitted = {(t.run, t.checkpoint.step, r.name) for t in first.tasks for r in t.probes}

    def more() -> tuple[list[Task], bool]:
        last = not follow()  # asked before searching: nothing written after a final search is missed
        links: list[Problem] = []
        try:
            found = find_runs(path, links)
            p = plan(found, store, again, threads)
        except DiscoveryError:
            return [], last  # e.g. the run folder is not written yet
        apply(p, store)  # grows the groups of new checkpoints (as the first plan's apply did)
        writer.plan.runs.update(p.runs)
        writer.plan.specs.update(p.specs)
        writer.plan.group_attrs.update(p.group_attrs)
        new: list[Task] = []
        for t in p.tasks:
            todo = tuple(r for r in t.probes if (t.run, t.checkpoint.step, r.name) not in submitted)
            if todo:
                submitted.update((t.run, t.checkpoint.step, r.name) for r in todo)
                new.append(replace(t, probes=todo, threads=threads))
        summary.jobs += sum(len(t.probes) for t in new)
        summary.runs = max(summary.runs, len(p.runs))
        summary.excluded = p.excluded
        summary.warnings = ([f"{x.path}: {x.reason}" for x in links] + ignored_spec(found, cfg.spec)[1]
                            + list(p.warnings))
        known = {(f.run, f.file) for f in summary.failures}
        summary.failures.extend(f for f in p.failures if (f.run, f.file) not in known)
        return new, last

    return more


def _task_death(e: BaseException) -> str:
    name = type(e).__name__
    if name == "KilledWorker":
        return f"the worker process died while probing this checkpoint, on every retry ({name}: {e})"
    return f"task failed outside the probe: {name}: {e}"
