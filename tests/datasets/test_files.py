"""file: datasets on real files the tests write (every format and split option), the dataset
protocol of callables, each error as one line naming the file and key, log import and split check."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from grokscope.datasets import DatasetError, describe_data, load_dataset
from grokscope.datasets.protocol import as_data
from grokscope.runlog import LogError, import_log, split_check

RNG = np.random.default_rng(0)
X = RNG.normal(size=(30, 5)).astype(np.float32)
Y = RNG.integers(0, 3, 30)
TR, TE = np.arange(0, 30, 2), np.arange(1, 30, 2)


def _check(d, tr=TR, te=TE):
    assert torch.equal(d.x_train, torch.from_numpy(X[tr])) and torch.equal(d.y_train, torch.from_numpy(Y[tr]))
    assert torch.equal(d.x_test, torch.from_numpy(X[te])) and torch.equal(d.y_test, torch.from_numpy(Y[te]))
    assert d.n_classes == 3 and d.input_kind == "continuous"
    assert torch.equal(d.box_low, torch.from_numpy(np.minimum(X[tr].min(0), X[te].min(0))))


def _write(kind, path, arrays):
    if kind == "npz":
        np.savez(path, **arrays)
    elif kind == "npy":
        path.mkdir()
        for k, v in arrays.items():
            np.save(path / f"{k}.npy", v)
    elif kind == "pt":
        torch.save({k: torch.from_numpy(np.asarray(v)) for k, v in arrays.items()}, path)
    else:
        from safetensors.numpy import save_file
        save_file({k: np.ascontiguousarray(v) for k, v in arrays.items()}, str(path))
    return path


@pytest.mark.parametrize("kind,suffix", [("npz", ".npz"), ("npy", ""), ("pt", ".pt"), ("safetensors", ".safetensors")])
def test_every_format_with_both_layouts(tmp_path, kind, suffix):
    four = {"x_train": X[TR], "y_train": Y[TR], "x_test": X[TE], "y_test": Y[TE]}
    _check(load_dataset({"name": f"file:{_write(kind, tmp_path / ('a' + suffix), four)}"}))
    idx = {"x": X, "y": Y, "train_idx": TR, "test_idx": TE}
    _check(load_dataset({"name": f"file:{_write(kind, tmp_path / ('b' + suffix), idx)}"}))
    renamed = {"X": X, "labels": Y, "tr": TR, "te": TE}
    d = load_dataset({"name": f"file:{_write(kind, tmp_path / ('c' + suffix), renamed)}",
                      "kwargs": {"x": "X", "y": "labels", "train_idx": "tr", "test_idx": "te"}})
    _check(d)


def test_split_options(tmp_path):
    f = _write("npz", tmp_path / "d.npz", {"x": X, "y": Y})
    _check(load_dataset({"name": f"file:{f}", "kwargs": {"split": "first:12"}}), np.arange(12), np.arange(12, 30))
    (tmp_path / "idx.json").write_text(json.dumps({"train_idx": TR.tolist(), "test_idx": TE.tolist()}))
    _check(load_dataset({"name": f"file:{f}", "kwargs": {"split": f"indices:{tmp_path / 'idx.json'}"}}))
    np.savez(tmp_path / "idx.npz", train_idx=TR, test_idx=TE)
    _check(load_dataset({"name": f"file:{f}", "kwargs": {"split": f"indices:{tmp_path / 'idx.npz'}"}}))
    assert describe_data({"name": f"file:{f}", "kwargs": {"split": "first:12"}}).endswith("split first:12 of x, y")


def test_builtin_split_option_and_description(tmp_path):
    from sklearn.datasets import load_digits

    d = load_dataset({"name": "digits", "kwargs": {"split": "first:1000"}})
    x = torch.tensor(load_digits().images, dtype=torch.float32).unsqueeze(1) / 16.0
    assert torch.equal(d.x_train, x[:1000]) and torch.equal(d.x_test, x[1000:])
    assert d.meta["split"] == "split first:1000"
    seeded = load_dataset({"name": "digits", "seed": 3})
    assert seeded.meta["split"] == "seeded split (seed 3)"
    assert describe_data(seeded.spec) == "digits, seeded split (seed 3)"
    np.savez(tmp_path / "i.npz", train_idx=np.arange(10), test_idx=np.arange(10, 15))
    m = load_dataset({"name": "modular", "kwargs": {"p": 5, "split": f"indices:{tmp_path / 'i.npz'}"}})
    assert len(m.y_train) == 10 and len(m.y_test) == 5
    with pytest.raises(DatasetError, match="unknown split 'half'"):
        load_dataset({"name": "digits", "kwargs": {"split": "half"}})


def test_callable_protocol_forms():
    four = (X[TR], Y[TR], X[TE], Y[TE])
    _check(as_data(four, "t", "t"))
    _check(as_data({"x": X, "y": Y, "train_idx": TR, "test_idx": TE}, "t", "t"))
    ds = [torch.utils.data.TensorDataset(torch.from_numpy(X[i]), torch.from_numpy(Y[i])) for i in (TR, TE)]
    _check(as_data(tuple(ds), "t", "t"))
    d = as_data({"x_train": X[TR], "y_train": Y[TR], "x_test": X[TE], "y_test": Y[TE], "n_classes": 5,
                 "box_low": -4.0, "box_high": 4.0}, "t", "t")
    assert d.n_classes == 5 and torch.equal(d.box_high, torch.full((5,), 4.0))
    tok = as_data({"x_train": np.array([[0, 1], [2, 3]]), "y_train": [0, 1], "x_test": np.array([[1, 1]]),
                   "y_test": [1]}, "t", "t")
    assert tok.input_kind == "tokens" and tok.x_train.dtype == torch.int64


def test_errors_name_file_and_key(tmp_path):
    def err(arrays, match, **kw):
        f = _write("npz", tmp_path / f"e{len(list(tmp_path.iterdir()))}.npz", arrays)
        with pytest.raises(DatasetError, match=match) as e:
            load_dataset({"name": f"file:{f}", "kwargs": kw})
        assert str(f) in str(e.value) and "\n" not in str(e.value)

    err({"x_train": X}, r"missing array\(s\) y_train, x_test, y_test; .*\(the file holds x_train\)")
    err({"x": X, "y": Y}, r"add train_idx/test_idx or a split option")
    err({"x_train": X, "y_train": Y[:10], "x_test": X, "y_test": Y}, r"'x_train' has 30 samples but 'y_train' has 10")
    err({"x_train": X, "y_train": Y, "x_test": X, "y_test": Y}, r"label 2 out of range for n_classes=2", n_classes=2)
    err({"x_train": X, "y_train": Y - 1, "x_test": X, "y_test": Y}, r"negative label -1")
    bad = X.copy()
    bad[4, 1] = np.nan
    err({"x_train": bad, "y_train": Y, "x_test": X, "y_test": Y}, r"'x_train' has non-finite values \(first at sample 4\)")
    err({"x": X, "y": Y, "train_idx": np.array([0, 99]), "test_idx": TE}, r"'train_idx' has indices outside 0..29")
    err({"x_train": X, "y_train": Y + 0.5, "x_test": X, "y_test": Y}, r"'y_train' holds non-integer values")
    with pytest.raises(DatasetError, match="no such dataset file"):
        load_dataset({"name": f"file:{tmp_path / 'nope.npz'}"})
    (tmp_path / "x.csv").write_text("1,2")
    with pytest.raises(DatasetError, match=r"unknown dataset file type \.csv"):
        load_dataset({"name": f"file:{tmp_path / 'x.csv'}"})
    (tmp_path / "broken.npz").write_bytes(b"not a zip")
    with pytest.raises(DatasetError, match="broken.npz: unreadable .npz file"):
        load_dataset({"name": f"file:{tmp_path / 'broken.npz'}"})
    hf = tmp_path / "hf"
    hf.mkdir()
    (hf / "dataset_dict.json").write_text('{"splits": ["train", "test"]}')
    with pytest.raises(DatasetError, match="needs that package: pip install datasets"):
        load_dataset({"name": f"file:{hf}"})


def test_pickled_code_in_a_pt_dataset_is_refused(tmp_path):
    import collections

    torch.save({"x_train": X, "odd": collections.Counter(a=1)}, tmp_path / "p.pt")
    with pytest.raises(DatasetError, match=r"p.pt: refused or unreadable \(read only with torch.load\(weights_only=True\)\)"):
        load_dataset({"name": f"file:{tmp_path / 'p.pt'}"})


def test_log_import_formats_and_split_check(tmp_path):
    import xarray as xr

    hf = tmp_path / "trainer_state.json"
    hf.write_text(json.dumps({"log_history": [{"step": 10, "loss": 1.5}, {"step": 10, "eval_accuracy": 0.5,
                                                                          "eval_loss": 1.2}, {"step": 20, "loss": 0.9}]}))
    assert import_log(hf) == [{"step": 10, "train_loss": 1.5, "test_acc": 0.5, "test_loss": 1.2},
                              {"step": 20, "train_loss": 0.9}]
    mc = tmp_path / "metrics.csv"
    mc.write_text("epoch,step,train_acc,val_acc\n0,4,0.7,\n0,4,,0.6\n1,9,0.9,\n")
    # Lightning's validation logged at step 4 saw the weights of global_step 5
    assert import_log(mc) == [{"step": 4, "train_acc": 0.7}, {"step": 5, "test_acc": 0.6}, {"step": 9, "train_acc": 0.9}]
    j = tmp_path / "log.csv"
    j.write_text("it,acc_val\n3,0.25\n")
    assert import_log(j, "csv", {"test_acc": "acc_val"}, step="it") == [{"step": 3, "test_acc": 0.25}]
    with pytest.raises(LogError, match="log.csv: no 'step' column"):
        import_log(j, "csv")
    with pytest.raises(LogError, match="no column 'nope'"):
        import_log(j, "csv", {"test_acc": "nope"}, step="it")
    acc = xr.Dataset({"accuracy": (("step", "split"), [[0.5, 0.5], [0.9, 0.80]]),
                      "done": ("step", [True, True])}, coords={"step": [4, 9], "split": ["train", "test"]})
    log = [{"step": 4, "train_acc": 0.5, "test_acc": 0.5}, {"step": 9, "train_acc": 0.9, "test_acc": 0.7}]
    (line,) = split_check(acc, log, "r")
    assert line.startswith("SPLIT CHECK FAILED for run r: at step 9 acc on the given test data is 0.8000 but "
                           "the run's own log says test_acc 0.7000")
    assert split_check(acc, log, "r", tolerance=0.2) == []
