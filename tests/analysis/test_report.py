"""`grokscope report`: the self-contained HTML page of a real store, `--json`, and the plain words."""

from __future__ import annotations

import base64
import io
import json
import math
from html.parser import HTMLParser
from pathlib import Path

import numpy as np
import pytest
from click.testing import CliRunner

from grokscope.cli import main
from grokscope.report import describe_run
from tests.helpers import make_run

PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"


@pytest.fixture(scope="module")
def store(tmp_path_factory) -> Path:
    """A real store: one tiny digits MLP run, probed with acc, pgd (two ε), lc and regions at 5 checkpoints."""
    import torch

    torch.set_num_threads(1)
    root = tmp_path_factory.mktemp("report")
    make_run(root / "runs" / "r0", steps=[0, 2, 8, 32, 64])
    out = root / "probes.zarr"
    res = CliRunner().invoke(main, [
        "probe", str(root / "runs"), "-m", "acc,pgd,lc,regions", "--scheduler", "sync", "-q", "--out", str(out),
        "--param", "regions.resolution=48",
        "--param", "pgd.n_points=64", "--param", "pgd.eps=0.05,0.5", "--param", "pgd.steps=3",
        "--param", "lc.n_points=32", "--param", "lc.n_dirs=4", "--param", "lc.splits=train,test"])
    assert res.exit_code == 0, res.output
    return out


def summary_of(store: Path, **thresholds) -> dict:
    import xarray as xr

    from grokscope.analysis import run_summary

    tree = xr.open_datatree(store, engine="zarr", consolidated=False)
    return run_summary(tree["r0"], **thresholds)


class Page(HTMLParser):
    """The parts of a page the tests look at: tables (rows of cell texts), img sources, every
    attribute value, the tags used and the visible text."""

    def __init__(self, text: str):
        super().__init__()
        self.tables: list[list[list[str]]] = []
        self.imgs: list[str] = []
        self.attrs: list[tuple[str, str, str]] = []
        self.tags: set[str] = set()
        self.text: list[str] = []
        self._cell: list[str] | None = None
        self.feed(text)
        self.close()

    def handle_starttag(self, tag, attrs):
        self.tags.add(tag)
        self.attrs += [(tag, k, v or "") for k, v in attrs]
        if tag == "table":
            self.tables.append([])
        elif tag == "tr":
            self.tables[-1].append([])
        elif tag in ("td", "th"):
            self._cell = []
        elif tag == "img":
            self.imgs.append(dict(attrs)["src"])

    def handle_endtag(self, tag):
        if tag in ("td", "th") and self._cell is not None:
            self.tables[-1][-1].append("".join(self._cell).strip())
            self._cell = None

    def handle_data(self, data):
        self.text.append(data)
        if self._cell is not None:
            self._cell.append(data)

    def table(self, first_header: str) -> list[list[str]]:
        found = [t for t in self.tables if t and t[0] and t[0][0] == first_header]
        assert len(found) == 1, f"expected one table headed {first_header!r}, found {len(found)}"
        return found[0]


def step_text(step) -> str:
    return "never" if step is None else f"{int(step):,}".replace(",", " ")


