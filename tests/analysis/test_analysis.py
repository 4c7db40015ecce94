import math

import numpy as np

from grokscope.analysis import first_crossing, lc_phases, smooth_log_time


def test_first_crossing_finds_first_step_and_skips_nan():
    steps = np.array([0, 10, 100, 1000, 10000])
    vals = np.array([0.1, np.nan, 0.5, 0.96, 0.99])
    assert first_crossing(steps, vals, 0.95) == 1000
    assert math.isnan(first_crossing(steps, vals, 0.999))
    assert first_crossing(steps, vals, 0.3, above=False) == 0


def test_first_crossing_unsorted_steps():
    assert first_crossing(np.array([100, 0, 10]), np.array([1.0, 0.0, 1.0]), 0.5) == 10


def test_smooth_is_running_median():
    v = np.array([1.0, 100.0, 1.0, 1.0, 1.0])
    assert np.allclose(smooth_log_time(v, 3), [50.5, 1.0, 1.0, 1.0, 1.0])


def test_lc_phases_descent_ascent_descent():
    steps = np.unique(np.logspace(0, 5, 40).astype(int))
    t = np.log10(steps)
    # falls until 10^1, rises to a peak at 10^3, falls again
    lc = np.where(t < 1, 50 - 20 * t, np.where(t < 3, 30 + 25 * (t - 1), 80 - 30 * (t - 3)))
    ph = lc_phases(steps, lc, window=3)
    assert 5 <= ph["t_min1"] <= 20
    assert 500 <= ph["t_peak"] <= 2000
    assert ph["depth"] > 40 and ph["rise"] > 40


def test_lc_phases_short_curve_is_nan():
    assert math.isnan(lc_phases(np.array([1, 2]), np.array([1.0, 2.0]))["t_peak"])


def test_grok_accessor_onset_uses_done_steps_only():
    import xarray as xr

    import grokscope.analysis  # noqa: F401  (registers ds.grok)

    ds = xr.Dataset(
        {"accuracy": (("step", "split"), np.array([[0.1, 0.1], [1.0, 0.2], [1.0, 0.97], [1.0, 0.99]])),
         "done": (("step",), np.array([True, True, False, True]))},
        coords={"step": [0, 10, 100, 1000], "split": ["train", "test"]})
    assert ds.grok.onset("accuracy", 0.95, split="test") == 1000  # step 100 is not done
    assert ds.grok.onset("accuracy", 0.99, split="train") == 10
