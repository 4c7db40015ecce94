"""Preparing the store for a plan: one client-side check of each probe on a checkpoint of its run
(and the templates the probes declare), then every change the plan asks for, under the store's lock."""

from __future__ import annotations

from dataclasses import replace
from typing import Any

from .config import EngineError
from .discovery import Run
from .jobs import Task, preflight
from .outcomes import environmental
from .planning import Plan, dumps
from .store import ProbeStore


def apply(p: Plan, store: ProbeStore, templates: dict[tuple[str, str], Any] | None = None) -> None:
    """Make ``store`` ready for plan ``p`` (driver only, under the store's lock): delete what
    ``--overwrite`` replaces, write each run's attributes, grow existing groups to every checkpoint
    of their run, and write the template of each group that does not exist yet and whose probe
    declared one (``templates``: ``{(run, probe): Dataset}`` of :func:`check_probes`), so the group
    has its variables and attributes whatever its first job does. A template that cannot be written
    is left to the first result (the writer names the cause then)."""
    for run in p.clear_runs:
        for name in store.probe_names(run):
            store.delete_group(run, name)
    for run, probe in sorted(store.half_removed):
        store.delete_group(run, probe)
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
    from grokscope.probes import ProbeError

    found: dict[str, dict[str, Any]] = {}
    out: dict[tuple[str, str], Any] = {}
    for task in tasks:
        key = dumps([task.spec, [[r.name, repr(r.params)] for r in task.probes]])
        if key not in found:
            task = replace(task, device="cpu")  # the client never initialises CUDA
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
