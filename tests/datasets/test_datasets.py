"""Every dataset loader: real files written here (IDX raw/gz, CIFAR pickle batches), checked against
independent brute-force expectations; bad files give clear errors naming the file."""

from __future__ import annotations

import gzip
import pickle
import struct
from pathlib import Path

import numpy as np
import pytest
import torch

from grokscope.datasets import DATASETS, DatasetError, load_dataset
from grokscope.datasets import cifar10, digits, mnist, modular, xor

# ----------------------------------------------------------------------------------------------- IDX


def write_idx(path: Path, arr: np.ndarray, magic: int, gz: bool = False) -> Path:
    """An unsigned-byte IDX file written by hand with struct (independent of the reader)."""
    raw = struct.pack(">I", magic) + struct.pack(f">{arr.ndim}I", *arr.shape) + arr.astype(np.uint8).tobytes()
    if gz:
        path = path.with_name(path.name + ".gz")
        path.write_bytes(gzip.compress(raw))
    else:
        path.write_bytes(raw)
    return path


def make_mnist(root: Path, n_train: int = 40, n_test: int = 15, gz: bool = False, seed: int = 0
               ) -> dict[str, np.ndarray]:
    """A small MNIST-format folder of random images with labels; returns the arrays written."""
    rng = np.random.default_rng(seed)
    arrays = {
        "train_images": rng.integers(0, 256, (n_train, 28, 28), dtype=np.uint8),
        "train_labels": rng.integers(0, 10, n_train, dtype=np.uint8),
        "test_images": rng.integers(0, 256, (n_test, 28, 28), dtype=np.uint8),
        "test_labels": rng.integers(0, 10, n_test, dtype=np.uint8),
    }
    root.mkdir(parents=True, exist_ok=True)
    for key, arr in arrays.items():
        magic = 0x803 if key.endswith("images") else 0x801
        write_idx(root / mnist.FILES[key], arr, magic, gz)
    return arrays


def _index_by_bytes(images: np.ndarray) -> dict[bytes, int]:
    return {img.tobytes(): i for i, img in enumerate(images)}


def _match_rows(x: torch.Tensor, images: np.ndarray) -> list[int]:
    """For each loaded image (float in [0, 1]), the index of the identical uint8 image in the file."""
    lookup = _index_by_bytes(images)
    raw = (x.squeeze(1).numpy() * 255.0).round().astype(np.uint8)
    return [lookup[r.tobytes()] for r in raw]


@pytest.mark.parametrize("gz", [False, True])
def test_mnist_reads_idx_raw_and_gzip(tmp_path: Path, gz: bool) -> None:
    arrays = make_mnist(tmp_path, gz=gz)
    d = mnist.load(seed=3, root=str(tmp_path), n_train=25, n_test=None)
    assert d.name == "mnist" and d.n_classes == 10 and d.input_kind == "continuous"
    assert d.x_train.shape == (25, 1, 28, 28) and d.x_train.dtype == torch.float32
    assert d.y_train.dtype == torch.int64 and d.y_train.shape == (25,)
    # every training image is a distinct image of the file with its own label
    rows = _match_rows(d.x_train, arrays["train_images"])
    assert len(set(rows)) == 25
    assert d.y_train.tolist() == [int(arrays["train_labels"][r]) for r in rows]
    torch.testing.assert_close(d.x_train[0, 0], torch.tensor(arrays["train_images"][rows[0]] / 255.0,
                                                              dtype=torch.float32))
    # n_test=None keeps the whole test file in file order
    np.testing.assert_array_equal((d.x_test.squeeze(1).numpy() * 255).round(), arrays["test_images"])
    np.testing.assert_array_equal(d.y_test.numpy(), arrays["test_labels"])
    assert float(d.x_train.min()) >= 0.0 and float(d.x_train.max()) <= 1.0
    assert torch.equal(d.box_low, torch.zeros(1, 28, 28)) and torch.equal(d.box_high, torch.ones(1, 28, 28))
    assert d.meta["normalize"] is None


