"""Safe loading: formats, prefixes, clear key/shape errors, refused pickles, truncated files, hashes."""

from __future__ import annotations

import json

import pytest
import torch
from safetensors.torch import save_file

from grokscope.engine.discovery import find_runs
from grokscope.engine.hashing import state_dict_hash
from grokscope.engine.loading import (CheckpointError, extract_state_dict, float_dtype, load_into,
                                      match_keys, read_state_dict)
from tests.helpers import tiny_net


class Evil:
    """Unpickling this creates ``path``: the payload a safe loader must never run."""

    def __init__(self, path):
        self.path = str(path)

    def __reduce__(self):
        return (open, (self.path, "w"))


def _sd(seed: int = 0):
    torch.manual_seed(seed)
    return tiny_net().state_dict()


def _shapes(sd):
    return {k: tuple(v.shape) for k, v in sd.items()}


@pytest.mark.parametrize("prefix", ["module.", "_orig_mod.", "model.", "module._orig_mod.", "net.",
                                    "model._orig_mod."])
def test_prefixes_are_removed(prefix):
    sd = _sd()
    wrapped = {prefix + k: v for k, v in sd.items()}
    out = match_keys(wrapped, _shapes(sd), "x")
    assert set(out) == set(sd) and all(torch.equal(out[k], sd[k]) for k in sd)


def test_lightning_extra_keys_and_missing_prefix():
    sd = _sd()
    lightning = {**{"model." + k: v for k, v in sd.items()}, "loss_fn.weight": torch.ones(10)}
    assert set(match_keys(lightning, _shapes(sd), "x")) == set(sd)
    # the model's keys have a wrapper prefix that the checkpoint lacks
    wrapped_model = {"inner." + k: s for k, s in _shapes(sd).items()}
    assert set(match_keys(sd, wrapped_model, "x")) == set(wrapped_model)


def test_ambiguous_prefixes_are_refused():
    sd = _sd()
    both = {**{"teacher." + k: v for k, v in sd.items()}, **{"student." + k: v for k, v in sd.items()}}
    with pytest.raises(CheckpointError, match="ambiguous"):
        match_keys(both, _shapes(sd), "f.ckpt")


def test_key_mismatch_lists_missing_and_unexpected():
    sd = _sd()
    bad = dict(sd)
    bad["extra.weight"] = bad.pop("head.weight")
    with pytest.raises(CheckpointError) as e:
        match_keys(bad, _shapes(sd), "ckpt.pt")
    msg = str(e.value)
    assert "ckpt.pt" in msg and "1 missing (head.weight)" in msg and "1 unexpected (extra.weight)" in msg


def test_shape_mismatch_names_each_tensor():
    sd = tiny_net(hidden=8).state_dict()
    with pytest.raises(CheckpointError) as e:
        load_into(tiny_net(hidden=16), sd, "ckpt.safetensors")
    msg = str(e.value)
    assert "shape mismatch" in msg and "body.1.weight: checkpoint (8, 64) vs model (16, 64)" in msg


def test_every_format_reads_the_same_tensors(tmp_path):
    sd = _sd()
    save_file(sd, str(tmp_path / "step-1.safetensors"))
    torch.save(sd, tmp_path / "step-2.pt")
    torch.save({"model_state_dict": sd, "epoch": 3}, tmp_path / "step-3.pth")
    torch.save({"state_dict": {"model." + k: v for k, v in sd.items()}, "global_step": 4,
                "optimizer_states": [], "hyper_parameters": {"lr": 0.1}}, tmp_path / "epoch=0-step=4.ckpt")
    torch.save(sd, tmp_path / "step-5.bin")
    keys = sorted(sd)
    shards = {"a.safetensors": keys[:2], "b.safetensors": keys[2:]}
    d = tmp_path / "checkpoint-6"
    d.mkdir()
    for fname, ks in shards.items():
        save_file({k: sd[k] for k in ks}, str(d / fname))
    (d / "model.safetensors.index.json").write_text(json.dumps(
        {"weight_map": {k: f for f, ks in shards.items() for k in ks}}))
    (run,) = find_runs(tmp_path)
    assert run.steps == [1, 2, 3, 4, 5, 6]
    hashes = set()
    for ck in run.checkpoints:
        raw = read_state_dict(ck)
        net = load_into(tiny_net(), raw, ck.path)
        assert all(torch.equal(net.state_dict()[k], sd[k]) for k in sd), ck.label
        if ck.step != 4:
            hashes.add(state_dict_hash(raw))
    assert len(hashes) == 1  # same weights, same content hash, whatever the file format


