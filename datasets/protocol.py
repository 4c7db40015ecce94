"""The dataset protocol: what a dataset callable (``pkg.module:load``, an entry point of the group
``grokscope.datasets``) may return, and how it becomes :class:`~.base.Data`.

A dataset callable is called as ``fn(seed=S, **kwargs)`` (``seed`` only if it takes one) and returns

1. a :class:`~.base.Data` (everything stated);
2. a mapping with ``x_train, y_train, x_test, y_test`` (arrays or tensors), or with ``x, y`` and
   ``train_idx, test_idx`` (one set plus the indices of its split); optional keys ``n_classes``,
   ``box_low``/``box_high`` (the input box: the range of random points and the clip bounds of
   attacks, inferred from the data's per-coordinate min and max when absent), ``input_kind``
   (``"continuous"``, or ``"tokens"`` for int64 token ids; inferred from the dtype) and ``meta``;
3. a tuple ``(x_train, y_train, x_test, y_test)``;
4. a pair of ``torch.utils.data.Dataset`` objects ``(train, test)`` whose items are ``(x, y)``;
5. a causal language-model task (:data:`~.base.CAUSAL_LM`: token sequences, no labels): a mapping
   with ``ids_train, ids_test`` (``(n, T)`` integer token ids) and optional ``mask_train,
   mask_test``, or with ``ids`` (optional ``mask``) and ``train_idx, test_idx``; masks are ``(n, T)``
   0/1 or bool, 1 where the token is real; optional ``vocab_size`` (default ``max(ids) + 1``), ``meta``
   (:func:`lm_from_arrays`). The arrays' names say the task: ``ids`` instead of ``x, y``.

Labels are class indices (int64, ``0 <= y < n_classes``; ``n_classes`` defaults to ``max(y) + 1``
over both splits). Inputs must be finite. Every violation is one :class:`~.base.DatasetError` line
naming the dataset (or file) and the key.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import numpy as np
import torch

from .base import CAUSAL_LM, Data, DatasetError, box_from_tensor

ARRAY_KEYS = ("x_train", "y_train", "x_test", "y_test")
INDEX_KEYS = ("x", "y", "train_idx", "test_idx")
LM_ARRAY_KEYS = ("ids_train", "ids_test")
LM_INDEX_KEYS = ("ids", "train_idx", "test_idx")
LM_MASK_KEYS = ("mask_train", "mask_test", "mask")


def to_tensor(a: Any, where: str, key: str) -> torch.Tensor:
    """``a`` (numpy array, memory map, tensor, list) as a CPU tensor, sharing memory where possible."""
    if isinstance(a, torch.Tensor):
        return a.detach().cpu()
    try:
        arr = np.asarray(a)
    except (TypeError, ValueError) as e:
        raise DatasetError(f"{where}: {key!r} is not an array ({e})") from None
    if arr.dtype == object or arr.dtype.kind not in "biuf":
        raise DatasetError(f"{where}: {key!r} has dtype {arr.dtype}, expected numbers")
    if not arr.flags.writeable:  # a read-only memory map: torch wants writeable memory
        import warnings

        with warnings.catch_warnings():
            warnings.simplefilter("ignore", UserWarning)
            return torch.from_numpy(arr)
    return torch.from_numpy(arr)


def _labels(y: torch.Tensor, where: str, key: str) -> torch.Tensor:
    if y.dim() != 1:
        raise DatasetError(f"{where}: {key!r} has shape {tuple(y.shape)}, expected (n,) class labels")
    if y.is_floating_point():
        if not torch.isfinite(y).all() or not torch.equal(y, y.round()):
            raise DatasetError(f"{where}: {key!r} holds non-integer values; labels must be class indices")
    elif y.dtype == torch.bool:
        y = y.long()
    return y.long()


def _inputs(x: torch.Tensor, where: str, key: str) -> torch.Tensor:
    if x.dim() < 2:
        raise DatasetError(f"{where}: {key!r} has shape {tuple(x.shape)}, expected (n, *input_shape)")
    if x.is_floating_point():
        bad = ~torch.isfinite(x)
        if bad.any():
            i = int(bad.reshape(len(x), -1).any(dim=1).nonzero()[0])
            raise DatasetError(f"{where}: {key!r} has non-finite values (first at sample {i})")
    return x


def _index(idx: Any, n: int, where: str, key: str) -> torch.Tensor:
    t = to_tensor(idx, where, key)
    if t.dtype == torch.bool:
        if len(t) != n:
            raise DatasetError(f"{where}: boolean {key!r} has {len(t)} entries for {n} samples")
        return t.nonzero().reshape(-1)
    if t.is_floating_point() or t.dim() != 1:
        raise DatasetError(f"{where}: {key!r} must be a 1-D array of integer indices")
    t = t.long()
    if len(t) and (int(t.min()) < 0 or int(t.max()) >= n):
        raise DatasetError(f"{where}: {key!r} has indices outside 0..{n - 1}")
    if len(t) == 0:
        raise DatasetError(f"{where}: {key!r} is empty")
    return t


def from_arrays(name: str, arrays: Mapping[str, Any], where: str, n_classes: int | None = None,
                box: Any = None, input_kind: str | None = None, meta: dict[str, Any] | None = None,
                grok_threshold: float | None = None) -> Data:
    """:class:`Data` from ``x_train, y_train, x_test, y_test`` or ``x, y, train_idx, test_idx``.

    Only the indexed points are materialised (fancy indexing of a memory map reads just those rows).
    """
    if all(k in arrays for k in INDEX_KEYS):
        x = to_tensor(arrays["x"], where, "x")
        y = to_tensor(arrays["y"], where, "y")
        if len(x) != len(y):
            raise DatasetError(f"{where}: 'x' has {len(x)} samples but 'y' has {len(y)}")
        tr = _index(arrays["train_idx"], len(x), where, "train_idx")
        te = _index(arrays["test_idx"], len(x), where, "test_idx")
        parts = {"x_train": x[tr], "y_train": y[tr], "x_test": x[te], "y_test": y[te]}
    elif all(k in arrays for k in ARRAY_KEYS):
        parts = {k: to_tensor(arrays[k], where, k) for k in ARRAY_KEYS}
    else:
        have = ", ".join(sorted(map(str, arrays))) or "nothing"
        raise DatasetError(f"{where}: expected arrays {', '.join(ARRAY_KEYS)} or {', '.join(INDEX_KEYS)}; "
                           f"found {have}")
    for s in ("train", "test"):
        x, y = parts[f"x_{s}"], parts[f"y_{s}"]
        if len(x) != len(y):
            raise DatasetError(f"{where}: 'x_{s}' has {len(x)} samples but 'y_{s}' has {len(y)}")
        if len(x) == 0:
            raise DatasetError(f"{where}: the {s} split is empty")
        parts[f"x_{s}"] = _inputs(x, where, f"x_{s}")
        parts[f"y_{s}"] = _labels(y, where, f"y_{s}")
    if parts["x_train"].shape[1:] != parts["x_test"].shape[1:]:
        raise DatasetError(f"{where}: 'x_train' samples have shape {tuple(parts['x_train'].shape[1:])} "
                           f"but 'x_test' samples {tuple(parts['x_test'].shape[1:])}")
    y_all = torch.cat([parts["y_train"], parts["y_test"]])
    if int(y_all.min()) < 0:
        raise DatasetError(f"{where}: negative label {int(y_all.min())}; labels must be 0..n_classes-1")
    top = int(y_all.max())
    classes_from = "stated" if n_classes is not None else "labels"
    if n_classes is None:
        n_classes = top + 1
    elif top >= int(n_classes):
        raise DatasetError(f"{where}: label {top} out of range for n_classes={n_classes}")
    kind = input_kind or ("continuous" if parts["x_train"].is_floating_point() else "tokens")
    if kind not in ("continuous", "tokens"):
        raise DatasetError(f"{where}: input_kind must be 'continuous' or 'tokens', got {kind!r}")
    if kind == "continuous":
        dtype = parts["x_train"].dtype if parts["x_train"].is_floating_point() else torch.float32
        parts["x_train"], parts["x_test"] = parts["x_train"].to(dtype), parts["x_test"].to(dtype)
    if kind == "tokens":
        parts["x_train"], parts["x_test"] = parts["x_train"].long(), parts["x_test"].long()
    low, high = _box(box, parts, where)
    if grok_threshold is not None:
        try:
            grok_threshold = float(grok_threshold)
        except (TypeError, ValueError):
            raise DatasetError(f"{where}: grok_threshold must be a number in (0, 1], got {grok_threshold!r}") from None
        if not 0 < grok_threshold <= 1:
            raise DatasetError(f"{where}: grok_threshold must be in (0, 1], got {grok_threshold}")
    return Data(name=name, n_classes=int(n_classes), box_low=low, box_high=high, input_kind=kind,
                meta=dict(meta or {}), grok_threshold=grok_threshold, classes_from=classes_from, **parts)


def is_lm(arrays: Mapping[str, Any]) -> bool:
    """Whether ``arrays`` (names of a file or a dataset callable's mapping) are a causal-LM task: token
    ``ids`` (``ids_train``/``ids_test``, or ``ids``) and no ``x``/``x_train``."""
    has = set(arrays)
    return bool(has & {"ids", *LM_ARRAY_KEYS}) and not has & {"x", "x_train"}


def _token_ids(a: Any, where: str, key: str) -> torch.Tensor:
    ids = to_tensor(a, where, key)
    if ids.dim() != 2:
        raise DatasetError(f"{where}: {key!r} has shape {tuple(ids.shape)}, expected (n, T) token ids")
    if ids.is_floating_point() or ids.dtype == torch.bool:
        raise DatasetError(f"{where}: {key!r} has dtype {str(ids.dtype).replace('torch.', '')}, expected "
                           "integer token ids")
    if ids.shape[1] < 2:
        raise DatasetError(f"{where}: {key!r} has sequences of length {ids.shape[1]}; a next-token task "
                           "needs at least 2 tokens")
    return ids.long()


def _token_mask(a: Any, ids: torch.Tensor, where: str, key: str) -> torch.Tensor:
    m = to_tensor(a, where, key)
    if tuple(m.shape) != tuple(ids.shape):
        raise DatasetError(f"{where}: {key!r} has shape {tuple(m.shape)}, but its ids have {tuple(ids.shape)}")
    if m.dtype != torch.bool and not ((m == 0) | (m == 1)).all():
        raise DatasetError(f"{where}: {key!r} must hold 0/1 (1 where the token is real)")
    return m.bool()


def lm_from_arrays(name: str, arrays: Mapping[str, Any], where: str, vocab_size: int | None = None,
                   meta: dict[str, Any] | None = None, grok_threshold: float | None = None) -> Data:
    """A causal-LM :class:`Data` (``task="causal_lm"``) from ``ids_train, ids_test`` (optional
    ``mask_train, mask_test``) or ``ids, train_idx, test_idx`` (optional ``mask``).

    Ids are ``(n, T)`` integers in ``0..vocab_size-1`` (``vocab_size`` defaults to ``max(ids) + 1``,
    ``classes_from="labels"``); masks ``(n, T)`` 0/1 or bool. The data's ``x_*`` and ``y_*`` are the
    ids, ``mask_*`` the masks as bool (None where not given), ``input_kind="tokens"``.
    """
    masks: dict[str, torch.Tensor | None] = {"train": None, "test": None}
    if all(k in arrays for k in LM_ARRAY_KEYS):
        ids = {s: _token_ids(arrays[f"ids_{s}"], where, f"ids_{s}") for s in ("train", "test")}
        for s in ("train", "test"):
            if arrays.get(f"mask_{s}") is not None:
                masks[s] = _token_mask(arrays[f"mask_{s}"], ids[s], where, f"mask_{s}")
    elif all(k in arrays for k in LM_INDEX_KEYS):
        every = _token_ids(arrays["ids"], where, "ids")
        mask = _token_mask(arrays["mask"], every, where, "mask") if arrays.get("mask") is not None else None
        ids = {}
        for s in ("train", "test"):
            idx = _index(arrays[f"{s}_idx"], len(every), where, f"{s}_idx")
            ids[s] = every[idx]
            masks[s] = None if mask is None else mask[idx]
    else:
        have = ", ".join(sorted(map(str, arrays))) or "nothing"
        raise DatasetError(f"{where}: a token-sequence dataset needs {', '.join(LM_ARRAY_KEYS)} or "
                           f"{', '.join(LM_INDEX_KEYS)} (or a split option); found {have}")
    for s in ("train", "test"):
        if len(ids[s]) == 0:
            raise DatasetError(f"{where}: the {s} split is empty")
        m = masks[s]
        if m is not None and not (m[:, :-1] & m[:, 1:]).any():
            raise DatasetError(f"{where}: the mask of the {s} split leaves no next-token prediction "
                               "(no two real tokens in a row)")
    if ids["train"].shape[1] != ids["test"].shape[1]:
        raise DatasetError(f"{where}: train sequences have length {ids['train'].shape[1]} but test "
                           f"sequences {ids['test'].shape[1]}")
    low = min(int(ids["train"].min()), int(ids["test"].min()))
    top = max(int(ids["train"].max()), int(ids["test"].max()))
    if low < 0:
        raise DatasetError(f"{where}: negative token id {low}; ids must be 0..vocab_size-1")
    classes_from = "stated" if vocab_size is not None else "labels"
    if vocab_size is None:
        vocab_size = top + 1
    elif isinstance(vocab_size, bool) or not isinstance(vocab_size, int) or top >= vocab_size:
        raise DatasetError(f"{where}: vocab_size={vocab_size!r} must be an integer above the largest "
                           f"token id ({top})")
    if grok_threshold is not None and not (isinstance(grok_threshold, (int, float)) and 0 < grok_threshold <= 1):
        raise DatasetError(f"{where}: grok_threshold must be in (0, 1], got {grok_threshold!r}")
    lo_tr, hi_tr = box_from_tensor(ids["train"])
    lo_te, hi_te = box_from_tensor(ids["test"])
    return Data(name=name, x_train=ids["train"], y_train=ids["train"], x_test=ids["test"],
                y_test=ids["test"], n_classes=int(vocab_size), box_low=torch.minimum(lo_tr, lo_te),
                box_high=torch.maximum(hi_tr, hi_te), input_kind="tokens", meta=dict(meta or {}),
                grok_threshold=None if grok_threshold is None else float(grok_threshold),
                classes_from=classes_from, task=CAUSAL_LM, mask_train=masks["train"], mask_test=masks["test"])


def _box(box: Any, parts: dict[str, torch.Tensor], where: str) -> tuple[torch.Tensor, torch.Tensor]:
    shape = parts["x_train"].shape[1:]
    if box is None:
        lo_tr, hi_tr = box_from_tensor(parts["x_train"])
        lo_te, hi_te = box_from_tensor(parts["x_test"])
        return torch.minimum(lo_tr, lo_te), torch.maximum(hi_tr, hi_te)
    try:
        lo, hi = box
        lo = torch.as_tensor(lo, dtype=torch.float32).expand(shape).clone()
        hi = torch.as_tensor(hi, dtype=torch.float32).expand(shape).clone()
    except (TypeError, ValueError, RuntimeError) as e:
        raise DatasetError(f"{where}: box must be [low, high] (numbers or arrays of the input shape "
                           f"{tuple(shape)}): {e}") from None
    if not (lo <= hi).all():
        raise DatasetError(f"{where}: box low exceeds high")
    return lo, hi


def _stack_dataset(ds: Any, where: str, split: str) -> tuple[torch.Tensor, torch.Tensor]:
    try:
        n = len(ds)
        items = [ds[i] for i in range(n)]
        xs = torch.stack([torch.as_tensor(it[0]) for it in items])
        ys = torch.as_tensor([int(it[1]) for it in items])
    except Exception as e:  # noqa: BLE001 - a third party's Dataset may raise anything
        raise DatasetError(f"{where}: cannot read the {split} Dataset as (x, y) items: {type(e).__name__}: {e}") from None
    return xs, ys


def as_data(obj: Any, name: str, where: str) -> Data:
    """Whatever a dataset callable returned (see the module docstring), as :class:`Data`."""
    if isinstance(obj, Data):
        return obj
    if isinstance(obj, Mapping) and is_lm(obj):
        extra = {k: obj[k] for k in ("vocab_size", "meta", "grok_threshold") if k in obj}
        return lm_from_arrays(name, obj, where, **extra)
    if isinstance(obj, Mapping):
        extra = {k: obj[k] for k in ("n_classes", "input_kind", "meta", "grok_threshold") if k in obj}
        box = (obj["box_low"], obj["box_high"]) if "box_low" in obj and "box_high" in obj else None
        return from_arrays(name, obj, where, box=box, **extra)
    if isinstance(obj, tuple) and len(obj) == 4:
        return from_arrays(name, dict(zip(ARRAY_KEYS, obj)), where)
    if isinstance(obj, tuple) and len(obj) == 2 and all(hasattr(d, "__getitem__") and hasattr(d, "__len__")
                                                       for d in obj):
        (xa, ya), (xb, yb) = _stack_dataset(obj[0], where, "train"), _stack_dataset(obj[1], where, "test")
        return from_arrays(name, {"x_train": xa, "y_train": ya, "x_test": xb, "y_test": yb}, where)
    raise DatasetError(f"{where} returned {type(obj).__name__}; expected Data, a mapping of arrays, "
                       "(x_train, y_train, x_test, y_test) or a (train, test) pair of Datasets")
