"""Restricted LLC of every attention head (and of the whole model): grokscope's ``rllc`` estimator beside
devinterp's masked SGLD on the same checkpoint, data and hyper-parameters.

The checkpoint: Nanda's one-layer transformer (:mod:`grokscope.models.transformer`, no LayerNorm) made
small (``--p`` 23, d_model 32, 4 heads of 8, d_mlp 64), trained here with full-batch AdamW (lr 1e-3,
weight decay 1) on ``a + b mod p`` (50 % of the pairs) for ``--train-steps`` steps; its training pairs
are the data. The components are :func:`grokscope.functional.components.resolve_components` of
``heads,all`` (each head's rows of W_Q, W_K, W_V and columns of W_O; every parameter).

* grokscope: :func:`grokscope.probes.llc.estimate_restricted_llc` — every component's chains in one
  batched run (masked updates);
* devinterp (2.x, not a grokscope dependency; run in its own environment given by ``--devinterp-python``):
  ``devinterp.optim.sgmcmc.SGMCMC.sgld(params, lr, localization=γ, nbeta=nβ, mask=[per-parameter masks])``
  driven one chain at a time in a plain loop (full batch; the loss of each draw is the one its gradient step
  evaluated, as in the probe), λ̂ = nβ (mean trace loss − L_n(w*)).

Both use ε, γ, nβ = n / log n, the chains, burn-in and draws given. The two draw different random numbers,
so they can agree only within the chains' spread: the table gives both means ± std over chains and the
difference in standard errors (``sqrt(sd1² / C + sd2² / C)``).

    python benchmarks/rllc_vs_devinterp.py --devinterp-python ENV/bin/python [--chains 8 --draws 200
        --burnin 100 --lr 1e-3 --gamma 100 --train-steps 1500]

``ENV``: ``python3 -m venv ENV && ENV/bin/pip install torch==2.13.0 devinterp`` (a CPU torch wheel first).
The devinterp side imports only ``grokscope.models.transformer`` and ``grokscope.functional.components``
from this checkout (``PYTHONPATH`` is set to it).
"""

from __future__ import annotations

import argparse
import copy
import json
import math
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

ROOT = Path(__file__).resolve().parents[1]
MODEL = dict(d_model=32, n_heads=4, d_head=8, d_mlp=64)


def build(p: int) -> torch.nn.Module:
    from grokscope.models.transformer import transformer

    return transformer(p, **MODEL)


def devinterp_side(folder: Path) -> None:
    """Run devinterp's masked SGLD per component and chain on the saved checkpoint and data."""
    from importlib.metadata import version

    from devinterp.optim.sgmcmc import SGMCMC
    from safetensors.torch import load_file

    from grokscope.functional.components import resolve_components

    cfg = json.loads((folder / "config.json").read_text())
    torch.set_num_threads(cfg["threads"])
    tensors = load_file(str(folder / "data.safetensors"))
    x, y = tensors["x"], tensors["y"]
    model = build(cfg["p"])
    model.load_state_dict(load_file(str(folder / "model.safetensors")))
    model.eval()
    with torch.no_grad():
        init = float(torch.nn.functional.cross_entropy(model(x), y))
    out = {"version": version("devinterp"), "init": init, "llc_chain": {}}
    t0 = time.perf_counter()
    for comp in resolve_components(model, cfg["components"]):
        per_chain = []
        for c in range(cfg["chains"]):
            torch.manual_seed(cfg["seed"] * 1000 + c)
            net = copy.deepcopy(model)
            names = [n for n, _ in net.named_parameters()]
            masks = [comp.masks.get(n, torch.zeros(p.shape, dtype=torch.bool)) for n, p in net.named_parameters()]
            assert len(names) == len(masks)
            opt = SGMCMC.sgld(net.parameters(), lr=cfg["lr"], localization=cfg["gamma"], nbeta=cfg["nbeta"],
                              mask=masks)
            trace = []
            for t in range(cfg["burnin"] + cfg["draws"]):
                opt.zero_grad()
                loss = torch.nn.functional.cross_entropy(net(x), y)
                loss.backward()
                opt.step()
                if t >= cfg["burnin"]:
                    trace.append(float(loss.detach()))
            per_chain.append(cfg["nbeta"] * (float(np.mean(trace)) - init))
        out["llc_chain"][comp.name] = per_chain
    out["seconds"] = time.perf_counter() - t0
    (folder / "devinterp.json").write_text(json.dumps(out))


