"""Datasets by name. ``load_dataset({"name": ..., "kwargs": {...}, "seed": S})`` returns :class:`Data`.

A dataset ``name`` is one of

* a built-in (``DATASETS``: each module in this folder defines ``load(seed: int, **kwargs) -> Data``;
  add a module and list it here to add a task);
* a name registered by an installed package under the entry point ``grokscope.datasets``
  (``name = "pkg.module:load"``);
* ``pkg.module:callable``: a callable following the dataset protocol (:mod:`.protocol`), imported
  only when the user vouched for it (:mod:`grokscope.trust`);
* ``file:PATH``: arrays in a file, no code at all (:mod:`.files`).
"""

from __future__ import annotations

import inspect
from typing import Any

from grokscope.registry import Registry
from grokscope.trust import Trust, check_plain_json

from .base import DEFAULT_GROK_THRESHOLD, Data, DatasetError, box_from_tensor, seeded_subset, task_facts
from grokscope import codepath
from grokscope.errors import GrokscopeError
from grokscope.errors import user_code_failure

DATASETS = {
    "modular": "modular",
    "digits": "digits",
    "mnist": "mnist",
    "mnist5k": "mnist5k",
    "fashion_mnist": "mnist",
    "cifar10": "cifar10",
    "xor": "xor",
    "induction": "induction",
}
ENTRY_POINT_GROUP = "grokscope.datasets"
FILE_PREFIX = "file:"
REGISTRY = Registry("dataset", {n: f"{__name__}.{m}:load" for n, m in DATASETS.items()},
                    ENTRY_POINT_GROUP, error=DatasetError)

__all__ = ["DEFAULT_GROK_THRESHOLD", "Data", "DatasetError", "DATASETS", "task_facts", "REGISTRY",
           "check_dataset_spec", "describe_data",
           "load_dataset", "box_from_tensor", "seeded_subset"]


def check_dataset_spec(spec: dict[str, Any], trust: Trust | None = None, where: str = "the dataset spec") -> str:
    """The import path a dataset spec's ``name`` resolves to (``""`` for ``file:``), once it is known
    to be allowed; its kwargs checked to be plain JSON. Imports nothing."""
    name = spec.get("name")
    if not isinstance(name, str) or not name:
        raise DatasetError(f"{where}: the dataset needs a 'name'")
    check_plain_json(spec.get("kwargs") or {}, f"{where}: dataset kwargs", DatasetError)
    if name.startswith(FILE_PREFIX):
        return ""
    target = REGISTRY.check(name, trust, where)
    _code_folder(spec, name, trust, where, use=False)
    return target


def _code_folder(spec: dict[str, Any], name: str, trust: Trust | None, where: str, use: bool) -> None:
    """Check (and with ``use`` put on the import path) the folder the spec's callable is imported
    from (:mod:`grokscope.codepath`)."""

    try:
        (codepath.use if use else codepath.check)(spec, name, trust, "dataset", where)
    except ValueError as e:
        if isinstance(e, GrokscopeError):
            raise
        raise DatasetError(str(e)) from None


def load_dataset(spec: dict[str, Any], trust: Trust | None = None, where: str = "the dataset spec") -> Data:
    """Build the dataset described by ``spec = {"name", "kwargs", "seed"}``.

    ``trust`` decides which callables named by import path may be imported (None: the user's own
    allow-list); ``where`` names the spec's file in errors. Raises :class:`DatasetError` (naming the
    valid datasets for an unknown name) or :class:`grokscope.trust.UntrustedCode`.
    """
    name = spec["name"] if isinstance(spec.get("name"), str) else ""
    check_dataset_spec(spec, trust, where)
    kwargs = dict(spec.get("kwargs") or {})
    seed = int(spec.get("seed", 0))
    if name.startswith(FILE_PREFIX):
        from .files import load_file_dataset

        data = load_file_dataset(name[len(FILE_PREFIX):], seed=seed, **kwargs)
    else:
        _code_folder(spec, name, trust, where, use=True)
        fn = REGISTRY.load(name, trust, where)
        if name == "fashion_mnist":
            kwargs.setdefault("variant", "fashion")
        try:
            takes_seed = "seed" in inspect.signature(fn).parameters
        except (TypeError, ValueError):
            takes_seed = True
        try:
            out = fn(seed=seed, **kwargs) if takes_seed else fn(**kwargs)
        except DatasetError:
            raise
        except TypeError as e:
            raise DatasetError(f"bad arguments for dataset {name!r}: {e}") from e
        except Exception as e:  # noqa: BLE001 - a callable's own failure: one line naming it
            if name in DATASETS:
                raise  # a built-in's failure is a bug: keep its traceback

            raise DatasetError(user_code_failure(f"{where}: dataset {name!r}", e)) from None
        from .protocol import as_data

        data = as_data(out, name, f"dataset {name!r}")
    data.spec = {"name": name, "kwargs": dict(spec.get("kwargs") or {}), "seed": seed}
    data.meta.setdefault("split", describe_split(data.spec))
    return data


def describe_split(spec: dict[str, Any]) -> str:
    """Which train/test split a dataset spec gives, in a few words (from the spec alone)."""
    name, kw = spec.get("name", ""), spec.get("kwargs") or {}
    if str(name).startswith(FILE_PREFIX):
        from .files import split_words

        return split_words(kw)
    split = kw.get("split", "seeded")
    if split == "seeded":
        return f"seeded split (seed {int(spec.get('seed', 0))})"
    return f"split {split}"


def describe_data(spec: dict[str, Any] | None) -> str:
    """``"digits, seeded split (seed 0)"``: the data and split a run was probed on, for captions."""
    if not isinstance(spec, dict) or not spec.get("name"):
        return "unknown data"
    kw = spec.get("kwargs") or {}
    extra = ", ".join(f"{k}={kw[k]}" for k in ("p", "op", "n_train") if k in kw)
    return f"{spec['name']}{f' ({extra})' if extra else ''}, {describe_split(spec)}"
