"""``align`` throughput on the MNIST MLP (784-200x4-10, float32) and on Nanda's transformer.

Prints the time of:

* a per-sample ``torch.autograd.functional.jacobian`` loop (the naive reference) vs. batched Jacobians
  (``batched_jacobian``: one forward, C backward passes of the whole batch);
* the authors'-style per-sample PC1 (Jacobian + SVD per point) and batched Jacobians + batched SVD;
* every ``align`` output (``jacobian_alignment``: centroids, row cosines, ‖J‖_F, PC1 via ``eigvalsh``
  of JJᵀ, Jacobian alignment) on the folded path (first weight folded in) and on the generic path;
* every ``align`` output for 1024 points of the modular-addition transformer (p = 113, embedding
  input 3x128 = 384, C = 113);

with ratios, and checks that the implementations agree.

    python benchmarks/bench_align.py [--threads 2] [--points 1000] [--repeat 3]

Run it under ``nice`` on a shared machine and say so with the numbers (they are then contended).
"""

from __future__ import annotations

import argparse
import time

import numpy as np
import torch

from grokscope.models.mlp import mlp
from grokscope.models.transformer import transformer
from grokscope.functional import eval_mode
from grokscope.probes.align import batched_jacobian, jacobian_alignment


def best_time(fn, repeat: int) -> tuple[float, object]:
    best, out = float("inf"), None
    for _ in range(repeat):
        t = time.perf_counter()
        out = fn()
        best = min(best, time.perf_counter() - t)
    return best, out


def per_sample_jacobians(model, x: torch.Tensor) -> torch.Tensor:
    """The naive reference: one ``torch.autograd.functional.jacobian`` call per point."""
    return torch.stack([torch.autograd.functional.jacobian(lambda v: model(v.unsqueeze(0))[0], xi)
                        for xi in x])


def per_sample_pc1(model, x: torch.Tensor) -> torch.Tensor:
    """The authors' way: a Jacobian per point, then its SVD."""
    out = []
    for xi in x:
        J = torch.autograd.functional.jacobian(lambda v: model(v.unsqueeze(0))[0], xi)
        s = torch.linalg.svdvals(J)
        out.append(s[0] ** 2 / (s ** 2).sum())
    return torch.stack(out)


def batched_svd_pc1(model, x: torch.Tensor) -> torch.Tensor:
    s = torch.linalg.svdvals(batched_jacobian(model, x))
    return s[:, 0] ** 2 / (s ** 2).sum(dim=1)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--points", type=int, default=1000)
    ap.add_argument("--repeat", type=int, default=3)
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    torch.manual_seed(0)

    model = mlp(784, 10, depth=4, width=200).eval()
    x = torch.rand(args.points, 784)
    print(f"MNIST MLP 784-200x4-10, {args.points} points, float32, {args.threads} threads")
    jacobian_alignment(model, x[:10])  # warm-up

    with eval_mode(model, freeze=True):
        t_loop, J_loop = best_time(lambda: per_sample_jacobians(model, x), 1)
    t_batch, J_batch = best_time(lambda: batched_jacobian(model, x), args.repeat)
    err = float((J_loop - J_batch).abs().max())
    print(f"  Jacobians, per-sample autograd.functional.jacobian loop : {t_loop:7.3f} s")
    print(f"  Jacobians, batched (batched_jacobian)                    : {t_batch:7.3f} s   "
          f"x{t_loop / t_batch:5.1f} faster   max |diff| {err:.1e}")

    with eval_mode(model, freeze=True):
        t_pc1, pc1_loop = best_time(lambda: per_sample_pc1(model, x), 1)
    t_svd, pc1_svd = best_time(lambda: batched_svd_pc1(model, x), args.repeat)
    print(f"  PC1, per-sample Jacobian + SVD (authors' way)            : {t_pc1:7.3f} s")
    print(f"  PC1, batched Jacobians + batched SVD                     : {t_svd:7.3f} s")

    t_all, res = best_time(lambda: jacobian_alignment(model, x), args.repeat)
    t_gen, res_gen = best_time(lambda: jacobian_alignment(model, x, mode="rev"), args.repeat)
    agree = max(float(np.nanmax(np.abs(res[k] - res_gen[k]))) for k in res if k != "jac_fro_exact")
    pc1_err = float(np.abs(res["pc1"] - pc1_loop.numpy()).max())
    print(f"  every align output, folded first layer (default)        : {t_all:7.3f} s   "
          f"x{t_pc1 / t_all:5.1f} vs per-sample PC1 alone   goal <= 0.2 s: "
          f"{'met' if t_all <= 0.2 else 'NOT met'}")
    print(f"  every align output, generic batched Jacobians + eigvalsh : {t_gen:7.3f} s   "
          f"(folded/generic agree to {agree:.1e}; PC1 vs per-sample SVD {pc1_err:.1e})")

    tr = transformer(113).eval()
    tokens = torch.randint(0, 113, (1024, 3))
    tokens[:, 2] = 113
    z = tr.embed(tokens).detach()
    t_tr, _ = best_time(lambda: jacobian_alignment(tr.forward_embedded, z), 1)
    t_trh, _ = best_time(lambda: jacobian_alignment(tr.forward_embedded, z, n_proj=16), 1)
    print(f"transformer p=113 (C=113, d=3x128), 1024 points: every align output {t_tr:6.2f} s exact, "
          f"{t_trh:6.2f} s with a 16-projection Hutchinson ‖J‖_F (no row_cos/pc1)")


if __name__ == "__main__":
    main()
