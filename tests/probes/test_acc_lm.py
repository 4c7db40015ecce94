"""``acc`` on a causal language-model task: next-token loss and accuracy, loss by position and the
in-context-learning score, against a float64 loop over sequences and positions, and facts that must hold
(uniform logits give log V; an oracle that copies a repeated span has a negative ICL score of -log V)."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from torch import nn

from grokscope.datasets.protocol import as_data, lm_from_arrays
from grokscope.probes import ProbeContext, ProbeError, check_task, get_probe
from grokscope.probes.acc import AccProbe, icl_positions, next_token_stats
from grokscope.testing import check_probe

V, T = 7, 9


class TinyCausalLM(nn.Module):
    """Token embedding and the causal running mean of the embeddings, then a linear map: logits
    ``(n, T, V)`` at every position, each reading only the tokens up to it."""

    def __init__(self, vocab: int = V, d: int = 6):
        super().__init__()
        self.emb = nn.Embedding(vocab, d)
        self.out = nn.Linear(2 * d, vocab)

    def forward(self, ids: torch.Tensor) -> torch.Tensor:
        h = self.emb(ids)
        run = h.cumsum(1) / torch.arange(1, ids.shape[1] + 1, dtype=h.dtype)[:, None]
        return self.out(torch.cat([h, run], dim=-1))


class CopyOracle(nn.Module):
    """Predicts token ``t + 1`` as the token ``span`` places before it (``ids[t + 1 - span]``) once that
    exists, with logit ``gain``; uniform before: the perfect induction head on spans repeated twice."""

    def __init__(self, span: int, gain: float = 40.0):
        super().__init__()
        self.span, self.gain = span, gain
        self.dummy = nn.Parameter(torch.zeros((), dtype=torch.float64))

    def forward(self, ids: torch.Tensor) -> torch.Tensor:
        n, t = ids.shape
        out = torch.zeros(n, t, V, dtype=torch.float64) + self.dummy
        for pos in range(self.span - 1, t):
            out[torch.arange(n), pos, ids[:, pos + 1 - self.span]] = self.gain
        return out


def _lm_data(n: int = 24, seed: int = 0, masked: bool = True):
    rng = np.random.default_rng(seed)
    ids = rng.integers(0, V, size=(n, T))
    arrays = {"ids": ids, "train_idx": np.arange(n // 2), "test_idx": np.arange(n // 2, n)}
    if masked:
        mask = np.ones((n, T), dtype=np.int64)
        for i in range(n):  # right padding of varying length, and a hole inside one row
            mask[i, T - (i % 4):] = 0
        mask[3, 2] = 0
        arrays["mask"] = mask
    return lm_from_arrays("toy-lm", arrays, "toy-lm")


def _loop(model: nn.Module, ids: torch.Tensor, mask: torch.Tensor | None) -> dict:
    """The obvious reference: one sequence at a time, one prediction at a time, in float64."""
    n, t = ids.shape
    sums, counts, right = np.zeros(t - 1), np.zeros(t - 1), 0
    with torch.no_grad():
        for i in range(n):
            logits = model(ids[i:i + 1])[0].double()
            for pos in range(1, t):
                if mask is not None and not (mask[i, pos - 1] and mask[i, pos]):
                    continue
                logp = torch.log_softmax(logits[pos - 1], dim=-1)
                sums[pos - 1] += float(-logp[ids[i, pos]])
                counts[pos - 1] += 1
                right += int(int(logits[pos - 1].argmax()) == int(ids[i, pos]))
    with np.errstate(invalid="ignore"):
        return {"loss": sums.sum() / counts.sum(), "accuracy": right / counts.sum(),
                "loss_by_position": sums / counts}


@pytest.mark.parametrize("masked", [False, True])
def test_next_token_stats_equal_a_float64_loop(masked):
    torch.manual_seed(0)
    model, data = TinyCausalLM().eval(), _lm_data(masked=masked)
    ids, mask = data.tokens("train")
    want = _loop(model, ids, mask)
    for batch in (4096, 5):  # one chunk, and chunks that split the rows
        got = next_token_stats(model, ids, mask, batch_size=batch, vocab_size=V)
        assert got["loss"] == pytest.approx(want["loss"], rel=1e-6)
        assert got["accuracy"] == pytest.approx(want["accuracy"], abs=1e-12)
        np.testing.assert_allclose(got["loss_by_position"], want["loss_by_position"], rtol=1e-6)
        # the mean loss is the count-weighted mean of the loss by position
        c = got["count_by_position"]
        assert got["loss"] == pytest.approx(float(np.nansum(got["loss_by_position"] * c) / c.sum()), rel=1e-12)
    if masked:  # row 3's hole drops the predictions of token 2 and token 3
        assert got["count_by_position"][0] == len(ids) and got["count_by_position"][-1] < len(ids)


def test_uniform_logits_give_log_vocab_and_the_first_token_accuracy():
    class Zero(nn.Module):
        def forward(self, ids):
            return torch.zeros(*ids.shape, V, dtype=torch.float64)  # float64 logits: the loss in float64

    data = _lm_data(masked=False)
    ids, _ = data.tokens("test")
    st = next_token_stats(Zero(), ids, None, vocab_size=V)
    assert st["loss"] == pytest.approx(math.log(V), rel=1e-12)
    np.testing.assert_allclose(st["loss_by_position"], math.log(V), rtol=1e-12)
    assert st["accuracy"] == pytest.approx(float((ids[:, 1:] == 0).double().mean()))  # argmax of ties: id 0


def test_acc_probe_on_an_lm_task_and_the_icl_score_of_a_copy_oracle():
    span = 4
    rng = np.random.default_rng(1)
    first = rng.integers(0, V, size=(20, span))
    ids = np.concatenate([first, first, first[:, :1]], axis=1)  # a span repeated: T = 2 span + 1 = 9
    data = as_data({"ids_train": ids[:10], "ids_test": ids[10:], "vocab_size": V}, "rep", "rep")
    assert data.is_lm and data.seq_len == T and data.vocab_size == V and data.mask_train is None
    params = AccProbe.make_params({"icl_early": "2", "icl_late": "8"})
    ds = AccProbe()(CopyOracle(span), data, params, ProbeContext(step=0))
    lbp = ds.loss_by_position.sel(split="test").values
    np.testing.assert_allclose(lbp[: span - 1], math.log(V), rtol=1e-12)  # tokens 1..span-1: nothing to copy
    assert (lbp[span - 1:] < 1e-12).all()  # token span onwards: copied
    assert ds.icl_score.sel(split="test").item() == pytest.approx(lbp[7] - lbp[1]) == pytest.approx(-math.log(V), rel=1e-9)
    assert ds.icl_score.attrs == {"early_position": 2, "late_position": 8}
    assert list(ds.position.values) == list(range(1, T))


def test_icl_positions_clip_to_the_sequence_and_parameters_are_checked():
    assert icl_positions(2048, 50, 500) == (50, 500)
    assert icl_positions(100, 50, 500) == (50, 99)
    # both past the end: the late one at the last position, the early one at the same ratio (not the
    # same position, which would make the score 0)
    assert icl_positions(9, 50, 500) == (1, 8) and icl_positions(20, 50, 500) == (2, 19)
    assert icl_positions(51, 50, 500) == (5, 50) and icl_positions(52, 50, 500) == (50, 51)
    assert icl_positions(2, 50, 500) == (1, 1)  # one predicted position: nothing to compare
    with pytest.raises(ProbeError, match=r"acc.icl_early \(9\) must be below acc.icl_late \(3\)"):
        AccProbe.make_params({"icl_early": "9", "icl_late": "3"})
    with pytest.raises(ProbeError, match="a causal-LM task has one loss"):
        AccProbe().check(TinyCausalLM(), _lm_data(), AccProbe.make_params({"loss": "mse"}))


def test_the_contract_harness_on_an_lm_task_and_other_probes_refuse_it():
    torch.manual_seed(0)
    data = _lm_data()
    check_probe(AccProbe, TinyCausalLM(), data, AccProbe.make_params({"icl_early": "2", "icl_late": "7"}))
    with pytest.raises(ProbeError, match=r"probe 'lc' does not take a causal_lm dataset \(toy-lm\); it takes "
                                         r"classification"):
        check_task(get_probe("lc"), data)
    check_task(AccProbe, data)  # acc takes it


def test_a_model_that_is_not_a_causal_lm_is_one_clear_error():
    data = _lm_data()
    with pytest.raises(TypeError, match=r"returns \(12, 7\) for token ids of shape \(12, 9\); a causal language "
                                        r"model must return next-token logits"):
        next_token_stats(lambda ids: torch.zeros(len(ids), V), *data.tokens("train"))  # type: ignore[arg-type]
