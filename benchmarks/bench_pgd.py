"""PGD and APGD-CE cost per step against one plain forward + backward (input gradient) of the same batch.

The attack batch stacks every radius and restart: ``n_eps · restarts · n`` rows. Goal: one PGD step
costs at most 1.3x a plain forward+backward of that batch (the projection, sign and bookkeeping are
the only extra work); APGD adds the momentum step, a second projection and the best-point bookkeeping
(``torch.where`` over the batch), and reports its ratio beside PGD's.

    python benchmarks/bench_pgd.py [--threads 2] [--points 1024] [--steps 10] [--cpu-time]

Run under ``nice`` on a shared machine and say the numbers are contended.
"""

from __future__ import annotations

import argparse
import time

import torch

from grokscope.models.mlp import mlp
from grokscope.functional.apgd import apgd_perturb
from grokscope.probes.pgd import pgd_attack, pgd_perturb

EPS = (0.03, 0.06, 0.10, 0.13, 0.16, 0.20)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--points", type=int, default=1024)
    ap.add_argument("--steps", type=int, default=10)
    ap.add_argument("--restarts", type=int, default=1)
    ap.add_argument("--repeat", type=int, default=3)
    ap.add_argument("--cpu-time", action="store_true", help="time with process CPU time (use with --threads 1)")
    args = ap.parse_args()
    clock = time.process_time if args.cpu_time else time.perf_counter
    torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    model = mlp(784, 10, depth=4, width=200).eval()
    x = torch.rand(args.points, 784)
    y = torch.randint(0, 10, (args.points,))
    rows = len(EPS) * args.restarts * args.points
    xb = x.repeat(len(EPS) * args.restarts, 1)
    yb = y.repeat(len(EPS) * args.restarts)

    def best(fn) -> float:
        fn()
        out = float("inf")
        for _ in range(args.repeat):
            t = clock()
            fn()
            out = min(out, clock() - t)
        return out

    def plain_step() -> None:
        z = xb.clone().requires_grad_(True)
        loss = torch.nn.functional.cross_entropy(model(z), yb, reduction="sum")
        torch.autograd.grad(loss, z)

    t_plain = best(plain_step)
    t_attack = best(lambda: pgd_perturb(model, x, y, EPS, 0.0156, args.steps, "linf", args.restarts,
                                        low=0.0, high=1.0))
    t_zero = best(lambda: pgd_perturb(model, x, y, EPS, 0.0156, 0, "linf", args.restarts, low=0.0, high=1.0))
    per_step = (t_attack - t_zero) / args.steps
    t_l2 = best(lambda: pgd_perturb(model, x, y, EPS, 0.0156, args.steps, "l2", args.restarts, low=0.0, high=1.0))
    per_step_l2 = (t_l2 - t_zero) / args.steps
    t_apgd = best(lambda: apgd_perturb(model, x, y, EPS, args.steps, "linf", args.restarts, low=0.0, high=1.0))
    t_apgd0 = best(lambda: apgd_perturb(model, x, y, EPS, 0, "linf", args.restarts, low=0.0, high=1.0))
    per_step_apgd = (t_apgd - t_apgd0) / args.steps
    t_full = best(lambda: pgd_attack(model, x, y, EPS, 0.0156, args.steps, "linf", args.restarts,
                                     low=0.0, high=1.0))
    print(f"threads={args.threads}  timing: {'process CPU time' if args.cpu_time else 'wall clock'}, "
          f"best of {args.repeat}")
    print(f"MLP 784-200x4-10, {args.points} points x {len(EPS)} eps x {args.restarts} restarts = {rows} rows")
    print(f"  plain forward+backward (input grad) of the batch: {1e3 * t_plain:8.1f} ms")
    print(f"  PGD L-inf per step:                               {1e3 * per_step:8.1f} ms  "
          f"= {per_step / t_plain:.2f}x plain (goal <= 1.3x)")
    print(f"  PGD L2 per step:                                  {1e3 * per_step_l2:8.1f} ms  "
          f"= {per_step_l2 / t_plain:.2f}x plain")
    print(f"  APGD-CE L-inf per step:                           {1e3 * per_step_apgd:8.1f} ms  "
          f"= {per_step_apgd / t_plain:.2f}x plain, {per_step_apgd / per_step:.2f}x a PGD step")
    print(f"  set-up (expand, random start, box): {1e3 * t_zero:.1f} ms;  whole attack with "
          f"{args.steps} steps + final classification: {t_full:.3f} s")


if __name__ == "__main__":
    main()