def test_mnist_raw_and_gzip_give_identical_data(tmp_path: Path) -> None:
    make_mnist(tmp_path / "raw", gz=False, seed=5)
    make_mnist(tmp_path / "gz", gz=True, seed=5)
    a = mnist.load(seed=1, root=str(tmp_path / "raw"), n_train=10, n_test=5)
    b = mnist.load(seed=1, root=str(tmp_path / "gz"), n_train=10, n_test=5)
    for k in ("x_train", "y_train", "x_test", "y_test"):
        assert torch.equal(getattr(a, k), getattr(b, k))


def test_read_idx_matches_header(tmp_path: Path) -> None:
    arr = np.arange(2 * 3 * 5, dtype=np.uint8).reshape(2, 3, 5)
    out = mnist.read_idx(write_idx(tmp_path / "x", arr, 0x803), 0x803, 3)
    assert out.shape == (2, 3, 5) and out.dtype == np.uint8
    np.testing.assert_array_equal(out, arr)


def test_mnist_subsets_are_deterministic_given_seed(tmp_path: Path) -> None:
    make_mnist(tmp_path)
    a = mnist.load(seed=7, root=str(tmp_path), n_train=12, n_test=6)
    b = mnist.load(seed=7, root=str(tmp_path), n_train=12, n_test=6)
    c = mnist.load(seed=8, root=str(tmp_path), n_train=12, n_test=6)
    assert torch.equal(a.x_train, b.x_train) and torch.equal(a.y_test, b.y_test)
    assert not torch.equal(a.x_train, c.x_train)


def test_mnist_normalisation_and_box(tmp_path: Path) -> None:
    arrays = make_mnist(tmp_path)
    plain = mnist.load(seed=0, root=str(tmp_path), n_train=20, n_test=None)
    d = mnist.load(seed=0, root=str(tmp_path), n_train=20, n_test=None, normalize=True)
    mean, std = 0.1307, 0.3081
    torch.testing.assert_close(d.x_train, (plain.x_train - mean) / std)
    expected_test = (torch.tensor(arrays["test_images"], dtype=torch.float32) / 255 - mean) / std
    torch.testing.assert_close(d.x_test.squeeze(1), expected_test)
    torch.testing.assert_close(d.box_low, torch.full((1, 28, 28), -mean / std))
    torch.testing.assert_close(d.box_high, torch.full((1, 28, 28), (1 - mean) / std))
    assert bool((d.x_train >= d.box_low - 1e-6).all() and (d.x_train <= d.box_high + 1e-6).all())
    assert d.meta["normalize"] == {"mean": [mean], "std": [std]}


