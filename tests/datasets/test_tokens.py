"""Token-sequence files as a causal language-model task (``file:tokens.npz`` with ``ids`` and an optional
``mask``, or a Hugging Face ``save_to_disk`` folder with ``input_ids``): the arrays, the split as
stated, the facts stored with a run, and each bad input as one line naming the file and the key."""

from __future__ import annotations

import importlib.util

import numpy as np
import pytest
import torch

from grokscope.datasets import DatasetError, describe_data, load_dataset, task_facts

N, T, V = 30, 8, 11


def _ids(seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, V, size=(N, T))


def _load(path, **kw):
    return load_dataset({"name": f"file:{path}", "kwargs": kw})


def test_ids_and_mask_with_a_split_option(tmp_path):
    ids = _ids()
    mask = np.ones((N, T), dtype=np.int8)
    mask[:, -2:] = 0
    np.savez(tmp_path / "tokens.npz", ids=ids, mask=mask)
    d = _load(tmp_path / "tokens.npz", split="first:20")
    assert d.is_lm and d.task == "causal_lm" and d.input_kind == "tokens"
    assert d.vocab_size == int(ids.max()) + 1 and d.classes_from == "labels" and d.seq_len == T
    got_ids, got_mask = d.tokens("train")
    assert torch.equal(got_ids, torch.from_numpy(ids[:20])) and got_ids.dtype == torch.int64
    assert got_mask.dtype == torch.bool and torch.equal(got_mask, torch.from_numpy(mask[:20]).bool())
    assert torch.equal(d.tokens("test")[0], torch.from_numpy(ids[20:]))
    assert d.y_train is d.x_train  # the targets are the next tokens of the same rows
    assert task_facts(d) == {"n_classes": d.vocab_size, "chance": 1 / d.vocab_size, "classes_from": "labels",
                             "grok_threshold": 0.95, "threshold_from": "default", "task": "causal_lm", "seq_len": T}
    assert describe_data({"name": "file:tokens.npz", "kwargs": {"split": "first:20", "vocab_size": 50}}).endswith(
        "split first:20 of ids")


def test_stated_splits_index_arrays_renamed_arrays_and_vocab_size(tmp_path):
    ids = _ids(1)
    np.savez(tmp_path / "a.npz", ids_train=ids[:25], ids_test=ids[25:])
    d = _load(tmp_path / "a.npz", vocab_size=64)
    assert d.vocab_size == 64 and d.classes_from == "stated" and d.mask_train is None and d.mask_test is None
    assert torch.equal(d.tokens("test")[0], torch.from_numpy(ids[25:]))
    tr, te = np.arange(0, N, 2), np.arange(1, N, 2)
    np.savez(tmp_path / "b.npz", tokens=ids, train_idx=tr, test_idx=te)
    d = _load(tmp_path / "b.npz", ids="tokens")
    assert torch.equal(d.x_train, torch.from_numpy(ids[tr])) and torch.equal(d.x_test, torch.from_numpy(ids[te]))
    np.save(tmp_path / "ids.npy", ids)  # a folder of .npy files
    (tmp_path / "f").mkdir()
    for k, v in {"ids": ids, "train_idx": tr, "test_idx": te}.items():
        np.save(tmp_path / "f" / f"{k}.npy", v)
    assert torch.equal(_load(tmp_path / "f").x_test, torch.from_numpy(ids[te]))


def test_errors_name_the_file_and_the_key(tmp_path):
    ids = _ids()

    def err(arrays, match, **kw):
        f = tmp_path / f"e{len(list(tmp_path.iterdir()))}.npz"
        np.savez(f, **arrays)
        with pytest.raises(DatasetError, match=match) as e:
            _load(f, **kw)
        assert str(f) in str(e.value) and "\n" not in str(e.value)

    err({"ids": ids}, r"token ids 'ids' but no train_idx/test_idx: add them or a split option")
    err({"ids": ids.astype(float)}, r"'ids' has dtype float64, expected integer token ids", split="first:5")
    err({"ids": ids[:, :1]}, r"'ids' has sequences of length 1; a next-token task needs at least 2", split="first:5")
    err({"ids": ids[0]}, r"'ids' has shape \(8,\), expected \(n, T\) token ids", split="first:5")
    err({"ids": ids - 1}, r"negative token id -1", split="first:5")
    err({"ids": ids}, r"vocab_size=5 must be an integer above the largest token id \(10\)", split="first:5", vocab_size=5)
    err({"ids": ids, "mask": np.ones((N, T + 1))}, r"'mask' has shape \(30, 9\), but its ids have \(30, 8\)", split="first:5")
    err({"ids": ids, "mask": np.full((N, T), 2)}, r"'mask' must hold 0/1", split="first:5")
    lonely = np.zeros((N, T), dtype=int)
    lonely[:, ::2] = 1
    err({"ids": ids, "mask": lonely}, r"the mask of the train split leaves no next-token prediction", split="first:5")
    err({"ids_train": ids[:5], "ids_test": ids[5:, :4]}, r"train sequences have length 8 but test sequences 4")
    err({"ids": ids}, r"n_classes is for labelled data; a token-sequence file states vocab_size", split="first:5", n_classes=11)
    err({"x_train": ids, "y_train": ids[:, 0], "x_test": ids, "y_test": ids[:, 0]},
        r"vocab_size is for token-sequence files \(ids\)", vocab_size=20)


def _hf_token_folder(path):
    import datasets as hf  # the Hugging Face package

    ids = _ids(2)
    mask = np.ones_like(ids)
    mask[0, -3:] = 0
    import pyarrow as pa

    def split(rows: slice, name: str):  # a stated fingerprint: no hashing of the table (dill) needed
        table = pa.table({"input_ids": ids[rows].tolist(), "attention_mask": mask[rows].tolist()})
        return hf.Dataset(hf.arrow_dataset.InMemoryTable(table), fingerprint=name)

    dd = hf.DatasetDict({"train": split(slice(0, 20), "train"), "test": split(slice(20, None), "test")})
    dd.save_to_disk(str(path))
    return ids, mask


@pytest.mark.skipif(importlib.util.find_spec("datasets") is None, reason="Hugging Face datasets is not installed")
def test_a_hugging_face_token_folder(tmp_path):
    ids, mask = _hf_token_folder(tmp_path / "hf")
    d = _load(tmp_path / "hf", vocab_size=V)
    assert d.is_lm and d.vocab_size == V
    assert torch.equal(d.tokens("train")[0], torch.from_numpy(ids[:20]))
    assert torch.equal(d.tokens("train")[1], torch.from_numpy(mask[:20]).bool())
    assert torch.equal(d.tokens("test")[0], torch.from_numpy(ids[20:]))


@pytest.mark.skipif(importlib.util.find_spec("datasets") is not None, reason="Hugging Face datasets is installed")
def test_a_hugging_face_token_folder_without_the_package_is_one_line(tmp_path):
    hf = tmp_path / "hf"
    hf.mkdir()
    (hf / "dataset_dict.json").write_text('{"splits": ["train", "test"]}')
    with pytest.raises(DatasetError, match=r"hf is a Hugging Face datasets folder; reading it needs that package: "
                                           r"pip install datasets$"):
        _load(hf, vocab_size=V)
