"""Files as datasets, with no code: ``--dataset file:PATH``.

``PATH`` is one of

* a ``.npz`` file (read with ``allow_pickle=False``; members are read one at a time);
* a folder of ``.npy`` files, one per array (``x_train.npy``, ``y_train.npy``, ...; memory-mapped);
* a ``.pt``/``.pth`` file holding a dict of tensors (read with ``torch.load(weights_only=True)``);
* a ``.safetensors`` file (memory-mapped);
* a folder written by Hugging Face ``datasets`` (``save_to_disk``; needs that package installed).

The arrays are ``x_train, y_train, x_test, y_test``, or ``x, y`` with ``train_idx, test_idx`` (or a
``split`` option: ``first:N``, ``indices:PATH``). Other names are options: ``--dataset-kwargs
'{"x_train": "X_tr", "y_train": "labels_tr", ...}'``; for a Hugging Face folder the options name the
columns (``x``, ``y``, defaults ``"x"`` and ``"y"``) and the splits (``train_split``,
``test_split``, defaults ``"train"`` and ``"test"``). ``n_classes``, ``box`` (``[low, high]``) and
``input_kind`` override what is inferred (the number of classes is read from the labels, ``max(y) + 1``);
``grok_threshold`` sets the test accuracy at which the task counts as generalised (default 0.95).
Only the indexed points of a memory-mapped array are read.

A file whose arrays are token sequences instead of ``x, y`` is a causal language-model task (no
labels; :data:`~.base.CAUSAL_LM`): ``ids_train, ids_test`` (``(n, T)`` integer token ids, optional
``mask_train, mask_test``: ``(n, T)`` 0/1, 1 where the token is real) or ``ids`` (optional ``mask``)
with ``train_idx, test_idx`` or a ``split`` option, e.g. ``--dataset file:tokens.npz
--dataset-kwargs '{"split": "first:900"}'``; ``vocab_size`` states the vocabulary (default: the
largest id + 1). In a Hugging Face folder the columns are ``input_ids`` and ``attention_mask``
(options ``ids``, ``mask``); a split without the label column ``y`` is read as token sequences.
"""

from __future__ import annotations

import importlib.util
from pathlib import Path
from typing import Any

import numpy as np

from .base import Data, DatasetError, split_indices
from .protocol import ARRAY_KEYS, INDEX_KEYS, LM_ARRAY_KEYS, LM_MASK_KEYS, from_arrays, is_lm, lm_from_arrays

ROLES = ARRAY_KEYS + INDEX_KEYS
LM_ROLES = ("ids", "ids_train", "ids_test") + LM_MASK_KEYS
HF_LM_COLUMNS = {"ids": "input_ids", "mask": "attention_mask"}
HF_MARKERS = ("dataset_dict.json", "dataset_info.json", "state.json")


class _Lazy(dict):
    """Array names of a file, read on first access (``keys()`` lists what the file holds)."""

    def __init__(self, names: list[str], read):
        super().__init__((n, None) for n in names)
        self._read = read

    def __getitem__(self, key: str) -> Any:
        value = super().__getitem__(key)
        if value is None:
            value = self._read(key)
            super().__setitem__(key, value)
        return value


def _open(path: Path) -> _Lazy:
    """The arrays of ``path`` by name, lazily (see the module docstring for the formats)."""
    if path.is_dir():
        names = sorted(p.stem for p in path.glob("*.npy"))
        if not names:
            raise DatasetError(f"{path}: a folder dataset needs .npy files (x_train.npy, ...) or a "
                               "Hugging Face save_to_disk folder")

        def read_npy(k: str) -> Any:
            try:
                return np.load(path / f"{k}.npy", mmap_mode="r", allow_pickle=False)
            except (OSError, ValueError) as e:
                raise DatasetError(f"{path / (k + '.npy')}: unreadable .npy file ({e})") from None

        return _Lazy(names, read_npy)
    suffix = path.suffix.lower()
    if suffix == ".npz":
        try:
            z = np.load(path, allow_pickle=False)
        except (OSError, ValueError) as e:
            raise DatasetError(f"{path}: unreadable .npz file ({e})") from None

        def read_npz(k: str) -> Any:
            try:
                return z[k]
            except (OSError, ValueError) as e:
                raise DatasetError(f"{path}: array {k!r} is unreadable ({e})") from None

        return _Lazy(list(z.files), read_npz)
    if suffix in (".pt", ".pth"):
        import torch

        try:
            obj = torch.load(path, map_location="cpu", weights_only=True)
        except Exception as e:  # noqa: BLE001 - torch raises many types for bad or unsafe files
            first = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
            raise DatasetError(f"{path}: refused or unreadable (read only with torch.load(weights_only="
                               f"True)): {first}") from None
        if not isinstance(obj, dict):
            raise DatasetError(f"{path}: expected a dict of tensors, found {type(obj).__name__}")
        return _Lazy([str(k) for k in obj], lambda k: obj[k])
    if suffix == ".safetensors":
        from safetensors import safe_open

        try:
            f = safe_open(str(path), framework="pt")
            keys = list(f.keys())
        except Exception as e:  # noqa: BLE001 - safetensors raises its own error types
            raise DatasetError(f"{path}: unreadable safetensors file ({e})") from None
        return _Lazy(keys, f.get_tensor)
    if suffix == ".npy":
        raise DatasetError(f"{path}: a single .npy holds one array; put x_train.npy, y_train.npy, "
                           "x_test.npy, y_test.npy (or x.npy, y.npy, train_idx.npy, test_idx.npy) in a "
                           "folder and pass file:FOLDER")
    raise DatasetError(f"{path}: unknown dataset file type {suffix or '(none)'}; expected .npz, .pt, "
                       ".pth, .safetensors, a folder of .npy files or a Hugging Face save_to_disk folder")


