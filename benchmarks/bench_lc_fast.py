"""``lc``'s fx fast path (grokscope/functional/lc_fast.py) against the hook path on two non-Sequential MLPs of MNIST
size (random weights, random inputs in [0, 1]^784: the cost does not depend on what they are):

* encoder/head: ``self.encoder = Sequential(Flatten, 784-200, ReLU, 200-200, ReLU x3)``,
  ``self.head = Linear(200, 10)`` (how MLPs are usually written);
* residual: ``784-200``, ReLU, then 3 blocks ``x + W₂ relu(W₁ x)``, then ``200-10``.

1000 points, P = 25 directions, radius 0.005, float32, one thread; min of ``--repeat``. Prints both
times, the ratio, and whether the counts are identical.

    python benchmarks/bench_lc_fast.py [--points 1000] [--repeat 3]
"""

from __future__ import annotations

import argparse
import os
import time

import torch
from torch import nn

from grokscope.probes.lc import local_complexity


class EncoderHead(nn.Module):
    def __init__(self):
        super().__init__()
        layers: list[nn.Module] = [nn.Flatten(), nn.Linear(784, 200), nn.ReLU()]
        for _ in range(3):
            layers += [nn.Linear(200, 200), nn.ReLU()]
        self.encoder = nn.Sequential(*layers)
        self.head = nn.Linear(200, 10)

    def forward(self, x):
        return self.head(self.encoder(x))


class ResidualMLP(nn.Module):
    def __init__(self, blocks: int = 3):
        super().__init__()
        self.inp, self.act = nn.Linear(784, 200), nn.ReLU()
        self.w1 = nn.ModuleList(nn.Linear(200, 200) for _ in range(blocks))
        self.w2 = nn.ModuleList(nn.Linear(200, 200) for _ in range(blocks))
        self.acts = nn.ModuleList(nn.ReLU() for _ in range(blocks))
        self.out = nn.Linear(200, 10)

    def forward(self, x):
        x = self.act(self.inp(x))
        for a, b, act in zip(self.w1, self.w2, self.acts):
            x = x + b(act(a(x)))
        return self.out(x)


def best(fn, repeat):
    t_best, out = float("inf"), None
    for _ in range(repeat):
        t = time.process_time()
        out = fn()
        t_best = min(t_best, time.process_time() - t)
    return t_best, out


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--points", type=int, default=1000)
    ap.add_argument("--repeat", type=int, default=3)
    args = ap.parse_args()
    torch.set_num_threads(1)
    print(f"load average {' / '.join(f'{v:.2f}' for v in os.getloadavg())}; torch threads 1; CPU seconds")
    x = torch.rand(args.points, 784, generator=torch.Generator().manual_seed(0))
    for name, cls in (("encoder/head MLP 784-200x4-10", EncoderHead), ("residual MLP 784-200+3 blocks-10", ResidualMLP)):
        torch.manual_seed(0)
        model = cls().eval()
        t_fast, fast = best(lambda: local_complexity(model, x, 0.005, n_dirs=25), args.repeat)
        t_hook, hook = best(lambda: local_complexity(model, x, 0.005, n_dirs=25, fast=False), args.repeat)
        same = torch.equal(fast.counts, hook.counts)
        print(f"{name}: fast (fx) {t_fast:.3f} s, hook path {t_hook:.3f} s, ratio hook/fast "
              f"{t_hook / t_fast:.2f}x; counts identical: {same} ({int(fast.counts.sum())} crossings)")
        if cls is EncoderHead:  # the same layers as one Sequential: the existing chain fast path
            seq = nn.Sequential(*model.encoder, model.head)
            t_seq, res = best(lambda: local_complexity(seq, x, 0.005, n_dirs=25), args.repeat)
            t_sh, _ = best(lambda: local_complexity(seq, x, 0.005, n_dirs=25, fast=False), args.repeat)
            print(f"  the same as an nn.Sequential: chain fast path {t_seq:.3f} s, hook path {t_sh:.3f} s, "
                  f"ratio {t_sh / t_seq:.2f}x; counts identical to the fx path: {torch.equal(res.counts, fast.counts)}")


if __name__ == "__main__":
    main()
