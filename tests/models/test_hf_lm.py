"""``--model hf`` with a ``…ForCausalLM`` on a causal-LM task: a tiny GPT-2 and a tiny GPT-NeoX (the
Pythia architecture) built from a config here, their revisions in the hub-cache layout, probed with
``acc`` into a store; the next-token loss equals transformers' own ``model(ids, labels=ids).loss``."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch

transformers = pytest.importorskip("transformers")

from grokscope.engine.store_view import load_group  # noqa: E402
from tests.helpers import HFCausalLogits  # noqa: E402
from tests.models import hf_runs  # noqa: E402

V, T, N = 19, 12, 24


@pytest.fixture
def cli():
    from click.testing import CliRunner

    from grokscope.cli import main

    runner = CliRunner()
    return lambda *args: runner.invoke(main, [str(a) for a in args], catch_exceptions=False)


def _config(arch: str):
    if arch == "gpt2":  # tied input and output embeddings: save_pretrained leaves lm_head.weight out
        return transformers.GPT2Config(vocab_size=V, n_positions=T, n_embd=16, n_layer=2, n_head=2,
                                       bos_token_id=0, eos_token_id=0, resid_pdrop=0.0, embd_pdrop=0.0,
                                       attn_pdrop=0.0, architectures=["GPT2LMHeadModel"])
    return transformers.GPTNeoXConfig(vocab_size=V, hidden_size=16, num_hidden_layers=2, num_attention_heads=2,
                                      intermediate_size=32, max_position_embeddings=T, rotary_pct=0.25,
                                      bos_token_id=0, eos_token_id=0, tie_word_embeddings=False,
                                      architectures=["GPTNeoXForCausalLM"])


def _series(root: Path, arch: str, steps=(0, 1000, 2000)) -> tuple[Path, dict[str, dict]]:
    """Revisions ``step0, step1000, ...`` of a freshly initialised model (a different seed each), as
    save_pretrained writes them (tied copies left out), in the hub-cache layout."""
    cfg = _config(arch)
    states = {}
    for i, step in enumerate(steps):
        torch.manual_seed(i)
        model = transformers.AutoModelForCausalLM.from_config(cfg)
        sd = model.state_dict()
        tied = {k for k in sd if k == "lm_head.weight"} if cfg.tie_word_embeddings else set()
        states[f"step{step}"] = {k: v.clone() for k, v in sd.items() if k not in tied}
    repo = hf_runs.hub_cache(root, f"toy/{arch}-lm", {n: {"config": cfg, "state": s} for n, s in states.items()})
    return repo, states


def _tokens(path: Path, masked: bool) -> dict[str, np.ndarray]:
    rng = np.random.default_rng(0)
    arrays = {"ids": rng.integers(0, V, size=(N, T)), "train_idx": np.arange(16), "test_idx": np.arange(16, N)}
    if masked:  # right padding: rows end early
        mask = np.ones((N, T), dtype=np.int64)
        for i in range(N):
            mask[i, T - (i % 5):] = 0
        arrays["mask"] = mask
    np.savez(path, **arrays)
    return arrays


def _hf_loss(model, ids: np.ndarray, mask: np.ndarray | None) -> float:
    """transformers' own loss: labels = the ids, -100 where the token is padding."""
    ids_t = torch.from_numpy(ids)
    labels = ids_t.clone()
    kw = {}
    if mask is not None:
        labels[torch.from_numpy(mask) == 0] = -100
        kw["attention_mask"] = torch.from_numpy(mask)
    with torch.no_grad():
        return float(model(input_ids=ids_t, labels=labels, **kw).loss)


@pytest.mark.parametrize("arch,masked,where", [("gpt2", False, ["--scheduler", "sync"]),
                                               ("gpt_neox", True, ["--workers", "2", "--threads", "1"])])
