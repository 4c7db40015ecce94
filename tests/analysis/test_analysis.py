import json
import math

import numpy as np
import pytest

from grokscope.analysis import (change_point, first_crossing, grok_threshold_for, largest_move, lc_phases,
                                lead_lag, onset, smooth_log_time)


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


# ---- synthetic curves with known answers, noise included ------------------------------------------

STEPS = np.unique(np.logspace(0, 5, 160).astype(int))
LOGT = np.log10(STEPS)


def _sigmoid(z):
    return 1.0 / (1.0 + np.exp(-z))


@pytest.mark.parametrize("seed", range(10))
def test_onset_of_noisy_log_time_sigmoid(seed):
    rng = np.random.default_rng(seed)
    acc = 0.05 + 0.9 * _sigmoid((LOGT - 3.0) / 0.08) + rng.normal(0, 0.04, LOGT.size)
    # the noise-free curve crosses 0.5 at exactly 10^3
    t = onset(STEPS, acc, 0.5, window=5, patience=3)
    assert abs(math.log10(t) - 3.0) < 0.1
    # raw first crossing of a high threshold is dragged early by noise spikes; patience guards it
    assert onset(STEPS, acc, 0.9, window=5, patience=3) >= onset(STEPS, acc, 0.9)


def test_onset_never_and_below():
    vals = np.linspace(1.0, 0.0, 10)
    assert math.isnan(onset(np.arange(10), vals, 2.0))
    assert onset(np.arange(10), vals, 0.5, above=False) == 5
    with pytest.raises(ValueError, match="equal length"):
        onset(np.arange(3), np.arange(4), 0.5)


def _lc_curve(rng, noise):
    # first descent to 10^1, ascent to a peak at 10^3, second descent to the end (known answers)
    lc = np.where(LOGT < 1, 50 - 20 * LOGT, np.where(LOGT < 3, 30 + 25 * (LOGT - 1), 80 - 30 * (LOGT - 3)))
    return lc + rng.normal(0, noise * (lc.max() - lc.min()), LOGT.size)


@pytest.mark.parametrize("seed", range(10))
def test_lc_phases_of_noisy_curve(seed):
    # noise 2 % of the range: the first descent (50 -> 30, truncated at the start by the smoothing
    # window) is then > 4 x the noise; at 3 % it measures ~4 noise widths and can count as noise
    ph = lc_phases(STEPS, _lc_curve(np.random.default_rng(seed), 0.02), window=7)
    assert abs(math.log10(ph["t_min1"]) - 1.0) < 0.25
    assert abs(math.log10(ph["t_peak"]) - 3.0) < 0.25
    assert math.log10(ph["t_min2"]) > 4.7
    # half of the second descent (80 -> 20) is done at LC = 50: log t = 4
    assert abs(math.log10(ph["t_fall_half"]) - 4.0) < 0.25
    assert ph["has_first_descent"] and ph["has_ascent"] and ph["has_second_descent"]
    assert 40 < ph["rise"] < 60 and 50 < ph["depth"] < 70


@pytest.mark.parametrize("seed", range(5))
def test_lc_phases_rising_curve_has_no_second_descent(seed):
    rng = np.random.default_rng(seed)
    lc = 10 + 5 * LOGT + rng.normal(0, 0.5, LOGT.size)
    ph = lc_phases(STEPS, lc, window=7)
    assert ph["has_ascent"] and not ph["has_second_descent"] and not ph["has_first_descent"]
    assert math.isnan(change_point(STEPS, lc, "fall", window=7))


