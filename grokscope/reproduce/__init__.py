"""The papers' headline results, one command each (``grokscope reproduce NAME [--out DIR] [--quick]``,
:mod:`grokscope.cli.reproduce`).

Each entry trains (or simulates), probes, draws the figure that corresponds to the paper's and writes
``paper_vs_run.md``, a table of the paper's numbers beside this run's, and ``results.json``.
``--quick`` runs a few hundred steps of the same pipeline (what the tests run; no claim). Re-running
reuses what ``--out`` already holds: a finished training run, the probes already in the store.
"""

from __future__ import annotations

import importlib
from pathlib import Path

from grokscope.errors import GrokscopeError

# name: (module, what it reproduces, full-run cost on 2 shared CPU cores)
REPRODUCTIONS = {
    "humayun-mnist": ("grokscope.reproduce.humayun",
                      "Humayun et al. Fig. 2: LC phases, region migration, delayed robustness (MNIST MLP, 10⁵ steps)",
                      "hours on 2 shared cores (training alone ≈ 10 min on an idle core)"),
    "grokalign-mnist": ("grokscope.reproduce.grokalign",
                        "GrokAlign Table 1 (MSE): steps to 85 % test accuracy, weight decay vs GrokAlign",
                        "hours on 2 shared cores (18 / 31 ms per step on an idle core, float64)"),
    "musat": ("grokscope.reproduce.musat",
              "Musat §7 / Fig. 4: grokking of the closed-form first-layer dynamics, a + b mod 37",
              "≈ 2-5 min"),
    "nanda": ("grokscope.reproduce.nanda",
              "Nanda et al.: key frequencies, grokking and its three phases (1-layer transformer, a + b mod 113)",
              "≈ 1-1.5 hours on 2 cores (20 000 full-batch steps at 160-200 s per 1 000, then 85 "
              "checkpoints probed); resumable, so it can run in sittings"),
}
# Left out, and why (measured on this project's 2-core CPU machine).
NOT_INCLUDED: dict[str, str] = {}


class ReproduceError(GrokscopeError, ValueError):
    """An unknown reproduction, or one whose training or probing failed; the message names it."""


def check_name(name: str) -> None:
    """:class:`ReproduceError` unless ``name`` is a reproduction (the message lists them, and says why
    a left-out one is not included)."""
    if name not in REPRODUCTIONS:
        raise ReproduceError(f"unknown reproduction {name!r}; valid: {', '.join(REPRODUCTIONS)}"
                             + (f" ({name} is not included: {NOT_INCLUDED[name]})" if name in NOT_INCLUDED else ""))


def run_reproduction(name: str, out: Path, quick: bool = False, threads: int = 1) -> dict:
    """Run reproduction ``name`` into ``out``; returns the module's result (``{"files": [...], ...}``)."""
    check_name(name)
    module = importlib.import_module(REPRODUCTIONS[name][0])
    return module.run(Path(out), quick=quick, threads=threads)