def test_causal_lm_revisions_probed_with_acc_equal_transformers_loss(tmp_path, cli, arch, masked, where):
    """In process (GPT-2) and on a LocalCluster of worker processes (GPT-NeoX, with padding)."""
    repo, states = _series(tmp_path / "hub", arch)
    arrays = _tokens(tmp_path / "tokens.npz", masked)
    # no --model (the snapshot's config.json gives hf), no position: the dataset is token sequences
    r = cli("init", repo, "--dataset", f"file:{tmp_path / 'tokens.npz'}")
    assert r.exit_code == 0, r.output
    r = cli("probe", repo, "--metrics", "acc", *where, "-q",
            "--param", "acc.icl_early=2", "--param", "acc.icl_late=10")
    assert r.exit_code == 0, r.output
    acc = load_group(repo / "probes.zarr", repo.name, "acc")
    assert list(acc.step.values) == [0, 1000, 2000]
    assert acc.loss_by_position.dims == ("step", "split", "position") and list(acc.position.values) == list(range(1, T))
    assert acc.attrs["task"]["task"] == "causal_lm" and acc.attrs["task"]["n_classes"] == V
    losses = []
    for i, revision in enumerate(states):  # step0, step1000, step2000
        snap = repo / "snapshots" / (repo / "refs" / revision).read_text()
        model = transformers.AutoModelForCausalLM.from_pretrained(snap).eval()
        for split in ("train", "test"):
            idx = arrays[f"{split}_idx"]
            mask = arrays["mask"][idx] if masked else None
            want = _hf_loss(model, arrays["ids"][idx], mask)
            got = float(acc.loss.sel(split=split).values[i])
            assert got == pytest.approx(want, rel=1e-6), (arch, i, split)
            by_pos = acc.loss_by_position.sel(split=split).values[i]
            icl = float(acc.icl_score.sel(split=split).values[i])
            assert icl == pytest.approx(by_pos[9] - by_pos[1], rel=1e-12)
            losses.append(got)
    assert len(set(losses)) == len(losses)  # three different revisions, two splits: six different numbers


def test_other_probes_refuse_an_lm_task_before_any_job(tmp_path, cli):
    repo, _ = _series(tmp_path / "hub", "gpt_neox", steps=(0,))
    _tokens(tmp_path / "tokens.npz", False)
    assert cli("init", repo, "--dataset", f"file:{tmp_path / 'tokens.npz'}").exit_code == 0
    r = cli("probe", repo, "--metrics", "acc,lc", "--scheduler", "sync", "-q")
    assert r.exit_code != 0
    assert "probe 'lc' does not take a causal_lm dataset (file:tokens.npz); it takes classification" in r.output


def test_llc_and_rllc_of_revisions_equal_the_estimators_on_transformers_own_model(tmp_path, cli):
    """``llc`` and ``rllc`` on a ``--model hf`` causal LM: the chains read the logits at every position
    (the wrapper's own forward gives one position), so the store holds what the estimators give on
    transformers' model loaded from the snapshot, on the training split's sequences."""
    from grokscope.losses import llc_loss, lm_labels
    from probes.llc import estimate_llc, estimate_restricted_llc

    repo, states = _series(tmp_path / "hub", "gpt_neox", steps=(0,))
    arrays = _tokens(tmp_path / "tokens.npz", False)
    assert cli("init", repo, "--dataset", f"file:{tmp_path / 'tokens.npz'}").exit_code == 0
    settings = {"n_chains": 2, "n_draws": 6, "n_burnin": 2, "lr": 1e-4, "gamma": 1000.0}
    params = [a for k, v in settings.items() for p in ("llc", "rllc") for a in ("--param", f"{p}.{k}={v}")]
    r = cli("probe", repo, "--metrics", "llc,rllc", "--scheduler", "sync", "-q", *params,
            "--param", "rllc.components=head:0.1,layer:1")
    assert r.exit_code == 0, r.output
    llc = load_group(repo / "probes.zarr", repo.name, "llc")
    rllc = load_group(repo / "probes.zarr", repo.name, "rllc")
    assert llc.attrs["loss"] == "next_token" and list(rllc.component.values) == ["head:0.1", "layer:1"]

    snap = repo / "snapshots" / (repo / "refs" / "step0").read_text()
    model = HFCausalLogits(transformers.AutoModelForCausalLM.from_pretrained(snap)).eval()
    ids = torch.from_numpy(arrays["ids"][arrays["train_idx"]])
    want = estimate_llc(model, ids, lm_labels(ids), llc_loss("next_token"), **settings)
    assert float(llc.llc.values[0]) == pytest.approx(want["llc"], rel=1e-9)
    assert float(llc.loss_init.values[0]) == pytest.approx(want["loss_init"], rel=1e-9)
    parts = estimate_restricted_llc(model, ids, lm_labels(ids), llc_loss("next_token"), ["head:0.1", "layer:1"],
                                    **settings)
    for i, part in enumerate(parts):
        assert float(rllc.llc.values[0, i]) == pytest.approx(part["llc"], rel=1e-9), part["component"]
