"""Fault injection: a writer killed at every boundary of a commit and of a growth of ``step``
(``GROKSCOPE_FAULT``, real processes ending with ``os._exit``), and reader processes opening a
store while it grows. Readers must only ever see committed rows; a rerun must end with the store an
uninterrupted run writes."""

from __future__ import annotations

import json
import subprocess
import sys
from collections import Counter
from pathlib import Path

import numpy as np
import pytest
import xarray as xr

from grokscope.engine import faults
from grokscope.engine.store import ProbeStore
from grokscope.engine.storefs import store_fs
from grokscope.engine.store_view import load_group, open_store
from grokscope.locations import join
from tests.engine import store_scenario as scenario
from tests.engine.conftest import ROOT, subprocess_env


def _record(tmp_path: Path, monkeypatch, store: Path | str | None = None) -> tuple[Path | str, list[str]]:
    """The reference store (an uninterrupted run into ``store``, default ``tmp_path/ref.zarr``) and
    every kill point it passes, as ``NAME@N``."""
    log = tmp_path / "points.log"
    monkeypatch.setenv("GROKSCOPE_FAULT_LOG", str(log))
    ref = tmp_path / "ref.zarr" if store is None else store
    scenario.run(ref)
    monkeypatch.delenv("GROKSCOPE_FAULT_LOG")
    seen: Counter = Counter()
    points = []
    for name in log.read_text().split():
        seen[name] += 1
        points.append(f"{name}@{seen[name]}")
    return ref, points


def _boundaries(points: list[str]) -> list[str]:
    """Each distinct point once per phase of the scenario: before the growth (the template and the
    first commit) and after it (the growth and the first commit into the grown group)."""
    grown = points.index("grow:marker@1")
    chosen: list[str] = []
    for part in (points[:grown + 1], points[grown + 1:]):
        names: set[str] = set()
        for p in part:
            if p.split("@")[0] not in names:
                names.add(p.split("@")[0])
                chosen.append(p)
    return chosen


def _kill_at(points: list[str], tmp_path: Path, folder: Path | str | None = None) -> list[Path | str]:
    """Run the scenario once per point, killed there (forked children of one subprocess), into
    ``folder`` (default ``tmp_path/killed``; a URL for the object-storage runs)."""
    (tmp_path / "points").write_text("\n".join(points))
    if folder is None:
        folder = tmp_path / "killed"
        folder.mkdir()
    r = subprocess.run([sys.executable, "-m", "tests.engine.store_scenario", "--kill-each",
                        str(tmp_path / "points"), str(folder)], env=subprocess_env(), cwd=ROOT,
                       capture_output=True, text=True, timeout=600)
    assert r.returncode == 0, r.stderr[-3000:]
    codes = dict(line.split() for line in r.stdout.splitlines())
    assert codes == {p: str(faults.FAULT_EXIT) for p in points}, r.stdout  # killed at each point
    return [join(folder, f"{i}.zarr") for i in range(len(points))]


def _check_killed_then_resume(points: list[str], stores: list[Path | str], ref: Path) -> None:
    want = load_group(ref, "r", "p")
    problems = []
    for point, store in zip(points, stores):
        try:
            if store_fs(store).exists("r/p/zarr.json"):
                seen = load_group(store, "r", "p")  # a reader after the kill, before any repair
                steps = [int(s) for s in seen.step.values]
                if steps not in scenario.PHASES:  # a growth is all or nothing
                    problems.append(f"{point}: a reader sees steps {steps}")
                problems.extend(f"{point}: {p}" for p in scenario.check(seen))
        except Exception as e:  # noqa: BLE001 - a reader that fails is a finding
            problems.append(f"{point}: a reader fails: {type(e).__name__}: {e}")
        try:
            scenario.run(store)  # the rerun
            info = ProbeStore(store).group("r", "p")
            if info.steps != scenario.PHASES[-1]:
                problems.append(f"{point}: the rerun's driver sees steps {info.steps}")
            xr.testing.assert_identical(load_group(store, "r", "p"), want)
        except Exception as e:  # noqa: BLE001
            problems.append(f"{point}: the rerun fails or differs: {type(e).__name__}: {str(e)[:200]}")
    bad = sorted({p.split(": ")[0] for p in problems})
    assert not problems, f"{len(bad)} of {len(points)} kill points go wrong:\n" + "\n".join(problems)


