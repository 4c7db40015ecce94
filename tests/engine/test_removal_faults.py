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
from grokscope.engine.store import ProbeStore
from grokscope.engine.store_schema import REMOVING
from grokscope.engine.store_view import load_group, open_store
from tests.engine.conftest import ROOT, subprocess_env
from tests.helpers import make_run

PROBES = ("acc", "spectral")  # cheap and deterministic: one needs data, one does not
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


def _marked(store: Path) -> list[Path]:
    """The groups of ``store`` that carry the removal marker."""
    return [g for r in ("a", "b") for g in (store / r).iterdir() if (g / "zarr.json").is_file()
            and REMOVING in json.loads((g / "zarr.json").read_text()).get("attributes", {})]


@pytest.fixture(scope="module")
def series(tmp_path_factory) -> tuple[Path, Path, list[str], dict[str, Path]]:
    """Two runs (``b`` with an unreadable checkpoint, so its groups hold errors), the store of a clean
    probe of them, every kill point an uninterrupted ``--overwrite`` of it passes, and the stores that
    ``--overwrite`` left when killed at the marker, after a middle file of the first group it removes,
    and after that group's ``zarr.json`` (one forked process per kill; the removal order of files is
    free, so the first and the last file are the same kind of point as a middle one)."""
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
    assert _probe(runs_dir, again, "--overwrite", env={**subprocess_env(), "GROKSCOPE_FAULT_LOG": str(log)}
                  ).returncode == 1
    _assert_same(again, ref)  # an uninterrupted --overwrite gives the clean store
    seen: Counter = Counter()
    points = []
    for name in log.read_text().split():
        if name.startswith("remove:"):
            seen[name] += 1
            points.append(f"{name}@{seen[name]}")
    files = [p for p in points[:points.index("remove:meta@1")] if p.startswith("remove:file")]
    chosen = ["remove:marker@1", files[len(files) // 2], "remove:meta@1"]
    (tmp / "chosen").write_text("\n".join(chosen))
    killed = tmp / "killed"
    killed.mkdir()
    k = subprocess.run([sys.executable, "-m", "tests.engine.kill_cli", str(tmp / "chosen"), str(ref), str(killed),
                        "--", "probe", str(runs_dir), *ARGS, "--overwrite"], env=subprocess_env(), cwd=ROOT,
                       capture_output=True, text=True, timeout=600)
    codes = dict(line.split() for line in k.stdout.split("\n") if line.strip())
    assert codes == {p: str(faults.FAULT_EXIT) for p in chosen}, (k.stdout, k.stderr[-3000:])
    return runs_dir, ref, points, {p: killed / f"{i}.zarr" for i, p in enumerate(chosen)}


def test_removal_has_a_marker_every_file_and_the_metadata_as_points(series):
    _, _, points, _ = series
    names = Counter(p.split("@")[0] for p in points)
    assert names["remove:marker"] == names["remove:meta"] == 2 * len(PROBES)  # every group of a and b
    assert names["remove:file"] > 10 * names["remove:meta"]


@pytest.mark.parametrize("with_overwrite", [False, True], ids=["plain-rerun", "rerun-overwrite"])
def test_a_killed_overwrite_is_finished_by_the_rerun(series, tmp_path, cli, with_overwrite):
    runs_dir, ref, _, killed = series
    for point, left in killed.items():
        if with_overwrite and not point.startswith("remove:file"):
            continue  # with --overwrite: after a middle file
        store = tmp_path / left.name
        shutil.copytree(left, store)
        half = _marked(store)
        assert len(half) == (0 if point == "remove:meta@1" else 1), point
        # a reader sees the marked group as absent, every other group whole
        tree = open_store(store)
        for g in half:
            assert g.name not in tree[g.parent.name].children, point
        for key in ("b/acc", "b/spectral"):
            assert int(tree[key].done.sum()) == int(load_group(ref, *key.split("/")).done.sum()), point
        rerun = cli("probe", runs_dir, "-o", store, *ARGS, *(["--overwrite"] if with_overwrite else []))
        assert rerun.exit_code == 1, (point, rerun.output)  # b's unreadable step, as in the clean run
        assert "KeyError" not in rerun.output and "Traceback" not in rerun.output, (point, rerun.output)
        if half and not with_overwrite:
            name = f"{half[0].parent.name}/{half[0].name}"
            assert f"{name}: an interrupted removal (--overwrite) left this group half removed" \
                in rerun.output, (point, rerun.output)
        _assert_same(store, ref)
        assert not _marked(store), point


def test_a_group_half_removed_before_the_marker_existed_is_recomputed(series, tmp_path, cli):
    """A store whose removal (by an older grokscope, a plain recursive delete) was killed: the
    group lost its ``error`` array and an array's metadata. The rerun finishes the removal and
    recomputes it."""
    runs_dir, ref, _, _ = series
    store = tmp_path / "old.zarr"
    shutil.copytree(ref, store)
    shutil.rmtree(store / "a" / "acc" / "error")
    (store / "a" / "acc" / "accuracy" / "zarr.json").unlink()
    assert ProbeStore(store).group("a", "acc") is None
    rerun = cli("probe", runs_dir, "-o", store, *ARGS)
    assert "a/acc: an interrupted removal (--overwrite) left this group half removed; finishing" in rerun.output
    assert "KeyError" not in rerun.output and "Traceback" not in rerun.output, rerun.output
    _assert_same(store, ref)


def test_a_dry_run_reports_a_half_removed_group_and_leaves_it(series, tmp_path, cli):
    runs_dir, _, _, killed = series
    store = tmp_path / "dry.zarr"
    shutil.copytree(next(v for k, v in killed.items() if k.startswith("remove:file")), store)
    (name,) = [f"{g.parent.name}/{g.name}" for g in _marked(store)]
    before = sorted(str(p.relative_to(store)) for p in store.rglob("*"))
    r = cli("probe", runs_dir, "-o", store, *ARGS, "--dry-run")
    assert f"{name}: an interrupted removal (--overwrite) left this group half removed; a run would finish" \
        in r.output, r.output
    assert sorted(str(p.relative_to(store)) for p in store.rglob("*")) == before
