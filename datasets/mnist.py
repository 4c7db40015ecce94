"""MNIST and Fashion-MNIST from a local folder of IDX files (raw or gzip), read with numpy only.

The folder holds the four official files, each either raw or with a ``.gz`` suffix::

    train-images-idx3-ubyte   train-labels-idx1-ubyte   t10k-images-idx3-ubyte   t10k-labels-idx1-ubyte

IDX layout: a big-endian header ``0x00 0x00 <type> <ndim>`` (type ``0x08`` = unsigned byte, so
images start with magic ``0x00000803`` and labels with ``0x00000801``), then ``ndim`` big-endian
uint32 sizes, then the data. Images come back as float32 ``(n, 1, rows, cols)`` in [0, 1]
(``(n, 1, 28, 28)`` for MNIST), labels as int64 ``(n,)``.
"""

from __future__ import annotations

import gzip
import zlib
from pathlib import Path

import numpy as np
import torch

from .base import Data, DatasetError, default_data_root, seeded_subset, standardise_images

# test accuracy at which this task counts as generalised (image classification, GrokAlign Table 1)
GROK_THRESHOLD = 0.85

FILES = {
    "train_images": "train-images-idx3-ubyte",
    "train_labels": "train-labels-idx1-ubyte",
    "test_images": "t10k-images-idx3-ubyte",
    "test_labels": "t10k-labels-idx1-ubyte",
}
IMAGE_MAGIC = 0x00000803
LABEL_MAGIC = 0x00000801
VARIANTS = {"mnist": "mnist", "fashion": "fashion_mnist"}
SELECTIONS = ("random", "first")
MNIST_MEAN, MNIST_STD = 0.1307, 0.3081  # the usual MNIST constants (GrokAlign's Table 1 run)


def _read_bytes(path: Path) -> bytes:
    """The decompressed content of ``path`` (gzip if it ends in ``.gz``)."""
    try:
        if path.suffix == ".gz":
            with gzip.open(path, "rb") as f:
                return f.read()
        return path.read_bytes()
    except (EOFError, OSError, zlib.error) as e:
        raise DatasetError(f"{path}: cannot read ({'corrupt or truncated gzip' if path.suffix == '.gz' else 'I/O error'}: {e})") from e


def read_idx(path: str | Path, magic: int, ndim: int) -> np.ndarray:
    """Parse an unsigned-byte IDX file into a uint8 array of the shape its header declares.

    ``magic`` is the expected 4-byte magic number (``0x803`` for images, ``0x801`` for labels) and
    ``ndim`` the number of dimensions it implies. Raises :class:`DatasetError` naming the file on a
    wrong magic number, a short header or data shorter/longer than the header says.
    """
    path = Path(path)
    raw = _read_bytes(path)
    if len(raw) < 4:
        raise DatasetError(f"{path}: truncated IDX file ({len(raw)} bytes, expected a 4-byte magic number "
                           f"0x{magic:08x} and a header)")
    got = int.from_bytes(raw[:4], "big")
    if got != magic:
        raise DatasetError(f"{path}: wrong IDX magic number 0x{got:08x}, expected 0x{magic:08x} "
                           f"(unsigned-byte {'images' if magic == IMAGE_MAGIC else 'labels'} with {ndim} dims)")
    header = 4 + 4 * ndim
    if len(raw) < header:
        raise DatasetError(f"{path}: truncated IDX header ({len(raw)} bytes, expected {header})")
    dims = tuple(int(d) for d in np.frombuffer(raw, dtype=">u4", count=ndim, offset=4))
    expected = int(np.prod(dims, dtype=np.int64))
    have = len(raw) - header
    if have != expected:
        what = "truncated" if have < expected else "has trailing bytes"
        raise DatasetError(f"{path}: {what}: header declares shape {dims} = {expected} bytes of data, "
                           f"file has {have}")
    return np.frombuffer(raw, dtype=np.uint8, offset=header).reshape(dims)


def _find(root: Path, base: str) -> Path | None:
    for name in (base, base + ".gz"):
        if (root / name).is_file():
            return root / name
    return None


