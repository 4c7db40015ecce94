"""The induction-head series, short: the ``induction`` preset trained 400 steps here (seed 0) and
probed with ``acc``; the ICL score falls by more than one nat over the series, the last token becomes
predictable, and the tokens before any repeat stay at chance (``log vocab``: nothing can predict them)."""

from __future__ import annotations

import math
import time

import numpy as np
import pytest
import torch

import grokscope
from grokscope.datasets import load_dataset
from grokscope.engine.store_view import load_group
from grokscope.training import preset_config, train_run

MARGIN = 1.0  # nats: the ICL score must fall by more than this (measured: 1.75 at step 400, seed 0)


def test_short_induction_series_icl_score_falls(tmp_path):
    cfg = preset_config("induction", steps=400, save="every:100", seed=0)
    t0 = time.perf_counter()
    run = train_run(cfg, tmp_path / "run", progress=False, threads=1)
    wall = time.perf_counter() - t0
    meta = load_dataset(cfg.dataset).meta
    early, late = meta["icl_early"], meta["icl_late"]
    summary = grokscope.probe(run, {"acc": {"icl_early": early, "icl_late": late}}, scheduler="sync")
    assert summary.ok, summary.failures
    acc = load_group(run / "probes.zarr", run.name, "acc")
    assert list(acc.step.values) == [0, 100, 200, 300, 400]
    score = acc.icl_score.sel(split="test").values
    lbp = acc.loss_by_position.sel(split="test")
    log_v = math.log(meta["vocab"])
    print(f"\ninduction series (400 steps, {wall:.1f} s training): ICL score {np.round(score, 3).tolist()}")
    assert score[-1] - score[0] < -MARGIN
    assert float(lbp.sel(position=late).values[-1]) < log_v - MARGIN
    # before the first repeat no model can do better than chance (a leak of later tokens would)
    for pos in range(1, meta["min_span"]):
        assert (lbp.sel(position=pos).values > log_v - 0.1).all(), pos
    # the trainer's log holds the same next-token loss as the probe at the saved steps
    from grokscope import runs

    log = {r["step"]: r for r in runs.read_log(run)}
    for i, step in enumerate(acc.step.values):
        assert log[int(step)]["test_loss"] == pytest.approx(float(acc.loss.sel(split="test").values[i]), rel=1e-6)


def test_induction_dataset_repeats_spans_of_varying_period():
    d = load_dataset({"name": "induction", "kwargs": {"vocab": 16, "span": 8, "n_train": 64, "n_test": 16}, "seed": 3})
    assert d.is_lm and d.seq_len == 16 and d.vocab_size == 16 and d.mask_train is None
    periods = set()
    for row in torch.cat([d.x_train, d.x_test]).tolist():
        p = next(p for p in range(4, 9) if all(row[t] == row[t % p] for t in range(16)))
        periods.add(p)
    assert periods == {4, 5, 6, 7, 8}
    again = load_dataset({"name": "induction", "kwargs": {"vocab": 16, "span": 8, "n_train": 64, "n_test": 16}, "seed": 3})
    assert torch.equal(again.x_train, d.x_train) and not torch.equal(d.x_train[:16], d.x_test)
