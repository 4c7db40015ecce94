"""GrokAlign training step / plain training step, on the p = 59 modular-addition MLP (the default preset:
118-128x2-59, full batch of the 1 392 training pairs, CE, float32) and the MNIST-size MLP of the
``grokalign-mnist`` preset (784-196x3-10 bias-free, batch 256, MSE, float64; random inputs of MNIST's
shape, so no MNIST files are needed: the cost does not depend on the pixel values).

A step is what the trainer's ``_update`` does: forward, task loss, penalty, backward, AdamW step.

* plain: no regulariser;
* grokalign before: the penalty on a fresh forward pass of the batch (the input made a leaf that
  requires grad inside the penalty);
* grokalign after: the loss's forward pass reused (the trainer makes the batch require grad before the
  forward and back-propagates into the parameters only), all ``n_proj`` projections in one batched VJP.

Prints the min-of-``--repeat`` CPU time (one thread) per step, the ratios to a plain step, and the
largest difference between the two GrokAlign gradients (same seeds).

    python benchmarks/bench_grokalign.py [--steps 30] [--repeat 5] [--n-proj 1,4]
"""

from __future__ import annotations

import argparse
import os
import time

import torch

from grokscope.losses import task_loss
from grokscope.models import build_model
from grokscope.training.regularisers import GrokAlign


def step_fn(model, opt, x, y, loss_kind, reg, reuse):
    def step():
        xb = x.detach().requires_grad_(True) if reuse else x
        logits = model(xb)
        loss = task_loss(logits, y, loss_kind)
        if reg is not None:
            loss = loss + reg.penalty(model, xb, y, logits)
        opt.zero_grad(set_to_none=True)
        loss.backward(inputs=list(model.parameters()))
        opt.step()
    return step


def cpu_per_step(fn, steps: int, repeat: int) -> float:
    fn()
    best = float("inf")
    for _ in range(repeat):
        t = time.process_time()
        for _ in range(steps):
            fn()
        best = min(best, (time.process_time() - t) / steps)
    return best


def grads(model, x, y, loss_kind, reg, reuse, seed=0):
    torch.manual_seed(seed)
    xb = x.detach().requires_grad_(True) if reuse else x
    logits = model(xb)
    pen = reg.penalty(model, xb, y, logits)
    return torch.cat([g.reshape(-1) for g in torch.autograd.grad(pen, list(model.parameters()), materialize_grads=True)])


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--steps", type=int, default=30)
    ap.add_argument("--repeat", type=int, default=5)
    ap.add_argument("--n-proj", default="1,4")
    args = ap.parse_args()
    torch.set_num_threads(1)
    print(f"load average {' / '.join(f'{v:.2f}' for v in os.getloadavg())}; torch threads 1; CPU s per step")
    g = torch.Generator().manual_seed(0)
    a, b = torch.randint(0, 59, (1392,), generator=g), torch.randint(0, 59, (1392,), generator=g)
    x_mod = torch.cat([torch.nn.functional.one_hot(a, 59), torch.nn.functional.one_hot(b, 59)], 1).float()
    cases = [
        ("p=59 MLP 118-128x2-59, batch 1392, CE, float32",
         {"arch": "mlp", "kwargs": {"in_dim": 118, "out_dim": 59, "depth": 2, "width": 128}},
         x_mod, (a + b) % 59, "ce", 1e-3, torch.float32),
        ("MNIST MLP 784-196x3-10 bias-free, batch 256, MSE, float64",
         {"arch": "mlp", "kwargs": {"in_dim": 784, "out_dim": 10, "depth": 3, "width": 196, "bias": False,
                                    "init_scale": 8.0}},
         torch.rand(256, 784, generator=g), torch.randint(0, 10, (256,), generator=g), "mse", 1e-4, torch.float64),
    ]
    for title, spec, x, y, loss_kind, lam, dtype in cases:
        torch.manual_seed(0)
        model = build_model(spec).to(dtype)
        x = x.to(dtype)
        opt = torch.optim.AdamW(model.parameters(), lr=1e-5, weight_decay=0.0)
        plain = cpu_per_step(step_fn(model, opt, x, y, loss_kind, None, False), args.steps, args.repeat)
        print(f"\n{title}\n  plain step {plain * 1e3:.2f} ms")
        for n_proj in (int(k) for k in args.n_proj.split(",")):
            reg = GrokAlign(lam, n_proj)
            old = cpu_per_step(step_fn(model, opt, x, y, loss_kind, reg, False), args.steps, args.repeat)
            new = cpu_per_step(step_fn(model, opt, x, y, loss_kind, reg, True), args.steps, args.repeat)
            g_old, g_new = grads(model, x, y, loss_kind, reg, False), grads(model, x, y, loss_kind, reg, True)
            diff = float((g_old - g_new).abs().max() / g_old.abs().max())
            print(f"  grokalign n_proj={n_proj}: before {old * 1e3:.2f} ms ({old / plain:.2f}x plain), "
                  f"after {new * 1e3:.2f} ms ({new / plain:.2f}x plain); max |grad diff| / max |grad| {diff:.1e}")


if __name__ == "__main__":
    main()
