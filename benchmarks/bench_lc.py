"""Local-complexity throughput on the paper's MNIST MLP (784-200x4-10, P=25, r=0.005, float32).

Prints: this machine's matmul peak (one big matmul), time and throughput (points x vertices / s) of
``local_complexity`` (its fast path for Sequential MLPs), of the plain chunked path (every vertex through every
layer), of one huge batch, and of a naive per-point loop; the fraction of the matmul peak reached;
and whether the counts are identical across implementations.

    python benchmarks/bench_lc.py [--threads 2] [--points 1000] [--repeat 3]

Run it under ``nice`` on a shared machine and say so with the numbers (they are then contended).
"""

from __future__ import annotations

import argparse
import time

import torch
from torch import nn

from grokscope.models.mlp import mlp
from grokscope.probes.lc import cross_polytope_frame, local_complexity


CLOCK = time.perf_counter  # main() switches to process CPU time with --cpu-time


def best_time(fn, repeat: int) -> tuple[float, object]:
    """Best of ``repeat`` timings of ``fn()`` (wall clock, or CPU time with --cpu-time)."""
    best, out = float("inf"), None
    for _ in range(repeat):
        t = CLOCK()
        out = fn()
        best = min(best, CLOCK() - t)
    return best, out


def matmul_peak(repeat: int) -> float:
    """FLOP/s of a 2048^3 float32 matmul (best of ``repeat``)."""
    a, b = torch.randn(2048, 2048), torch.randn(2048, 2048)
    a @ b
    t, _ = best_time(lambda: a @ b, repeat + 2)
    return 2 * 2048 ** 3 / t


def naive_per_point(model: nn.Sequential, x: torch.Tensor, r: float, frame: torch.Tensor) -> torch.Tensor:
    """One forward per point (its 2P vertices), pre-activations of every ReLU kept, then counted."""
    acts = [i for i, m in enumerate(model) if isinstance(m, nn.ReLU)]
    out = torch.zeros(len(x), len(acts), dtype=torch.int64)
    signed = torch.cat([frame, -frame])
    with torch.no_grad():
        for i in range(len(x)):
            h = x[i].reshape(1, -1) + r * signed
            k = 0
            for j, m in enumerate(model):
                if j in acts:
                    s = torch.sign(h)
                    out[i, k] = (s != s[:1]).any(dim=0).sum()
                    k += 1
                    if k == len(acts):
                        break
                h = m(h)
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--points", type=int, default=1000)
    ap.add_argument("--repeat", type=int, default=3)
    ap.add_argument("--naive-points", type=int, default=100, help="points for the naive loop (extrapolated)")
    ap.add_argument("--cpu-time", action="store_true",
                    help="time with process CPU time (robust to other jobs on a shared machine; use with "
                         "--threads 1, where CPU time is compute time)")
    ap.add_argument("--no-sweep", action="store_true", help="skip the rows-per-forward sweep")
    args = ap.parse_args()
    global CLOCK
    if args.cpu_time:
        CLOCK = time.process_time
    torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    model = mlp(784, 10, depth=4, width=200).eval()
    x = torch.rand(args.points, 784)
    p, r = 25, 0.005
    v = 2 * p
    n_vert = args.points * v
    # FLOPs of the plain forward of every vertex up to the last ReLU input (the output layer is skipped)
    flops_plain = 2 * n_vert * (784 * 200 + 3 * 200 * 200)
    # the fast path: first layer on points and directions only, then P + 1 rows per point (no crossing)
    flops_fast = 2 * (args.points + p) * 784 * 200 + 2 * args.points * (p + 1) * 3 * 200 * 200

    peak = matmul_peak(args.repeat)
    clock = "process CPU time" if args.cpu_time else "wall clock"
    print(f"threads={args.threads}  timing: {clock}, best of {args.repeat}")
    print(f"matmul peak (2048^3 float32): {peak / 1e9:.1f} GFLOP/s")
    print(f"MLP 784-200x4-10, {args.points} points, P={p} ({n_vert} vertices), r={r}, float32")

    t_fast, fast = best_time(lambda: local_complexity(model, x, r, n_dirs=p), args.repeat)
    t_plain, plain = best_time(lambda: local_complexity(model, x, r, n_dirs=p, fast=False),
                               args.repeat)
    t_huge, huge = best_time(lambda: local_complexity(model, x, r, n_dirs=p, fast=False,
                                                      max_rows=n_vert), 1)
    frame = cross_polytope_frame(784, p, 0, torch.float32)
    k = min(args.naive_points, args.points)
    t_naive_k, naive = best_time(lambda: naive_per_point(model, x[:k], r, frame), 1)
    t_naive = t_naive_k * args.points / k

    def row(name: str, t: float, flops: float | None) -> None:
        eff = f"{flops / t / 1e9:7.1f} GFLOP/s = {100 * flops / t / peak:5.1f}% of peak" if flops else ""
        print(f"  {name:<38s} {t:8.3f} s  {n_vert / t / 1e6:7.2f} M vertices/s  {eff}")

    row("lc (fast path, auto rows)", t_fast, flops_fast)
    row("plain chunked (every vertex, all layers)", t_plain, flops_plain)
    row("one huge batch (plain)", t_huge, flops_plain)
    row(f"naive per-point loop (x{args.points / k:.0f} from {k})", t_naive, flops_plain)
    print(f"  speed-up vs plain chunked: {t_plain / t_fast:.2f}x;  vs naive loop: {t_naive / t_fast:.1f}x")
    print(f"  effective rate (plain FLOPs / lc time): {flops_plain / t_fast / 1e9:.1f} GFLOP/s")
    print(f"  naive FLOP floor at the measured peak: {flops_plain / peak:.3f} s (plain), "
          f"{flops_fast / peak:.3f} s (fast path, all points stay linear)")
    same_plain = torch.equal(fast.counts, plain.counts)
    n_diff = int((fast.counts != plain.counts).sum())
    print(f"  counts identical lc vs plain (float32): {same_plain} ({n_diff} of {fast.counts.numel()} differ)")
    print(f"  counts identical plain vs huge batch: {torch.equal(plain.counts, huge.counts)};  "
          f"plain vs naive loop ({k} points): {torch.equal(plain.counts[:k, 0], naive)}")
    xd = x[:200].double()
    f64 = local_complexity(model, xd, r, n_dirs=p, dtype=torch.float64)
    p64 = local_complexity(model, xd, r, n_dirs=p, dtype=torch.float64, fast=False)
    print(f"  counts identical lc vs plain (float64, 200 points): {torch.equal(f64.counts, p64.counts)}")
    print(f"  mean LC per layer: {fast.counts.double().mean(0)[0].tolist()}")

    if args.no_sweep:
        return
    print("rows per forward (float32):")
    for rows in (500, 1000, 2000, 4000, 10000):
        t, _ = best_time(lambda: local_complexity(model, x, r, n_dirs=p, fast=False,
                                                  max_rows=rows), args.repeat)
        tf, _ = best_time(lambda: local_complexity(model, x, r, n_dirs=p, max_rows=rows), args.repeat)
        print(f"  {rows:6d} rows: plain {t:.3f} s ({100 * flops_plain / t / peak:5.1f}% of peak)   "
              f"lc {tf:.3f} s ({100 * flops_fast / tf / peak:5.1f}% of peak)")


if __name__ == "__main__":
    main()
