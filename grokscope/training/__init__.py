"""Training: ``train_run(TrainConfig, run_dir)``, the papers' presets, save schedules, regularisers.

Names are imported lazily so ``import grokscope.training`` (and ``grokscope train --help``) stays cheap.
"""

from __future__ import annotations

import importlib
from typing import Any

_EXPORTS = {
    "TrainConfig": "config",
    "TrainConfigError": "config",
    "train_run": "trainer",
    "TrainingError": "trainer",
    "evaluate": "trainer",
    "PRESETS": "presets",
    "DEFAULT_PRESET": "presets",
    "preset_config": "presets",
    "parse_schedule": "schedule",
    "log_steps": "schedule",
}

__all__ = sorted(_EXPORTS)


def __getattr__(name: str) -> Any:
    if name in _EXPORTS:
        return getattr(importlib.import_module(f"{__name__}.{_EXPORTS[name]}"), name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
