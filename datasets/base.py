"""The one interface every dataset module returns: :class:`Data`."""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from grokscope.analysis.curves import DEFAULT_GROK_THRESHOLD  # a dataset that states none
from grokscope.errors import GrokscopeError


class DatasetError(GrokscopeError, ValueError):
    """A dataset could not be built: missing/malformed files or bad arguments."""


CLASSIFICATION = "classification"
#: the task of token sequences with no labels, scored by the next-token loss (:attr:`Data.task`)
CAUSAL_LM = "causal_lm"
TASKS = (CLASSIFICATION, CAUSAL_LM)


@dataclass
class Data:
    """Train/test tensors of one task plus what the probes need to know about its inputs.

    ``x_*`` have shape ``(n, *input_shape)``; ``y_*`` are int64 class labels of shape ``(n,)``.
    ``input_kind`` is ``"continuous"`` (float inputs: images, one-hot sums, ...) or ``"tokens"``
    (int64 token ids; probes that need a continuous input use the model's embedding adapter).
    ``box_low``/``box_high`` bound every input coordinate (shape ``input_shape``, float); they are the
    range for random points and the clip bounds of attacks. ``spec`` is the stable description that
    goes into ``run.json`` (``{"name", "kwargs", "seed"}``); ``meta`` carries task facts (``p``, the
    operation, normalisation constants, ...). ``grok_threshold`` is the test accuracy at which this
    task counts as generalised (None: :data:`DEFAULT_GROK_THRESHOLD`); ``classes_from`` says where
    ``n_classes`` came from (``"stated"`` by the dataset, or ``"labels"``: read as ``max(y) + 1``).
    :func:`task_facts` is what the probe engine stores with each run.

    ``task`` says what the data is for: ``"classification"`` (one input, one label: the above) or
    ``"causal_lm"`` (:data:`CAUSAL_LM`), a language-model task of token sequences with no labels:
    ``x_*`` are the token ids ``(n, T)`` int64 (:meth:`tokens` names them ``ids``), ``y_*`` are the
    same tensors (the targets are the next tokens of the same rows,
    :func:`grokscope.losses.next_token_loss`), ``mask_*`` are ``(n, T)`` bool (True where the token is
    real; None: every token), ``n_classes`` is the vocabulary size (:attr:`vocab_size`, every id is
    below it) and :attr:`seq_len` is ``T``. Only probes that declare the task in ``Probe.tasks`` take it.
    """

    name: str
    x_train: torch.Tensor
    y_train: torch.Tensor
    x_test: torch.Tensor
    y_test: torch.Tensor
    n_classes: int
    box_low: torch.Tensor
    box_high: torch.Tensor
    input_kind: str = "continuous"
    spec: dict[str, Any] = field(default_factory=dict)
    meta: dict[str, Any] = field(default_factory=dict)
    grok_threshold: float | None = None
    classes_from: str = "stated"
    task: str = CLASSIFICATION
    mask_train: torch.Tensor | None = None
    mask_test: torch.Tensor | None = None

    @property
    def is_lm(self) -> bool:
        """Whether this is a causal language-model task (:data:`CAUSAL_LM`)."""
        return self.task == CAUSAL_LM

    @property
    def vocab_size(self) -> int:
        """The number of token ids of a causal-LM task (ids lie in ``0..vocab_size-1``): ``n_classes``."""
        return int(self.n_classes)

    @property
    def seq_len(self) -> int:
        """``T``, the length of a causal-LM task's sequences."""
        return int(self.x_train.shape[1])

    def tokens(self, name: str) -> tuple[torch.Tensor, torch.Tensor | None]:
        """``(ids, mask)`` of the split ``"train"`` or ``"test"`` of a causal-LM task: ids ``(n, T)``
        int64, mask ``(n, T)`` bool or None (every token real)."""
        if not self.is_lm:
            raise DatasetError(f"{self.name}: a {self.task} dataset has no token sequences (ids, mask)")
        ids, _ = self.split(name)
        return ids, self.mask_train if name == "train" else self.mask_test

    @property
    def input_shape(self) -> tuple[int, ...]:
        return tuple(self.x_train.shape[1:])

    @property
    def input_dim(self) -> int:
        """Number of input coordinates (flattened)."""
        n = 1
        for s in self.input_shape:
            n *= s
        return n

    def split(self, name: str) -> tuple[torch.Tensor, torch.Tensor]:
        """``(x, y)`` of the split ``"train"`` or ``"test"``."""
        if name == "train":
            return self.x_train, self.y_train
        if name == "test":
            return self.x_test, self.y_test
        raise DatasetError(f"unknown split {name!r}: expected 'train' or 'test'")

    def to(self, device: str | torch.device) -> "Data":
        """A copy with every tensor on ``device``."""
        t = {k: getattr(self, k).to(device) for k in
             ("x_train", "y_train", "x_test", "y_test", "box_low", "box_high")}
        masks = {k: None if getattr(self, k) is None else getattr(self, k).to(device)
                 for k in ("mask_train", "mask_test")}
        return Data(name=self.name, n_classes=self.n_classes, input_kind=self.input_kind,
                    spec=self.spec, meta=self.meta, grok_threshold=self.grok_threshold,
                    classes_from=self.classes_from, task=self.task, **masks, **t)