def _hf_arrays(path: Path, x: str, y: str, train_split: str, test_split: str,
               lm_columns: dict[str, str] | None = None) -> dict[str, Any]:
    """The arrays of a Hugging Face ``save_to_disk`` folder: ``x_*, y_*`` from the columns ``x``, ``y``,
    or, where the train split has no column ``y`` but has the ids column of ``lm_columns`` (default
    :data:`HF_LM_COLUMNS`), ``ids_*`` (and ``mask_*`` where the mask column exists) of a causal-LM task."""
    lm_columns = {**HF_LM_COLUMNS, **(lm_columns or {})}
    spec = importlib.util.find_spec("datasets")
    ours = Path(__file__).resolve().parent
    if spec is None or (spec.origin and Path(spec.origin).resolve().parent == ours):
        raise DatasetError(f"{path} is a Hugging Face datasets folder; reading it needs that package: "
                           "pip install datasets")
    import datasets as hf  # the Hugging Face package, not this one (checked above)

    try:
        dd = hf.load_from_disk(str(path))
    except Exception as e:  # noqa: BLE001
        raise DatasetError(f"{path}: cannot read the Hugging Face dataset ({type(e).__name__}: {e})") from None
    out = {}
    for role, split in (("train", train_split), ("test", test_split)):
        if split not in dd:
            raise DatasetError(f"{path}: no split {split!r} (found {', '.join(dd)}); set {role}_split")
        part = dd[split].with_format("numpy")
        cols = [(x, f"x_{role}"), (y, f"y_{role}")]
        if y not in part.column_names and lm_columns["ids"] in part.column_names:  # token sequences
            cols = [(lm_columns["ids"], f"ids_{role}")]
            if lm_columns["mask"] in part.column_names:
                cols.append((lm_columns["mask"], f"mask_{role}"))
        for col, key in cols:
            if col not in part.column_names:
                raise DatasetError(f"{path}: split {split!r} has no column {col!r} (columns: "
                                   f"{', '.join(part.column_names)})")
            out[key] = part[col]
    return out


