"""``grokscope reproduce``: the list, and every entry's --quick pipeline end to end (real training,
real probes on the local Dask cluster, figures and the paper-vs-run table)."""

from __future__ import annotations

import json

import pytest
from click.testing import CliRunner

from grokscope.cli import main
from grokscope.reproduce import NOT_INCLUDED, REPRODUCTIONS


def test_list_names_every_entry_and_what_is_left_out():
    res = CliRunner().invoke(main, ["reproduce", "--list"])
    assert res.exit_code == 0, res.output
    names = [line.split()[0] for line in res.output.splitlines()]
    assert names == ["humayun-mnist", "grokalign-mnist", "musat", "nanda"]
    assert "sittings" in res.output
    assert set(REPRODUCTIONS) | set(NOT_INCLUDED) == set(names)


def _quick(name, out):
    res = CliRunner().invoke(main, ["reproduce", name, "--quick", "--out", str(out)])
    assert res.exit_code == 0, res.output
    table = (out / "paper_vs_run.md").read_text()
    assert "--quick run" in table and " | paper | this run |" in table
    assert json.loads((out / "results.json").read_text())["quick"] is True
    return res, table


@pytest.mark.filterwarnings("ignore::UserWarning")
def test_humayun_quick(tmp_path):
    out = tmp_path / "hum"
    res, table = _quick("humayun-mnist", out)
    for f in ("lc_phases.png", "delayed_robustness.png", "regions.png"):
        assert (out / f).stat().st_size > 1000
    s = json.loads((out / "results.json").read_text())["summary"]
    assert {"lc_train_max", "lc_random_final", "robust_final_smoothed", "migration_ratio_final"} <= set(s)
    assert "| LC phases around training points" in table
    # a second run reuses the training run and the probe store
    again = CliRunner().invoke(main, ["reproduce", "humayun-mnist", "--quick", "--out", str(out)])
    assert again.exit_code == 0 and f"training {out / 'run'}" not in again.output


def test_grokalign_quick(tmp_path):
    out = tmp_path / "ga"
    res, table = _quick("grokalign-mnist", out)
    r = json.loads((out / "results.json").read_text())["results"]
    assert set(r) == {"wd", "grokalign"} and (out / "grokalign_mnist.png").is_file()
    for arm in r.values():  # 300 steps from init x8: far from 85 %, so no stop and the table says so
        assert arm["steps"] == 300 and arm["stop_step"] is None
    assert "not reached by step 300" in table and "1.69×" in table
    runs = {arm: json.loads((out / arm / "run.json").read_text())["train"] for arm in r}
    assert runs["wd"]["reg"] is None and runs["grokalign"]["reg"] == "grokalign:1e-4"
    assert runs["wd"]["shuffle"] is False and runs["grokalign"]["shuffle"] is False  # the authors' loader


def test_musat_quick(tmp_path):
    out = tmp_path / "musat"
    res, table = _quick("musat", out)
    assert (out / "musat.png").is_file() and "perfect by ~2 000 steps" in table


def test_nanda_quick(tmp_path):
    out = tmp_path / "nanda"
    res, table = _quick("nanda", out)
    assert (out / "nanda.png").stat().st_size > 1000
    s = json.loads((out / "results.json").read_text())["summary"]
    assert len(s["key_freqs"]) == 5 and all(1 <= k <= 11 for k in s["key_freqs"])  # p = 23: k in 1..11
    assert s["last_step"] == 200 and s["s_per_1000_steps"] > 0
    assert "[14, 35, 41, 42, 52]" in table and "memorisation ends" in table
    run = json.loads((out / "run" / "run.json").read_text())["train"]
    assert run["weight_decay"] == 1.0 and run["betas"] == [0.9, 0.98] and run["batch_size"] is None


def test_nanda_phases_from_known_curves():
    """The phase boundaries on curves whose answer is known: train accuracy reaches 0.99 at step 300;
    the test loss peaks at 4.0 at step 500, then falls linearly to 0.0 at step 1 500 and stays."""
    import numpy as np
    import xarray as xr

    from grokscope.reproduce.nanda import phases

    steps = np.arange(0, 2001, 50)
    train = np.where(steps >= 300, 1.0, 0.5)
    test_loss = np.interp(steps, [0, 500, 1500, 2000], [2.0, 4.0, 0.0, 0.0])
    test_acc = np.where(steps >= 1400, 1.0, 0.1)
    acc = xr.Dataset({"accuracy": (("step", "split"), np.stack([train, test_acc], 1)),
                      "loss": (("step", "split"), np.stack([np.zeros_like(test_loss), test_loss], 1))},
                     coords={"step": steps, "split": ["train", "test"]})
    ph = phases(acc)
    assert ph == {"memorisation_end": 300, "cleanup_start": 600, "cleanup_end": 1400, "generalisation": 1400}


def test_a_folder_holding_another_configuration_is_refused_not_reused(tmp_path):
    """``reproduce`` re-reads a finished run only when it is the run the command would train: a run
    folder of another configuration (here: a fixed batch order) is refused, naming the field."""
    import dataclasses

    from grokscope.reproduce import ReproduceError
    from grokscope.reproduce.training import train
    from grokscope.training.presets import preset_config

    config = preset_config("modadd-mlp", steps=6, save="every:3", eval_every="every:3", batch_size=32,
                           model_kwargs={"width": 16}, dataset_kwargs={"p": 11})
    first = train(config, tmp_path / "r", echo=False)
    assert train(config, tmp_path / "r", echo=False)["reused"] and first["steps"] == 6
    with pytest.raises(ReproduceError, match=r"another configuration.*\n  shuffle: True \(run\.json\) vs False"):
        train(dataclasses.replace(config, shuffle=False), tmp_path / "r", echo=False)