def test_kill_at_every_boundary_of_commits_and_growth(tmp_path, monkeypatch):
    ref, points = _record(tmp_path, monkeypatch)
    chosen = _boundaries(points)
    assert {p.split("@")[0] for p in chosen} == {p.split("@")[0] for p in points}
    assert len(chosen) == 27  # 2 template + 11 growth + 7 x 2 commit boundaries
    _check_killed_then_resume(chosen, _kill_at(chosen, tmp_path), ref)


# on the S3 server (each kill and rerun costs ~10x a local one): a point of every kind of commit
# boundary, the upload of a template (its files, then its zarr.json) included
S3_POINTS = ("create:template@1", "create:upload@1", "create:rename@1", "grow:resize:density@1",
             "grow:resize:step@1", "grow:step-values@1", "grow:marker@1", "commit:data:density@3",
             "commit:done@3")


S3_FAST = ("create:upload@1", "grow:marker@1")  # a template half uploaded, a growth before its marker


@pytest.mark.parametrize("chosen", [pytest.param(S3_FAST, id="upload-and-growth"),
                                    pytest.param(S3_POINTS, id="every-kind", marks=pytest.mark.slow)])
def test_kill_at_every_kind_of_boundary_on_s3(tmp_path, monkeypatch, s3, chosen):
    """The scenario killed into a store on a real (loopback) S3 server, where a template has no rename
    and goes up file by file with its group's ``zarr.json`` last: a reader after each kill sees a
    committed state, and the rerun ends in the store an uninterrupted local run writes."""
    _, points = _record(tmp_path, monkeypatch, s3.url("ref.zarr"))
    assert set(chosen) <= set(points), sorted(set(chosen) - set(points))
    ref = tmp_path / "ref.zarr"
    scenario.run(ref)
    xr.testing.assert_identical(load_group(s3.url("ref.zarr"), "r", "p"), load_group(ref, "r", "p"))
    stores = _kill_at(list(chosen), tmp_path, s3.url("killed"))
    _check_killed_then_resume(list(chosen), stores, ref)


@pytest.mark.parametrize("every", [pytest.param(False, id="mid-removal"),
                                   pytest.param(True, id="every-kind", marks=pytest.mark.slow)])
def test_a_removal_killed_on_s3_is_finished_by_the_rerun(tmp_path, monkeypatch, s3, every):
    """``--overwrite``'s removal of a group on S3 (marker, every other object, the group's zarr.json
    last) killed after a middle object (each kill and rerun costs ~5 s on the loopback server; with
    -m slow also at its marker, after its first object and after its zarr.json; every kind of removal
    point runs locally in test_removal_faults): a reader sees
    the group absent, and the rerun ends in the store an uninterrupted local run writes."""
    fs = s3.fs()
    ref = tmp_path / "ref.zarr"
    scenario.run(ref)
    fs.put(str(ref), s3.url("ref.zarr"), recursive=True)  # the store, as written locally, uploaded
    fs.copy(s3.url("ref.zarr"), s3.url("probe.zarr"), recursive=True)
    log = tmp_path / "points.log"
    monkeypatch.setenv("GROKSCOPE_FAULT_LOG", str(log))
    ProbeStore(s3.url("probe.zarr")).delete_group("r", "p")
    monkeypatch.delenv("GROKSCOPE_FAULT_LOG")
    names = log.read_text().split()
    assert names[0] == "remove:marker" and names[-1] == "remove:meta" and len(names) > 20, names
    middle = f"remove:file@{(len(names) - 2) // 2}"
    chosen = ["remove:marker@1", "remove:file@1", middle, "remove:meta@1"] if every else [middle]
    for i in range(len(chosen)):
        fs.copy(s3.url("ref.zarr"), s3.url("killed", f"{i}.zarr"), recursive=True)
    (tmp_path / "points").write_text("\n".join(chosen))
    r = subprocess.run([sys.executable, "-m", "tests.engine.store_scenario", "--remove-each", str(tmp_path / "points"),
                        s3.url("killed")], env=subprocess_env(), cwd=ROOT, capture_output=True, text=True, timeout=600)
    assert dict(line.split() for line in r.stdout.splitlines()) == {p: str(faults.FAULT_EXIT) for p in chosen}, \
        (r.stdout, r.stderr[-3000:])
    for i, point in enumerate(chosen):
        store = s3.url("killed", f"{i}.zarr")
        assert "p" not in open_store(store)["r"].children, point  # gone from the marker on
        assert ProbeStore(store).group("r", "p") is None, point
        scenario.run(store)
        xr.testing.assert_identical(load_group(store, "r", "p"), load_group(ref, "r", "p"))


