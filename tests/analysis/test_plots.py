"""`grokscope plot` on a real store written by `grokscope probe` on three tiny runs.

Runs ``a`` and ``b`` are digits MLPs (``a`` has acc, lc, pgd, align, norm; ``b`` acc, lc, pgd with its pgd
group marked unfinished), ``m`` is a modular-addition MLP (acc, fourier).
"""

from __future__ import annotations

import numpy as np
import pytest
import torch
import xarray as xr
from click.testing import CliRunner

from grokscope import plots
from grokscope.analysis import standard_onsets
from grokscope.cli import main
from tests.helpers import make_run

P = 7
MOD_MODEL = {"arch": "mlp", "kwargs": {"in_dim": 2 * P, "out_dim": P, "depth": 1, "width": 16}}
MOD_DATA = {"name": "modular", "kwargs": {"p": P, "op": "add", "encoding": "onehot_concat",
                                          "train_fraction": 0.5}, "seed": 0}
SMALL = {"lc": ["lc.n_points=16", "lc.n_dirs=4"], "pgd": ["pgd.n_points=32", "pgd.eps=0.05,0.2"],
         "align": ["align.n_points=16"], "norm": ["norm.n_train=16", "norm.proj_iters=3",
                                                  "norm.power_iters=3"]}
DIGIT_PANELS = ["acc.accuracy", "acc.loss", "lc.lc_total_mean", "pgd.robust_acc", "align.centroid_cos_mean",
                "align.jac_align_mean", "align.jac_fro_mean"]
B_PANELS = ["acc.accuracy", "acc.loss", "lc.lc_total_mean"]


def make_modular_run(run_dir, steps: list[int]):
    """A run folder of a small MLP trained with AdamW on a + b mod 7 (one-hot pairs)."""
    from grokscope import runs
    from grokscope.datasets import load_dataset
    from grokscope.models import build_model

    torch.manual_seed(0)
    net, data = build_model(MOD_MODEL), load_dataset(MOD_DATA)
    runs.write_run_json(run_dir, MOD_MODEL, MOD_DATA, {"loss": "ce"})
    opt = torch.optim.AdamW(net.parameters(), lr=0.02, weight_decay=0.1)
    t = 0
    for s in steps:
        while t < s:
            opt.zero_grad()
            torch.nn.functional.cross_entropy(net(data.x_train), data.y_train).backward()
            opt.step()
            t += 1
        runs.save_checkpoint(runs.checkpoint_path(run_dir, s), net.state_dict(), s)


def probe(run_dir, store, metrics: str) -> None:
    params = [a for m in metrics.split(",") for p in SMALL.get(m, []) for a in ("--param", p)]
    res = CliRunner().invoke(main, ["probe", str(run_dir), "--metrics", metrics, "--scheduler", "sync", "-q",
                                    "--out", str(store), *params])
    assert res.exit_code == 0, res.output


@pytest.fixture(scope="module")
def store(tmp_path_factory):
    torch.set_num_threads(1)
    root = tmp_path_factory.mktemp("plots")
    make_run(root / "runs" / "a", steps=[0, 2, 8, 32])
    make_run(root / "runs" / "b", steps=[0, 4, 16, 32], seed=1)
    make_modular_run(root / "runs" / "m", steps=[0, 3, 10, 40])
    out = root / "probes.zarr"
    probe(root / "runs" / "a", out, "acc,lc,pgd,align,norm")
    probe(root / "runs" / "b", out, "acc,lc,pgd")
    probe(root / "runs" / "m", out, "acc,fourier")
    # b's pgd group exists but no step of it finished: its panel must leave b out
    import zarr

    zarr.open_array(str(out / "b" / "pgd" / "done"), mode="r+")[:] = False
    return out


def keys(panels):
    return [p.key for p in panels]


def test_plan_has_exactly_the_panels_with_data(store):
    panels = plots.plan_panels(store)
    assert keys(panels) == DIGIT_PANELS + ["fourier.fourier_norms[run=m]", "fourier.gini_real",
                                           "norm.weight_sq", "norm.wd_tangent_frac"]
    runs = {p.key: p.runs for p in panels}
    assert runs["acc.accuracy"] == ("a", "b", "m")
    assert runs["lc.lc_total_mean"] == ("a", "b")
    assert runs["pgd.robust_acc"] == ("a",)          # b's pgd steps are not done
    assert runs["align.centroid_cos_mean"] == ("a",)
    assert runs["fourier.gini_real"] == ("m",) and runs["norm.weight_sq"] == ("a",)
    assert all(p.kind == "heatmap" for p in panels if p.var == "fourier_norms")

    layered = keys(plots.plan_panels(store, layers=True))
    tree = xr.open_datatree(store, engine="zarr", consolidated=False)
    layer_keys = [f"lc.lc_mean[layer={lab}]" for lab in tree["a/lc"]["layer"].values]
    assert layer_keys and layered == DIGIT_PANELS[:3] + layer_keys + DIGIT_PANELS[3:] + keys(panels)[7:]

    assert keys(plots.plan_panels(store, metrics="acc,norm")) == ["acc.accuracy", "acc.loss", "norm.weight_sq",
                                                                 "norm.wd_tangent_frac"]
    assert keys(plots.plan_panels(store, metrics=["align.pc1_mean"])) == ["align.pc1_mean"]
    only_b = plots.plan_panels(store, runs=["b"])
    assert keys(only_b) == B_PANELS
    assert all(p.runs == ("b",) for p in only_b)