def train(p: int, steps: int, seed: int) -> tuple[torch.nn.Module, torch.Tensor, torch.Tensor, float]:
    """The checkpoint: the small transformer after ``steps`` of full-batch AdamW on the training pairs."""
    from grokscope.datasets import load_dataset

    data = load_dataset({"name": "modular", "kwargs": {"p": p, "train_fraction": 0.5}, "seed": seed})
    x, y = data.split("train")
    xt, yt = data.split("test")
    torch.manual_seed(seed)
    model = build(p)
    opt = torch.optim.AdamW(model.parameters(), lr=1e-3, weight_decay=1.0, betas=(0.9, 0.98))
    for _ in range(steps):
        opt.zero_grad()
        torch.nn.functional.cross_entropy(model(x), y).backward()
        opt.step()
    with torch.no_grad():
        test_acc = float((model(xt).argmax(-1) == yt).float().mean())
    return model.eval(), x, y, test_acc


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--devinterp-python", required=True, help="python of an environment with devinterp")
    ap.add_argument("--p", type=int, default=23)
    ap.add_argument("--train-steps", type=int, default=1500)
    ap.add_argument("--components", default="heads,all")
    ap.add_argument("--lr", type=float, default=1e-3)
    ap.add_argument("--gamma", type=float, default=100.0)
    ap.add_argument("--chains", type=int, default=8)
    ap.add_argument("--draws", type=int, default=200)
    ap.add_argument("--burnin", type=int, default=100)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--threads", type=int, default=1)
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    from safetensors.torch import save_file

    from grokscope.probes.llc import estimate_restricted_llc, llc_loss

    model, x, y, test_acc = train(args.p, args.train_steps, args.seed)
    n = len(x)
    nbeta = n / math.log(n)
    components = [c for c in args.components.split(",") if c]
    t0 = time.perf_counter()
    ours = estimate_restricted_llc(model, x, y, llc_loss("ce"), components, lr=args.lr, gamma=args.gamma,
                                   n_chains=args.chains, n_draws=args.draws, n_burnin=args.burnin, seed=args.seed)
    t_ours = time.perf_counter() - t0
    with tempfile.TemporaryDirectory() as tmp:
        folder = Path(tmp)
        save_file({k: v.contiguous() for k, v in model.state_dict().items()}, str(folder / "model.safetensors"))
        save_file({"x": x.contiguous(), "y": y.contiguous()}, str(folder / "data.safetensors"))
        (folder / "config.json").write_text(json.dumps(
            {"p": args.p, "components": components, "lr": args.lr, "gamma": args.gamma, "nbeta": nbeta,
             "chains": args.chains, "draws": args.draws, "burnin": args.burnin, "seed": args.seed,
             "threads": args.threads}))
        env = {**os.environ, "PYTHONPATH": str(ROOT)}
        subprocess.run([args.devinterp_python, __file__, "--devinterp-side", str(folder)], check=True, env=env)
        dev = json.loads((folder / "devinterp.json").read_text())

    print(f"checkpoint: transformer p={args.p} {MODEL}, {args.train_steps} AdamW steps, train loss "
          f"{ours[0]['loss_init']:.4g}, test accuracy {test_acc:.3f}; n = {n}, nβ = {nbeta:.1f}; "
          f"ε = {args.lr:g}, γ = {args.gamma:g}, {args.chains} chains x {args.draws} draws "
          f"(burn-in {args.burnin}), full batch")
    print(f"L_n(w*): grokscope {ours[0]['loss_init']:.6g}, devinterp side {dev['init']:.6g}")
    print(f"{'component':<10} {'d':>6}  {'grokscope rllc':>18}  {'devinterp ' + dev['version'] + ' SGLD':>22}  "
          f"{'diff':>7}  {'in SE':>6}")
    for r in ours:
        theirs = np.asarray(dev["llc_chain"][r["component"]])
        se = math.sqrt(r["llc_std"] ** 2 / args.chains + theirs.std(ddof=1) ** 2 / args.chains)
        diff = r["llc"] - theirs.mean()
        print(f"{r['component']:<10} {r['n_params']:>6}  {r['llc']:>9.2f} ± {r['llc_std']:<6.2f}  "
              f"{theirs.mean():>13.2f} ± {theirs.std(ddof=1):<6.2f}  {diff:>+7.2f}  {diff / se:>+6.2f}"
              f"{'  R-hat %.3f' % r['rhat']}{'  ' + '; '.join(r['warnings']) if r['warnings'] else ''}")
    print(f"wall time: grokscope (all components batched) {t_ours:.1f} s, devinterp (one chain at a time) "
          f"{dev['seconds']:.1f} s")


if __name__ == "__main__":
    if len(sys.argv) == 3 and sys.argv[1] == "--devinterp-side":
        devinterp_side(Path(sys.argv[2]))
    else:
        main()