@pytest.mark.parametrize("seed", range(5))
def test_change_point_half_of_largest_move(seed):
    rng = np.random.default_rng(seed)
    # rises 0 -> 1 around 10^2 (the largest move), then falls a little (0.3) around 10^4
    y = _sigmoid((LOGT - 2) / 0.1) - 0.3 * _sigmoid((LOGT - 4) / 0.1) + rng.normal(0, 0.02, LOGT.size)
    assert abs(math.log10(change_point(STEPS, y, "rise", 0.5)) - 2.0) < 0.1
    assert abs(math.log10(change_point(STEPS, y, "rise", 0.9)) - 2.0 - 0.1 * math.log(9)) < 0.15
    # the fall is 30 % of the range: found; with tol 0.5 it counts as noise
    assert abs(math.log10(change_point(STEPS, y, "fall", 0.5)) - 4.0) < 0.15
    assert math.isnan(change_point(STEPS, y, "fall", 0.5, tol=0.5))


def test_largest_move_is_max_drawdown():
    v = np.array([5.0, 1.0, 4.0, 0.5, 3.0, 2.0])
    assert largest_move(v, "rise") == (1, 2)  # 3.0 beats 2.5: first of the largest
    assert largest_move(v, "fall") == (0, 3)
    assert largest_move(np.array([3.0, 2.0, 1.0]), "rise") == (0, 0)


def test_lead_lag_order_and_decades():
    ll = lead_lag(99.0, 9999.0, "lc_fall", "generalisation")
    assert ll["order"] == "lc_fall first" and ll["lag_decades"] == pytest.approx(2.0)
    assert lead_lag(1000.0, 1100.0)["order"] == "together"
    assert lead_lag(1000.0, 100.0, "x", "y")["order"] == "y first"
    assert lead_lag(math.nan, 100.0)["order"] == "undetermined"


# ---- a real store with known curves ----------------------------------------------------------------

def _strings(*values: str) -> np.ndarray:
    """Variable-length strings, as the engine stores them (numpy's fixed-width unicode has no Zarr v3
    specification: zarr warns UnstableSpecificationWarning)."""
    return np.array(values, dtype=object)


def _known_store(path):
    """A Zarr store laid out like `grokscope probe`'s (run group, probe children, done flags) holding
    curves whose onsets are known: memorised at 10^2, generalised at 10^3.5, robust at eps 0.1 at 10^4,
    LC(train) falls (half way) at 10^4; the last step is not done."""
    import xarray as xr

    steps = STEPS
    lt = LOGT
    train = 0.02 + 0.98 * (lt >= 2)
    test = 0.02 + 0.98 * _sigmoid((lt - 3.5) / 0.05)
    done = np.ones(steps.size, bool)
    done[-1] = False
    acc = xr.Dataset({"accuracy": (("step", "split"), np.stack([train, test], 1)),
                      "done": (("step",), done)}, coords={"step": steps, "split": _strings("train", "test")})
    robust = np.stack([0.9 * _sigmoid((lt - 4) / 0.05), np.zeros_like(lt)], 1)[:, None, :]
    pgd = xr.Dataset({"robust_acc": (("step", "split", "eps"), robust), "done": (("step",), done)},
                     coords={"step": steps, "split": _strings("test"), "eps": [0.1, 0.3]})
    lc_train = 10 + 10 * _sigmoid((lt - 2) / 0.1) - 16 * _sigmoid((lt - 4) / 0.1)
    lc = np.stack([lc_train, lc_train * (1 + lt)], 1)[:, :, None]
    lcds = xr.Dataset({"lc_total_mean": (("step", "split", "radius"), lc), "done": (("step",), done)},
                      coords={"step": steps, "split": _strings("train", "boundary"), "radius": [0.01]})
    tree = xr.DataTree.from_dict({"/runA": xr.Dataset(attrs={"dataset": {"name": "modular"}}),
                                  "/runA/acc": acc, "/runA/pgd": pgd, "/runA/lc": lcds})
    tree.to_zarr(path, zarr_format=3, consolidated=False)
    return xr.open_datatree(path, engine="zarr", consolidated=False)