def test_fashion_variant_and_default_root_from_env(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    make_mnist(tmp_path / "fashion_mnist", seed=2)
    monkeypatch.setenv("GROKSCOPE_DATA", str(tmp_path))
    d = load_dataset({"name": "fashion_mnist", "kwargs": {"n_train": 5}, "seed": 0})
    assert d.name == "fashion_mnist" and d.x_train.shape == (5, 1, 28, 28)
    assert d.meta["source"] == str(tmp_path / "fashion_mnist")
    assert d.spec == {"name": "fashion_mnist", "kwargs": {"n_train": 5}, "seed": 0}
    with pytest.raises(DatasetError, match=str(tmp_path / "mnist")):  # plain mnist looks elsewhere
        load_dataset({"name": "mnist", "kwargs": {"n_train": 5}})


def test_mnist_missing_folder_names_path_and_files(tmp_path: Path) -> None:
    missing = tmp_path / "nowhere"
    with pytest.raises(DatasetError) as e:
        mnist.load(root=str(missing))
    msg = str(e.value)
    assert str(missing) in msg and "does not exist" in msg
    for name in mnist.FILES.values():
        assert name in msg


def test_mnist_missing_one_file_is_named(tmp_path: Path) -> None:
    make_mnist(tmp_path)
    (tmp_path / "t10k-labels-idx1-ubyte").unlink()
    with pytest.raises(DatasetError, match=r"lacks t10k-labels-idx1-ubyte"):
        mnist.load(root=str(tmp_path))


@pytest.mark.parametrize("cut", [2, 10, 200])
def test_mnist_truncated_file(tmp_path: Path, cut: int) -> None:
    make_mnist(tmp_path)
    path = tmp_path / "train-images-idx3-ubyte"
    raw = path.read_bytes()
    path.write_bytes(raw[:cut] if cut < 16 else raw[:-cut])
    with pytest.raises(DatasetError, match="truncated") as e:
        mnist.load(root=str(tmp_path))
    assert str(path) in str(e.value)


def test_mnist_truncated_gzip(tmp_path: Path) -> None:
    make_mnist(tmp_path, gz=True)
    path = tmp_path / "train-labels-idx1-ubyte.gz"
    path.write_bytes(path.read_bytes()[:-12])
    with pytest.raises(DatasetError, match="truncated") as e:
        mnist.load(root=str(tmp_path))
    assert str(path) in str(e.value)


def test_mnist_wrong_magic(tmp_path: Path) -> None:
    arrays = make_mnist(tmp_path)
    write_idx(tmp_path / "t10k-images-idx3-ubyte", arrays["test_images"], 0x801)  # label magic on images
    with pytest.raises(DatasetError) as e:
        mnist.load(root=str(tmp_path))
    msg = str(e.value)
    assert "t10k-images-idx3-ubyte" in msg and "0x00000801" in msg and "expected 0x00000803" in msg


def test_mnist_trailing_bytes_and_count_mismatch(tmp_path: Path) -> None:
    arrays = make_mnist(tmp_path)
    path = tmp_path / "train-labels-idx1-ubyte"
    path.write_bytes(path.read_bytes() + b"\x00")
    with pytest.raises(DatasetError, match="trailing"):
        mnist.load(root=str(tmp_path))
    write_idx(path, arrays["train_labels"][:-1], 0x801)
    with pytest.raises(DatasetError, match="40 images but .* 39 labels"):
        mnist.load(root=str(tmp_path))


def test_mnist_subset_larger_than_file(tmp_path: Path) -> None:
    make_mnist(tmp_path)
    with pytest.raises(DatasetError, match="asked for 1000 samples but only 40"):
        mnist.load(root=str(tmp_path), n_train=1000)

# ------------------------------------------------------------------------------------------- CIFAR


def make_cifar(root: Path, n: int = 6, n_test: int = 5, protocol: int = 2, bytes_keys: bool = True,
               seed: int = 0, legacy: bool = False) -> dict[str, tuple[np.ndarray, list[int]]]:
    """The official layout: pickled dicts {data: uint8 (n, 3072), labels: [int], ...} per batch.

    ``legacy`` rewrites numpy 2's ``numpy._core`` globals to numpy 1's ``numpy.core`` (as in the
    official files, pickled with an old numpy)."""
    rng = np.random.default_rng(seed)
    root.mkdir(parents=True, exist_ok=True)
    key = (lambda s: s.encode()) if bytes_keys else (lambda s: s)
    written = {}
    for name in (*cifar10.TRAIN_BATCHES, cifar10.TEST_BATCH):
        m = n_test if name == cifar10.TEST_BATCH else n
        data = rng.integers(0, 256, (m, 3072), dtype=np.uint8)
        labels = [int(v) for v in rng.integers(0, 10, m)]
        batch = {key("batch_label"): b"batch", key("labels"): labels, key("data"): data,
                 key("filenames"): [f"img{i}.png".encode() for i in range(m)]}
        raw = pickle.dumps(batch, protocol=protocol)
        if legacy:
            assert protocol <= 2 and b"cnumpy._core.multiarray\n_reconstruct" in raw
            raw = raw.replace(b"cnumpy._core.multiarray\n", b"cnumpy.core.multiarray\n")
        (root / name).write_bytes(raw)
        written[name] = (data, labels)
    meta = {key("label_names"): [c.encode() for c in "abcdefghij"], key("num_vis"): 3072}
    (root / "batches.meta").write_bytes(pickle.dumps(meta, protocol=protocol))
    return written


@pytest.mark.parametrize("protocol,bytes_keys,legacy", [(2, True, False), (2, True, True), (4, False, False),
                                                         (5, True, False)])
def test_cifar_reads_official_batches(tmp_path: Path, protocol: int, bytes_keys: bool, legacy: bool) -> None:
    written = make_cifar(tmp_path / cifar10.SUBDIR, protocol=protocol, bytes_keys=bytes_keys, legacy=legacy)
    d = cifar10.load(seed=0, root=str(tmp_path), n_train=20)  # finds the cifar-10-batches-py subfolder
    assert d.x_train.shape == (20, 3, 32, 32) and d.x_train.dtype == torch.float32
    assert d.x_test.shape == (5, 3, 32, 32) and d.n_classes == 10
    all_data = np.concatenate([written[b][0] for b in cifar10.TRAIN_BATCHES])
    all_labels = sum((written[b][1] for b in cifar10.TRAIN_BATCHES), [])
    lookup = {row.tobytes(): i for i, row in enumerate(all_data)}
    raw = (d.x_train.numpy() * 255).round().astype(np.uint8).reshape(20, 3072)  # channel-major rows
    rows = [lookup[r.tobytes()] for r in raw]
    assert len(set(rows)) == 20
    assert d.y_train.tolist() == [all_labels[r] for r in rows]
    # pixel (c, i, j) of image k is data[k, c*1024 + i*32 + j]
    test_data, test_labels = written[cifar10.TEST_BATCH]
    assert d.x_test[2, 1, 3, 4].item() == pytest.approx(test_data[2, 1024 + 3 * 32 + 4] / 255.0)
    assert d.y_test.tolist() == test_labels
    assert d.meta["label_names"] == list("abcdefghij")
    assert torch.equal(d.box_low, torch.zeros(3, 32, 32)) and torch.equal(d.box_high, torch.ones(3, 32, 32))


def test_cifar_deterministic_subsets(tmp_path: Path) -> None:
    make_cifar(tmp_path)
    a = cifar10.load(seed=4, root=str(tmp_path), n_train=10, n_test=3)
    b = cifar10.load(seed=4, root=str(tmp_path), n_train=10, n_test=3)
    c = cifar10.load(seed=5, root=str(tmp_path), n_train=10, n_test=3)
    assert torch.equal(a.x_train, b.x_train) and torch.equal(a.x_test, b.x_test)
    assert not torch.equal(a.x_train, c.x_train)


@pytest.mark.parametrize("which", [True, "grokalign", "humayun"])
def test_cifar_normalisation_box(tmp_path: Path, which: bool | str) -> None:
    make_cifar(tmp_path)
    plain = cifar10.load(root=str(tmp_path))
    d = cifar10.load(root=str(tmp_path), normalize=which)
    name = "grokalign" if which is True else which
    mean = torch.tensor(cifar10.NORMALISATIONS[name]["mean"]).view(3, 1, 1)
    std = torch.tensor(cifar10.NORMALISATIONS[name]["std"]).view(3, 1, 1)
    torch.testing.assert_close(d.x_train, (plain.x_train - mean) / std)
    for c in range(3):
        assert d.box_low[c].unique().item() == pytest.approx((0 - mean[c].item()) / std[c].item(), rel=1e-6)
        assert d.box_high[c].unique().item() == pytest.approx((1 - mean[c].item()) / std[c].item(), rel=1e-6)
    assert bool((d.x_train >= d.box_low - 1e-5).all() and (d.x_train <= d.box_high + 1e-5).all())
    assert d.meta["normalize"]["name"] == name and d.meta["normalize"]["std"] == cifar10.NORMALISATIONS[name]["std"]
    if name == "humayun":  # the random-point box Humayun et al. quote for normalised CIFAR
        assert d.box_low.min().item() == pytest.approx(-2.4291, abs=1e-4)
        assert d.box_high.max().item() == pytest.approx(2.7537, abs=1e-4)


class _OpenFile:
    """Unpickling this calls builtins.open(path, "w"): creates a file if code runs."""

    def __init__(self, path: str) -> None:
        self.path = path

    def __reduce__(self):
        return (open, (self.path, "w"))


class _System:
    def __reduce__(self):
        import os

        return (os.system, ("true",))


def test_cifar_malicious_pickle_is_refused_without_running(tmp_path: Path) -> None:
    make_cifar(tmp_path)
    marker = tmp_path / "pwned"
    payload = pickle.dumps({b"data": _OpenFile(str(marker)), b"labels": [0]}, protocol=2)
    pickle.loads(payload)[b"data"].close()  # the payload really runs code under plain pickle ...
    assert marker.exists()
    marker.unlink()
    (tmp_path / "data_batch_3").write_bytes(payload)
    with pytest.raises(DatasetError, match=r"data_batch_3.*refusing to load global (builtins|io)\.open"):
        cifar10.load(root=str(tmp_path))
    assert not marker.exists()  # ... but not under the restricted unpickler
    (tmp_path / "data_batch_3").write_bytes(pickle.dumps(_System()))
    with pytest.raises(DatasetError, match=r"refusing to load global (posix|os|nt)\.system"):
        cifar10.load(root=str(tmp_path))


def test_codecs_encode_only_latin1(tmp_path: Path) -> None:
    # protocol-0 stream: _codecs.encode("abc", "rot13")
    path = tmp_path / "p"
    path.write_bytes(b"c_codecs\nencode\n(Vabc\nVrot13\ntR.")
    with pytest.raises(DatasetError, match="rot13"):
        cifar10.safe_load_pickle(path)
    path.write_bytes(b"c_codecs\nencode\n(Vabc\nVlatin1\ntR.")
    assert cifar10.safe_load_pickle(path) == b"abc"


def test_cifar_truncated_batch(tmp_path: Path) -> None:
    make_cifar(tmp_path)
    path = tmp_path / "data_batch_2"
    path.write_bytes(path.read_bytes()[:300])
    with pytest.raises(DatasetError, match="truncated|malformed") as e:
        cifar10.load(root=str(tmp_path))
    assert str(path) in str(e.value)


@pytest.mark.parametrize("batch,expected", [
    ({b"data": np.zeros((2, 3072), np.uint8)}, "no 'labels'"),
    ({b"data": np.zeros((2, 100), np.uint8), b"labels": [0, 1]}, r"shape \(n, 3072\)"),
    ({b"data": np.zeros((2, 3072), np.float32), b"labels": [0, 1]}, "uint8"),
    ({b"data": np.zeros((2, 3072), np.uint8), b"labels": [0]}, "2 images but 1 labels"),
    ({b"data": np.zeros((2, 3072), np.uint8), b"labels": [0, 10]}, "labels must be in 0..9"),
    ([1, 2, 3], "expected a pickled dict"),
])
def test_cifar_malformed_batches(tmp_path: Path, batch, expected: str) -> None:
    make_cifar(tmp_path)
    (tmp_path / "test_batch").write_bytes(pickle.dumps(batch, protocol=2))
    with pytest.raises(DatasetError, match=expected) as e:
        cifar10.load(root=str(tmp_path))
    assert "test_batch" in str(e.value)


def test_cifar_missing_folder_and_batch(tmp_path: Path) -> None:
    with pytest.raises(DatasetError) as e:
        cifar10.load(root=str(tmp_path / "none"))
    msg = str(e.value)
    assert str(tmp_path / "none") in msg and "data_batch_1" in msg and "test_batch" in msg
    make_cifar(tmp_path)
    (tmp_path / "data_batch_5").unlink()
    with pytest.raises(DatasetError, match="lacks data_batch_5"):
        cifar10.load(root=str(tmp_path))


def test_cifar_unknown_normalisation(tmp_path: Path) -> None:
    make_cifar(tmp_path)
    with pytest.raises(DatasetError, match="humayun"):
        cifar10.load(root=str(tmp_path), normalize="imagenet")

# --------------------------------------------------------------------------------------------- XOR


def test_xor_structure_and_box() -> None:
    d = xor.load(seed=0, dim=30, n_train=400, n_test=100, eps=0.05)
    assert d.x_train.shape == (400, 30) and d.x_test.shape == (100, 30) and d.n_classes == 2
    for x, y in (d.split("train"), d.split("test")):
        assert set(x[:, :2].unique().tolist()) == {-1.0, 1.0}
        assert torch.allclose(x[:, 2:].abs(), torch.tensor(0.05))
        expected = [int((a > 0) != (b > 0)) for a, b in x[:, :2].tolist()]  # XOR of the two signs
        assert y.tolist() == expected
        # the ±1 target of GrokAlign is the product of the two signal coordinates
        pm = torch.tensor(d.meta["pm1_of_class"])[y]
        assert torch.equal(pm, x[:, 0] * x[:, 1])
        assert bool((x >= d.box_low).all() and (x <= d.box_high).all())
    assert d.box_high[:2].tolist() == [1.0, 1.0] and torch.allclose(d.box_high[2:], torch.tensor(0.05))
    assert torch.equal(d.box_low, -d.box_high)
    assert 150 < int(d.y_train.sum()) < 250  # both classes, roughly balanced
    noise = d.x_train[:, 2:]
    assert abs(float((noise > 0).float().mean()) - 0.5) < 0.05


def test_xor_deterministic_and_independent_splits() -> None:
    a = load_dataset({"name": "xor", "kwargs": {"dim": 12, "n_train": 20, "n_test": 20}, "seed": 1})
    b = load_dataset({"name": "xor", "kwargs": {"dim": 12, "n_train": 20, "n_test": 20}, "seed": 1})
    c = load_dataset({"name": "xor", "kwargs": {"dim": 12, "n_train": 20, "n_test": 20}, "seed": 2})
    assert torch.equal(a.x_train, b.x_train) and torch.equal(a.x_test, b.x_test)
    assert not torch.equal(a.x_train, c.x_train)
    assert not torch.equal(a.x_train, a.x_test)
    with pytest.raises(DatasetError, match="dim must be >= 2"):
        xor.load(dim=1)

# ----------------------------------------------------------------------------------------- modular


def _brute(op: str, a: int, b: int, p: int) -> int:
    if op == "add":
        return (a + b) % p
    if op == "sub":
        return (a - b) % p
    if op == "mul":
        return (a * b) % p
    if op == "div":  # the c with c*b = a (mod p), found by search
        return next(c for c in range(p) if (c * b) % p == a)
    if op == "poly":
        return (a * a + a * b + b * b) % p
    raise AssertionError(op)


def _decode_pairs(x: torch.Tensor, p: int, encoding: str) -> list[tuple[int, int]]:
    if encoding == "tokens":
        return [(int(r[0]), int(r[1])) for r in x]
    if encoding == "onehot_concat":
        return [(int(r[:p].argmax()), int(r[p:].argmax())) for r in x]
    out = []
    for r in x:
        nz = torch.nonzero(r).flatten().tolist()
        out.append((nz[0], nz[0]) if len(nz) == 1 else (nz[0], nz[1]))
    return out


@pytest.mark.parametrize("op", sorted(modular.OPERATIONS))
@pytest.mark.parametrize("encoding", modular.ENCODINGS)
def test_modular_ops_against_brute_force(op: str, encoding: str) -> None:
    p = 7
    if encoding == "onehot_sum" and op not in modular.COMMUTATIVE:
        with pytest.raises(DatasetError, match="commutative"):
            modular.load(p=p, op=op, encoding=encoding)
        return
    d = modular.load(seed=0, p=p, op=op, train_fraction=0.5, encoding=encoding)
    x = torch.cat([d.x_train, d.x_test])
    y = torch.cat([d.y_train, d.y_test])
    got = _decode_pairs(x, p, encoding)
    unordered = encoding == "onehot_sum"
    expected_pairs = {(a, b) for a in range(p) for b in range(p)
                      if not (op == "div" and b == 0) and not (unordered and a > b)}
    assert sorted(got) == sorted(expected_pairs)  # every valid pair exactly once
    assert y.tolist() == [_brute(op, a, b, p) for a, b in got]
    assert d.n_classes == p and d.meta["p"] == p and d.meta["op"] == op
    assert d.meta["a_train"].tolist() == [a for a, _ in got[: len(d.y_train)]]
    assert d.meta["b_test"].tolist() == [b for _, b in got[len(d.y_train):]]


def test_modular_encodings_shapes_and_boxes() -> None:
    p = 11
    t = modular.load(p=p, encoding="tokens")
    assert t.input_kind == "tokens" and t.x_train.dtype == torch.int64 and t.x_train.shape[1] == 3
    assert bool((t.x_train[:, 2] == p).all())
    assert t.box_low.tolist() == [0.0] * 3 and t.box_high.tolist() == [float(p)] * 3
    c = modular.load(p=p, encoding="onehot_concat")
    assert c.input_kind == "continuous" and c.x_train.shape[1] == 2 * p
    assert bool((c.x_train.sum(1) == 2).all()) and float(c.box_high.max()) == 1.0
    s = modular.load(p=p, encoding="onehot_sum")
    assert s.x_train.shape[1] == p and len(s.y_train) + len(s.y_test) == p * (p + 1) // 2
    assert bool((s.x_train.sum(1) == 2).all()) and float(s.x_train.max()) == 2.0 == float(s.box_high.max())
    for d in (t, c, s):
        assert bool((d.x_train >= d.box_low).all() and (d.x_train <= d.box_high).all())


def test_modular_split_fraction_and_determinism() -> None:
    a = modular.load(seed=3, p=13, train_fraction=0.3)
    b = modular.load(seed=3, p=13, train_fraction=0.3)
    c = modular.load(seed=4, p=13, train_fraction=0.3)
    assert len(a.y_train) == round(0.3 * 169) and len(a.y_train) + len(a.y_test) == 169
    assert torch.equal(a.x_train, b.x_train) and not torch.equal(a.x_train, c.x_train)
    train = {tuple(r) for r in a.x_train.tolist()}
    assert not train & {tuple(r) for r in a.x_test.tolist()}


@pytest.mark.parametrize("kwargs,expected", [
    ({"p": 9}, "prime"), ({"op": "pow"}, "add, sub, mul, div, poly"), ({"encoding": "bits"}, "tokens"),
    ({"train_fraction": 1.0}, r"\(0, 1\)"),
    ({"p": 2, "train_fraction": 0.1}, "both splits must be non-empty"),
])
def test_modular_bad_arguments(kwargs: dict, expected: str) -> None:
    with pytest.raises(DatasetError, match=expected):
        modular.load(**kwargs)

# ------------------------------------------------------------------------------------------ digits


def test_digits_split() -> None:
    from sklearn.datasets import load_digits

    full = load_digits()
    d = digits.load(seed=0, n_train=1000)
    assert d.x_train.shape == (1000, 1, 8, 8) and d.x_test.shape == (797, 1, 8, 8)
    assert float(d.x_train.min()) >= 0 and float(d.x_train.max()) <= 1 and float(d.x_train.max()) == 1.0
    # train + test is exactly the full set (labels as a multiset, pixel sums too)
    y = torch.cat([d.y_train, d.y_test])
    assert torch.equal(torch.bincount(y, minlength=10), torch.bincount(torch.tensor(full.target), minlength=10))
    total = torch.cat([d.x_train, d.x_test]).sum().item() * 16
    assert total == pytest.approx(float(full.images.sum()))
    e = digits.load(seed=0, n_train=1000, n_test=100)
    assert torch.equal(e.x_train, d.x_train) and torch.equal(e.x_test, d.x_test[:100])
    assert not torch.equal(digits.load(seed=1, n_train=1000).y_train, d.y_train)
    with pytest.raises(DatasetError, match="n_train"):
        digits.load(n_train=1797)

# ---------------------------------------------------------------------------------------- registry


def test_unknown_dataset_lists_valid_names() -> None:
    with pytest.raises(DatasetError) as e:
        load_dataset({"name": "imagenet"})
    for name in DATASETS:
        assert name in str(e.value)


def test_bad_kwargs_are_named() -> None:
    with pytest.raises(DatasetError, match="bad arguments for dataset 'xor'"):
        load_dataset({"name": "xor", "kwargs": {"dimension": 5}})


def test_load_dataset_records_spec() -> None:
    d = load_dataset({"name": "modular", "kwargs": {"p": 5}, "seed": 2})
    assert d.spec == {"name": "modular", "kwargs": {"p": 5}, "seed": 2}


def test_mnist_first_selection_takes_the_files_first_images(tmp_path: Path) -> None:
    """``selection="first"``: the first n_train / n_test images of each file, in file order (GrokAlign's
    ``Subset(range(n))``), whatever the seed; a bad selection is named."""
    arrays = make_mnist(tmp_path)
    for seed in (0, 5):
        d = mnist.load(seed=seed, root=str(tmp_path), n_train=12, n_test=7, selection="first")
        assert _match_rows(d.x_train, arrays["train_images"]) == list(range(12))
        assert _match_rows(d.x_test, arrays["test_images"]) == list(range(7))
        assert d.y_train.tolist() == arrays["train_labels"][:12].tolist() and d.meta["selection"] == "first"
    assert _match_rows(mnist.load(seed=0, root=str(tmp_path), n_train=12)
                       .x_train, arrays["train_images"]) != list(range(12))  # the default stays random
    with pytest.raises(DatasetError, match="selection='last'; valid: random, first"):
        mnist.load(root=str(tmp_path), selection="last")
    with pytest.raises(DatasetError, match="asked for 41 samples but only 40"):
        mnist.load(root=str(tmp_path), n_train=41, selection="first")
