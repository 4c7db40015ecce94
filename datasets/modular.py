"""Binary operations modulo a prime p (Power et al.; Nanda et al.; Musat; GrokAlign).

Encodings:

* ``tokens``: the sequence ``(a, b, =)`` of token ids, ``=`` being id ``p`` (vocabulary ``p + 1``);
  every ordered pair. For embedding / transformer models.
* ``onehot_concat``: ``[e_a, e_b]`` in R^{2p}; every ordered pair (GrokAlign's one-hot MLP).
* ``onehot_sum``: ``e_a + e_b`` in R^p over the unordered pairs ``a <= b`` (Musat's two-layer net);
  only for commutative operations.
"""

from __future__ import annotations

import torch

from .base import Data, DatasetError, split_indices

# test accuracy at which this task counts as generalised (algorithmic task)
GROK_THRESHOLD = 0.99

OPERATIONS = {
    "add": lambda a, b, p: (a + b) % p,
    "sub": lambda a, b, p: (a - b) % p,
    "mul": lambda a, b, p: (a * b) % p,
    "div": lambda a, b, p: (a * _pow_mod(b, p - 2, p)) % p,
    "poly": lambda a, b, p: (a * a + a * b + b * b) % p,  # x^2 + xy + y^2
}
COMMUTATIVE = {"add", "mul", "poly"}
ENCODINGS = ("tokens", "onehot_concat", "onehot_sum")


def _pow_mod(b: torch.Tensor, e: int, p: int) -> torch.Tensor:
    result = torch.ones_like(b)
    base = b % p
    while e:
        if e & 1:
            result = (result * base) % p
        base = (base * base) % p
        e >>= 1
    return result


def _is_prime(p: int) -> bool:
    return p >= 2 and all(p % d for d in range(2, int(p ** 0.5) + 1))


def pairs(p: int, op: str, unordered: bool) -> tuple[torch.Tensor, torch.Tensor]:
    """All operand pairs ``(a, b)`` (int64, shape ``(n,)`` each) valid for ``op``, in a fixed order."""
    a, b = torch.meshgrid(torch.arange(p), torch.arange(p), indexing="ij")
    a, b = a.reshape(-1), b.reshape(-1)
    keep = torch.ones_like(a, dtype=torch.bool)
    if unordered:
        keep &= a <= b
    if op == "div":
        keep &= b != 0
    return a[keep], b[keep]


def encode(a: torch.Tensor, b: torch.Tensor, p: int, encoding: str) -> torch.Tensor:
    """Model inputs for the pairs ``(a, b)``: ``(n, 3)`` int64 tokens or ``(n, p|2p)`` float one-hots."""
    if encoding == "tokens":
        return torch.stack([a, b, torch.full_like(a, p)], dim=1)
    eye = torch.eye(p)
    if encoding == "onehot_concat":
        return torch.cat([eye[a], eye[b]], dim=1)
    if encoding == "onehot_sum":
        return eye[a] + eye[b]
    raise DatasetError(f"unknown encoding {encoding!r}; valid: {', '.join(ENCODINGS)}")


def load(seed: int = 0, p: int = 97, op: str = "add", train_fraction: float = 0.4,
         encoding: str = "tokens", split: str = "seeded") -> Data:
    """The table of ``a op b mod p`` (pairs in :func:`pairs`' order), split into train and test:
    ``split="seeded"`` at random (``train_fraction`` of the pairs), ``"first:N"`` or ``"indices:PATH"``
    (see :func:`.base.split_indices`)."""
    if op not in OPERATIONS:
        raise DatasetError(f"unknown modular operation {op!r}; valid: {', '.join(OPERATIONS)}")
    if encoding not in ENCODINGS:
        raise DatasetError(f"unknown encoding {encoding!r}; valid: {', '.join(ENCODINGS)}")
    if not _is_prime(int(p)):
        raise DatasetError(f"p must be prime, got {p}")
    if not 0.0 < train_fraction < 1.0:
        raise DatasetError(f"train_fraction must be in (0, 1), got {train_fraction}")
    unordered = encoding == "onehot_sum"
    if unordered and op not in COMMUTATIVE:
        raise DatasetError(f"encoding 'onehot_sum' needs a commutative operation, not {op!r}")
    a, b = pairs(p, op, unordered)
    y = OPERATIONS[op](a, b, p)
    x = encode(a, b, p, encoding)
    if split == "seeded":
        g = torch.Generator().manual_seed(seed)
        perm = torch.randperm(len(a), generator=g)
        n_train = int(round(train_fraction * len(a)))
        if not 1 <= n_train < len(a):
            raise DatasetError(f"train_fraction={train_fraction} of {len(a)} pairs leaves {n_train} for "
                               f"training and {len(a) - n_train} for test; both splits must be non-empty")
        tr, te = perm[:n_train], perm[n_train:]
    else:
        tr, te = split_indices(len(a), split, seed, None, "modular")
    if encoding == "tokens":
        low, high = torch.zeros(3), torch.full((3,), float(p))
        kind = "tokens"
    else:
        low = torch.zeros(x.shape[1])
        high = torch.full((x.shape[1],), 2.0 if unordered else 1.0)
        kind = "continuous"
    return Data(name="modular", x_train=x[tr], y_train=y[tr], x_test=x[te], y_test=y[te],
                n_classes=p, box_low=low, box_high=high, input_kind=kind,
                grok_threshold=GROK_THRESHOLD,
                meta={"p": p, "op": op, "encoding": encoding, "train_fraction": train_fraction,
                      "a_train": a[tr], "b_train": b[tr], "a_test": a[te], "b_test": b[te]})
