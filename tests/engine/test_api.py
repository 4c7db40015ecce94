"""``grokscope.probe``: the front door the CLI, the demo, regions and reproduce share — the same store
as ``grokscope probe``, parameters parsed and bounded by each probe, step selections, resumable."""

from __future__ import annotations

import pytest
import xarray as xr

import grokscope
from grokscope.api import probe_config
from grokscope.engine.store_view import load_group
from grokscope.probes import ProbeError
from tests.helpers import make_run


def test_the_front_door_writes_what_the_cli_writes(tmp_path, cli):
    run = make_run(tmp_path / "r", [0, 1, 2, 3])
    s = grokscope.probe(run, {"acc": {}, "lc": {"radius": [0.01, 0.02], "n_points": 8, "n_dirs": 4}},
                        out=tmp_path / "api.zarr", steps={"lc": "0,2"}, scheduler="sync", threads=1)
    assert s.ok and s.completed == 4 + 2 and s.excluded == 2
    r = cli("probe", run, "-o", tmp_path / "cli.zarr", "-m", "acc,lc", "--param", "lc.radius=0.01,0.02",
            "--param", "lc.n_points=8", "--param", "lc.n_dirs=4", "--steps", "lc=0,2", "--scheduler", "sync",
            "--threads", "1", "-q")
    assert r.exit_code == 0, r.output
    for p in ("acc", "lc"):
        xr.testing.assert_identical(load_group(tmp_path / "api.zarr", "r", p), load_group(tmp_path / "cli.zarr", "r", p))
    # a rerun with the same request computes nothing
    rerun = grokscope.probe(run, {"acc": {}, "lc": {"radius": "0.01,0.02", "n_points": "8", "n_dirs": "4"}},
                            out=tmp_path / "api.zarr", steps={"lc": "0,2"}, scheduler="sync", threads=1)
    assert rerun.jobs == 0 and rerun.skipped == 6


def test_bad_parameters_name_the_probe_and_field(tmp_path):
    with pytest.raises(ProbeError, match="probe 'lc' has no parameter 'radious'"):
        probe_config({"lc": {"radious": 0.1}}, tmp_path / "s.zarr")
    with pytest.raises(ProbeError, match="acc.batch_size"):
        probe_config({"acc": {"batch_size": -4}}, tmp_path / "s.zarr")
    cfg = probe_config("acc, pgd", tmp_path / "s.zarr", {"pgd": "log:4"}, scheduler="sync")
    assert [(r.name, r.steps) for r in cfg.probes] == [("acc", None), ("pgd", "log:4")]
    assert cfg.scheduler == "sync" and cfg.out == tmp_path / "s.zarr"


def test_the_split_check_runs_in_the_front_door(tmp_path):
    """``grokscope.probe`` (what the CLI, ``demo`` and ``reproduce`` call) compares ``acc`` with the run's
    own log: a log whose test accuracy is not what ``acc`` measures adds the SPLIT CHECK line to the
    summary's warnings; a log that agrees adds none; without ``acc`` nothing is compared."""
    import json

    import grokscope
    from grokscope.engine.store_view import load_group
    from tests.helpers import make_run

    run = make_run(tmp_path / "r", [0, 3])
    s = grokscope.probe(run, "acc", out=tmp_path / "s.zarr", scheduler="sync")
    acc = load_group(tmp_path / "s.zarr", "r", "acc").accuracy
    rows = [{"step": int(st), "train_acc": float(acc.sel(step=st, split="train")),
             "test_acc": float(acc.sel(step=st, split="test"))} for st in (0, 3)]
    assert not [w for w in s.warnings if "SPLIT CHECK" in w]
    (run / "log.jsonl").write_text("\n".join(json.dumps(r) for r in rows) + "\n")
    agree = grokscope.probe(run, "acc", out=tmp_path / "s.zarr", scheduler="sync")
    assert not [w for w in agree.warnings if "SPLIT CHECK" in w]
    rows[1]["test_acc"] = rows[1]["test_acc"] + 0.3
    (run / "log.jsonl").write_text("\n".join(json.dumps(r) for r in rows) + "\n")
    off = grokscope.probe(run, "acc", out=tmp_path / "s.zarr", scheduler="sync")
    (line,) = [w for w in off.warnings if "SPLIT CHECK" in w]
    assert line.startswith("SPLIT CHECK FAILED for run r: at step 3 acc on the given test data")
    assert grokscope.probe(run, "acc", out=tmp_path / "s.zarr", scheduler="sync", split_tolerance=0.5).warnings \
        == [w for w in off.warnings if "SPLIT CHECK" not in w]
    none = grokscope.probe(run, "spectral", out=tmp_path / "t.zarr", scheduler="sync")
    assert not [w for w in none.warnings if "SPLIT CHECK" in w]
