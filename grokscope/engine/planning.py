"""Planning: which (run, checkpoint, probe) jobs are still to do, and what the store must change
first (groups to delete, grow or create). A plan reads the store and never writes it
(:mod:`.prepare` applies it)."""

from __future__ import annotations

import json
from collections import defaultdict
from dataclasses import dataclass, field
from typing import Any

from grokscope.version import __version__
from grokscope.presentation import to_attrs

from .cluster import job_device
from .config import EngineConfig
from .discovery import Checkpoint, Run
from .jobs import ProbeRequest, Task, probe_class
from .outcomes import Failure, Summary
from .selection import select_steps
from .store import ProbeStore
from .store_schema import StoreError, normalise
from .store_view import DamagedStore
from grokscope.trust import Trust, UntrustedCode


@dataclass
class Plan:
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


def run_spec(run: Run, cli_spec: dict[str, Any] | None) -> tuple[dict[str, Any] | None, str]:
    if run.spec_error:
        return None, run.spec_error
    if run.spec is not None:
        return run.spec, ""
    if cli_spec is not None:
        return cli_spec, ""
    return None, (f"{run.path}: no run.json and no --model/--dataset given (write one with "
                  f"`grokscope init {run.path} --model ... --dataset ...`)")


SPEC_FLAGS = (("model", "--model/--model-kwargs"), ("dataset", "--dataset/--dataset-kwargs/--dataset-seed"))


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
        flags = [f"{flag} ({spec_name(cli_spec.get(key))})" for key, flag in SPEC_FLAGS
                 if normalise(cli_spec.get(key)) != normalise(run.spec.get(key))]
        if flags:
            first = first or run
            notes.append(f"{' and '.join(flags)} ignored for run {run.name!r}: {run.path / 'run.json'} gives "
                         f"model {spec_name(run.spec.get('model'))}, dataset {spec_name(run.spec.get('dataset'))}, "
                         "which are used")
    if not notes:
        return None, []
    # a warning, not a refusal: naming a factory on the command line is also how a user vouches for it
    hint = f" (drop the flags, or rewrite the run.json with `grokscope init {first.path} --force --model ... --dataset ...`)"
    return None, [n + hint for n in notes]


def spec_name(spec: Any) -> str:
    """A model/dataset spec in a few words: its name and kwargs."""
    if not isinstance(spec, dict):
        return repr(spec)
    name = spec.get("arch") or spec.get("factory") or spec.get("name")
    parts = [f"{k}={v!r}" for k, v in sorted((spec.get("kwargs") or {}).items())]
    parts += [f"seed={spec['seed']}"] if "seed" in spec else []
    return f"{name!r}" + (f" ({', '.join(parts)})" if parts else "")


def data_words(spec: dict[str, Any]) -> str:
    from grokscope.datasets import describe_data

    return describe_data(spec.get("dataset"))


def spec_file(run: Run) -> str:
    return str(run.path / "run.json") if run.spec is not None else "the command line"


def untrusted(run: Run, spec: dict[str, Any], trust: Any, needs_data: bool = True) -> str:
    """Why ``spec`` names code the user has not vouched for (one line), or ""; imports nothing. The
    dataset is not looked at when no requested probe reads data (``needs_data=False``)."""
    from grokscope.datasets import DatasetError, check_dataset_spec
    from grokscope.models import ModelError, check_model_spec

    t = trust if trust is not None else Trust()
    try:
        check_model_spec(spec.get("model") or {}, t, spec_file(run))
        if needs_data:
            check_dataset_spec(spec.get("dataset") or {}, t, spec_file(run))
    except (UntrustedCode, ModelError, DatasetError) as e:
        return str(e)
    return ""


def group_attrs_for(run: Run, spec: dict[str, Any], req: ProbeRequest) -> dict[str, Any]:
    from grokscope.probes import params_attrs

    cls = probe_class(req.name)
    params = params_attrs(req.params)
    attrs = {"probe": req.name, "description": cls.description, "params": params,
             "params_json": dumps(params), "probe_version": int(cls.version),
             "presentation": to_attrs(cls.panel_specs(), cls.event_specs(), cls.panel_order),
             "grokscope_version": __version__,
             "model": spec.get("model", {}), "dataset": spec.get("dataset", {}),
             "dataset_seed": int((spec.get("dataset") or {}).get("seed", 0)),
             "run": run.name, "run_rel": run.rel}
    if "seed" in params:
        attrs["seed"] = params["seed"]
    return normalise(attrs)


