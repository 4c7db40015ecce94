"""``grokscope demo``: trains in a child process while the engine probes each checkpoint as it is
written, then writes the figures, the report and the summary; a re-run re-reads the finished run."""

from __future__ import annotations

import json
from pathlib import Path

import xarray as xr
from click.testing import CliRunner

from grokscope import runs
from grokscope.cli import main
from grokscope.cli.demo import probe_selections
from grokscope.demo import TIMING_FILE, summarise_log, window_lines
from grokscope.engine.selection import select_steps
from grokscope.training.schedule import parse_schedule


def invoke(*args: str):
    return CliRunner().invoke(main, list(args), catch_exceptions=False)


def test_probe_selections_are_fixed_by_the_save_schedule() -> None:
    saves = parse_schedule("log:100", 6000)
    sel = probe_selections(["acc", "norm"], ("norm=log:16",), saves)
    assert sel["acc"] is None
    chosen = [int(s) for s in sel["norm"].split(",")]
    assert chosen == select_steps("log:16", saves)[0] and len(chosen) == 16 and chosen[-1] == 6000
    assert set(chosen) <= set(saves)  # checkpoints the trainer will write, known before it starts
    assert probe_selections(["acc"], ("all",), saves) == {"acc": None}


def test_demo_trains_probes_and_reports(tmp_path: Path) -> None:
    out = tmp_path / "demo"
    args = ("demo", str(out), "--steps", "150", "--quiet", "--metrics", "acc,fourier",
            "--probe-steps", "fourier=log:4", "--scheduler", "sync")
    res = invoke(*args)
    assert res.exit_code == 0, res.output
    assert not (out / ".grokscope.lock").exists()  # the trainer's lock (held while probing beside it) is released
    summary = summarise_log(runs.read_log(out))
    assert summary["steps"] == 150 and summary["t_mem"] is not None and summary["t_grok"] is None
    assert f"run folder: {out}" in res.stdout
    assert f"checkpoints: {len(runs.list_checkpoints(out))} in {out / 'checkpoints'}" in res.stdout
    assert f"train acc first >= 99 % at step {summary['t_mem']} (training log)" in res.stdout
    assert f"what {out.name} shows:" in res.stdout and "memorised" in res.stdout
    assert "warning: test accuracy never reached 99 % in 150 steps" in res.stdout
    # every checkpoint probed with acc, the log:4 choice of the save schedule with fourier
    saves = parse_schedule("log:100", 150)
    tree = xr.open_datatree(out / "probes.zarr", engine="zarr", consolidated=False)
    acc, fourier = tree[f"{out.name}/acc"].ds, tree[f"{out.name}/fourier"].ds
    assert list(acc.step.values) == saves and acc.done.values.all()
    assert list(fourier.step.values[fourier.done.values]) == select_steps("log:4", saves)[0]
    # figures, report, timing
    assert (out / "plots" / "overview.png").stat().st_size > 5000
    html = out / "report.html"
    assert f"report: {html}" in res.stdout and html.read_text().lstrip().lower().startswith("<!doctype html")
    timing = json.loads((out / TIMING_FILE).read_text())
    assert {"total_s", "training_s", "probing_done_s", "figures_s", "report_s"} <= set(timing)
    assert "demo took" in res.stdout and "load average" in res.stdout
    # a re-run trains nothing and probes nothing new
    again = invoke(*args)
    assert again.exit_code == 0, again.output
    assert "training_s" not in json.loads((out / TIMING_FILE).read_text())
    assert again.stdout.split("probe store:")[0] == res.stdout.split("probe store:")[0]


def test_window_lines_say_whether_the_run_shows_what_follows_generalisation() -> None:
    base = {"steps": 6000, "grok": 0.99, "t_grok": 600}
    assert window_lines(base) == ["generalisation at 10% of the run's 6000 steps (the rest of the window "
                                  "shows what follows it)"]
    late = window_lines({**base, "t_grok": 5650})[0]
    assert late.startswith("generalisation at 94% of the run's 6000 steps (more than 25%")
    assert window_lines({**base, "t_grok": None})[0].startswith("warning: test accuracy never reached 99 %")


def test_bad_probe_steps_are_refused_before_training(tmp_path: Path) -> None:
    res = invoke("demo", str(tmp_path / "d"), "--metrics", "acc", "--probe-steps", "norm=log:3")
    assert res.exit_code == 2 and "probe 'norm' is not among --metrics (acc)" in res.output
    assert not (tmp_path / "d").exists()
