"""What the store holds stays true: one probe cannot take the run down, stale and non-finite
checkpoints are caught, attributes survive a failing first job, hashes ignore key layouts, a foreign
``--out`` is refused, and the machine's failures (disk full, read-only, bad scheduler) end in one
line with the lock released and nothing committed lost."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import torch
import xarray as xr
import zarr
from safetensors.torch import load_file

from grokscope import runs
from grokscope.engine.hashing import state_dict_hash
from grokscope.engine.store_view import load_group
from grokscope.models import build_model
from tests.engine.conftest import ROOT, subprocess_env
from tests.engine.test_probe import DIGITS_ARGS, reference_acc
from tests.helpers import MLP, TEST_PROBES, make_run, tiny_net

BIN = Path(sys.executable).parent


def _lines(text: str) -> list[str]:
    return [ln for ln in text.splitlines() if ln.strip()]


def test_one_probe_cannot_take_the_run_down_on_a_local_cluster(tmp_path):
    """``clash``'s group cannot be created (an output named like an engine variable): its jobs fail
    with the cause; ``empty`` (a zero-length layer dim, whose first job fails) and ``acc`` are
    written whole, and ``empty`` keeps the attributes of its first successful result."""
    run = make_run(tmp_path / "r", [0, 1, 2])
    env = subprocess_env()
    env["GROKSCOPE_PROBES"] = TEST_PROBES
    r = subprocess.run([str(BIN / "grokscope"), "probe", str(run), "-m", "clash,empty,acc", "--workers", "1",
                        "--param", "empty.fail_step=0", "--json", "-q"], env=env, cwd=ROOT,
                       capture_output=True, text=True, timeout=600)
    assert r.returncode == 1, r.stderr
    summary = json.loads(r.stdout)
    failed = {(f["step"], f["probe"]): f["reason"] for f in summary["failures"]}
    assert set(failed) == {(0, "clash"), (1, "clash"), (2, "clash"), (0, "empty")}
    assert all("cannot write the store group r/clash" in failed[(s, "clash")] and
               "clashes with an engine variable" in failed[(s, "clash")] for s in (0, 1, 2))
    assert "no result at step 0" in failed[(0, "empty")]
    assert summary["completed"] == 5
    acc = load_group(run / "probes.zarr", "r", "acc")
    assert bool(acc.done.all())
    empty = load_group(run / "probes.zarr", "r", "empty")
    assert list(empty.done.values) == [False, True, True] and empty.density.shape == (3, 0)
    assert list(empty.total.values[1:]) == [1.0, 2.0]
    assert empty.attrs["frame_dtype"] == "float32" and empty.attrs["probe"] == "empty"
    assert "Traceback" not in r.stderr


def _replace_weights(run: Path, step: int, like: int) -> dict:
    """Overwrite the checkpoint at ``step`` with the weights of the one at ``like``."""
    sd = load_file(str(runs.checkpoint_path(run, like)))
    runs.save_checkpoint(runs.checkpoint_path(run, step), sd, step)
    return sd


def test_a_replaced_checkpoint_is_recomputed(tmp_path, cli):
    run = make_run(tmp_path / "r", [0, 1, 2, 3])
    r = cli("probe", run, "--scheduler", "sync", "-m", "acc", "--json", "-q")
    assert r.exit_code == 0, r.output
    before = load_group(run / "probes.zarr", "r", "acc")
    r = cli("probe", run, "--scheduler", "sync", "-m", "acc", "--json", "-q")  # nothing changed
    assert json.loads(r.stdout)["jobs"] == 0 and json.loads(r.stdout)["skipped"] == 4
    sd = _replace_weights(run, 1, like=3)
    r = cli("probe", run, "--scheduler", "sync", "-m", "acc", "--json", "-q")
    assert r.exit_code == 0, r.output
    summary = json.loads(r.stdout)
    assert summary["jobs"] == 1 and summary["skipped"] == 3 and summary["completed"] == 1
    (line,) = [w for w in summary["warnings"] if "changed since it was probed" in w]
    assert line.startswith("r step 1 (checkpoints/step-00000001.safetensors)") and line.endswith("recomputing acc")
    after = load_group(run / "probes.zarr", "r", "acc")
    np.testing.assert_allclose(after.sel(step=1)[["loss", "accuracy"]].to_array().values,
                               reference_acc(build_model(MLP), sd), rtol=1e-5, atol=1e-6)
    # step 1 now holds step 3's weights: the same results, the same hash
    xr.testing.assert_identical(after.sel(step=1).drop_vars("step"), after.sel(step=3).drop_vars("step"))
    assert str(after.checkpoint_hash.sel(step=1).values) == state_dict_hash(sd)
    xr.testing.assert_identical(after.isel(step=[0, 2, 3]), before.isel(step=[0, 2, 3]))
    # --no-recheck trusts the store
    _replace_weights(run, 2, like=0)
    r = cli("probe", run, "--scheduler", "sync", "-m", "acc", "--json", "-q", "--no-recheck")
    assert json.loads(r.stdout)["jobs"] == 0 and not json.loads(r.stdout)["warnings"]
    # a checkpoint that cannot be read any more: its old results are no longer done
    runs.checkpoint_path(run, 0).write_bytes(b"garbage")
    r = cli("probe", run, "--scheduler", "sync", "-m", "acc", "--json", "-q")
    assert r.exit_code == 1
    summary = json.loads(r.stdout)
    assert any("step 0" in w and "now unreadable" in w for w in summary["warnings"])
    final = load_group(run / "probes.zarr", "r", "acc")
    assert list(final.done.values) == [False, True, True, True]
    assert "unreadable safetensors" in str(final.error.values[0])


def test_a_group_written_before_checkpoint_etag_existed_is_extended_and_rechecked(tmp_path, cli):
    """A store from a grokscope that did not record ``checkpoint_etag`` (its groups lack the array)
    is still a store: a rerun recomputes a replaced checkpoint (by its content hash), takes new
    checkpoints, and does not add the array."""
    run = make_run(tmp_path / "r", [0, 1, 2])
    assert cli("probe", run, "--scheduler", "sync", "-m", "acc", "-q").exit_code == 0
    group = run / "probes.zarr" / "r" / "acc"
    assert (group / "checkpoint_etag" / "zarr.json").is_file()
    shutil.rmtree(group / "checkpoint_etag")
    _replace_weights(run, 1, like=2)
    make_run(tmp_path / "more", [0, 1, 2, 3])
    os.replace(runs.checkpoint_path(tmp_path / "more", 3), runs.checkpoint_path(run, 3))
    r = cli("probe", run, "--scheduler", "sync", "-m", "acc", "--json", "-q")
    assert r.exit_code == 0, r.output
    s = json.loads(r.stdout)
    assert (s["completed"], s["skipped"]) == (2, 2), s
    assert [w for w in s["warnings"] if "changed since it was probed" in w][0].startswith("r step 1 ")
    ds = load_group(run / "probes.zarr", "r", "acc")
    assert list(ds.step.values) == [0, 1, 2, 3] and bool(ds.done.all()) and "checkpoint_etag" not in ds
    xr.testing.assert_identical(ds.sel(step=1).drop_vars("step"), ds.sel(step=2).drop_vars("step"))


def test_non_finite_weights_fail_their_jobs(tmp_path, cli):
    run = make_run(tmp_path / "r", [0, 1, 2])
    path = runs.checkpoint_path(run, 1)
    sd = load_file(str(path))
    key = sorted(sd)[0]
    sd[key] = sd[key].clone()
    sd[key].view(-1)[:2] = float("nan")
    runs.save_checkpoint(path, sd, 1)
    r = cli("probe", run, "--scheduler", "sync", "-m", "acc,norm", "--json", "-q")
    assert r.exit_code == 1
    failed = {(f["step"], f["probe"]): f["reason"] for f in json.loads(r.stdout)["failures"]}
    assert set(failed) == {(1, "acc"), (1, "norm")}
    assert all(why.startswith(f"non-finite weights in {key} (2 NaN)") for why in failed.values())
    for probe in ("acc", "norm"):
        ds = load_group(run / "probes.zarr", "r", probe)
        assert list(ds.done.values) == [True, False, True]
        assert str(ds.checkpoint_hash.values[1]) == state_dict_hash(sd)  # hashed all the same


def test_equal_weights_hash_equal_in_every_layout(tmp_path, cli):
    """Plain safetensors, a DDP ``.pt`` (``module.``) and a Lightning ``.ckpt`` (``model.`` under
    ``state_dict``, with an extra loss buffer) of the same weights: one checkpoint_hash."""
    torch.manual_seed(0)
    sd = tiny_net().state_dict()
    folders = {"plain": tmp_path / "plain", "ddp": tmp_path / "ddp", "lightning": tmp_path / "lightning"}
    for f in folders.values():
        f.mkdir()
    from safetensors.torch import save_file

    save_file(sd, str(folders["plain"] / "step-5.safetensors"))
    torch.save({f"module.{k}": v for k, v in sd.items()}, folders["ddp"] / "step-5.pt")
    torch.save({"state_dict": {**{f"model.{k}": v for k, v in sd.items()}, "loss.weight": torch.ones(10)},
                "epoch": 0}, folders["lightning"] / "epoch=0-step=5.ckpt")
    hashes = set()
    for name, folder in folders.items():
        r = cli("probe", folder, "--scheduler", "sync", "--model", "tests.helpers:tiny_net", *DIGITS_ARGS, "-q")
        assert r.exit_code == 0, (name, r.output)
        hashes.add(str(load_group(folder / "probes.zarr", folder.name, "acc").checkpoint_hash.values[0]))
    assert hashes == {state_dict_hash(sd)}


def test_an_out_that_is_not_a_grokscope_store_is_refused(tmp_path, cli):
    run = make_run(tmp_path / "r", [0])
    a_file = tmp_path / "file.zarr"
    a_file.write_text("not a store")
    v3 = zarr.open_group(str(tmp_path / "v3.zarr"), mode="w", zarr_format=3)
    v3.create_array("theirs", shape=(3,), dtype="f8")[:] = [1, 2, 3]
    v2 = zarr.open_group(str(tmp_path / "v2.zarr"), mode="w", zarr_format=2)
    v2.create_array("theirs", shape=(3,), dtype="f8")[:] = [1, 2, 3]
    (tmp_path / "other").mkdir()
    (tmp_path / "other" / "notes.txt").write_text("mine")
    expect = {a_file: "exists and is a file, not a grokscope store",
              tmp_path / "v3.zarr": "is a Zarr v3 store that grokscope did not write",
              tmp_path / "v2.zarr": "is a Zarr v2 store",
              tmp_path / "other": "exists and is not a Zarr store"}
    for out, why in expect.items():
        before = sorted(p.relative_to(tmp_path) for p in tmp_path.rglob("*"))
        r = cli("probe", run, "-o", out, "--scheduler", "sync")
        assert r.exit_code == 1 and why in r.output and str(out) in r.output, r.output
        assert len(_lines(r.output)) == 1, r.output
        assert sorted(p.relative_to(tmp_path) for p in tmp_path.rglob("*")) == before  # untouched
    (tmp_path / "empty").mkdir()
    assert cli("probe", run, "-o", tmp_path / "empty", "--scheduler", "sync", "-q").exit_code == 0


def test_a_bad_scheduler_address_is_one_line(tmp_path, cli):
    run = make_run(tmp_path / "r", [0])
    r = cli("probe", run, "--scheduler", "notaurl")
    assert r.exit_code == 1 and len(_lines(r.output)) == 1
    assert "cannot connect to the Dask scheduler 'notaurl'" in r.output and "tcp://host:8786" in r.output
    assert not (run / "probes.zarr" / ".grokscope.lock").exists()


def _fill(fs: Path, leave: int) -> Path:
    """Fill ``fs`` up, then free ``leave`` bytes of it."""
    filler = fs / "filler"
    with open(filler, "wb", buffering=0) as f:  # unbuffered: nothing left to flush (and fail) on close
        try:
            while f.write(b"\0" * 65536):
                pass
        except OSError:
            pass
    os.truncate(filler, max(0, filler.stat().st_size - leave))
    return filler


def test_disk_full_ends_in_one_line_and_loses_nothing(tmp_path, cli, small_fs):
    steps = list(range(8))
    run = make_run(tmp_path / "r", steps[:3])
    store = small_fs / "s.zarr"
    assert cli("probe", run, "-o", store, "--scheduler", "sync", "-m", "acc,norm", "-q").exit_code == 0
    kept = {p: load_group(store, "r", p) for p in ("acc", "norm")}
    make_run(tmp_path / "r2", steps)  # the same run with more checkpoints
    for s in steps[3:]:
        os.replace(runs.checkpoint_path(tmp_path / "r2", s), runs.checkpoint_path(run, s))
    filler = _fill(small_fs, leave=24 << 10)
    r = cli("probe", run, "-o", store, "--scheduler", "sync", "-m", "acc,norm", "--flush-interval", "0")
    assert r.exit_code == 1, r.output
    errors = [ln for ln in _lines(r.output) if ln.startswith("Error")]
    assert len(errors) == 1 and "cannot write the store: No space left on device" in errors[0], r.output
    assert "rerun the same command to continue" in errors[0] and "Traceback" not in r.output
    assert not (store / ".grokscope.lock").exists()
    for p in ("acc", "norm"):  # what was committed reads as before
        now = load_group(store, "r", p)
        xr.testing.assert_identical(now.sel(step=steps[:3]), kept[p])
    filler.unlink()
    r = cli("probe", run, "-o", store, "--scheduler", "sync", "-m", "acc,norm", "--json", "-q")
    assert r.exit_code == 0, r.output
    ref = tmp_path / "ref.zarr"
    assert cli("probe", run, "-o", ref, "--scheduler", "sync", "-m", "acc,norm", "-q").exit_code == 0
    for p in ("acc", "norm"):
        xr.testing.assert_identical(load_group(store, "r", p), load_group(ref, "r", p))


def test_a_read_only_store_ends_in_one_line(tmp_path, cli, small_fs):
    run = make_run(tmp_path / "r", [0, 1])
    store = small_fs / "s.zarr"
    assert cli("probe", run, "-o", store, "--scheduler", "sync", "-q").exit_code == 0
    subprocess.run(["mount", "-o", "remount,ro", str(small_fs)], check=True)
    for extra in ([], ["--no-recheck"]):  # nothing to compute, or the recheck path
        r = cli("probe", run, "-o", store, "--scheduler", "sync", *extra)
        assert r.exit_code == 1 and len(_lines(r.output)) == 1, r.output
        assert "cannot write the store: Read-only file system" in r.output
    assert bool(load_group(store, "r", "acc").done.all())
