"""`grokscope plot` and `grokscope report` on a real store written by `grokscope probe`."""

import json

from click.testing import CliRunner

from grokscope.cli import main
from tests.helpers import make_run


def test_probe_then_report_and_plot(tmp_path):
    run = make_run(tmp_path / "runs" / "r0", steps=[0, 2, 8, 32])
    store = tmp_path / "probes.zarr"
    runner = CliRunner()
    res = runner.invoke(main, ["probe", str(tmp_path / "runs"), "--metrics", "acc", "--scheduler", "sync",
                               "--out", str(store)])
    assert res.exit_code == 0, res.output
    rep = runner.invoke(main, ["report", str(store), "--json", "--mem", "0.0"])
    assert rep.exit_code == 0, rep.output
    onsets = json.loads(rep.stdout)
    (name, values), = onsets.items()
    assert "r0" in name
    assert values["t_mem"] == 0  # threshold 0: the first probed step
    assert 0.0 <= values["final_test_acc"] <= 1.0
    out = tmp_path / "plots"
    res = runner.invoke(main, ["plot", str(store), "--out", str(out)])
    assert res.exit_code == 0, res.output
    pngs = list(out.glob("*.png"))
    assert len(pngs) == 1 and pngs[0].stat().st_size > 5000
    assert run.exists()


def test_plot_empty_store_is_a_clear_error(tmp_path):
    import xarray as xr

    store = tmp_path / "empty.zarr"
    xr.Dataset().to_zarr(store, zarr_format=3, consolidated=False)
    res = CliRunner().invoke(main, ["plot", str(store)])
    assert res.exit_code != 0 and "no runs with probe results" in res.output
