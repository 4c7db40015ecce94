"""CONTRIBUTING.md's "Add a probe" walkthrough, verbatim: a probe in one file outside the repository
shows up in ``grokscope probes``, ``probe``, ``plot`` and ``report`` with no other edit; a bad
parameter fails once, before any job; a changed probe version is refused like changed parameters."""

from __future__ import annotations

import importlib.util
import json
import re
import subprocess
import sys

import pytest

from tests.engine.conftest import ROOT, subprocess_env
from tests.helpers import DIGITS, MLP, make_run


def walkthrough_source() -> str:
    text = (ROOT / "CONTRIBUTING.md").read_text()
    m = re.search(r"<!-- walkthrough-probe -->\n```python\n(.*?)```", text, re.S)
    assert m, "CONTRIBUTING.md lost its walkthrough probe block"
    return m.group(1)


@pytest.fixture(scope="module")
def setup(tmp_path_factory):
    base = tmp_path_factory.mktemp("walk")
    folder = base / "my_code"  # outside the repository
    folder.mkdir()
    (folder / "margin_probe.py").write_text(walkthrough_source())
    run = make_run(base / "run", [0, 4, 16, 64, 200])
    env = subprocess_env()
    env["PYTHONPATH"] = f"{folder}:{env['PYTHONPATH']}"
    env["GROKSCOPE_PROBES"] = "margin=margin_probe:MarginProbe"
    return base, folder, run, env


def grokscope(env, *args, cwd=None):
    return subprocess.run([sys.executable, "-m", "grokscope.cli", *map(str, args)], env=env, cwd=cwd,
                          capture_output=True, text=True, timeout=300)


def test_walkthrough_probe_is_short_and_passes_the_harness(setup):
    from grokscope.datasets import load_dataset
    from grokscope.models import build_model
    from grokscope.testing import check_probe

    _, folder, _, _ = setup
    assert len(walkthrough_source().splitlines()) <= 50
    spec = importlib.util.spec_from_file_location("margin_probe", folder / "margin_probe.py")
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    out = check_probe(mod.MarginProbe, build_model(MLP), load_dataset(DIGITS))
    assert out["margin"].dims == ("split",)


def test_walkthrough_probe_appears_everywhere(setup):
    base, folder, run, env = setup
    listing = grokscope(env, "probes", "--json")
    assert listing.returncode == 0, listing.stderr
    assert "margin" in {p["name"] for p in json.loads(listing.stdout)}
    r = grokscope(env, "probe", run, "--metrics", "acc,margin", "--workers", "1", "--threads", "1", "-q")
    assert r.returncode == 0, r.stderr
    store = run / "probes.zarr"

    # the views read the probe's panels and events from the store: they work without the probe installed
    from grokscope import open_store
    from grokscope.analysis import run_summary
    from grokscope.plots import plan_panels

    tree = open_store(store)
    assert tree["run/margin"].ds.attrs["probe_version"] == 1
    keys = [p.key for p in plan_panels(tree)]
    assert "margin.margin" in keys and keys.index("acc.accuracy") < keys.index("margin.margin")
    assert next(p for p in plan_panels(tree) if p.key == "margin.margin").title == "Logit margin"
    summary = run_summary(tree["run"])
    assert summary["onsets"]["margin_rise"]["words"] == "the rise of the test logit margin"
    assert any(row["a"] == "margin_rise" for row in summary["lead_lag"])

    plot = grokscope(env, "plot", store, "--out", base / "plots")
    assert plot.returncode == 0, plot.stderr
    assert any((base / "plots").glob("*.png"))
    report = grokscope(env, "report", store, "--out", base / "report.html", "--no-regions")
    assert report.returncode == 0, report.stderr
    html = (base / "report.html").read_text()
    assert "the rise of the test logit margin" in html and "margin_rise" in html


def test_bad_parameter_fails_once_before_any_job(setup):
    base, _, run, env = setup
    out = base / "bad.zarr"
    r = grokscope(env, "probe", run, "--metrics", "lc", "--param", "lc.n_dirs=65", "--param", "lc.n_dirs_cap=none",
                  "--out", out, "-q")  # the default cap (n_dirs_cap=input) would use 64 directions
    assert r.returncode != 0
    lines = [ln for ln in r.stderr.strip().splitlines() if ln.strip()]
    assert len(lines) == 1, r.stderr
    assert "lc.n_dirs=65 is larger than the input dimension 64" in lines[0] and "nothing was computed" in lines[0]
    assert not (out / "run" / "lc").exists()
    r = grokscope(env, "probe", run, "--metrics", "lc", "--param", "lc.radius=-1", "--out", out, "-q")
    assert r.returncode != 0 and "lc.radius must be one or more numbers > 0" in r.stderr
    assert len([ln for ln in r.stderr.strip().splitlines() if ln.strip()]) <= 3  # click's usage + one line
    # the corrected request is not refused as "stored parameters differ"
    r = grokscope(env, "probe", run, "--metrics", "lc", "--param", "lc.n_dirs=8", "--param", "lc.n_points=16",
                  "--out", out, "--scheduler", "sync", "-q")
    assert r.returncode == 0, r.stderr


def test_changed_probe_version_is_refused(setup):
    base, folder, run, env = setup
    store = base / "version.zarr"
    r = grokscope(env, "probe", run, "--metrics", "margin", "--out", store, "--scheduler", "sync", "-q")
    assert r.returncode == 0, r.stderr
    v2 = folder / "margin_v2.py"
    v2.write_text("from margin_probe import MarginProbe as _M\n\n\nclass MarginProbe(_M):\n    version = 2\n")
    env2 = {**env, "GROKSCOPE_PROBES": "margin=margin_v2:MarginProbe"}
    r = grokscope(env2, "probe", run, "--metrics", "margin", "--out", store, "--scheduler", "sync", "-q")
    assert r.returncode != 0
    assert "probe version: stored 1, requested 2" in r.stderr
