"""``grokscope forecast``: the delay law recovered from runs that obey it exactly (real run folders:
run.json, safetensors checkpoints whose squared norm decays at the law's rate, log.jsonl), forecasts
that move when the norm falls faster than the law says, and one-line refusals."""

from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np
import pytest
import torch
from click.testing import CliRunner

from grokscope import runs
from grokscope.cli import main
from grokscope.engine.discovery import find_runs
from grokscope.forecast import Calibration, ForecastError, calibrate, forecasts, read_run, read_runs

KAPPA, LOG_VSTAR = 0.08, math.log(900.0)
MODEL = {"arch": "mlp", "kwargs": {"in_dim": 6, "out_dim": 3, "depth": 1, "width": 5}}


def _law_run(root: Path, name: str, eta: float, lam: float, v_mem: float, t_mem: int = 40, speed: float = 1.0,
             grokked: bool = True) -> tuple[Path, int]:
    """A run folder whose ‖θ‖² grows to ``v_mem`` at ``t_mem`` and then decays as exp(−2κηλ·speed·t); its
    log memorises at ``t_mem`` and generalises where the decay passes V* (if ``grokked``). Returns
    (folder, the law's T_grok for speed 1)."""
    run = root / name
    runs.write_run_json(run, MODEL, {"name": "xor", "kwargs": {}, "seed": 0},
                        {"loss": "ce", "lr": eta, "weight_decay": lam})
    rate = 2 * KAPPA * eta * lam
    t_grok_law = t_mem + (math.log(v_mem) - LOG_VSTAR) / rate
    t_cross = t_mem + (math.log(v_mem) - LOG_VSTAR) / (rate * speed)
    end = int(t_cross * 1.5) + 50
    steps = sorted({0, 10, 20, t_mem, *np.unique(np.geomspace(t_mem + 1, end, 30).astype(int)).tolist()})
    for s in steps:
        v = v_mem * (s / t_mem) ** 2 if s < t_mem else v_mem * math.exp(-rate * speed * (s - t_mem))
        v = max(v, 1.0)
        n = 20  # ‖θ‖² = v spread over one tensor of n equal entries
        runs.save_checkpoint(runs.checkpoint_path(run, s), {"w": torch.full((n,), math.sqrt(v / n))}, s)
    for s in range(0, end + 1, 5):
        train = 1.0 if s >= t_mem else 0.5
        test = 1.0 if grokked and s >= t_cross else 0.3
        runs.append_log(run, {"step": s, "train_acc": train, "test_acc": test})
    return run, int(math.ceil(t_grok_law / 5) * 5)


def test_calibration_recovers_the_law_and_forecasts_hold(tmp_path):
    cells = [(1e-3, 1.0, 2000.0), (2e-3, 1.0, 3000.0), (1e-3, 2.0, 5000.0), (3e-3, 0.5, 2500.0), (2e-3, 2.0, 4000.0)]
    made = [_law_run(tmp_path / "runs", f"r{i}", *c) for i, c in enumerate(cells)]
    series = [read_run(r) for r in read_runs(tmp_path / "runs")]
    assert sorted(s.name for s in series) == [f"r{i}" for i in range(5)]
    for s, (_, t_grok) in zip(sorted(series, key=lambda s: s.name), made):
        assert s.t_mem == 40 and s.t_grok == t_grok
        assert s.v_at(40) == pytest.approx(dict(zip(range(5), [c[2] for c in cells]))[int(s.name[1])], rel=1e-5)
    cal = calibrate(series)
    # the logged steps are a 5-step grid: the fitted constants are close, not exact
    assert cal.kappa == pytest.approx(KAPPA, rel=0.03) and cal.log_vstar == pytest.approx(LOG_VSTAR, abs=0.05)
    for s in series:
        fs = forecasts(s, cal)
        assert fs[0].step == 40 and fs[0].low <= fs[0].predicted <= fs[0].high
        before = [f for f in fs if f.step < s.t_grok]
        assert len(before) > 10
        for f in before:  # the norm follows the law: every checkpoint's forecast is the same step
            assert f.predicted == pytest.approx(s.t_grok, rel=0.03)
        assert fs[-1].step >= s.t_grok and fs[-1].overdue  # past V*: the forecast is "now"