def test_report_page_of_a_real_store(store):
    res = CliRunner().invoke(main, ["report", str(store)])
    assert res.exit_code == 0, res.output
    out = store.parent / "report.html"  # default: next to the store, path printed
    assert res.output.strip().splitlines()[-1] == str(out)
    raw = out.read_text(encoding="utf-8")
    page = Page(raw)
    summary = summary_of(store)

    # the onset table holds every onset of run_summary, with its step or "never"
    onsets = {row[0]: row for row in page.table("onset")[1:]}
    assert set(onsets) == set(summary["onsets"]) >= {"memorisation", "generalisation", "robustness@0.05",
                                                     "robustness@0.5", "lc_fall"}
    for name, o in summary["onsets"].items():
        assert onsets[name][-1] == step_text(o["step"]), name
    assert onsets["memorisation"][2] == "≥ 0.99"
    assert onsets["generalisation"][2] == "≥ 0.85"  # grok=auto: the digits threshold
    assert onsets["robustness@0.05"][1] == "pgd/robust_acc [split=test, eps=0.05]"

    # LC phase table: one row per point set, peak step as in the summary
    phases = {row[0]: row for row in page.table("points")[1:]}
    header = page.table("points")[0]
    assert set(phases) == {"training points", "test points"}
    col = header.index("peak (migration starts)")
    train = summary["lc_phases"]["train"]
    # a phase smaller than the noise has no step to give: "none"
    assert phases["training points"][col] == (step_text(train["t_peak"]) if train["has_ascent"] else "none")
    # every undetermined lead/lag row says why
    for row in page.table("first event")[1:]:
        assert row[-1] != "undetermined" and (not row[-1].startswith("undetermined") or ": " in row[-1])

    # lead/lag rows and the settings recorded by the run
    assert len(page.table("first event")) - 1 == len(summary["lead_lag"])
    settings = dict(page.table("model")[1:])
    assert settings["arch"] == "mlp" and settings["kwargs.width"] == "12"
    assert dict(page.table("dataset")[1:])["name"] == "digits"
    text = " ".join(page.text)
    for line in describe_run(summary):
        assert line in text
    assert "Linear regions" in text and "No region picture" not in text
    assert "linear regions (grey) and decision boundary (red)" in text  # a ReLU MLP: its region picture

    # images: embedded PNGs that decode; nothing fetched from elsewhere
    import matplotlib.image as mpimg

    assert len(page.imgs) == 2  # the probe figure and the region picture
    for src in page.imgs:
        head, data = src.split(",", 1)
        assert head == "data:image/png;base64"
        png = base64.b64decode(data, validate=True)
        assert png.startswith(PNG_SIGNATURE)
        h, w = mpimg.imread(io.BytesIO(png), format="png").shape[:2]
        assert h > 100 and w > 100
    assert not page.tags & {"script", "link", "iframe", "object", "embed"}
    for tag, key, value in page.attrs:
        assert not value.lower().startswith(("http:", "https:", "//", "file:")), (tag, key, value)
    assert "http://" not in raw and "https://" not in raw


def test_report_json_round_trip(store, tmp_path):
    res = CliRunner().invoke(main, ["report", str(store), "--json", "--mem", "0.0", "--grok", "0.3",
                                    "--robust", "0.9", "--window", "2"])
    assert res.exit_code == 0, res.output
    assert "NaN" not in res.stdout
    got = json.loads(res.stdout)
    assert list(got) == ["r0"]
    expected = summary_of(store, mem=0.0, grok=0.3, robust=0.9, window=2)
    assert got["r0"] == json.loads(json.dumps(expected))
    # digits: chance 0.1, so 0.3 is raised to clear it by a quarter of the way to 1
    assert got["r0"]["onsets"]["generalisation"]["threshold"] == pytest.approx(0.325)
    assert got["r0"]["onsets"]["generalisation"]["detail"]["asked"] == 0.3
    # memorisation too: 0 asked is raised to 0.325, so no onset is ever at or below chance
    assert got["r0"]["onsets"]["memorisation"]["threshold"] == pytest.approx(0.325)
    import xarray as xr

    acc = xr.open_datatree(store, engine="zarr", consolidated=False)["r0/acc"].to_dataset()
    v = acc["accuracy"].sel(split="train").values
    smoothed = [np.median(v[max(0, i - 1): i + 2]) for i in range(len(v))]  # --window 2: i-1..i+1
    first = [int(s) for s, m in zip(acc.step.values, smoothed) if m >= 0.325]
    assert got["r0"]["onsets"]["memorisation"]["step"] == (first[0] if first else None)
    assert 0.0 <= got["r0"]["final"]["test_acc"] <= 1.0
    assert got["r0"]["params"]["window"] == 2
    assert not (tmp_path / "report.html").exists()


def test_report_embeds_figures_already_drawn(store, tmp_path):
    """``write_report(drawn=...)`` (what the demo passes) embeds the figures plot_store wrote instead of
    drawing them again: the same images, byte for byte, and none drawn in the report's work folder."""
    import re

    from grokscope.plots import plot_store
    from grokscope.report import write_report

    paths = plot_store(store, tmp_path / "plots")
    drawn = write_report(store, tmp_path / "drawn.html", regions=False, drawn={"r0": paths}).read_text()
    again = write_report(store, tmp_path / "again.html", regions=False).read_text()
    images = [re.findall(r"data:image/png;base64,([^']+)", page) for page in (drawn, again)]
    assert [p.name for p in paths] == ["overview.png"]  # no fourier probe in this store
    assert len(images[0]) == 1 and images[0] == images[1]
    assert images[0][0] == base64.b64encode(paths[0].read_bytes()).decode("ascii")


def test_report_options_and_errors(store, tmp_path):

    import xarray as xr

    res = CliRunner().invoke(main, ["report", str(store), "--grok", "high"])
    assert res.exit_code != 0 and "'auto' or a number" in res.output
    empty = tmp_path / "empty.zarr"
    xr.Dataset().to_zarr(empty, zarr_format=3, consolidated=False)
    res = CliRunner().invoke(main, ["report", str(empty), "--out", str(tmp_path / "r.html")])
    assert res.exit_code != 0
    assert str(empty) in res.output and "no runs" in res.output
    assert not (tmp_path / "r.html").exists()