def load_file_dataset(path: str, split: str | None = None, seed: int = 0, n_classes: int | None = None,
                      box: Any = None, input_kind: str | None = None, x: str = "x", y: str = "y",
                      train_split: str = "train", test_split: str = "test", grok_threshold: float | None = None,
                      vocab_size: int | None = None, **names: str) -> Data:
    """The dataset in the file or folder ``path`` (see the module docstring).

    ``names`` rename the arrays (``x_train="X_tr"``, ``ids="tokens"``, ...); ``split`` splits ``x, y``
    (or ``ids``) when the file has no ``train_idx``/``test_idx`` (:func:`.base.split_indices`).
    ``vocab_size`` is for token-sequence files (a causal-LM task), ``n_classes``, ``box`` and
    ``input_kind`` for the others.
    """
    p = Path(path).expanduser()
    bad = sorted(set(names) - set(ROLES) - set(LM_ROLES))
    if bad:
        raise DatasetError(f"file:{path}: unknown option(s) {', '.join(bad)}; array names are "
                           f"{', '.join(ROLES + LM_ROLES)}")
    if not p.exists():
        raise DatasetError(f"{p}: no such dataset file or folder")
    where = str(p)
    if p.is_dir() and any((p / m).is_file() for m in HF_MARKERS):
        arrays = _hf_arrays(p, x, y, train_split, test_split,
                            {k: names[k] for k in HF_LM_COLUMNS if k in names})
        if is_lm(arrays):
            return _lm(p, arrays, where, vocab_size, n_classes, box, input_kind, grok_threshold)
        return from_arrays(f"file:{p.name}", arrays, where, n_classes=n_classes, box=box,
                           input_kind=input_kind, meta={"path": str(p)}, grok_threshold=grok_threshold)
    found = _open(p)
    lm_want = {role: names.get(role, role) for role in LM_ROLES}
    has_ids = any(lm_want[role] in found for role in ("ids",) + LM_ARRAY_KEYS)
    if has_ids and not (names.get("x", x) in found or names.get("x_train", "x_train") in found):
        got = {role: found[lm_want[role]] for role in LM_ROLES if lm_want[role] in found}
        for role in ("train_idx", "test_idx"):
            if names.get(role, role) in found:
                got[role] = found[names.get(role, role)]
        if split is not None or not ({"ids_train", "ids_test"} <= set(got)):
            if "ids" in got and split is not None:
                got["train_idx"], got["test_idx"] = split_indices(len(got["ids"]), split, seed, None, where)
            elif "ids" in got and not {"train_idx", "test_idx"} <= set(got):
                raise DatasetError(f"{where}: token ids {lm_want['ids']!r} but no {names.get('train_idx', 'train_idx')}"
                                   f"/{names.get('test_idx', 'test_idx')}: add them or a split option")
        return _lm(p, got, where, vocab_size, n_classes, box, input_kind, grok_threshold)
    if vocab_size is not None:
        raise DatasetError(f"{where}: vocab_size is for token-sequence files (ids); this one holds "
                           f"{', '.join(sorted(found)) or 'nothing'}")
    want = {role: names.get(role, role) for role in ROLES}
    want["x"], want["y"] = names.get("x", x), names.get("y", y)

    def get(role: str) -> Any:
        return found[want[role]]

    has = {role for role in ROLES if want[role] in found}
    arrays: dict[str, Any]
    if all(r in has for r in ARRAY_KEYS) and split is None:
        arrays = {r: get(r) for r in ARRAY_KEYS}
    elif "x" in has and "y" in has and (split is not None or {"train_idx", "test_idx"} <= has):
        arrays = {"x": get("x"), "y": get("y")}
        if split is not None:
            tr, te = split_indices(len(arrays["x"]), split, seed, None, where)
            arrays["train_idx"], arrays["test_idx"] = tr, te
        else:
            arrays["train_idx"], arrays["test_idx"] = get("train_idx"), get("test_idx")
    else:
        missing = [want[r] for r in ARRAY_KEYS if r not in has]
        hint = ("" if {"x", "y"} <= has else
                f"; or {want['x']}, {want['y']} with {want['train_idx']}, {want['test_idx']} or a split option")
        if {"x", "y"} <= has:
            hint = f"; it has {want['x']}, {want['y']}: add {want['train_idx']}/{want['test_idx']} or a split option"
        raise DatasetError(f"{where}: missing array(s) {', '.join(missing)}{hint} (the file holds "
                           f"{', '.join(sorted(found)) or 'nothing'})")
    return from_arrays(f"file:{p.name}", arrays, where, n_classes=n_classes, box=box,
                       input_kind=input_kind, meta={"path": str(p)}, grok_threshold=grok_threshold)


def _lm(p: Path, arrays: dict[str, Any], where: str, vocab_size: Any, n_classes: Any, box: Any,
        input_kind: Any, grok_threshold: Any) -> Data:
    """The causal-LM :class:`Data` of a token-sequence file (options for labelled data refused)."""
    for key, value in (("n_classes", n_classes), ("box", box)):
        if value is not None:
            raise DatasetError(f"{where}: {key} is for labelled data; a token-sequence file states vocab_size")
    if input_kind not in (None, "tokens"):
        raise DatasetError(f"{where}: token-sequence files have input_kind 'tokens', got {input_kind!r}")
    if "ids_train" in arrays and "ids_test" in arrays:
        arrays = {k: v for k, v in arrays.items() if k not in ("ids", "mask", "train_idx", "test_idx")}
    return lm_from_arrays(f"file:{p.name}", arrays, where, vocab_size=vocab_size, meta={"path": str(p)},
                          grok_threshold=grok_threshold)


def split_words(kwargs: dict[str, Any]) -> str:
    """Which split a ``file:`` dataset's options give, in a few words."""
    if kwargs.get("split"):
        if "ids" in kwargs or "vocab_size" in kwargs:  # token sequences named as such
            return f"split {kwargs['split']} of {kwargs.get('ids', 'ids')}"
        return f"split {kwargs['split']} of {kwargs.get('x', 'x')}, {kwargs.get('y', 'y')}"
    if kwargs.get("train_idx") or kwargs.get("test_idx"):
        return f"split by {kwargs.get('train_idx', 'train_idx')}/{kwargs.get('test_idx', 'test_idx')}"
    return "the file's own split"
