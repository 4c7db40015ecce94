"""GrokAlign's high-dimensional XOR task (after Xu et al., "Benign overfitting and grokking in ReLU
networks for XOR cluster data", ICLR 2024), exactly as GrokAlign's ``xor_grokking.py`` draws it.

Each sample ``x ∈ R^dim``:

* signal: ``x[0], x[1]`` drawn independently and uniformly from ``{-1, +1}``;
* noise: ``x[2:]`` drawn independently and uniformly from ``{-eps, +eps}`` (Rademacher × eps, not
  Gaussian).

GrokAlign's target is the ±1 product ``x[0] · x[1]``. Here the label is the XOR of the two signs as a
class: ``y = 1`` if ``x[0] != x[1]`` (product −1), else ``y = 0`` (product +1); ``meta["pm1_of_class"]``
gives the ±1 target of each class (``[+1, -1]``) for the MSE-on-±1 recipe. Train and test are two
independent draws of ``n_train`` and ``n_test`` samples from one seeded generator (train first).
The box is ``[-1, 1]`` on the two signal coordinates and ``[-eps, eps]`` on the noise coordinates.
GrokAlign's setting: ``dim = 40 000``, 400 + 400 samples, ``eps = 0.05``.
"""

from __future__ import annotations

import torch

from .base import Data, DatasetError

# test accuracy at which this task counts as generalised (algorithmic task)
GROK_THRESHOLD = 0.99


def _draw(n: int, dim: int, eps: float, g: torch.Generator) -> tuple[torch.Tensor, torch.Tensor]:
    """``n`` samples ``(n, dim)`` float32 and their classes ``(n,)`` int64 (see module docstring)."""
    signs = torch.randint(0, 2, (n, dim), generator=g, dtype=torch.int8).float().mul_(2).sub_(1)
    x = signs
    x[:, 2:] *= eps
    y = (x[:, 0] != x[:, 1]).long()
    return x, y


def load(seed: int = 0, dim: int = 40000, n_train: int = 400, n_test: int = 400, eps: float = 0.05) -> Data:
    """Seeded XOR data: float32 ``x`` of shape ``(n, dim)``, binary classes (XOR of the first two signs)."""
    if dim < 2:
        raise DatasetError(f"xor: dim must be >= 2 (two signal coordinates), got {dim}")
    if n_train < 1 or n_test < 1:
        raise DatasetError(f"xor: n_train and n_test must be >= 1, got {n_train}, {n_test}")
    if not eps >= 0:
        raise DatasetError(f"xor: eps must be >= 0, got {eps}")
    g = torch.Generator().manual_seed(seed)
    x_train, y_train = _draw(n_train, dim, eps, g)
    x_test, y_test = _draw(n_test, dim, eps, g)
    high = torch.full((dim,), float(eps))
    high[:2] = 1.0
    return Data(name="xor", x_train=x_train, y_train=y_train, x_test=x_test, y_test=y_test,
                n_classes=2, box_low=-high, box_high=high.clone(),
                grok_threshold=GROK_THRESHOLD,
                meta={"dim": dim, "eps": eps, "signal_coords": [0, 1], "pm1_of_class": [1.0, -1.0]})