def test_region_picture_notes(store, tmp_path):
    """Where no region picture can be drawn the page says why, instead of failing; the picture comes
    from the store alone (the run folder is not needed)."""
    import shutil

    import grokscope
    from grokscope.report import region_html

    tree = grokscope.open_store(store)
    run_dir = Path(tree["r0"].attrs["path"])
    moved = tmp_path / "moved"
    shutil.move(str(run_dir), moved)
    try:
        drawn = region_html(tree["r0"], {}, "r0", tmp_path)
    finally:
        shutil.move(str(moved), run_dir)
    assert "<img" in drawn and "linear regions (grey)" in drawn
    bare = make_run(tmp_path / "bare", steps=[0, 1])
    out = tmp_path / "bare.zarr"
    res = CliRunner().invoke(main, ["probe", str(bare), "-m", "acc", "--scheduler", "sync", "-q", "--out", str(out)])
    assert res.exit_code == 0, res.output
    none = region_html(grokscope.open_store(out)["bare"], {}, "bare", tmp_path)
    assert "No region picture" in none and "grokscope probe RUN --metrics regions" in none
    assert "<img" not in none


def _builtin_event_words():
    from grokscope.probes import BUILTIN, get_probe

    return {e.name: e.words for name in BUILTIN for e in get_probe(name).event_specs()}


EVENT_WORDS = _builtin_event_words()


def onset(name, step, threshold, kind="threshold", above=True, **sel):
    """An onset as run_summary writes it; change points carry their probe's declared words."""
    return {"name": name, "step": step, "threshold": threshold, "above": above, "kind": kind, "sel": sel,
            "window": 1, "patience": 1, "words": EVENT_WORDS.get(name, "")}


def test_describe_run_reached_with_ratio():
    s = {"onsets": {"memorisation": onset("memorisation", 180.0, 0.99, split="train"),
                    "generalisation": onset("generalisation", 2400.0, 0.99, split="test"),
                    "robustness@0.1": onset("robustness@0.1", 4800.0, 0.5, eps=0.1)},
         "lc_phases": {"train": {"t_min1": 50.0, "t_peak": 600.0, "t_min2": 5000.0, "has_first_descent": True,
                                 "has_ascent": True, "has_second_descent": True}},
         "final": {"train_acc": 1.0, "test_acc": 0.995}}
    lines = describe_run(s)
    assert lines[0] == "memorised (train accuracy ≥ 0.99) at step 180"
    assert lines[1] == "generalised (test accuracy ≥ 0.99) at step 2 400 (13× later)"
    assert lines[2] == ("LC around training points fell until step 50, peaked at step 600, "
                        "then fell again until step 5 000")
    assert lines[3] == "robust accuracy at ε=0.1 reached 0.5 at step 4 800 (2.0× later than generalisation)"
    assert lines[-1] == "final accuracy: train 1.000, test 0.995"

    s["onsets"]["generalisation"]["step"] = 450.0  # < 10×: one decimal
    assert "(2.5× later)" in describe_run(s)[1]
    s["onsets"]["memorisation"]["step"] = 0.0  # no ratio from step 0: the gap in steps
    assert describe_run(s)[1].endswith("(450 steps after memorisation)")
    s["onsets"]["generalisation"]["step"] = 0.0
    assert describe_run(s)[1].endswith("(at the same checkpoint as memorisation)")


def test_describe_run_never_reached():
    s = {"onsets": {"memorisation": onset("memorisation", None, 0.99, split="train"),
                    "generalisation": onset("generalisation", math.nan, 0.85, split="test"),
                    "robustness@0.1": onset("robustness@0.1", None, 0.5, eps=0.1),
                    "robustness@0.2": onset("robustness@0.2", None, 0.5, eps=0.2),
                    "lc_fall": onset("lc_fall", None, 0.5, kind="change", above=False, split="train")},
         "lead_lag": [{"a": "lc_fall", "b": "generalisation", "t_a": None, "t_b": None, "order": "undetermined"}],
         "final": {"train_acc": 0.8712, "test_acc": 0.31}}
    assert describe_run(s) == [
        "never memorised: train accuracy never reached 0.99 (final 0.871)",
        "never generalised: test accuracy never reached 0.85 (final 0.310)",
        "robust accuracy at ε=0.1, 0.2 never reached 0.5",
        "the fall of LC around training points: no clear change",
        "final accuracy: train 0.871, test 0.310",
    ]
    assert describe_run({}) == []


