"""A store written the way the driver writes it, for the fault-injection tests.

``python -m tests.engine.store_scenario STORE`` runs it once; ``python -m tests.engine.store_scenario
--kill-each POINTS DIR`` runs it once per line ``NAME@N`` of the file POINTS, each time in a fresh
process forked from this one (imports done, zarr not used yet: nothing to inherit) with
``GROKSCOPE_FAULT=NAME@N`` into ``DIR/<i>.zarr``, and prints each child's exit status.

:func:`run` is idempotent, like a probe run: it creates the group on the first outcome, grows
``step`` when new steps appear, and writes every job not yet done in two commits per phase, so
running it again after a kill continues where the killed run stopped.
"""

from __future__ import annotations

import sys
from pathlib import Path

import numpy as np
import xarray as xr

from grokscope.engine.jobs import Outcome
from grokscope.engine.store import ProbeStore

PHASES = ([0, 10, 20, 30, 40], [0, 10, 20, 30, 40, 50, 60, 70, 80, 90])
FAILING = {30}  # a job that fails (its error is recorded, it stays not done)
ATTRS = {"probe": "p", "params": {"a": 1}}


def result(step: int) -> xr.Dataset:
    """A probe result with float, int, bool and string outputs and coordinates."""
    return xr.Dataset(
        {"density": (("layer", "split"), np.full((3, 2), step + 0.5, dtype=np.float32)),
         "count": (("layer",), np.arange(3, dtype=np.int64) + step),
         "flag": ((), np.bool_(step % 20 == 0)),
         "label": ((), f"s{step}")},
        coords={"layer": ["l0", "l1", "l2"], "split": ["train", "test"]}, attrs={"note": "kept"})


def outcome(step: int) -> Outcome:
    if step in FAILING:
        return Outcome(run="r", step=step, probe="p", label=f"step-{step}", error="boom",
                       checkpoint_hash=f"h{step}")
    return Outcome(run="r", step=step, probe="p", label=f"step-{step}", result=result(step),
                   checkpoint_hash=f"h{step}")


def run(path: str | Path, phases: tuple[list[int], ...] = PHASES) -> None:
    """Write the jobs of every phase that are not done yet (see the module docstring)."""
    store = ProbeStore(path)
    for steps in phases:
        info = store.group("r", "p")
        todo = steps if info is None else [s for s in steps if s not in info.index or not info.done[info.index[s]]]
        if info is None:
            first = outcome(todo[0])
            info = store.create_group("r", "p", steps, ATTRS, first.result if first.ok else None)
        else:
            info = store.grow(info, steps)
        half = len(todo) // 2
        for chunk in (todo[:half], todo[half:]):
            store.write(info, [(s, outcome(s)) for s in chunk])


def grow_one_by_one(path: str | Path, n: int) -> None:
    """A store whose group grows by one step ``n`` times (steps 0, 10, 20, ...), each new step's
    job committed right after its growth (a probe run following a training run)."""
    store = ProbeStore(path)
    info = store.create_group("r", "p", [0], ATTRS, result(0))
    store.write(info, [(0, outcome(0))])
    for i in range(1, n):
        info = store.grow(info, info.steps + [10 * i])
        store.write(info, [(10 * i, outcome(10 * i))])


def check(ds: xr.Dataset) -> list[str]:
    """What is wrong with a group as a reader saw it (steps 0, 10, 20, ... in order, no repeats;
    every done cell holds its step's values)."""
    steps = [int(s) for s in ds.step.values]
    bad = []
    if steps != [10 * i for i in range(len(steps))]:
        bad.append(f"steps {steps[:3]}...{steps[-3:]} ({len(steps)} rows, {len(set(steps))} distinct)")
    for i, s in enumerate(steps):
        if bool(ds.done.values[i]):
            want = result(s)
            if float(ds.density.values[i, 0, 0]) != float(want.density.values[0, 0]) or \
                    str(ds.label.values[i]) != f"s{s}" or str(ds.checkpoint_hash.values[i]) != f"h{s}":
                bad.append(f"step {s} done but its cells read {ds.density.values[i, 0, 0]!r}, "
                           f"{ds.label.values[i]!r}, {ds.checkpoint_hash.values[i]!r}")
    return bad


def hammer(path: str | Path, stop: str | Path) -> None:
    """Open the group of a growing store again and again (``load_group`` and ``open_store`` in
    turn) until the file ``stop`` exists; print one JSON line: opens, problems seen."""
    import json
    import time

    from grokscope.engine.store_view import load_group, open_store

    opens, problems = 0, []
    while not Path(stop).exists():
        if not (Path(path) / "r" / "p" / "zarr.json").exists():
            time.sleep(0.01)
            continue
        try:
            ds = load_group(path, "r", "p") if opens % 2 == 0 else open_store(path)["r/p"].to_dataset().load()
            problems.extend(check(ds))
        except Exception as e:  # noqa: BLE001 - every failure to read counts
            problems.append(f"{type(e).__name__}: {str(e).splitlines()[0] if str(e) else ''}")
        opens += 1
    print(json.dumps({"opens": opens, "problems": problems}), flush=True)


def kill_each(points_file: str, folder: str) -> None:
    """Run the scenario into ``folder/<i>.zarr`` (a folder or an fsspec URL) killed at point ``i``."""
    from grokscope.locations import join
    from tests.engine.kill_cli import kill_at_each

    kill_at_each(points_file, lambda i: run(join(folder, f"{i}.zarr")))


def remove_each(points_file: str, folder: str) -> None:
    """Remove the group ``r/p`` of ``folder/<i>.zarr`` (``--overwrite``'s removal) killed at point ``i``."""
    from grokscope.locations import join
    from tests.engine.kill_cli import kill_at_each

    kill_at_each(points_file, lambda i: ProbeStore(join(folder, f"{i}.zarr")).delete_group("r", "p"))


if __name__ == "__main__":
    if sys.argv[1] == "--kill-each":
        kill_each(sys.argv[2], sys.argv[3])
    elif sys.argv[1] == "--remove-each":
        remove_each(sys.argv[2], sys.argv[3])
    elif sys.argv[1] == "--grow":
        grow_one_by_one(sys.argv[2], int(sys.argv[3]))
    elif sys.argv[1] == "--hammer":
        hammer(sys.argv[2], sys.argv[3])
    else:
        run(sys.argv[1])
