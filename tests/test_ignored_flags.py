"""Flags a command would not use in the combination given are refused or warned about, naming the
flag and what is used instead (grokscope/cli/ignored.py); ``probe``'s own are in tests/engine."""

from __future__ import annotations

import json

import pytest

from grokscope import runs
from tests.engine.conftest import ROOT  # noqa: F401 - the repository root importable
from tests.helpers import DIGITS, make_run


@pytest.fixture
def cli():
    from click.testing import CliRunner

    from grokscope.cli import main

    runner = CliRunner()
    return lambda *args: runner.invoke(main, [str(a) for a in args], catch_exceptions=False)


@pytest.fixture
def store(tmp_path, cli):
    run = make_run(tmp_path / "r", [0, 2, 8])
    r = cli("probe", run, "--scheduler", "sync", "-q")
    assert r.exit_code == 0, r.output
    return run / "probes.zarr"


def test_report_and_plot_name_what_they_ignore(tmp_path, cli, store):
    page = tmp_path / "page.html"
    r = cli("report", store, "--json", "--out", page, "--no-regions")
    assert r.exit_code == 0 and json.loads(r.stdout)
    assert ("warning: --out, --no-regions are ignored with --json (the summaries go to stdout; no page is "
            "written)") in r.stderr and not page.exists()
    r = cli("report", store, "--json")
    assert "warning" not in r.stderr
    r = cli("plot", store, "--metrics", "acc", "--layers", "--out", tmp_path / "plots")
    assert r.exit_code == 0 and "warning: --layers is ignored with --metrics acc (the per-layer panels are lc's)" \
        in r.stderr
    r = cli("plot", store, "--out", tmp_path / "fig.png", "--format", "pdf")
    assert r.exit_code == 0, r.output
    assert f"warning: the suffix of --out {tmp_path / 'fig.png'} is ignored: --format pdf is used" in r.stderr
    assert (tmp_path / "fig.pdf").exists() and not (tmp_path / "fig.png").exists()


def test_regions_llc_sweep_reproduce_train_init_and_demo(tmp_path, cli, store):
    r = cli("regions", store, "--scheduler", "local")
    assert r.exit_code == 2 and ("--scheduler is ignored for " in r.output
                                 and "a store whose pictures are already computed" in r.output)
    r = cli("regions", store, "--fps", "5")
    assert "warning: --fps is ignored without a .gif --out" in r.stderr
    r = cli("llc-sweep", store.parent, "--param", "lr=1e-3")
    assert r.exit_code == 2 and "'lr=1e-3' would be ignored: the sweep takes lr from --lr" in r.output
    r = cli("reproduce", "--list", "--quick", "--out", tmp_path / "x")
    assert r.exit_code == 0 and ("warning: --out, --quick are ignored when listing the reproductions" in r.stderr)
    assert not (tmp_path / "x").exists()
    r = cli("train", "--list-presets", "--steps", "5", "--out", tmp_path / "t")
    assert r.exit_code == 0 and "warning: --out, --steps are ignored with --list-presets" in r.stderr
    assert not (tmp_path / "t").exists()
    bare = make_run(tmp_path / "bare", [0, 1])
    (bare / "run.json").unlink()
    r = cli("init", bare, "--model", "mlp", "--dataset", "digits", "--dataset-kwargs", json.dumps(DIGITS["kwargs"]),
            "--model-kwargs", '{"depth": 1, "width": 12}', "--log-columns", "test_acc=val")
    assert r.exit_code == 0, r.output
    assert "warning: --log-columns is ignored without a log (no --log given" in r.stderr
    # demo: a finished run in DIRECTORY is re-read as it is, whatever --steps says
    demo_dir = make_run(tmp_path / "demo", [0, 30])
    doc = runs.read_run_json(demo_dir)
    runs.write_run_json(demo_dir, doc["model"], doc["dataset"], {**doc["train"], "steps": 40, "seed": 0})
    r = cli("demo", demo_dir, "--steps", "30", "--metrics", "", "--no-report", "--quiet")
    assert r.exit_code == 0, r.output
    assert "warning: --no-report is ignored with --metrics '' (nothing is probed, plotted or reported)" in r.stderr
    assert (f"warning: --steps is ignored for {demo_dir}, which holds a finished demo run with steps=40 "
            "(it is re-read as it is; pass another DIRECTORY for a new run)") in r.stderr