def test_describe_run_lead_lag_of_change_points():
    s = {"onsets": {"generalisation": onset("generalisation", 3000.0, 0.99, split="test"),
                    "gini_rise": onset("gini_rise", 300.0, 0.5, kind="change"),
                    "weight_norm_fall": onset("weight_norm_fall", 3100.0, 0.5, kind="change", above=False),
                    "alignment_rise": onset("alignment_rise", None, 0.5, kind="change")},
         "lead_lag": [{"a": "gini_rise", "b": "generalisation", "t_a": 300.0, "t_b": 3000.0,
                       "lag_decades": 0.9996, "order": "gini_rise first"},
                      {"a": "weight_norm_fall", "b": "generalisation", "t_a": 3100.0, "t_b": 3000.0,
                       "lag_decades": -0.014, "order": "together"},
                      {"a": "alignment_rise", "b": "generalisation", "t_a": None, "t_b": 3000.0,
                       "order": "undetermined"}],
         "params": {"change_tol": 0.2, "noise_k": 4.0}}
    for name, words in (("gini_rise", "the rise of the Fourier Gini"), ("weight_norm_fall", "the fall of ‖θ‖²"),
                        ("alignment_rise", "the rise of centroid alignment")):
        s["onsets"][name]["words"] = words
    s["onsets"]["gini_rise"]["detail"] = {"t_start": 10.0, "v_start": 0.08, "t_end": 2000.0, "v_end": 0.31}
    s["onsets"]["weight_norm_fall"]["detail"] = {"t_start": 1000.0, "v_start": 52.0, "t_end": 6000.0, "v_end": 11.0}
    s["onsets"]["alignment_rise"]["detail"] = {"size": 0.03, "needed": 0.05, "noise": 0.0125}
    lines = describe_run(s)
    assert lines[1] == ("the rise of the Fourier Gini went from 0.08 (step 10) to 0.31 (step 2 000), half of it by step 300, "
                        "1.0 decades before generalisation (step 3 000)")
    assert lines[2] == ("the fall of ‖θ‖² went from 52 (step 1 000) to 11 (step 6 000), half of it by step 3 100, together "
                        "with generalisation (step 3 000)")
    assert lines[3] == ("the rise of centroid alignment: no clear change (its largest rise, 0.03, is not "
                        "above the 0.05 a clear change needs: the larger of 20 % of its range and 4 × its "
                        "checkpoint-to-checkpoint noise 0.0125)")
    # the lead/lag table explains the undetermined row with the same words
    from grokscope.report import lead_lag_table_html

    table = lead_lag_table_html(s["lead_lag"], s["onsets"], s["params"])
    assert "undetermined: the rise of centroid alignment: no clear change (its largest rise, 0.03" in table
    s["onsets"]["generalisation"].update(step=None, detail={"asked": 0.5, "chance": 0.5, "max": 0.61})
    s["onsets"]["generalisation"]["threshold"] = 0.625
    row = {"a": "gini_rise", "b": "generalisation", "t_a": 300.0, "t_b": None, "order": "undetermined"}
    assert ("undetermined: generalisation: never reached 0.625 (0.5 asked, raised to clear chance 0.5) "
            "(highest 0.610)") in lead_lag_table_html([row], s["onsets"])


def test_describe_run_grok_phase_says_what_the_curve_did():
    s = {"onsets": {"generalisation": onset("generalisation", 400.0, 0.99, split="test")},
         "grok_phase": {"t_start": 25.0, "start_threshold": 0.6, "v_start": 0.79, "t_before": 10.0,
                        "v_before": 0.52, "t_end": 400.0, "end_threshold": 0.99}}
    assert describe_run(s)[1] == ("test accuracy first reached 0.6 at step 25 (0.790 there; 0.520 at the "
                                  "checkpoint before, step 10) and 0.99 at step 400")


def test_region_steps_snap_to_checkpoints_with_their_roles():
    from grokscope.report import region_steps

    s = {"onsets": {"memorisation": onset("memorisation", 90.0, 0.99), "generalisation": onset("generalisation",
                                                                                                5990.0, 0.99)}}
    assert region_steps(s, [100, 0, 6000, 89]) == {0: ["first"], 89: ["nearest to memorisation at 90"],
                                                   6000: ["nearest to generalisation at 5 990", "last"]}
    assert region_steps(s, [0, 90, 429, 5990, 6000])[90] == ["memorisation"]  # exactly there: its own name
    s["onsets"]["generalisation"]["step"] = None  # never: not drawn
    assert region_steps(s, [9, 6000]) == {9: ["first", "nearest to memorisation at 90"], 6000: ["last"]}
    assert region_steps(s, []) == {}