def _onset_lines(ax):
    return {line.get_gid(): float(line.get_xdata()[0]) for line in ax.lines
            if (line.get_gid() or "").startswith("onset:")}


def test_onset_lines_at_the_onset_steps(store):
    thresholds = {"mem": 0.3, "grok": 0.3, "robust": 0.05}
    fig = plots.overview_figure(store, thresholds=thresholds)
    axes = {ax.get_label(): ax for ax in fig.axes if ax.get_label()}
    tree = xr.open_datatree(store, engine="zarr", consolidated=False)
    events = {r: standard_onsets(tree[r], **thresholds) for r in ("a", "b", "m")}
    want = {f"onset:{r}:{name}": ev.step for r in events for name, ev in events[r].items()
            if ev.found and not name.startswith("robustness")}
    assert want, "the thresholds should give some onsets"
    acc_lines = _onset_lines(axes["acc.accuracy"])
    assert acc_lines == pytest.approx(want)
    robust = {f"onset:a:{name}": ev.step for name, ev in events["a"].items()
              if ev.found and name.startswith("robustness@")}
    gen = {k: v for k, v in want.items() if k == "onset:a:generalisation"}
    assert robust, "a has PGD robust accuracy above 0.05 somewhere"
    assert _onset_lines(axes["pgd.robust_acc"]) == pytest.approx({**robust, **gen})
    # the heat map of m carries m's onsets only
    heat = _onset_lines(axes["fourier.fourier_norms[run=m]"])
    assert heat == pytest.approx({k: v for k, v in want.items() if k.startswith("onset:m:")})
    # every data line sits on the probed steps (x = step, symlog axis shows step 0 at 0)
    line = next(ln for ln in axes["acc.accuracy"].lines if not (ln.get_gid() or "").startswith("onset"))
    assert list(line.get_xdata()) == [0, 2, 8, 32]
    assert axes["acc.accuracy"].get_xscale() == "symlog"
    legend = [t.get_text() for t in fig.legends[0].texts]
    assert legend[:3] == ["a", "b", "m"]
    import matplotlib.pyplot as plt

    plt.close(fig)


