"""A probe's declared template (``Probe.template``) gives its group's variables and attributes before
any job runs, and ``plan()`` reads the store without writing it (``apply()`` writes)."""

from __future__ import annotations

import hashlib
from dataclasses import replace
from pathlib import Path

import numpy as np
import zarr

from grokscope import runs
from grokscope.engine.driver import EngineConfig, probe_runs
from grokscope.engine.jobs import ProbeRequest
from grokscope.engine.store_view import load_group
from grokscope.probes import get_probe
from tests.helpers import make_run

PARAMS = {"lc": {"n_points": "8", "n_dirs": "4"}, "align": {"n_points": "8"}}


def _cfg(out: Path, steps: str | None = None, **kw) -> EngineConfig:
    reqs = [ProbeRequest(n, get_probe(n).make_params(p), steps) for n, p in PARAMS.items()]
    return EngineConfig(probes=reqs, out=out, scheduler="sync", **kw)


def test_a_group_whose_first_job_fails_has_its_declared_variables_and_attributes(tmp_path):
    run = make_run(tmp_path / "r", [0, 5, 20])
    first = runs.checkpoint_path(run, 0)
    good = first.read_bytes()
    first.write_bytes(b"garbage")
    store = tmp_path / "probes.zarr"
    summary = probe_runs(run, _cfg(store, "0"))  # only step 0: every job of this run fails
    assert summary.completed == 0 and len(summary.failures) == 2
    lc, align = load_group(store, "r", "lc"), load_group(store, "r", "align")
    assert set(get_probe("lc").outputs) <= set(lc.data_vars)
    assert set(get_probe("align").outputs) <= set(align.data_vars)
    assert lc.attrs["frame_dtype"] == "float32" and align.attrs["jac_fro_exact"] == 1
    assert lc.sizes["sample"] == 8 and list(lc.layer.values) and "produced_by" in lc.coords
    assert not lc.done.values.any() and "unreadable safetensors" in str(lc.error.values[0])

    first.write_bytes(good)  # the rerun fills the group: same template, now with data
    summary = probe_runs(run, _cfg(store, "0"))
    assert summary.ok and summary.completed == 2
    fresh = tmp_path / "fresh.zarr"  # what a run whose first job succeeds writes
    assert probe_runs(run, _cfg(fresh, "0")).ok
    for probe in PARAMS:
        got, want = load_group(store, "r", probe), load_group(fresh, "r", probe)
        assert list(got.done.values) == [True, False, False]
        assert set(got.data_vars) == set(want.data_vars) and got.attrs == want.attrs
        for var in get_probe(probe).outputs:
            assert got[var].dtype == want[var].dtype, var
            np.testing.assert_array_equal(got[var].values, want[var].values)
        assert got.coords.to_dataset().equals(want.coords.to_dataset())


def _digest(store: Path) -> dict[str, str]:
    return {str(p.relative_to(store)): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(store.rglob("*")) if p.is_file() and "lock" not in p.name}


def test_dry_run_leaves_the_store_as_it_was(tmp_path):
    run = make_run(tmp_path / "r", [0, 5, 20])
    late = runs.checkpoint_path(run, 20)
    aside = tmp_path / "late.safetensors"
    late.rename(aside)
    store = tmp_path / "probes.zarr"
    assert probe_runs(run, _cfg(store)).ok
    before = _digest(store)
    aside.rename(late)  # a new checkpoint: a real run grows the groups
    for cfg in (_cfg(store, dry_run=True), _cfg(store, dry_run=True, overwrite=True)):
        assert probe_runs(run, cfg).jobs == 2  # (a dry run counts what the store lacks now)
        assert _digest(store) == before
    assert probe_runs(run, replace(_cfg(store), recheck=False)).completed == 2
    assert list(load_group(store, "r", "lc").step.values) == [0, 5, 20]


NEW = {"pgd": {"n_points": "250", "steps": "2", "eps": "0.05,0.1,0.2", "splits": "train,test"},
       "collapse": {"n_points": "16", "quantiles": "0.25,0.5"}}


def test_a_new_probes_group_whose_first_job_fails_holds_every_declared_variable(tmp_path):
    """pgd and collapse (templates declared since issue 27): every job of the run fails, yet their
    groups hold every declared output with the sizes, dtypes and attributes a good first job writes,
    collapse's ``loss=auto`` resolved from the run's own spec (stablemax) by the template."""
    run = make_run(tmp_path / "r", [0, 5])
    runs.write_run_json(run, runs.read_run_json(run)["model"], runs.read_run_json(run)["dataset"],
                        {"loss": "stablemax"})
    first = runs.checkpoint_path(run, 0)
    good = first.read_bytes()
    first.write_bytes(b"garbage")
    reqs = [ProbeRequest(n, get_probe(n).make_params(p), "0") for n, p in NEW.items()]
    store, fresh = tmp_path / "probes.zarr", tmp_path / "fresh.zarr"
    summary = probe_runs(run, EngineConfig(probes=reqs, out=store, scheduler="sync"))
    assert summary.completed == 0 and len(summary.failures) == 2
    pgd, collapse = load_group(store, "r", "pgd"), load_group(store, "r", "collapse")
    for name, group in (("pgd", pgd), ("collapse", collapse)):
        assert set(get_probe(name).outputs) <= set(group.data_vars), name
        assert not group.done.values.any() and "unreadable safetensors" in str(group.error.values[0])
    # digits in make_run: 300 train, 200 test points; 250 asked -> a sample dim of 250, test padded
    assert dict(pgd.sizes)["sample"] == 250 and list(pgd.eps.values) == [0.05, 0.1, 0.2]
    for var in ("correct", "n_samples"):  # stored as integers (read back masked while no job filled them)
        assert zarr.open_array(store / "r" / "pgd" / var, mode="r").dtype.kind == "i", var
    assert pgd.attrs["eps_unit"].startswith("absolute")
    assert collapse.attrs["loss"] == "stablemax" and list(collapse["quantile"].values) == [0.25, 0.5]

    first.write_bytes(good)
    assert probe_runs(run, EngineConfig(probes=reqs, out=store, scheduler="sync")).completed == 2
    assert probe_runs(run, EngineConfig(probes=reqs, out=fresh, scheduler="sync")).ok
    for name in NEW:
        got, want = load_group(store, "r", name), load_group(fresh, "r", name)
        assert set(got.data_vars) == set(want.data_vars) and got.attrs == want.attrs, name
        for var in get_probe(name).outputs:
            assert got[var].dtype == want[var].dtype and got[var].attrs == want[var].attrs, (name, var)
            np.testing.assert_array_equal(got[var].values, want[var].values)
        assert got.coords.to_dataset().equals(want.coords.to_dataset()), name
    assert list(load_group(store, "r", "pgd").n_samples.values[0]) == [250, 200]