def test_hash_ignores_metadata_and_sees_every_byte(tmp_path):
    sd = _sd()
    save_file(sd, str(tmp_path / "a.safetensors"), metadata={"step": "1"})
    save_file(sd, str(tmp_path / "b.safetensors"), metadata={"step": "2"})
    ha, hb = (state_dict_hash(read_state_dict(tmp_path / n)) for n in ("a.safetensors", "b.safetensors"))
    assert ha == hb
    changed = dict(sd)
    changed["head.bias"] = sd["head.bias"].clone()
    changed["head.bias"][3] += 1e-7
    assert state_dict_hash(changed) != ha
    assert state_dict_hash({"x": torch.tensor(1.0, dtype=torch.bfloat16)}) != \
        state_dict_hash({"x": torch.tensor(1.0, dtype=torch.float16)})


def test_malicious_pickle_is_refused_and_never_runs(tmp_path):
    marker = tmp_path / "pwned"
    torch.save({"w": torch.zeros(2), "payload": Evil(marker)}, tmp_path / "step-1.pt")
    with pytest.raises(CheckpointError) as e:
        read_state_dict(tmp_path / "step-1.pt")
    msg = str(e.value)
    assert "refused" in msg and "needs code to load" in msg and "weights_only=True" in msg
    assert "step-1.pt" in msg and "needs the global io.open" in msg  # the blocked global, named
    assert "convert it with your own trusted code" in msg
    assert "weights_only=False" not in msg and "likely succeed" not in msg  # torch's unsafe hint, not repeated
    assert len(msg.splitlines()) == 1
    assert not marker.exists()
    # the payload is real: an unsafe load would have run it
    control = tmp_path / "control"
    torch.save({"payload": Evil(control)}, tmp_path / "control.pt")
    torch.load(tmp_path / "control.pt", weights_only=False)
    assert control.exists()


def test_truncated_files_are_named(tmp_path):
    sd = _sd()
    save_file(sd, str(tmp_path / "a.safetensors"))
    torch.save(sd, tmp_path / "b.pt")
    for name in ("a.safetensors", "b.pt"):
        p = tmp_path / name
        p.write_bytes(p.read_bytes()[: p.stat().st_size // 2])
        with pytest.raises(CheckpointError, match=rf"{name}: unreadable"):
            read_state_dict(p)


def test_extract_state_dict_errors():
    with pytest.raises(CheckpointError, match="no state dict found"):
        extract_state_dict({"epoch": 1, "lr": 0.1}, "f.pt")
    with pytest.raises(CheckpointError, match="expected a state dict"):
        extract_state_dict([1, 2], "f.pt")


def test_float64_checkpoints_keep_their_precision():
    sd = {k: v.double() + 1e-12 for k, v in _sd().items()}
    assert float_dtype(sd) == torch.float64
    net = load_into(tiny_net(), sd, "x")
    assert net.head.weight.dtype == torch.float64 and torch.equal(net.head.weight, sd["head.weight"])
    assert float_dtype({k: v.half() for k, v in sd.items()}) == torch.float32


def test_tied_weights_left_out_of_a_checkpoint_load_into_both_places(tmp_path):
    """A model whose output matrix is its input embedding (GPT-2's lm_head), saved as save_pretrained
    does (the tied copy left out), loads: both names hold the saved matrix; a checkpoint missing an
    untied key is still refused, naming every key of the model."""
    import torch
    from torch import nn

    from grokscope.engine.loading import CheckpointError, load_into, tied_keys

    class Tied(nn.Module):
        def __init__(self):
            super().__init__()
            self.wte = nn.Embedding(5, 3)
            self.mid = nn.Linear(3, 3)
            self.head = nn.Linear(3, 5, bias=False)
            self.head.weight = self.wte.weight

    src = Tied()
    sd = {k: v.clone() for k, v in src.state_dict().items() if k != "head.weight"}
    assert tied_keys(src.state_dict()) == {"head.weight"}
    dst = load_into(Tied(), sd, "ck")
    assert torch.equal(dst.head.weight, src.wte.weight) and torch.equal(dst.wte.weight, src.wte.weight)
    assert torch.equal(dst.mid.weight, src.mid.weight)
    del sd["mid.bias"]
    with pytest.raises(CheckpointError, match=r"ck: state dict keys do not match the model: 2 missing \(head.weight, mid.bias\)"):
        load_into(Tied(), sd, "ck")
