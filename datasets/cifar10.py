"""CIFAR-10 from the official python pickle batches, read with a restricted unpickler.

The folder (``root`` itself or ``root/cifar-10-batches-py``) holds ``data_batch_1`` ... ``data_batch_5``
and ``test_batch``: each a pickled dict with ``data`` (uint8 ``(10000, 3072)``, channel-major
32x32 RGB rows) and ``labels`` (10 000 ints in 0..9); the official files were written by Python 2,
so keys are bytes. ``batches.meta`` (optional) names the classes.

Pickles can run arbitrary code on load, so these files are never given to ``pickle.load``: the
:class:`RestrictedUnpickler` resolves only the handful of globals needed to rebuild dicts, lists,
bytes and numpy arrays, and refuses everything else with :class:`DatasetError`.
"""

from __future__ import annotations

import io
import pickle
from pathlib import Path
from typing import Any, Callable

import numpy as np
import torch

from .base import Data, DatasetError, default_data_root, seeded_subset, standardise_images

# test accuracy at which this task counts as generalised (image classification, GrokAlign Table 1)
GROK_THRESHOLD = 0.85

SUBDIR = "cifar-10-batches-py"
TRAIN_BATCHES = tuple(f"data_batch_{i}" for i in range(1, 6))
TEST_BATCH = "test_batch"
IMAGE_SHAPE = (3, 32, 32)
# normalize=True ("grokalign"): the exact per-channel statistics of the 50 000 training images, as in
# GrokAlign's delayed-robustness script. "humayun": the widely copied kuangliu constants used by
# Humayun et al.'s ResNet code (their random-point box [-2.4291, 2.7537] comes from these).
NORMALISATIONS = {
    "grokalign": {"mean": [0.4914, 0.4822, 0.4465], "std": [0.2470, 0.2435, 0.2616]},
    "humayun": {"mean": [0.4914, 0.4822, 0.4465], "std": [0.2023, 0.1994, 0.2010]},
}


def _latin1_encode(obj: str, encoding: str = "utf-8", errors: str = "strict") -> bytes:
    """``_codecs.encode`` limited to latin-1: how Python 3 pickles ``bytes`` at protocols 0-2."""
    if encoding.lower().replace("-", "").replace("_", "") not in ("latin1", "iso88591"):
        raise pickle.UnpicklingError(f"refusing _codecs.encode with encoding {encoding!r}")
    if not isinstance(obj, str):
        raise pickle.UnpicklingError("refusing _codecs.encode on a non-string")
    return obj.encode("latin-1", errors)


def _numpy_core(module: str, name: str) -> Callable[..., Any]:
    """``name`` from ``numpy._core.<module>`` (numpy >= 2) or ``numpy.core.<module>`` (numpy 1)."""
    import importlib

    for prefix in ("numpy._core", "numpy.core"):
        try:
            return getattr(importlib.import_module(f"{prefix}.{module}"), name)
        except (ImportError, AttributeError):
            continue
    raise pickle.UnpicklingError(f"numpy has no {module}.{name}")


def _allowed() -> dict[tuple[str, str], Callable[[], Any]]:
    allowed: dict[tuple[str, str], Callable[[], Any]] = {
        ("numpy", "ndarray"): lambda: np.ndarray,
        ("numpy", "dtype"): lambda: np.dtype,
        ("_codecs", "encode"): lambda: _latin1_encode,
    }
    for prefix in ("numpy.core", "numpy._core"):
        allowed[(f"{prefix}.multiarray", "_reconstruct")] = lambda: _numpy_core("multiarray", "_reconstruct")
        allowed[(f"{prefix}.multiarray", "scalar")] = lambda: _numpy_core("multiarray", "scalar")
        allowed[(f"{prefix}.numeric", "_frombuffer")] = lambda: _numpy_core("numeric", "_frombuffer")
    return allowed


ALLOWED_GLOBALS = _allowed()


class RestrictedUnpickler(pickle.Unpickler):
    """An unpickler that rebuilds only builtin containers and numpy arrays/dtypes/scalars.

    Any other global (``os.system``, ``builtins.eval``, a user class, ...) raises
    :class:`pickle.UnpicklingError` before it is imported or called.
    """

    def find_class(self, module: str, name: str) -> Any:
        factory = ALLOWED_GLOBALS.get((module, name))
        if factory is None:
            raise pickle.UnpicklingError(f"refusing to load global {module}.{name}: only numpy arrays and "
                                         "builtin containers are allowed in a CIFAR batch")
        return factory()


def safe_load_pickle(path: str | Path) -> Any:
    """Unpickle ``path`` with :class:`RestrictedUnpickler` (``encoding="bytes"`` for Python 2 files).

    Raises :class:`DatasetError` naming the file if it is missing, truncated, malformed or wants
    anything beyond containers and numpy arrays.
    """
    path = Path(path)
    try:
        raw = path.read_bytes()
    except OSError as e:
        raise DatasetError(f"{path}: cannot read: {e}") from e
    try:
        return RestrictedUnpickler(io.BytesIO(raw), encoding="bytes").load()
    except pickle.UnpicklingError as e:
        raise DatasetError(f"{path}: refused or malformed pickle: {e}") from e
    except EOFError as e:
        raise DatasetError(f"{path}: truncated pickle (ended after {len(raw)} bytes)") from e
    except Exception as e:  # anything else a malformed stream can raise (ValueError, KeyError, ...)
        raise DatasetError(f"{path}: malformed pickle: {type(e).__name__}: {e}") from e