def task_facts(data: Data) -> dict[str, Any]:
    """What the analysis needs to know about a task, stored with each run by ``grokscope probe``:
    ``{"n_classes", "chance": 1 / n_classes, "classes_from": "stated" | "labels", "grok_threshold",
    "threshold_from": "stated" | "default"}`` (JSON values; ``chance`` None for fewer than 2 classes,
    where guessing has no level to clear); a causal-LM task adds ``"task": "causal_lm"`` and
    ``"seq_len"`` (its classes are the vocabulary: chance is one over the vocabulary size)."""
    n = int(data.n_classes)
    thr = data.grok_threshold
    return {"n_classes": n, "chance": 1.0 / n if n >= 2 else None, "classes_from": data.classes_from,
            "grok_threshold": float(thr if thr is not None else DEFAULT_GROK_THRESHOLD),
            "threshold_from": "stated" if thr is not None else "default",
            **({"task": CAUSAL_LM, "seq_len": data.seq_len} if data.is_lm else {})}


def box_from_tensor(x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Per-coordinate min and max over the sample axis of ``x`` (shape ``x.shape[1:]``)."""
    return x.amin(dim=0).float(), x.amax(dim=0).float()


def seeded_subset(n: int, k: int | None, seed: int, first: bool = False) -> torch.Tensor:
    """The first ``k`` indices of a seeded permutation of ``range(n)`` (all of them if ``k`` is None;
    ``first=True``: ``range(k)``, in order).

    Deterministic given ``seed``; raises :class:`DatasetError` if ``k > n``.
    """
    if k is None:
        return torch.arange(n)
    if k > n or k < 1:
        raise DatasetError(f"asked for {k} samples but only {n} are available")
    if first:
        return torch.arange(k)
    g = torch.Generator().manual_seed(seed)
    return torch.randperm(n, generator=g)[:k]


def default_data_root(subdir: str) -> Path:
    """Where a file-backed dataset looks when no ``root`` is given: ``$GROKSCOPE_DATA/<subdir>`` if the
    environment variable is set, else ``~/.grokscope/data/<subdir>``."""
    base = os.environ.get("GROKSCOPE_DATA")
    return (Path(base) if base else Path.home() / ".grokscope" / "data") / subdir


def standardise_images(x: torch.Tensor, mean: list[float], std: list[float]
                       ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Per-channel ``(x - mean) / std`` of images ``x`` in [0, 1] with shape ``(n, C, H, W)``.

    Returns ``(x_normalised, box_low, box_high)`` where the box (shape ``(C, H, W)``) is the image of
    [0, 1] under the same map, i.e. ``(0 - mean) / std`` and ``(1 - mean) / std`` per channel.
    """
    c = x.shape[1]
    if len(mean) != c or len(std) != c:
        raise DatasetError(f"normalisation needs {c} means and stds, got {len(mean)} and {len(std)}")
    m = torch.tensor(mean, dtype=torch.float32).view(c, 1, 1)
    s = torch.tensor(std, dtype=torch.float32).view(c, 1, 1)
    shape = x.shape[1:]
    low = ((0.0 - m) / s).expand(shape).clone()
    high = ((1.0 - m) / s).expand(shape).clone()
    return (x - m) / s, low, high


SPLITS = "'seeded', 'first:N' or 'indices:PATH' (a .npz/.json with train_idx and test_idx)"


def split_indices(n: int, split: str, seed: int, n_train: int | None, where: str
                  ) -> tuple[torch.Tensor, torch.Tensor]:
    """``(train_idx, test_idx)`` over ``n`` samples for a ``split`` option.

    ``"seeded"``: the first ``n_train`` of a seeded permutation train, the rest test (the default of
    the built-ins); ``"first:N"``: samples ``0..N-1`` train, the rest test (``x[:N]``, as many scripts
    do); ``"indices:PATH"``: the ``train_idx``/``test_idx`` arrays of a ``.npz`` or ``.json`` file.
    """
    split = str(split)
    if split == "seeded":
        if n_train is None or not 1 <= n_train < n:
            raise DatasetError(f"{where}: n_train must be in [1, {n - 1}] for a seeded split, got {n_train}")
        perm = seeded_subset(n, n, seed)
        return perm[:n_train], perm[n_train:]
    kind, _, arg = split.partition(":")
    if kind == "first":
        try:
            k = int(arg)
        except ValueError:
            raise DatasetError(f"{where}: split {split!r}: N must be an integer") from None
        if not 1 <= k < n:
            raise DatasetError(f"{where}: split {split!r}: N must be in [1, {n - 1}]")
        return torch.arange(k), torch.arange(k, n)
    if kind == "indices" and arg:
        return read_index_file(Path(arg).expanduser(), n)
    raise DatasetError(f"{where}: unknown split {split!r}; expected {SPLITS}")


def read_index_file(path: Path, n: int) -> tuple[torch.Tensor, torch.Tensor]:
    """``train_idx``/``test_idx`` from a ``.npz`` (arrays) or ``.json`` (``{"train_idx": [...], ...}``)
    file, checked to lie in ``0..n-1``."""
    import numpy as np

    from grokscope.jsonbounds import read_json

    if not path.is_file():
        raise DatasetError(f"{path}: no such index file")
    try:
        if path.suffix == ".json":
            doc = read_json(path)
        else:
            with np.load(path, allow_pickle=False) as z:
                doc = {k: z[k] for k in z.files}
    except (OSError, ValueError) as e:
        raise DatasetError(f"{path}: unreadable index file ({e})") from None
    out = []
    for key in ("train_idx", "test_idx"):
        if key not in doc:
            raise DatasetError(f"{path}: no {key!r} (found {', '.join(map(str, doc)) or 'nothing'})")
        try:
            idx = torch.as_tensor(np.asarray(doc[key], dtype=np.int64))
        except (TypeError, ValueError):
            raise DatasetError(f"{path}: {key!r} must be integer indices") from None
        if idx.dim() != 1 or len(idx) == 0 or int(idx.min()) < 0 or int(idx.max()) >= n:
            raise DatasetError(f"{path}: {key!r} must be a non-empty list of indices in 0..{n - 1}")
        out.append(idx)
    return out[0], out[1]
