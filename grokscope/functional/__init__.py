"""Mechanics that every probe shares, so that a probe module is only its maths.

* :func:`eval_mode` — run a model in eval mode and give it back in the mode it came in.
* :func:`subset_indices` / :func:`split_subset` — the points of a split a probe uses (all, the first k,
  or a seeded k); :func:`subset_size` — how many, without choosing them (a template's sample dim).
* :func:`pad_stack` — stack ragged per-split results, padded by one rule (:func:`pad_value`: NaN for
  floats, -1 for integers, False for booleans).
* :mod:`grokscope.functional.kinks` — where a network bends: its kinked nonlinearities, written as
  activation modules or as functional calls (``F.relu``, ``x.clamp(min=0)``, ...), found and named
  during a forward pass (used by the ``lc`` and ``regions`` probes; :func:`~.kinks.kink_layers` lists them).
* :mod:`grokscope.functional.precision` — the float32 precision a probe needs (``precision_guard``:
  no TF32, no bf16, no autocast; the engine applies it to probes with ``precision_mode = "strict"``).
"""

from __future__ import annotations

from .modes import eval_mode
from .points import pad_stack, pad_value, split_subset, subset_indices, subset_size

__all__ = ["eval_mode", "pad_stack", "pad_value", "split_subset", "subset_indices", "subset_size"]
