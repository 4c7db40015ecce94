"""``rllc`` cost: the restricted LLC of every attention head of a 2-layer model in one job (every head's
chains batched: one ``vmap`` per step over heads × chains) against one job per head.

Model: a GPT-2 built from a config here (``--layers`` 2, ``--heads`` 4 per layer, n_embd ``--width``,
eager attention), random token sequences (``--points`` × ``--seq``) and the causal-LM loss
(``next_token``). Each "job" is what the probe computes for one checkpoint:
:func:`grokscope.probes.llc.estimate_restricted_llc` (L(w*) once, then the chains), with
``components="heads"`` (one job) or ``"head:L.H"`` (one job per head, run one after another). The
engine's per-job costs (loading the checkpoint, writing the store) come on top of each job and are not
counted here.

    python benchmarks/bench_rllc.py [--threads 1] [--chains 4] [--draws 100] [--burnin 50]
                                    [--device cpu|cuda] [--cpu-time]

Run under ``nice`` on a shared machine and say the numbers are contended.
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # tests.helpers, run from anywhere
from tests.helpers import HFCausalLogits  # noqa: E402


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--layers", type=int, default=2)
    ap.add_argument("--heads", type=int, default=4)
    ap.add_argument("--width", type=int, default=32)
    ap.add_argument("--vocab", type=int, default=32)
    ap.add_argument("--points", type=int, default=32)
    ap.add_argument("--seq", type=int, default=16)
    ap.add_argument("--chains", type=int, default=4)
    ap.add_argument("--draws", type=int, default=100)
    ap.add_argument("--burnin", type=int, default=50)
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--cpu-time", action="store_true", help="time with process CPU time (use with --threads 1)")
    args = ap.parse_args()
    from transformers import GPT2Config, GPT2LMHeadModel

    from grokscope.probes.llc import estimate_restricted_llc, llc_loss, lm_labels

    torch.set_num_threads(args.threads)
    clock = time.process_time if args.cpu_time else time.perf_counter
    dev = torch.device(args.device)
    torch.manual_seed(0)
    cfg = GPT2Config(n_embd=args.width, n_head=args.heads, n_layer=args.layers, vocab_size=args.vocab,
                     n_positions=args.seq, bos_token_id=0, eos_token_id=0, attn_implementation="eager")
    model = HFCausalLogits(GPT2LMHeadModel(cfg)).to(dev).eval()
    ids = torch.randint(0, args.vocab, (args.points, args.seq), device=dev)
    labels = lm_labels(ids)
    kw = dict(lr=1e-4, gamma=100.0, n_chains=args.chains, n_draws=args.draws, n_burnin=args.burnin, seed=0)
    heads = [f"head:{i}.{h}" for i in range(args.layers) for h in range(args.heads)]
    loss = llc_loss("next_token")

    def sync() -> None:
        if dev.type == "cuda":
            torch.cuda.synchronize()

    estimate_restricted_llc(model, ids, labels, loss, heads[:1], **{**kw, "n_draws": 4, "n_burnin": 0})  # warm-up
    sync()
    t = clock()
    together = estimate_restricted_llc(model, ids, labels, loss, ["heads"], **kw)
    sync()
    t_one_job = clock() - t
    t = clock()
    alone = [estimate_restricted_llc(model, ids, labels, loss, [h], **kw)[0] for h in heads]
    sync()
    t_per_head = clock() - t
    same = max(float(np.max(np.abs(a["loss_trace"] - b["loss_trace"]))) for a, b in zip(together, alone))
    d = sum(p.numel() for p in model.parameters())
    print(f"GPT-2 {args.layers} layers x {args.heads} heads, n_embd {args.width} ({d} parameters, "
          f"{together[0]['n_params']} per head), {args.points} sequences of {args.seq} tokens, next-token loss, "
          f"{args.chains} chains x {args.draws} draws + {args.burnin} burn-in, device {dev}, "
          f"{args.threads} thread(s), {'CPU time' if args.cpu_time else 'wall time'}")
    print(f"  all {len(heads)} heads in one job (heads x chains batched): {t_one_job:8.2f} s")
    print(f"  one job per head, {len(heads)} jobs one after another:     {t_per_head:8.2f} s   "
          f"ratio {t_per_head / t_one_job:5.2f}x")
    print(f"  largest difference of a draw's loss between the two: {same:.2e}")


if __name__ == "__main__":
    main()