def test_heatmap_cells_contain_their_steps(store):
    fig = plots.fourier_figure(xr.open_datatree(store, engine="zarr", consolidated=False)["m"], "m")
    mesh = fig.axes[0].collections[0]
    coords = mesh.get_coordinates()  # (n_freq + 1, n_steps + 1, 2)
    x_edges = coords[0, :, 0]
    steps = np.array([0, 3, 10, 40])
    assert coords.shape[:2] == ((P - 1) // 2 + 1, len(steps) + 1)
    assert np.all(x_edges[:-1] <= steps) and np.all(steps < x_edges[1:])
    assert np.allclose(coords[:, 0, 1], np.arange(1, (P - 1) // 2 + 2) - 0.5)  # frequency k = 1..3 centred
    import matplotlib.pyplot as plt

    plt.close(fig)


def test_files_in_every_format(store, tmp_path):
    paths = plots.plot_store(store, tmp_path / "figs", runs="m", metrics="fourier", formats=("png", "pdf", "svg"))
    names = [p.name for p in paths]
    assert names == ["overview.png", "overview.pdf", "overview.svg", "fourier_m.png", "fourier_m.pdf",
                     "fourier_m.svg"]
    magic = {"png": b"\x89PNG", "pdf": b"%PDF", "svg": b"<?xml"}
    for p in paths:
        data = p.read_bytes()
        assert data.startswith(magic[p.suffix[1:]]) and len(data) > 5_000, (p, len(data))
    assert b"<svg" in (tmp_path / "figs" / "overview.svg").read_bytes()[:2000]
    # a file as --out: its stem names the figures, its suffix is the format
    paths = plots.plot_store(store, tmp_path / "one" / "fig.svg", runs="m", metrics="acc")
    assert [p.name for p in paths] == ["fig.svg"] and b"<svg" in paths[0].read_bytes()[:2000]
    # the demo/report entry point: one run, one file
    tree = xr.open_datatree(store, engine="zarr", consolidated=False)
    out = plots.plot_run(tree["a"], "a (acc)", tmp_path / "run.png", ["acc"])
    assert out.stat().st_size > 5000


def test_cli_runs_and_metrics(store, tmp_path):
    runner = CliRunner()
    res = runner.invoke(main, ["plot", str(store), "--runs", "a", "--runs", "m", "--metrics", "norm,fourier",
                               "--format", "png", "--out", str(tmp_path / "p")])
    assert res.exit_code == 0, res.output
    assert sorted(p.name for p in (tmp_path / "p").iterdir()) == ["fourier_m.png", "overview.png"]
    assert res.output.split() == [str(tmp_path / "p" / n) for n in ("overview.png", "fourier_m.png")]
    res = runner.invoke(main, ["plot", str(store), "--runs", "a,b", "--metrics", "acc,norm", "--out",
                               str(tmp_path / "q")])
    assert res.exit_code == 0, res.output
    assert [p.name for p in (tmp_path / "q").iterdir()] == ["overview.png"]  # no run with fourier selected
    fig = plots.overview_figure(store, runs=["b", "a"], metrics="acc")
    assert [t.get_text() for t in fig.legends[0].texts][:2] == ["b", "a"]
    assert {ax.get_label() for ax in fig.axes} == {"acc.accuracy", "acc.loss"}


@pytest.mark.parametrize("args, message", [
    (["--runs", "nope"], "unknown run(s) 'nope'; runs: a, b, m"),
    (["--metrics", "acc,wobble"], "unknown metric 'wobble'"),
    (["--metrics", "fourier", "--runs", "a"], "unknown metric 'fourier': the selected runs have probe(s) acc, "
                                              "align, lc, norm, pgd"),
    (["--metrics", "acc.wobble"], "unknown metric 'acc.wobble': probe 'acc' has variables"),
    (["--format", "png,gif"], "unknown format(s) gif"),
])
def test_clear_errors(store, tmp_path, args, message):
    res = CliRunner().invoke(main, ["plot", str(store), "--out", str(tmp_path), *args])
    assert res.exit_code == 1 and message in res.output, res.output
    assert not list(tmp_path.glob("*.png"))


def test_store_without_runs(tmp_path):
    empty = tmp_path / "empty.zarr"
    xr.Dataset().to_zarr(empty, zarr_format=3, consolidated=False)
    res = CliRunner().invoke(main, ["plot", str(empty)])
    assert res.exit_code == 1 and "no runs with probe results" in res.output
    with pytest.raises(plots.PlotError, match="no runs with probe results"):
        plots.plan_panels(empty)


def test_a_folder_given_for_a_store_names_the_store_inside_it(store, tmp_path):
    """`plot`/`report` on a run folder (not its store) name the store inside it, or say there is none."""
    for cmd in ("plot", "report"):
        res = CliRunner().invoke(main, [cmd, str(store.parent), "--out", str(tmp_path / cmd)])
        assert res.exit_code == 1, res.output
        assert f"{store.parent}: not a probe store (no zarr.json); it holds probes.zarr: pass {store}" in res.output
        res = CliRunner().invoke(main, [cmd, str(store.parent / "runs" / "a"), "--out", str(tmp_path / cmd)])
        assert res.exit_code == 1 and "not a probe store (no zarr.json)" in res.output
    assert not list(tmp_path.rglob("*.png")) and not list(tmp_path.rglob("*.html"))


def test_pgd_radii_on_a_colour_scale(store):
    """One run in the PGD panel: each ε its own colour from a sequential scale, also in the legend."""
    import matplotlib.pyplot as plt
    from matplotlib.colors import to_rgb

    fig = plots.overview_figure(store)
    ax = {a.get_label(): a for a in fig.axes if a.get_label()}["pgd.robust_acc"]
    data = [ln for ln in ax.lines if not (ln.get_gid() or "").startswith("onset")]
    colours = [to_rgb(ln.get_color()) for ln in data]
    assert len(data) == 2 and len(set(colours)) == 2  # pgd.eps=0.05,0.2 of run a
    assert colours == [plots.draw.eps_colour(0, 2), plots.draw.eps_colour(1, 2)]
    legend = {t.get_text(): to_rgb(h.get_color()) for t, h in zip(ax.get_legend().texts, ax.get_legend().legend_handles)}
    assert legend == {"ε = 0.05": colours[0], "ε = 0.2": colours[1]}
    plt.close(fig)
