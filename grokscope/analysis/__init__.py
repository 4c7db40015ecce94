"""Onsets, phases and lead/lag read off a probe store (docs/algorithms.md#analysis--onsets-and-phases).

These are the numbers `grokscope report` prints, `grokscope plot` draws as vertical lines and the
``ds.grok`` / ``dt.grok`` accessors return. Every threshold, window and fraction is an argument, never
hidden, and every result carries the parameters it was computed with.

Vocabulary (all on the checkpoint axis; checkpoints are log-spaced, so "smoothing" is a running median
over ``window`` consecutive checkpoints, i.e. over a stretch of log-time):

* an **onset** is the first step at which a (smoothed) curve is past a threshold and stays there for
  ``patience`` checkpoints — memorisation, generalisation, robustness at each ε;
* a **change point** is the step at which a curve has completed ``fraction`` of its largest rise (or
  fall) — used for measures without a natural threshold (LC falling, Fourier Gini rising). A move
  counts only when it is larger than both ``tol`` × the curve's range and ``noise_k`` × the curve's
  checkpoint-to-checkpoint noise (:func:`noise_level`); otherwise the curve shows "no clear change";
* accuracy thresholds are raised to **clear chance**: a memorisation, generalisation or robustness
  onset needs at least ``chance + CHANCE_MARGIN · (1 − chance)`` (:func:`clear_of_chance`), chance =
  1 / classes, the classes as the dataset states them or read from its labels (:func:`task_of`);
* **LC phases** (Humayun et al.): first descent, ascent, second descent, found as the largest run-up of
  the smoothed LC curve and the minima either side of it;
* **lead/lag** compares two steps on a log scale (decades), since grokking is a log-time phenomenon.
"""

from __future__ import annotations

from grokscope.reading import done_steps

from .accessors import DatasetGrok, TreeGrok, register_accessors
from .curves import (CHANCE_MARGIN, CHANGE_TOL, DEFAULT_GROK_THRESHOLD, GROK_START, GROK_THRESHOLDS,
                     MEM_THRESHOLD, NOISE_K, ROBUST_THRESHOLD, chance_level, change_point, clear_of_chance,
                     first_crossing, first_logged_step, largest_change, largest_move, lc_phases, lead_lag,
                     noise_level, onset, smooth_log_time)
from .runs import (Onset, accuracy_dataset, declared_events, grok_phase, grok_threshold_for, json_safe,
                   lead_lag_pairs, log_accuracy, probe_dataset, run_events, run_summary, select_curve,
                   standard_onsets, task_of)

__all__ = ["CHANCE_MARGIN", "CHANGE_TOL", "DEFAULT_GROK_THRESHOLD", "DatasetGrok", "GROK_START", "GROK_THRESHOLDS",
           "MEM_THRESHOLD", "NOISE_K", "Onset", "ROBUST_THRESHOLD", "TreeGrok", "accuracy_dataset", "chance_level",
           "change_point", "clear_of_chance", "declared_events", "done_steps", "first_crossing",
           "first_logged_step", "grok_phase", "grok_threshold_for", "json_safe", "largest_change",
           "largest_move", "lc_phases", "lead_lag", "lead_lag_pairs", "log_accuracy", "noise_level", "onset",
           "probe_dataset", "register_accessors", "run_events", "run_summary", "select_curve",
           "smooth_log_time", "standard_onsets", "task_of"]

register_accessors()
