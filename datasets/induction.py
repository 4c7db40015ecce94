"""Repeated random spans: the task on which small transformers form induction heads (Olsson et al.,
"In-context learning and induction heads", 2022; the repeated-random-tokens setting of Elhage et al.).

Each sequence of ``T = 2 span`` tokens repeats a random span: a period ``P`` drawn uniformly from
``min_span..span``, ``P`` tokens drawn independently and uniformly from ``0..vocab-1``, and then the
same tokens again and again (token ``t`` is token ``t mod P`` of the span). The first ``P`` tokens
cannot be predicted (the best loss is ``log vocab``); the later ones can, by a model that finds the
earlier occurrence of the current token and copies the token after it — an induction head. The
period varies from row to row so that copying from a fixed distance back does not solve the task
(with one period a single attention layer could copy by position alone). A causal-LM task
(``task == "causal_lm"``, no labels): train and test are two independent draws of ``n_train`` and
``n_test`` sequences from one seeded generator (train first).
"""

from __future__ import annotations

import torch

from .base import Data, DatasetError
from .protocol import lm_from_arrays


def repeated_spans(n: int, vocab: int, span: int, min_span: int, g: torch.Generator) -> torch.Tensor:
    """``n`` sequences ``(n, 2 span)`` int64, each a random span of a period drawn from
    ``min_span..span`` repeated to the end (see the module docstring)."""
    period = torch.randint(min_span, span + 1, (n, 1), generator=g)
    tokens = torch.randint(0, vocab, (n, span), generator=g)
    where = torch.arange(2 * span)[None, :] % period  # (n, T): token t is token t mod P of the span
    return tokens.gather(1, where)


def load(seed: int = 0, vocab: int = 16, span: int = 8, min_span: int | None = None, n_train: int = 2048,
         n_test: int = 256) -> Data:
    """Seeded repeated-span sequences (see the module docstring; ``min_span`` defaults to
    ``span // 2``); ``meta`` holds ``vocab``, ``span``, ``min_span`` and the ICL positions that bracket
    the repeat: ``icl_early`` (a token before any repeat: position ``min_span // 2``) and ``icl_late``
    (the last token, always in a repeat)."""
    min_span = span // 2 if min_span is None else min_span
    if vocab < 2 or not 2 <= min_span <= span:
        raise DatasetError(f"induction: need vocab >= 2 and 2 <= min_span <= span, got vocab={vocab}, "
                           f"min_span={min_span}, span={span}")
    if n_train < 1 or n_test < 1:
        raise DatasetError(f"induction: n_train and n_test must be >= 1, got {n_train}, {n_test}")
    g = torch.Generator().manual_seed(seed)
    train = repeated_spans(n_train, vocab, span, min_span, g)
    test = repeated_spans(n_test, vocab, span, min_span, g)
    return lm_from_arrays("induction", {"ids_train": train, "ids_test": test}, "dataset 'induction'",
                          vocab_size=vocab, meta={"vocab": vocab, "span": span, "min_span": min_span,
                                                  "icl_early": max(1, min_span // 2), "icl_late": 2 * span - 1})
