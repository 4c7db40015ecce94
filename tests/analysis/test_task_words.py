"""The report's words relative to the task: chance level and classes for every dataset (stated, or
read from the labels of a ``file:`` dataset), thresholds above chance, no onset at chance, and the
onsets from the run's own log when ``acc`` was not probed. Real runs, real stores, real probes."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
from click.testing import CliRunner
from torch import nn

from grokscope.cli import main


def _train_run(run_dir: Path, model: dict, dataset: dict, steps: list[int], lr: float = 0.5,
               log: bool = True) -> Path:
    """A run folder: full-batch SGD on the dataset's training split, checkpoints at ``steps``, and a
    ``log.jsonl`` of train/test accuracy at every checkpoint (as the trainer writes it)."""
    from grokscope import runs
    from grokscope.datasets import load_dataset
    from grokscope.models import build_model

    torch.manual_seed(0)
    data = load_dataset(dataset)
    net = build_model(model)
    runs.write_run_json(run_dir, model, dataset, {"loss": "ce"})
    opt = torch.optim.SGD(net.parameters(), lr=lr)
    records, t = [], 0
    for s in steps:
        while t < s:
            opt.zero_grad()
            nn.functional.cross_entropy(net(data.x_train), data.y_train).backward()
            opt.step()
            t += 1
        runs.save_checkpoint(runs.checkpoint_path(run_dir, s), net.state_dict(), s)
        with torch.no_grad():
            acc = {f"{k}_acc": float((net(x).argmax(1) == y).float().mean())
                   for k, (x, y) in (("train", (data.x_train, data.y_train)), ("test", (data.x_test, data.y_test)))}
        records.append({"step": s, **acc})
    if log:
        (run_dir / "log.jsonl").write_text("".join(json.dumps(r) + "\n" for r in records))
    return run_dir


def _probe(runs_dir: Path, out: Path, metrics: str) -> None:
    pgd = ["--param", "pgd.n_points=64", "--param", "pgd.eps=0.03,0.3", "--param", "pgd.steps=3"]
    res = CliRunner().invoke(main, ["probe", str(runs_dir), "-m", metrics, "--scheduler", "sync", "-q",
                                    "--out", str(out)] + (pgd if "pgd" in metrics else []))
    assert res.exit_code == 0, res.output


def _summary(store: Path, run: str) -> dict:
    import xarray as xr

    from grokscope.analysis import run_summary

    return run_summary(xr.open_datatree(store, engine="zarr", consolidated=False)[run])


STEPS = [0, 1, 2, 4, 8, 16]


@pytest.fixture(scope="module")
def binary(tmp_path_factory) -> tuple[Path, Path]:
    """A 2-class ``file:`` run that stays at chance (sparse parity of 3 of 12 bits: an MLP trained a
    few steps cannot find it), probed with acc and pgd."""
    torch.set_num_threads(1)
    root = tmp_path_factory.mktemp("binary")
    rng = np.random.default_rng(0)
    x = rng.integers(0, 2, size=(400, 12)).astype(np.float32)
    y = (x[:, :3].sum(1) % 2).astype(np.int64)
    np.savez(root / "parity.npz", x=x, y=y, train_idx=np.arange(200), test_idx=np.arange(200, 400))
    _train_run(root / "runs" / "parity",
               {"arch": "mlp", "kwargs": {"in_dim": 12, "out_dim": 2, "depth": 1, "width": 8}},
               {"name": f"file:{root / 'parity.npz'}", "kwargs": {}, "seed": 0}, STEPS, lr=0.05)
    _probe(root / "runs", root / "probes.zarr", "acc,pgd")
    return root / "probes.zarr", root


def test_binary_file_dataset_chance_read_from_the_labels(binary):
    from grokscope.report import describe_run

    s = _summary(binary[0], "parity")
    assert s["task"] == {"n_classes": 2, "chance": 0.5, "classes_from": "labels", "grok_threshold": 0.95,
                         "threshold_from": "default"}
    on = s["onsets"]
    # every threshold clears chance: 0.5 + 0.25 × 0.5 = 0.625 for robustness (0.5 asked)
    assert on["robustness@0.03"]["threshold"] == pytest.approx(0.625)
    assert on["generalisation"]["threshold"] == 0.95 and on["memorisation"]["threshold"] == 0.99
    for name, o in on.items():  # the run is at chance: no onset is found at or below it
        assert o["step"] is None, (name, o)
        assert o["threshold"] > 0.5
    words = describe_run(s)
    text = "\n".join(words)
    print(text)  # the words of a 2-class run (see docs/third_party.md)
    assert words[0].startswith("2 classes (read from the labels), chance level 0.5; every accuracy threshold "
                               "is at least chance + 0.25 × (1 − chance) = 0.625; generalised means test "
                               "accuracy ≥ 0.95 (the default: the dataset states none)")
    assert "reached 0.5 " not in text and "first reached 0.2" not in text
    assert "robust accuracy at ε=0.03, 0.3 never reached 0.625 (0.5 asked, raised to clear chance 0.5)" in text
    assert "never generalised: test accuracy never reached 0.95" in text


def test_a_probe_group_alone_knows_the_task(binary):
    from grokscope.engine.store_view import load_group

    acc = load_group(binary[0], "parity", "acc")
    assert acc.attrs["task"]["n_classes"] == 2
    gen = acc.grok.onsets()["generalisation"]
    assert gen.detail["chance"] == 0.5 and gen.threshold == 0.95


def test_binary_threshold_below_chance_is_raised_never_reported(binary):
    """A threshold asked below chance (--grok 0.3 on a 2-class task) is raised, and says so."""
    import xarray as xr

    from grokscope.analysis import standard_onsets

    node = xr.open_datatree(binary[0], engine="zarr", consolidated=False)["parity"]
    on = standard_onsets(node, grok=0.3, mem=0.3, robust=0.2)
    for o in on.values():
        assert o.threshold == pytest.approx(0.625) and o.detail["chance"] == 0.5 and o.detail["n_classes"] == 2


def test_ten_and_fifty_nine_classes_words(tmp_path):
    from grokscope.report import describe_run

    torch.set_num_threads(1)
    runs = tmp_path / "runs"
    _train_run(runs / "digits", {"arch": "mlp", "kwargs": {"in_dim": 64, "out_dim": 10, "depth": 1, "width": 12}},
               {"name": "digits", "kwargs": {"n_train": 300, "n_test": 200}, "seed": 0}, [0, 2, 8, 32, 64])
    _train_run(runs / "mod59", {"arch": "mlp", "kwargs": {"in_dim": 118, "out_dim": 59, "depth": 1, "width": 16}},
               {"name": "modular", "kwargs": {"p": 59, "train_fraction": 0.3, "encoding": "onehot_concat"},
                "seed": 0}, [0, 2, 8])
    _probe(runs, tmp_path / "probes.zarr", "acc")
    digits = _summary(tmp_path / "probes.zarr", "digits")
    assert digits["task"]["n_classes"] == 10 and digits["task"]["classes_from"] == "stated"
    words = describe_run(digits)
    assert words[0] == ("10 classes (stated by the dataset), chance level 0.1; every accuracy threshold is at "
                        "least chance + 0.25 × (1 − chance) = 0.325; generalised means test accuracy ≥ 0.85 "
                        "(stated by the dataset)")
    mod = _summary(tmp_path / "probes.zarr", "mod59")
    assert mod["task"]["n_classes"] == 59 and mod["task"]["grok_threshold"] == 0.99
    words = describe_run(mod)
    assert words[0].startswith("59 classes (stated by the dataset), chance level 0.0169; every accuracy "
                               "threshold is at least chance + 0.25 × (1 − chance) = 0.263; generalised "
                               "means test accuracy ≥ 0.99 (stated by the dataset)")


def test_onsets_from_the_runs_own_log_when_acc_was_not_probed(tmp_path):
    """`probe --metrics lc` then `report`: memorisation and generalisation come from log.jsonl, said so;
    without a log, one line says what to add."""
    from grokscope.report import describe_run

    torch.set_num_threads(1)
    runs = tmp_path / "runs"
    spec = ({"arch": "mlp", "kwargs": {"in_dim": 64, "out_dim": 10, "depth": 1, "width": 12}},
            {"name": "digits", "kwargs": {"n_train": 300, "n_test": 200}, "seed": 0})
    _train_run(runs / "logged", *spec, [0, 2, 8, 32, 64, 128])
    _train_run(runs / "bare", *spec, [0, 2, 8], log=False)
    res = CliRunner().invoke(main, ["probe", str(runs), "-m", "norm", "--scheduler", "sync", "-q",
                                    "--out", str(tmp_path / "p.zarr")])
    assert res.exit_code == 0, res.output
    logged = _summary(tmp_path / "p.zarr", "logged")
    log = [json.loads(line) for line in (runs / "logged" / "log.jsonl").read_text().splitlines()]
    first_mem = next((r["step"] for r in log if r["train_acc"] >= 0.99), None)
    assert logged["onsets"]["memorisation"]["probe"] == "log"
    assert logged["onsets"]["memorisation"]["step"] == first_mem
    assert logged["final"]["test_acc"] == pytest.approx(log[-1]["test_acc"])
    words = describe_run(logged)
    assert f"accuracies from the run's own log ({runs / 'logged' / 'log.jsonl'}): acc was not probed" in words
    bare = describe_run(_summary(tmp_path / "p.zarr", "bare"))
    assert any(w.startswith("no accuracy curve") and "add acc to --metrics" in w for w in bare)


def test_lead_lag_undetermined_says_why_and_one_minus_sign(binary):
    import xarray as xr

    from grokscope.report import lead_lag_table_html

    node = xr.open_datatree(binary[0], engine="zarr", consolidated=False)["parity"]
    row = node.grok.lead_lag("memorisation", "generalisation")
    assert row["order"] == "undetermined"
    assert row["why"].startswith("memorisation: accuracy never reached 0.99 (its highest: ")
    assert "generalisation: accuracy never reached 0.95" in row["why"]
    html = lead_lag_table_html([{"a": "x", "b": "y", "t_a": 100.0, "t_b": 10.0, "lag_steps": -90.0,
                                 "lag_decades": -0.96, "order": "y first"}])
    assert "−90" in html and "−0.96" in html and "-0.96" not in html


def test_two_identical_runs_stay_visible_when_overlaid(tmp_path):
    """The same run twice: the first is drawn wider and below, the second inside it, on top."""
    import matplotlib.pyplot as plt

    from grokscope import plots
    from tests.helpers import make_run

    torch.set_num_threads(1)
    for name in ("one", "two"):
        make_run(tmp_path / "runs" / name, [0, 2, 8])
    _probe(tmp_path / "runs", tmp_path / "p.zarr", "acc")
    fig = plots.overview_figure(tmp_path / "p.zarr")
    ax = next(a for a in fig.axes if a.get_label() == "acc.accuracy")
    lines = [ln for ln in ax.lines if not (ln.get_gid() or "").startswith("onset")]
    by_colour: dict = {}
    for ln in lines:
        by_colour.setdefault(ln.get_color(), []).append(ln)
    (first, second) = by_colour.values()
    for a, b in zip(first, second):
        assert list(a.get_ydata()) == list(b.get_ydata())  # identical curves
        assert a.get_linewidth() > b.get_linewidth() and a.get_zorder() < b.get_zorder()
    plt.close(fig)


def test_lc_default_directions_fit_a_small_input(binary, tmp_path):
    """lc's default 25 directions on a 12-dimensional input: 12 are used, and the group says so;
    asking for the refusal (lc.n_dirs_cap=none) still gets the one-line message."""
    from grokscope.engine.store_view import load_group

    runs = binary[1] / "runs"
    small = ["--param", "lc.n_points=8", "--param", "lc.splits=train"]
    r = CliRunner().invoke(main, ["probe", str(runs), "-m", "lc", "--scheduler", "sync", "-q",
                                  "--out", str(tmp_path / "lc.zarr"), *small])
    assert r.exit_code == 0, r.output
    lc = load_group(tmp_path / "lc.zarr", "parity", "lc")
    assert lc.attrs["n_dirs_used"] == 12 and lc.attrs["params"]["n_dirs"] == 25
    assert bool(lc.done.all())
    r = CliRunner().invoke(main, ["probe", str(runs), "-m", "lc", "--scheduler", "sync", "-q",
                                  "--out", str(tmp_path / "lc2.zarr"), *small, "--param", "lc.n_dirs_cap=none"])
    assert r.exit_code == 1 and "lc.n_dirs=25 is larger than the input dimension 12" in r.output, r.output
