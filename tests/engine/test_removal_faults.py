"""``--overwrite`` removes a group as a commit of its own: the driver killed at the removal's
marker, after its first, a middle and its last file, and after the group's metadata, leaves a
store that readers see without the group, and a rerun, with or without ``--overwrite``, ends in the
store an uninterrupted run writes (real ``grokscope probe`` processes killed by
``GROKSCOPE_FAULT``)."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from collections import Counter
from pathlib import Path

import pytest
import xarray as xr

from grokscope import runs
from grokscope.engine import faults
from grokscope.engine.store import REMOVING, ProbeStore, load_group, open_store
from tests.engine.conftest import ROOT, subprocess_env
from tests.helpers import make_run

PROBES = ("acc", "norm")
ARGS = ("--scheduler", "sync", "--threads", "1", "-m", ",".join(PROBES), "-q")


def _probe(runs_dir: Path, store: Path, *extra: str, env: dict | None = None) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "grokscope.cli", "probe", str(runs_dir), "-o", str(store),
                           *ARGS, *extra], env=env or subprocess_env(), cwd=ROOT, capture_output=True,
                          text=True, timeout=300)


def _groups(store: Path) -> dict[str, xr.Dataset]:
    return {f"{r}/{p}": load_group(store, r, p) for r in ("a", "b") for p in PROBES}


def _assert_same(store: Path, ref: Path) -> None:
    got, want = _groups(store), _groups(ref)
    for key in want:
        xr.testing.assert_identical(got[key], want[key])


@pytest.fixture(scope="module")
def series(tmp_path_factory) -> tuple[Path, Path, list[str]]:
    """Two runs (``b`` with an unreadable checkpoint, so its groups hold an error), the store of a
    clean probe of them, and every kill point an uninterrupted ``--overwrite`` of it passes."""
    tmp = tmp_path_factory.mktemp("removal")
    runs_dir = tmp / "runs"
    make_run(runs_dir / "a", [0, 1, 2, 3])
    make_run(runs_dir / "b", [0, 1, 2, 3], seed=1)
    runs.checkpoint_path(runs_dir / "b", 2).write_bytes(b"not a safetensors file")
    ref = tmp / "ref.zarr"
    r = _probe(runs_dir, ref)
    assert r.returncode == 1 and "b step 2 [acc]" in r.stderr, r.stderr  # b's step 2 fails
    assert load_group(ref, "b", "acc").error.values[2] != ""
    log = tmp / "points.log"
    again = tmp / "again.zarr"
    shutil.copytree(ref, again)
    env = {**subprocess_env(), "GROKSCOPE_FAULT_LOG": str(log)}
    assert _probe(runs_dir, again, "--overwrite", env=env).returncode == 1
    _assert_same(again, ref)  # an uninterrupted --overwrite gives the clean store
    seen: Counter = Counter()
    points = []
    for name in log.read_text().split():
        if name.startswith("remove:"):
            seen[name] += 1
            points.append(f"{name}@{seen[name]}")
    return runs_dir, ref, points


def _chosen(points: list[str], with_overwrite: bool) -> list[str]:
    """The first, a middle and the last file of the first group removed; for the plain rerun also
    its marker and its metadata."""
    first_meta = points.index("remove:meta@1")
    files = [p for p in points[:first_meta] if p.startswith("remove:file")]
    chosen = [files[0], files[len(files) // 2], files[-1]]
    return chosen if with_overwrite else ["remove:marker@1", *chosen, "remove:meta@1"]


def test_removal_has_a_marker_every_file_and_the_metadata_as_points(series):
    _, _, points = series
    names = Counter(p.split("@")[0] for p in points)
    assert names["remove:marker"] == names["remove:meta"] == 2 * len(PROBES)  # every group of a and b
    assert names["remove:file"] > 10 * names["remove:meta"]


@pytest.mark.parametrize("with_overwrite", [False, True], ids=["plain-rerun", "rerun-overwrite"])
def test_a_killed_overwrite_is_finished_by_the_rerun(series, tmp_path, cli, with_overwrite):
    runs_dir, ref, points = series
    for point in _chosen(points, with_overwrite):
        store = tmp_path / f"{point.replace(':', '_').replace('@', '_')}.zarr"
        shutil.copytree(ref, store)
        killed = _probe(runs_dir, store, "--overwrite", env={**subprocess_env(), "GROKSCOPE_FAULT": point})
        assert killed.returncode == faults.FAULT_EXIT, (point, killed.stderr[-2000:])
        half = [p for p in (store / "a").iterdir() if (p / "zarr.json").is_file() and
                REMOVING in json.loads((p / "zarr.json").read_text()).get("attributes", {})]
        # a reader sees the marked group as absent, every other group whole
        tree = open_store(store)
        for g in half:
            assert g.name not in tree["a"].children, point
        for key in ("b/acc", "b/norm"):
            assert int(tree[key].done.sum()) == int(load_group(ref, *key.split("/")).done.sum()), point
        rerun = cli("probe", runs_dir, "-o", store, *ARGS, *(["--overwrite"] if with_overwrite else []))
        assert rerun.exit_code == 1, (point, rerun.output)  # b's unreadable step, as in the clean run
        assert "KeyError" not in rerun.output and "Traceback" not in rerun.output, (point, rerun.output)
        if half and not with_overwrite:
            assert f"a/{half[0].name}: an interrupted removal (--overwrite) left this group half removed" \
                in rerun.output, (point, rerun.output)
        _assert_same(store, ref)
        assert not any(REMOVING in (p / "zarr.json").read_text() for r in ("a", "b")
                       for p in (store / r).iterdir() if (p / "zarr.json").is_file()), point


def test_a_group_half_removed_before_the_marker_existed_is_recomputed(series, tmp_path):
    """A store whose removal (by an older grokscope, a plain recursive delete) was killed: the
    group lost its ``error`` array. The rerun finishes the removal and recomputes it."""
    runs_dir, ref, _ = series
    store = tmp_path / "old.zarr"
    shutil.copytree(ref, store)
    shutil.rmtree(store / "a" / "acc" / "error")
    (store / "a" / "acc" / "accuracy" / "zarr.json").unlink()
    assert ProbeStore(store).group("a", "acc") is None
    rerun = _probe(runs_dir, store)
    assert "a/acc: an interrupted removal (--overwrite) left this group half removed; finishing" in rerun.stderr
    assert "KeyError" not in rerun.stderr and "Traceback" not in rerun.stderr, rerun.stderr
    _assert_same(store, ref)


def test_a_dry_run_reports_a_half_removed_group_and_leaves_it(series, tmp_path):
    runs_dir, ref, _ = series
    store = tmp_path / "dry.zarr"
    shutil.copytree(ref, store)
    killed = _probe(runs_dir, store, "--overwrite", env={**subprocess_env(), "GROKSCOPE_FAULT": "remove:file@3"})
    assert killed.returncode == faults.FAULT_EXIT
    before = sorted(str(p.relative_to(store)) for p in store.rglob("*"))
    r = _probe(runs_dir, store, "--dry-run")
    assert "a/acc: an interrupted removal (--overwrite) left this group half removed; a run would finish" \
        in r.stderr + r.stdout, r.stderr
    assert sorted(str(p.relative_to(store)) for p in store.rglob("*") if ".grokscope.lock" not in str(p)) == \
        [b for b in before if ".grokscope.lock" not in b]