def _get(d: dict, key: str, path: Path) -> Any:
    for k in (key.encode(), key):
        if k in d:
            return d[k]
    raise DatasetError(f"{path}: batch dict has no {key!r} entry (keys: {sorted(map(repr, d))})")


def read_batch(path: str | Path) -> tuple[np.ndarray, np.ndarray]:
    """One CIFAR-10 batch file → ``(uint8 images (n, 3, 32, 32), int64 labels (n,))``, validated."""
    path = Path(path)
    d = safe_load_pickle(path)
    if not isinstance(d, dict):
        raise DatasetError(f"{path}: expected a pickled dict with 'data' and 'labels', got {type(d).__name__}")
    data, labels = _get(d, "data", path), _get(d, "labels", path)
    if not isinstance(data, np.ndarray) or data.dtype != np.uint8 or data.ndim != 2 or data.shape[1] != 3072:
        desc = f"{data.dtype} {data.shape}" if isinstance(data, np.ndarray) else type(data).__name__
        raise DatasetError(f"{path}: 'data' must be a uint8 array of shape (n, 3072), got {desc}")
    try:
        y = np.asarray(labels, dtype=np.int64).reshape(-1)
    except (TypeError, ValueError) as e:
        raise DatasetError(f"{path}: 'labels' is not a list of integers: {e}") from e
    if len(y) != len(data):
        raise DatasetError(f"{path}: {len(data)} images but {len(y)} labels")
    if len(y) and (y.min() < 0 or y.max() > 9):
        raise DatasetError(f"{path}: labels must be in 0..9, found {int(y.min())}..{int(y.max())}")
    return data.reshape(-1, *IMAGE_SHAPE), y


def find_folder(root: Path) -> Path:
    """``root/cifar-10-batches-py`` if it exists, else ``root``; checks that every batch is there."""
    folder = root / SUBDIR if (root / SUBDIR).is_dir() else root
    expected = (*TRAIN_BATCHES, TEST_BATCH)
    missing = [n for n in expected if not (folder / n).is_file()]
    if missing:
        state = "does not exist" if not folder.is_dir() else f"lacks {', '.join(missing)}"
        raise DatasetError(f"CIFAR-10 folder {folder} {state}; expected the python batches "
                           f"{', '.join(expected)} (in {root} or {root / SUBDIR}). "
                           "Pass root=... or set GROKSCOPE_DATA.")
    return folder


def _label_names(folder: Path) -> list[str] | None:
    path = folder / "batches.meta"
    if not path.is_file():
        return None
    d = safe_load_pickle(path)
    names = d.get(b"label_names", d.get("label_names")) if isinstance(d, dict) else None
    if names is None:
        return None
    return [n.decode() if isinstance(n, bytes) else str(n) for n in names]


def _to_float(images: np.ndarray, idx: torch.Tensor) -> torch.Tensor:
    return torch.from_numpy(images[idx.numpy()].astype(np.float32) / 255.0)


def load(seed: int = 0, root: str | None = None, n_train: int | None = None, n_test: int | None = None,
         normalize: bool | str = False) -> Data:
    """CIFAR-10 images float32 ``(n, 3, 32, 32)`` in [0, 1] with a seeded subset of each split.

    ``root`` defaults to ``$GROKSCOPE_DATA/cifar10`` else ``~/.grokscope/data/cifar10``.
    ``n_train`` / ``n_test`` (None: all 50 000 / 10 000). ``normalize``: False; True or
    ``"grokalign"`` (exact training-set mean/std); ``"humayun"`` (std 0.2023, 0.1994, 0.2010). Once
    normalised the box is ``((0 - mean)/std, (1 - mean)/std)`` per channel, recorded in ``meta``.
    """
    if normalize is True:
        normalize = "grokalign"
    if normalize and normalize not in NORMALISATIONS:
        raise DatasetError(f"unknown CIFAR-10 normalisation {normalize!r}; valid: False, True, "
                           f"{', '.join(map(repr, NORMALISATIONS))}")
    base = Path(root).expanduser() if root is not None else default_data_root("cifar10")
    folder = find_folder(base)
    train = [read_batch(folder / n) for n in TRAIN_BATCHES]
    tr_images = np.concatenate([b[0] for b in train])
    tr_labels = np.concatenate([b[1] for b in train])
    te_images, te_labels = read_batch(folder / TEST_BATCH)
    try:
        tr = seeded_subset(len(tr_labels), n_train, seed)
        te = seeded_subset(len(te_labels), n_test, seed + 1)
    except DatasetError as e:
        raise DatasetError(f"cifar10 in {folder}: {e}") from e
    x_train, x_test = _to_float(tr_images, tr), _to_float(te_images, te)
    y_train = torch.from_numpy(tr_labels[tr.numpy()])
    y_test = torch.from_numpy(te_labels[te.numpy()])
    low, high = torch.zeros(IMAGE_SHAPE), torch.ones(IMAGE_SHAPE)
    norm = None
    if normalize:
        norm = {"name": normalize, **NORMALISATIONS[normalize]}
        x_train, low, high = standardise_images(x_train, norm["mean"], norm["std"])
        x_test, _, _ = standardise_images(x_test, norm["mean"], norm["std"])
    return Data(name="cifar10", x_train=x_train, y_train=y_train, x_test=x_test, y_test=y_test,
                n_classes=10, box_low=low, box_high=high,
                grok_threshold=GROK_THRESHOLD,
                meta={"source": str(folder), "normalize": norm, "label_names": _label_names(folder),
                      "n_available": {"train": int(len(tr_labels)), "test": int(len(te_labels))}})