def test_a_norm_falling_faster_than_the_law_pulls_the_forecast_in(tmp_path):
    cal = Calibration(kappa=KAPPA, log_vstar=LOG_VSTAR, q_lo=-0.1, q_hi=0.1, n_runs=5)
    run, t_law = _law_run(tmp_path, "fast", 2e-3, 1.0, 3000.0, speed=2.0)
    (r,) = find_runs(run)
    s = read_run(r)
    fs = forecasts(s, cal)
    assert fs[0].predicted == pytest.approx(t_law, abs=6)  # at memorisation only V_mem is known
    assert s.t_grok < t_law
    preds = [f.predicted for f in fs if f.step < s.t_grok]
    assert all(b <= a + 1e-9 for a, b in zip(preds, preds[1:]))  # each checkpoint pulls it in
    assert abs(preds[-1] - s.t_grok) < abs(preds[0] - s.t_grok) / 3
    assert fs[-1].step >= s.t_grok  # the forecasts stop at the first checkpoint after generalisation


def test_cli_forecast_calibrate_and_json(tmp_path):
    for i, c in enumerate([(1e-3, 1.0, 2000.0), (2e-3, 1.0, 3000.0), (1e-3, 2.0, 5000.0)]):
        _law_run(tmp_path / "runs", f"r{i}", *c)
    _law_run(tmp_path / "runs", "late", 1e-3, 1.0, 3500.0, grokked=False)
    cal_file = tmp_path / "cal.json"
    res = CliRunner().invoke(main, ["forecast", str(tmp_path / "runs"), "--calibrate", str(cal_file)])
    assert res.exit_code == 0, res.output
    assert "calibrated on 3 runs" in res.output  # "late" never generalised: not used
    res = CliRunner().invoke(main, ["forecast", str(tmp_path / "runs" / "late"), "--calibration", str(cal_file)])
    assert res.exit_code == 0, res.output
    assert "late: η=0.001, λ=1: memorised at step 40" in res.output and "not generalised yet" in res.output
    res = CliRunner().invoke(main, ["forecast", str(tmp_path / "runs"), "--calibration", str(cal_file), "--json"])
    out = json.loads(res.output)
    assert set(out) == {"r0", "r1", "r2", "late"} and out["r0"]["t_mem"] == 40
    assert out["r1"]["forecasts"][0]["step"] == 40
    assert "off by" in CliRunner().invoke(main, ["forecast", str(tmp_path / "runs" / "r1"), "--calibration",
                                                 str(cal_file)]).output
    # --follow with no trainer writing: one pass, then it returns
    res = CliRunner().invoke(main, ["forecast", str(tmp_path / "runs" / "r1"), "--calibration", str(cal_file),
                                    "--follow", "--poll", "0.1"])
    assert res.exit_code == 0 and res.output.count("r1: η=") == 1


def test_refusals_are_one_line(tmp_path):
    run = tmp_path / "r"
    runs.write_run_json(run, MODEL, {"name": "xor", "kwargs": {}, "seed": 0}, {"loss": "ce"})
    runs.save_checkpoint(runs.checkpoint_path(run, 0), {"w": torch.ones(3)}, 0)
    (r,) = find_runs(run)
    with pytest.raises(ForecastError, match=r"run.json: train.lr=None and train.weight_decay=None"):
        read_run(r)
    with pytest.raises(ForecastError, match="at least 2 runs"):
        calibrate([])
    bad = tmp_path / "bad.json"
    bad.write_text("{}")
    res = CliRunner().invoke(main, ["forecast", str(run), "--calibration", str(bad)])
    assert res.exit_code != 0 and "bad.json: not a forecast calibration" in res.output
    assert len(res.output.strip().splitlines()) == 1


def test_live_line_for_the_demo_status(tmp_path):
    """The line ``grokscope demo`` prints beside its probing: the latest checkpoint's forecast; nothing
    before memorisation or for a run the law cannot take."""
    from grokscope.forecast import live_line

    cal = Calibration(kappa=KAPPA, log_vstar=LOG_VSTAR, q_lo=-0.1, q_hi=0.1, n_runs=5)
    run, _ = _law_run(tmp_path, "r", 2e-3, 1.0, 3000.0)
    (r,) = find_runs(run)
    s = read_run(r)
    last = forecasts(s, cal)[-1]
    assert live_line(run, cal).startswith(f"forecast at step {last.step}: generalises at step {last.predicted:.0f}")
    assert f"(generalised at step {s.t_grok})" in live_line(run, cal)
    bare = tmp_path / "bare"
    runs.write_run_json(bare, MODEL, {"name": "xor", "kwargs": {}, "seed": 0}, {"loss": "ce"})
    runs.save_checkpoint(runs.checkpoint_path(bare, 0), {"w": torch.ones(3)}, 0)
    assert live_line(bare, cal) == ""