def dumps(obj: Any) -> str:
    return json.dumps(normalise(obj), sort_keys=True)


def comparable_params(probe: str, stored: dict[str, Any], wanted: dict[str, Any], spec: dict[str, Any],
                       trust: Any) -> tuple[dict[str, Any], dict[str, Any]]:
    """A stored group's parameters and the requested ones, made comparable: a parameter the probe
    added after the group was written (``Probe.added_params``) is read into the stored ones at the
    value its results were computed with, and both sides' data-dependent ``auto`` choices are resolved
    for this run's inputs (which loads the run's dataset, only in that case)."""
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


def spec_diff(stored: dict[str, Any], wanted: dict[str, Any]) -> list[str]:
    keys = sorted(set(stored) | set(wanted))
    return [f"{k}: stored {stored.get(k, '<absent>')!r}, requested {wanted.get(k, '<absent>')!r}"
            for k in keys if stored.get(k) != wanted.get(k)]


def plan(runs: list[Run], store: ProbeStore, cfg: EngineConfig, threads: int,
         stale: frozenset[tuple[str, int, str]] = frozenset()) -> Plan:
    """The tasks still to do: every (run, step, probe) not done, or in ``stale``, and what
    :func:`apply` must change in the store first. Reads the store, never writes it. Raises
    :class:`StoreError` listing every group whose stored parameters or run spec differ from the
    request (unless ``cfg.overwrite``: ``apply`` then deletes those groups)."""
    failures: list[Failure] = []
    warnings: list[str] = []
    refusals: list[str] = []
    ready: list[tuple[Run, dict[str, Any]]] = []
    needs_data = any(probe_class(r.name).needs_data for r in cfg.probes)
    for run in runs:
        for pr in run.problems:
            warnings.append(f"{run.name}: {pr.path}: {pr.reason}")
        spec, why = run_spec(run, cfg.spec)
        if spec is None:
            failures.append(Failure(run.name, None, "*", str(run.path), why))
            continue
        why = untrusted(run, spec, cfg.trust, needs_data)
        if why:
            failures.append(Failure(run.name, None, "*", spec_file(run), why))
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
            d = spec_diff({"model": stored.get("model"), "dataset": stored.get("dataset")}, want)
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
            wanted = group_attrs_for(run, spec, req)
            stored_params, wanted_params = comparable_params(req.name, info.attrs.get("params") or {},
                                                              wanted["params"], spec, cfg.trust)
            # stores written before probes had versions hold version 1 results
            d = spec_diff({**stored_params, "probe version": info.attrs.get("probe_version", 1)},
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
        if cfg.overwrite and stored.get("model") is not None and spec_diff(
                {"model": stored.get("model"), "dataset": stored.get("dataset")}, want):
            clear_runs.append(run.name)
        run_attrs[run.name] = {"path": str(run.path.resolve()), "rel": run.rel,
                               "model": spec.get("model"), "dataset": spec.get("dataset"),
                               "train": spec.get("train", {}), "data": data_words(spec),
                               "grokscope_version": __version__}
        pending: dict[int, list[ProbeRequest]] = defaultdict(list)
        for req in cfg.probes:
            group_attrs[(run.name, req.name)] = group_attrs_for(run, spec, req)
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
                                  probes=tuple(pending[ck.step]), device=job_device(cfg),  # type: ignore[index]
                                  threads=threads, trust=cfg.trust, where=spec_file(run),
                                  fetch=cfg.fetch_settings()))
            prev = ck
    for run_name, probe in sorted(store.half_removed):
        warnings.append(f"{run_name}/{probe}: an interrupted removal (--overwrite) left this group half "
                        f"removed; {'a run would finish' if cfg.dry_run else 'finishing'} the removal and "
                        f"recomputing it")
    return Plan(tasks=tasks, jobs=n_jobs, skipped=skipped, excluded=excluded, runs={r.name: r for r, _ in ready},
                 specs={r.name: spec for r, spec in ready}, group_attrs=group_attrs, failures=failures,
                 warnings=warnings, run_attrs=run_attrs, clear_runs=clear_runs, clear_groups=clear_groups,
                 grow=grow)


def record_plan(summary: Summary, p: Plan) -> None:
    summary.runs, summary.jobs, summary.skipped, summary.excluded = len(p.runs), p.jobs, p.skipped, p.excluded
    known = {(f.run, f.file, f.reason) for f in summary.failures}
    summary.failures.extend(f for f in p.failures if (f.run, f.file, f.reason) not in known)
    summary.warnings[:] = list(p.warnings)
