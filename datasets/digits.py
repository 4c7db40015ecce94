"""scikit-learn's 8x8 handwritten digits (1 797 real images shipped inside scikit-learn; offline).

Images are scaled to [0, 1] and shaped ``(1, 8, 8)``; the offline stand-in for MNIST.
"""

from __future__ import annotations

import torch

from .base import Data, DatasetError, split_indices

# test accuracy at which this task counts as generalised (image classification, GrokAlign Table 1)
GROK_THRESHOLD = 0.85


def load(seed: int = 0, n_train: int = 1000, n_test: int | None = None, split: str = "seeded") -> Data:
    """A split of the 1 797 digits (in scikit-learn's order): ``split="seeded"`` takes ``n_train`` at
    random (seeded) for training and the rest (or ``n_test`` of it) for test; ``"first:N"`` the first N
    for training; ``"indices:PATH"`` the ``train_idx``/``test_idx`` of a file (see
    :func:`.base.split_indices`)."""
    from sklearn.datasets import load_digits

    bunch = load_digits()
    x = torch.tensor(bunch.images, dtype=torch.float32).unsqueeze(1) / 16.0
    y = torch.tensor(bunch.target, dtype=torch.int64)
    n = len(y)
    if split == "seeded" and not 1 <= n_train < n:
        raise DatasetError(f"digits: n_train must be in [1, {n - 1}], got {n_train}")
    tr, rest = split_indices(n, split, seed, n_train, "digits")
    if n_test is not None:
        if n_test > len(rest):
            raise DatasetError(f"digits: n_test={n_test} but only {len(rest)} images remain")
        rest = rest[:n_test]
    return Data(name="digits", x_train=x[tr], y_train=y[tr], x_test=x[rest], y_test=y[rest],
                n_classes=10, box_low=torch.zeros(1, 8, 8), box_high=torch.ones(1, 8, 8),
                grok_threshold=GROK_THRESHOLD,
                meta={"scale": "[0, 1]"})
