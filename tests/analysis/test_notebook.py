"""The notebook-style example (`examples/notebook.py`) runs on a real store and computes what it says."""

import math
import os
import runpy
from pathlib import Path

from click.testing import CliRunner

from grokscope.cli import main
from tests.helpers import make_run

NOTEBOOK = Path(__file__).resolve().parents[2] / "examples" / "notebook.py"


def test_notebook_runs_on_a_small_store(tmp_path, monkeypatch):
    make_run(tmp_path / "runs" / "r0", steps=[0, 2, 8, 32, 128, 512])
    store = tmp_path / "probes.zarr"
    res = CliRunner().invoke(main, ["probe", str(tmp_path / "runs"), "--metrics", "acc,lc", "--scheduler", "sync",
                                    "--param", "lc.n_points=64", "--param", "lc.splits=train,test",
                                    "--out", str(store), "-q"])
    assert res.exit_code == 0, res.output
    monkeypatch.setenv("GROKSCOPE_STORE", str(store))
    monkeypatch.setenv("GROKSCOPE_NOTEBOOK_OUT", str(tmp_path / "nb"))
    g = runpy.run_path(str(NOTEBOOK), run_name="__main__")
    # one run, its onsets computed from the store
    assert len(g["runs"]) == 1 and "r0" in g["runs"][0]
    assert set(g["onsets"]) == {"memorisation", "generalisation"}
    acc = g["acc"]
    train = acc["accuracy"].sel(split="train").values
    steps = acc["step"].values
    t_mem = g["t_mem"]
    assert (math.isnan(t_mem) and (train < 0.99).all()) or train[list(steps).index(t_mem)] >= 0.99
    # slices: past memorisation only, the last layer of LC
    if not math.isnan(t_mem):
        assert int(g["after"]["step"].min()) >= t_mem
    assert g["lc_layer"].dims == ("step",)
    assert g["figure"].is_file() and g["figure"].stat().st_size > 5000
    assert os.fspath(g["figure"]).startswith(os.fspath(tmp_path))
