"""``grokscope.open_store`` and ``xr.open_datatree(path, engine="grokscope")``: only finished steps, in
increasing step order, on a real store written by the engine (back-filled and with an unfinished row)."""

from __future__ import annotations

import numpy as np
import pytest
import xarray as xr

import grokscope
from grokscope.engine.store_view import load_group
from grokscope.reading import StoreReadError
from tests.helpers import make_run


@pytest.fixture(scope="module")
def store(tmp_path_factory):
    from grokscope.engine.driver import EngineConfig, probe_runs
    from grokscope.engine.jobs import ProbeRequest
    from grokscope.probes import get_probe

    base = tmp_path_factory.mktemp("read")
    run = make_run(base / "r", [0, 10, 40])
    out = base / "s.zarr"
    cfg = EngineConfig(probes=[ProbeRequest("acc", get_probe("acc").make_params())], out=out, scheduler="sync")
    assert probe_runs(run, cfg).ok
    make_run(base / "r", [0, 5, 10, 20, 40])  # back-filled checkpoints: appended after the later ones
    assert probe_runs(run, cfg).ok
    # a row that the engine grew but never finished: not done
    from grokscope.runs import checkpoint_path, save_checkpoint
    from safetensors.torch import load_file

    save_checkpoint(checkpoint_path(run, 80), load_file(str(checkpoint_path(run, 40))), 80)
    from grokscope.engine.store import ProbeStore

    st = ProbeStore(out)
    st.grow(st.group("r", "acc"), [0, 5, 10, 20, 40, 80])
    return out


def test_open_store_gives_done_steps_in_order(store):
    raw = load_group(store, "r", "acc")
    assert list(raw.step.values) == [0, 10, 40, 5, 20, 80] and not bool(raw.done.values[-1])
    tree = grokscope.open_store(store)
    assert list(tree["r/acc"].ds.step.values) == [0, 5, 10, 20, 40]
    assert bool(tree["r/acc"].ds.done.all())
    via_xarray = xr.open_datatree(store, engine="grokscope")
    assert list(via_xarray["r/acc"].ds.step.values) == [0, 5, 10, 20, 40]
    np.testing.assert_array_equal(via_xarray["r/acc"].ds.accuracy.values, tree["r/acc"].ds.accuracy.values)
    one = xr.open_dataset(store, engine="grokscope", group="r/acc")
    assert list(one.step.values) == [0, 5, 10, 20, 40]
    assert tree["r"].attrs["model"]["arch"] == "mlp"


def test_import_grokscope_registers_the_accessors(store):
    tree = grokscope.open_store(store)
    onsets = tree["r"].grok.onsets()
    assert "memorisation" in onsets and "generalisation" in onsets


def test_a_run_folder_names_the_store_inside(store, tmp_path):
    with pytest.raises(StoreReadError, match="no such store"):
        grokscope.open_store(tmp_path / "nothing")
    (tmp_path / "probes.zarr").mkdir()
    (tmp_path / "probes.zarr" / "zarr.json").write_text("{}")
    with pytest.raises(StoreReadError, match=r"not a probe store.*holds probes.zarr: pass .*probes.zarr"):
        grokscope.open_store(tmp_path)