def test_run_summary_on_a_store_with_known_curves(tmp_path):
    tree = _known_store(tmp_path / "known.zarr")
    s = tree.grok.summary()
    on = s["onsets"]
    assert on["memorisation"]["step"] == STEPS[np.argmax(LOGT >= 2)]
    assert on["generalisation"]["threshold"] == 0.99  # modular: the algorithmic threshold
    assert abs(math.log10(on["generalisation"]["step"]) - (3.5 + 0.05 * math.log(0.97 / 0.01))) < 0.05
    assert abs(math.log10(on["robustness@0.1"]["step"]) - 4.0 - 0.05 * math.log(0.5 / 0.4)) < 0.05
    assert on["robustness@0.3"]["step"] is None
    assert abs(math.log10(on["lc_fall"]["step"]) - 4.0) < 0.1
    assert on["lc_fall"]["kind"] == "change" and on["lc_fall"]["sel"] == {"split": "train", "radius": 0.01}
    order = {(x["a"], x["b"]): x["order"] for x in s["lead_lag"]}
    assert order[("memorisation", "generalisation")] == "memorisation first"
    assert order[("lc_fall", "generalisation")] == "generalisation first"
    assert order[("generalisation", "robustness@0.1")] == "generalisation first"
    assert order[("generalisation", "robustness@0.3")] == "undetermined"
    ph = s["lc_phases"]["train"]
    assert ph["has_ascent"] and ph["has_second_descent"] and abs(math.log10(ph["t_peak"]) - 3.0) < 0.5
    # boundary / train = 1 + log t rises steadily: region migration
    assert s["migration"]["ratio_last"] > s["migration"]["ratio_first"] + 3
    # the last step is not done: never used
    assert s["final"]["test_acc"] == pytest.approx(_test_acc_at(STEPS[-2]))
    assert s["params"]["grok"] is None and s["settings"]["dataset"] == {"name": "modular"}
    json.dumps(s, allow_nan=False)  # JSON-safe
    # a user threshold is carried into the result
    assert tree["runA"].grok.onsets(grok=0.5)["generalisation"].threshold == 0.5
    assert tree.grok.lead_lag("lc_fall", "generalisation")["order"] == "generalisation first"


def test_a_probe_group_dataset_has_the_run_methods_of_its_probe(tmp_path):
    tree = _known_store(tmp_path / "known.zarr")
    acc = tree["runA/acc"].to_dataset()
    with pytest.raises(ValueError, match="not a probe group.*open_store"):
        acc.grok.onsets()
    acc.attrs.update(probe="acc", dataset={"name": "modular"})
    on, whole = acc.grok.onsets(), tree["runA"].grok.onsets()
    assert set(on) == {"memorisation", "generalisation"}  # acc's events only, not pgd's
    for name in on:
        assert on[name] == whole[name]
    assert acc.grok.lead_lag("memorisation", "generalisation")["order"] == "memorisation first"
    assert acc.grok.summary()["onsets"]["generalisation"]["threshold"] == 0.99


def test_run_summary_lc_fall_is_the_big_descent_not_the_first_dip(tmp_path):
    # The curve dips a little first (first descent), rises, then falls a lot: the change point is
    # the big fall.
    tree = _known_store(tmp_path / "known.zarr")
    ds = tree["runA/lc"].to_dataset()
    assert abs(math.log10(ds.grok.change("lc_total_mean", "fall", split="train")) - 4.0) < 0.1


def test_accessor_errors_name_what_is_wrong(tmp_path):
    import xarray as xr

    tree = _known_store(tmp_path / "known.zarr")
    acc = tree["runA/acc"].to_dataset()
    with pytest.raises(ValueError, match="dim 'split' of size 2"):
        acc.grok.onset("accuracy", 0.5)
    with pytest.raises(KeyError, match="split='valid'"):
        acc.grok.onset("accuracy", 0.5, split="valid")
    with pytest.raises(KeyError, match="no variable 'acuracy'"):
        acc.grok.onset("acuracy", 0.5)
    with pytest.raises(KeyError, match="no event 'gini_rise'"):
        tree.grok.lead_lag("gini_rise", "generalisation")
    two = xr.DataTree.from_dict({"/a": tree["runA"].to_dataset(), "/a/acc": acc, "/b/acc": acc})
    with pytest.raises(ValueError, match="select one run"):
        two.grok.onsets()


