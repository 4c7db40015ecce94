"""``llc`` cost: 4 SGLD chains x 200 draws on an MNIST-size MLP (784-200-200-10), chains run together
(one ``vmap`` per step) against the same chains one after another, and the wall time of one checkpoint.

Data: ``--points`` random inputs in [0, 1]^784 with random labels (the cost does not depend on the
values), full batch unless ``--batch-size``. Three ways to run the same chains:

* ``batched`` — :func:`grokscope.probes.llc.sgld_chains` with all chains (what the probe does);
* ``one after another`` — the same function with one chain at a time (the same draws);
* ``plain loop`` — a devinterp-style loop: one chain at a time, ``loss.backward()`` on the model and an
  in-place parameter update (no torch.func).

Then one checkpoint with the probe's defaults (100 burn-in steps + 200 draws, L(w*) once).

    python benchmarks/bench_llc.py [--threads 2] [--points 1000] [--batch-size 0] [--draws 200]
                                   [--device cpu|cuda] [--cpu-time]

Run under ``nice`` on a shared machine and say the numbers are contended.
"""

from __future__ import annotations

import argparse
import copy
import math
import time

import torch

from grokscope.models.mlp import mlp
from grokscope.probes.llc import FlatModel, chain_seed, estimate_llc, sgld_chains


def plain_loop(model: torch.nn.Module, x: torch.Tensor, y: torch.Tensor, chains: int, steps: int, lr: float,
               gamma: float, nbeta: float, seed: int) -> None:
    """One chain at a time with ordinary autograd (the way devinterp runs its chains)."""
    for c in range(chains):
        net = copy.deepcopy(model)
        params = list(net.parameters())
        w0 = [p.detach().clone() for p in params]
        g = torch.Generator(device=x.device).manual_seed(chain_seed(seed, c, 0))
        for _ in range(steps):
            for p in params:
                p.grad = None
            torch.nn.functional.cross_entropy(net(x), y).backward()
            with torch.no_grad():
                for p, p0 in zip(params, w0):
                    noise = torch.randn(p.shape, generator=g, device=x.device, dtype=p.dtype)
                    p.add_(-0.5 * lr * (nbeta * p.grad + gamma * (p - p0)) + math.sqrt(lr) * noise)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--points", type=int, default=1000)
    ap.add_argument("--chains", type=int, default=4)
    ap.add_argument("--draws", type=int, default=200)
    ap.add_argument("--batch-size", type=int, default=0)
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--repeat", type=int, default=1)
    ap.add_argument("--cpu-time", action="store_true", help="time with process CPU time (use with --threads 1)")
    args = ap.parse_args()
    dev = torch.device(args.device)
    clock = time.process_time if args.cpu_time else time.perf_counter
    torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    model = mlp(784, 10, depth=2, width=200).to(dev).eval()
    x = torch.rand(args.points, 784, device=dev)
    y = torch.randint(0, 10, (args.points,), device=dev)
    n = len(x)
    nbeta = n / math.log(n)
    kw = dict(lr=1e-3, gamma=100.0, nbeta=nbeta, n_draws=args.draws, batch_size=args.batch_size, seed=0)
    flat = FlatModel(model, torch.nn.functional.cross_entropy)

    def sync() -> None:
        if dev.type == "cuda":
            torch.cuda.synchronize()

    def best(fn) -> float:
        out = float("inf")
        for _ in range(args.repeat):
            t = clock()
            fn()
            sync()
            out = min(out, clock() - t)
        return out

    chains = list(range(args.chains))
    sgld_chains(flat, x, y, chains=chains, **{**kw, "n_draws": 2})  # warm-up
    plain_loop(model, x, y, 1, 2, 1e-3, 100.0, nbeta, 0)
    t_batched = best(lambda: sgld_chains(flat, x, y, chains=chains, **kw))
    t_serial = best(lambda: [sgld_chains(flat, x, y, chains=[c], **kw) for c in chains])
    t_plain = best(lambda: plain_loop(model, x, y, args.chains, args.draws, 1e-3, 100.0, nbeta, 0))
    t_ckpt = best(lambda: estimate_llc(model, x, y, torch.nn.functional.cross_entropy, n_chains=args.chains,
                                       batch_size=args.batch_size))
    d = flat.dim
    print(f"MLP 784-200-200-10 ({d} parameters), {n} random points, "
          f"{'full batch' if not 0 < args.batch_size < n else f'batch {args.batch_size}'}, "
          f"{args.chains} chains x {args.draws} draws, device {dev}, {args.threads} thread(s)"
          f"{', CPU time' if args.cpu_time else ', wall time'}")
    print(f"  chains batched (one vmap per step):   {t_batched:8.2f} s")
    print(f"  chains one after another (same code): {t_serial:8.2f} s   ratio {t_serial / t_batched:5.2f}x")
    print(f"  plain autograd loop, one at a time:   {t_plain:8.2f} s   ratio {t_plain / t_batched:5.2f}x")
    print(f"  one checkpoint, probe defaults (100 burn-in + 200 draws, L(w*) once): {t_ckpt:8.2f} s")


if __name__ == "__main__":
    main()