def find_files(root: Path) -> dict[str, Path]:
    """The four IDX files in ``root`` (raw preferred over ``.gz``), or one :class:`DatasetError` that
    names the folder and every expected file name."""
    found = {key: _find(root, base) for key, base in FILES.items()}
    missing = [FILES[k] for k, v in found.items() if v is None]
    if missing:
        expected = ", ".join(f"{b}[.gz]" for b in FILES.values())
        state = "does not exist" if not root.is_dir() else f"lacks {', '.join(missing)}"
        raise DatasetError(f"MNIST-style data folder {root} {state}; expected the IDX files {expected} "
                           "(raw or gzip). Pass root=... or set GROKSCOPE_DATA.")
    return found  # type: ignore[return-value]


def _split(images_path: Path, labels_path: Path) -> tuple[np.ndarray, np.ndarray]:
    images = read_idx(images_path, IMAGE_MAGIC, 3)
    labels = read_idx(labels_path, LABEL_MAGIC, 1)
    if len(images) != len(labels):
        raise DatasetError(f"{images_path} has {len(images)} images but {labels_path} has {len(labels)} labels")
    if labels.size and labels.max() > 9:
        raise DatasetError(f"{labels_path}: label {int(labels.max())} out of range 0..9")
    return images, labels


def _take(images: np.ndarray, labels: np.ndarray, idx: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Subset first (on uint8), then convert: float32 ``(k, 1, rows, cols)`` in [0, 1], int64 labels."""
    i = idx.numpy()
    x = torch.from_numpy(images[i].astype(np.float32) / 255.0).unsqueeze(1)
    return x, torch.from_numpy(labels[i].astype(np.int64))


def load(seed: int = 0, root: str | None = None, n_train: int | None = 1000, n_test: int | None = None,
         variant: str = "mnist", normalize: bool = False, selection: str = "random") -> Data:
    """MNIST (``variant="mnist"``) or Fashion-MNIST (``"fashion"``) from IDX files in ``root``.

    ``root`` defaults to ``$GROKSCOPE_DATA/mnist`` (``.../fashion_mnist`` for Fashion), else
    ``~/.grokscope/data/<same>``. ``n_train`` / ``n_test`` pick a seeded random subset of the 60 000 /
    10 000 images (None: all; the papers use 1 000 training images); ``selection="first"`` takes the
    first ``n_train`` / ``n_test`` images of each file instead, in file order (torchvision's
    ``Subset(dataset, range(n))``, GrokAlign's split). ``normalize`` maps pixels to
    ``(x - 0.1307) / 0.3081``; the box is then ``[(0 - 0.1307)/0.3081, (1 - 0.1307)/0.3081]`` and the
    constants are recorded in ``meta["normalize"]``.
    """
    if variant not in VARIANTS:
        raise DatasetError(f"unknown MNIST variant {variant!r}; valid: {', '.join(VARIANTS)}")
    if selection not in SELECTIONS:
        raise DatasetError(f"{variant}: selection={selection!r}; valid: {', '.join(SELECTIONS)}")
    folder = Path(root).expanduser() if root is not None else default_data_root(VARIANTS[variant])
    files = find_files(folder)
    tr_images, tr_labels = _split(files["train_images"], files["train_labels"])
    te_images, te_labels = _split(files["test_images"], files["test_labels"])
    if tr_images.shape[1:] != te_images.shape[1:]:
        raise DatasetError(f"{folder}: train images are {tr_images.shape[1:]} but test images {te_images.shape[1:]}")
    try:
        tr = seeded_subset(len(tr_labels), n_train, seed, first=selection == "first")
        te = seeded_subset(len(te_labels), n_test, seed + 1, first=selection == "first")
    except DatasetError as e:
        raise DatasetError(f"{variant} in {folder}: {e}") from e
    x_train, y_train = _take(tr_images, tr_labels, tr)
    x_test, y_test = _take(te_images, te_labels, te)
    shape = x_train.shape[1:]
    low, high = torch.zeros(shape), torch.ones(shape)
    norm = None
    if normalize:
        norm = {"mean": [MNIST_MEAN], "std": [MNIST_STD]}
        x_train, low, high = standardise_images(x_train, norm["mean"], norm["std"])
        x_test, _, _ = standardise_images(x_test, norm["mean"], norm["std"])
    return Data(name=VARIANTS[variant], x_train=x_train, y_train=y_train, x_test=x_test, y_test=y_test,
                n_classes=10, box_low=low, box_high=high,
                grok_threshold=GROK_THRESHOLD,
                meta={"variant": variant, "source": str(folder), "normalize": norm, "selection": selection,
                      "n_available": {"train": int(len(tr_labels)), "test": int(len(te_labels))}})