def test_grok_threshold_per_dataset():
    assert grok_threshold_for({"name": "modular"}) == 0.99
    assert grok_threshold_for({"name": "mnist"}) == 0.85
    assert grok_threshold_for(None) == grok_threshold_for({"name": "mine"}) == 0.95


def _test_acc_at(step):
    return 0.02 + 0.98 * _sigmoid((math.log10(step) - 3.5) / 0.05)


def test_done_steps_sorts_back_filled_steps():
    import xarray as xr

    from grokscope.analysis import done_steps

    ds = xr.Dataset({"accuracy": (("step",), [0.1, 0.9, 0.5, 0.7]), "done": (("step",), [True, True, True, False])},
                    coords={"step": [0, 100, 10, 50]})  # 10 and 50 back-filled after 100
    out = done_steps(ds)
    assert list(out.step.values) == [0, 10, 100] and list(out.accuracy.values) == [0.1, 0.5, 0.9]


@pytest.mark.parametrize("seed", range(5))
def test_noise_level_is_the_noise_not_the_trend(seed):
    from grokscope.analysis import noise_level

    rng = np.random.default_rng(seed)
    trend = 3.0 * _sigmoid((LOGT - 2.5) / 0.6)  # moves by 3, smoothly
    assert noise_level(trend) < 0.01
    noisy = trend + rng.normal(0, 0.05, LOGT.size)
    # slow check: the sample standard deviation of the added noise
    assert noise_level(noisy) == pytest.approx(0.05, rel=0.3)
    assert noise_level([1.0, np.nan]) == 0.0


def test_change_is_named_only_above_the_noise():
    """The issue's case: a curve whose largest rise is a few noise widths is "no clear change"."""
    from grokscope.analysis import largest_change, noise_level

    rng = np.random.default_rng(0)
    flat = 0.08 + rng.normal(0, 0.01, LOGT.size)  # only noise: its largest rise is ~2-3.7 noise widths
    move = largest_change(STEPS, flat, "rise", window=5)
    assert not move["clear"] and math.isnan(move["step"])
    assert move["needed"] == pytest.approx(max(0.2 * (smooth_log_time(flat).max() - smooth_log_time(flat).min()),
                                               4 * noise_level(flat)))
    clean = 0.08 + 0.03 * _sigmoid((LOGT - 3) / 0.1) + rng.normal(0, 0.001, LOGT.size)
    move = largest_change(STEPS, clean, "rise", window=5)
    assert move["clear"] and abs(math.log10(move["step"]) - 3) < 0.1
    assert move["v_start"] == pytest.approx(0.08, abs=0.003) and move["v_end"] == pytest.approx(0.11, abs=0.003)
    assert move["t_start"] < move["step"] < move["t_end"]


def test_thresholds_clear_chance():
    from grokscope.analysis import chance_level, clear_of_chance

    assert chance_level({"name": "xor"}) == 0.5
    assert chance_level({"name": "modular", "kwargs": {"p": 59}}) == pytest.approx(1 / 59)
    assert chance_level({"name": "mnist5k"}) == 0.1 and chance_level({"name": "mine"}) is None
    assert clear_of_chance(0.5, 0.5) == pytest.approx(0.625)  # binary: 0.5 is no onset
    assert clear_of_chance(0.5, 0.1) == 0.5 and clear_of_chance(0.5, None) == 0.5