@pytest.mark.slow
def test_kill_at_every_point_passed(tmp_path, monkeypatch):
    """Every occurrence of every point of the scenario (41), not only the first per phase."""
    ref, points = _record(tmp_path, monkeypatch)
    assert len(points) == 41
    _check_killed_then_resume(points, _kill_at(points, tmp_path), ref)


def test_readers_of_a_growing_store_see_only_committed_rows(tmp_path):
    """Two reader processes open the group (load_group and open_store in turn) while a writer
    grows it 150 times, one step and one commit at a time."""
    store, stop = tmp_path / "s.zarr", tmp_path / "stop"
    env = subprocess_env()
    readers = [subprocess.Popen([sys.executable, "-m", "tests.engine.store_scenario", "--hammer", str(store),
                                 str(stop)], env=env, cwd=ROOT, stdout=subprocess.PIPE, text=True)
               for _ in range(2)]
    try:
        writer = subprocess.run([sys.executable, "-m", "tests.engine.store_scenario", "--grow", str(store),
                                 "150"], env=env, cwd=ROOT, capture_output=True, text=True, timeout=600)
        assert writer.returncode == 0, writer.stderr[-3000:]
    finally:
        stop.touch()
        reports = [json.loads(p.communicate(timeout=120)[0]) for p in readers]
    opens = sum(r["opens"] for r in reports)
    problems = [p for r in reports for p in r["problems"]]
    assert opens >= 10 and not problems, (f"{len(problems)} problems in {opens} opens",
                                          Counter(p[:60] for p in problems).most_common(5))
    final = load_group(store, "r", "p")
    assert list(final.step.values) == [10 * i for i in range(150)]
    assert [int(s) for s in final.step.values[~final.done.values]] == sorted(scenario.FAILING)
    ok = final.done.values
    np.testing.assert_array_equal(final.density.values[ok, 0, 0], (np.arange(150) * 10 + 0.5)[ok])
    print(f"reader opens: {opens}")


def test_a_group_grown_before_the_marker_existed_is_cut_at_its_phantom_rows(tmp_path):
    """A store written by an older grokscope whose growth was killed between resizing ``step`` and
    writing its values: the phantom ``step = 0`` rows are dropped, the rest is kept."""
    store = ProbeStore(tmp_path / "s.zarr")
    info = store.create_group("r", "p", [0, 10, 20], scenario.ATTRS, scenario.result(0))
    store.write(info, [(s, scenario.outcome(s)) for s in (0, 10, 20)])
    del info.zgroup.attrs["committed_steps"]  # as the older version wrote it
    for arr in info.arrays.values():
        if (arr.metadata.dimension_names or ("",))[0] == "step":
            arr.resize((5,) + tuple(arr.shape[1:]))  # two phantom rows, step = 0
    info = ProbeStore(tmp_path / "s.zarr").group("r", "p")
    assert info.steps == [0, 10, 20] and list(info.done) == [True, True, True]
    assert list(load_group(tmp_path / "s.zarr", "r", "p").step.values) == [0, 10, 20]
    assert dict(open_store(tmp_path / "s.zarr")["r/p"].attrs)["probe"] == "p"
