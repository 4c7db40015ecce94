"""Datasets by name. ``load_dataset({"name": ..., "kwargs": {...}, "seed": S})`` returns :class:`Data`.

Each module in this folder defines ``load(seed: int, **kwargs) -> Data``; add a module and list it in
``DATASETS`` to register a new task.
"""

from __future__ import annotations

import importlib
from typing import Any

from .base import Data, DatasetError, box_from_tensor, seeded_subset

DATASETS = {
    "modular": "modular",
    "digits": "digits",
    "mnist": "mnist",
    "mnist5k": "mnist5k",
    "fashion_mnist": "mnist",
    "cifar10": "cifar10",
    "xor": "xor",
}

__all__ = ["Data", "DatasetError", "DATASETS", "load_dataset", "box_from_tensor", "seeded_subset"]


def load_dataset(spec: dict[str, Any]) -> Data:
    """Build the dataset described by ``spec = {"name", "kwargs", "seed"}``.

    Raises :class:`DatasetError` naming the valid datasets for an unknown name.
    """
    name = spec.get("name")
    if name not in DATASETS:
        raise DatasetError(f"unknown dataset {name!r}; valid names: {', '.join(sorted(DATASETS))}")
    module = importlib.import_module(f"{__name__}.{DATASETS[name]}")
    kwargs = dict(spec.get("kwargs") or {})
    if name == "fashion_mnist":
        kwargs.setdefault("variant", "fashion")
    try:
        data = module.load(seed=int(spec.get("seed", 0)), **kwargs)
    except TypeError as e:
        raise DatasetError(f"bad arguments for dataset {name!r}: {e}") from e
    data.spec = {"name": name, "kwargs": dict(spec.get("kwargs") or {}), "seed": int(spec.get("seed", 0))}
    return data