def test_binary_robustness_onset_needs_more_than_chance(tmp_path):
    """Robust accuracy 0.5-0.55 on a binary task while clean accuracy is 0.51: no robustness onset."""
    import xarray as xr

    steps = np.array([0, 1, 3, 8, 20, 50, 100, 200, 400])
    test = np.array([0.5, 0.5, 0.51, 0.51, 0.6, 0.79, 0.95, 0.99, 0.99])
    acc = xr.Dataset({"accuracy": (("step", "split"), np.stack([np.minimum(test + 0.01, 1), test], 1)),
                      "done": (("step",), np.ones(len(steps), bool))},
                     coords={"step": steps, "split": ["train", "test"]})
    robust = np.array([0.5, 0.5, 0.51, 0.55, 0.5, 0.6, 0.7, 0.8, 0.8])
    pgd = xr.Dataset({"robust_acc": (("step", "split", "eps"), robust[:, None, None]),
                      "done": (("step",), np.ones(len(steps), bool))},
                     coords={"step": steps, "split": ["test"], "eps": [0.03]})
    tree = xr.DataTree.from_dict({"/r": xr.Dataset(attrs={"dataset": {"name": "xor"}}), "/r/acc": acc, "/r/pgd": pgd})
    s = tree.grok.summary()
    rob = s["onsets"]["robustness@0.03"]
    assert rob["threshold"] == pytest.approx(0.625) and rob["step"] == 100
    assert rob["detail"]["asked"] == 0.5 and rob["detail"]["chance"] == 0.5
    phase = s["grok_phase"]  # starts a fifth of the way from chance: 0.6
    assert phase["start_threshold"] == pytest.approx(0.6) and phase["t_start"] == 20
    assert (phase["v_start"], phase["t_before"], phase["v_before"]) == (0.6, 8, 0.51)


def test_threshold_onsets_and_panel_order_come_from_the_probes_declarations():
    """A probe that no grokscope module knows (its group's stored presentation only) gets its threshold
    event as an onset and its panels where its ``panel_order`` puts them; an ``acc`` group stored before
    acc declared its threshold events still gets memorisation and generalisation (from the installed
    class); a change event is not a threshold onset."""
    import xarray as xr

    from grokscope.analysis.runs import declared_events, panel_order_of, standard_onsets
    from grokscope.presentation import EventSpec, PanelSpec, probe_order, to_attrs
    from grokscope.probes import get_probe

    steps = np.array([0, 10, 20, 40, 80])
    done = ("step",), np.ones(steps.size, bool)
    score = xr.Dataset({"score": (("step",), np.array([0.1, 0.2, 0.7, 0.9, 0.95])), "done": done},
                       coords={"step": steps},
                       attrs={"presentation": to_attrs(
                           [PanelSpec("score", "Score", "s")],
                           [EventSpec("fits", "score", "rise", "the score reaching mem", threshold="mem"),
                            EventSpec("score_rise", "score", "rise", "the rise of the score")], order=5)})
    old_acc_presentation = to_attrs(get_probe("acc").panel_specs(), [])  # no events, no order
    acc = xr.Dataset({"accuracy": (("step", "split"), np.array([[0.1, 0.1], [0.5, 0.2], [1, 0.4], [1, 0.97], [1, 1]])),
                      "done": done}, coords={"step": steps, "split": ["train", "test"]},
                     attrs={"presentation": old_acc_presentation})
    tree = xr.DataTree.from_dict({"/r": xr.Dataset(attrs={"dataset": {"name": "modular", "kwargs": {"p": 97}}}),
                                  "/r/acc": acc, "/r/score": score})
    onsets = standard_onsets(tree["r"], mem=0.6)
    assert list(onsets) == ["fits", "memorisation", "generalisation"]  # panel order: score (5) before acc (10)
    assert (onsets["fits"].step, onsets["fits"].probe, onsets["fits"].kind) == (20, "score", "threshold")
    assert onsets["memorisation"].step == 20 and onsets["generalisation"].step == 80  # modular: 0.99
    assert [e.name for e in declared_events(tree["r"])] == ["score_rise"]
    order = panel_order_of([tree["r"]])
    assert probe_order(["acc", "spectral", "score", "llc"], order) == ["score", "acc", "llc", "spectral"]
