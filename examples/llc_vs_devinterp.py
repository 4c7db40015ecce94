"""grokscope's ``llc`` estimate beside devinterp's SGLD on the same checkpoint and hyper-parameters.

    python examples/llc_vs_devinterp.py RUN_DIR --step 6000 [--lr 1e-3 --gamma 100 --chains 4
                                                         --draws 100 --burnin 50]

devinterp is not a grokscope dependency: install it in a separate environment that sees grokscope
and torch (``python -m venv --system-site-packages ENV && ENV/bin/pip install devinterp datasets``;
devinterp 2.0.1 imports Hugging Face ``datasets``). Its high-level ``sample``/``llc`` entry points
take language-model datasets of ``input_ids``, so this script drives devinterp's own SGLD optimiser
(``devinterp.optim.sgmcmc.SGMCMC.sgld``: the update, localisation and noise of Lau et al.) with an
ordinary loop over the run's full training set, one chain after another, and forms
``λ̂ = nβ (mean draw loss − L_n(w*))`` with the same ``nβ = n / log n`` and the same ``L_n(w*)`` (all
training points) as the probe. Both samplers see the same model, data, loss, ε, γ, nβ, chains,
burn-in and draws; their random numbers differ, so the two estimates agree only up to the spread
across chains, which both print.
"""

from __future__ import annotations

import argparse
import copy
import math
import time
from pathlib import Path

import numpy as np
import torch

from grokscope import runs
from grokscope.datasets import load_dataset
from grokscope.engine.discovery import checkpoints_in
from grokscope.engine.loading import load_into, read_state_dict
from grokscope.losses import task_loss
from grokscope.models import build_model
from grokscope.probes.llc import estimate_llc


def devinterp_llc(model: torch.nn.Module, x: torch.Tensor, y: torch.Tensor, loss_fn, *, lr: float,
                  gamma: float, nbeta: float, chains: int, draws: int, burnin: int, init: float,
                  seed: int = 0) -> np.ndarray:
    """Per-chain λ̂ from devinterp's SGLD optimiser (full batch; the loss of each draw is the one its
    gradient step evaluated, as in the probe). Shape ``(chains,)``."""
    from devinterp.optim.sgmcmc import SGMCMC

    out = []
    for c in range(chains):
        torch.manual_seed(seed * 1000 + c)
        net = copy.deepcopy(model)
        opt = SGMCMC.sgld(net.parameters(), lr=lr, localization=gamma, nbeta=nbeta)
        trace = []
        for t in range(burnin + draws):
            opt.zero_grad()
            loss = loss_fn(net(x), y)
            loss.backward()
            loss = loss.detach()
            opt.step()
            if t >= burnin:
                trace.append(loss.item())
        out.append(nbeta * (np.mean(trace) - init))
    return np.asarray(out)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("run", help="a grokscope run folder (run.json + checkpoints)")
    ap.add_argument("--step", type=int, required=True)
    ap.add_argument("--lr", type=float, default=1e-3)
    ap.add_argument("--gamma", type=float, default=100.0)
    ap.add_argument("--chains", type=int, default=4)
    ap.add_argument("--draws", type=int, default=100)
    ap.add_argument("--burnin", type=int, default=50)
    ap.add_argument("--threads", type=int, default=1)
    args = ap.parse_args()
    torch.set_num_threads(args.threads)

    run_dir = Path(args.run)
    spec = runs.read_run_json(run_dir)
    ckpts, _ = checkpoints_in(run_dir / "checkpoints", run_dir)
    ckpt = next((c for c in ckpts if c.step == args.step), None)
    if ckpt is None:
        raise SystemExit(f"{args.run}: no checkpoint at step {args.step} (have {[c.step for c in ckpts]})")
    model = load_into(build_model(spec["model"]), read_state_dict(ckpt), ckpt.path).eval()
    data = load_dataset(spec["dataset"])
    x, y = data.x_train, data.y_train
    kind = (spec.get("train") or {}).get("loss", "ce")  # as the probe's loss="auto"

    def loss_fn(out: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        return task_loss(out, target, kind)

    n = len(x)
    nbeta = n / math.log(n)
    t0 = time.perf_counter()
    ours = estimate_llc(model, x, y, loss_fn, lr=args.lr, gamma=args.gamma, n_chains=args.chains,
                        n_draws=args.draws, n_burnin=args.burnin)
    t_ours = time.perf_counter() - t0
    t0 = time.perf_counter()
    dev = devinterp_llc(model, x, y, loss_fn, lr=args.lr, gamma=args.gamma, nbeta=nbeta, chains=args.chains,
                        draws=args.draws, burnin=args.burnin, init=ours["loss_init"])
    t_dev = time.perf_counter() - t0
    from importlib.metadata import version

    print(f"{args.run} step {args.step}: n = {n}, nβ = {nbeta:.1f}, d = {ours['n_params']}, ε = {args.lr:g}, "
          f"γ = {args.gamma:g}, {args.chains} chains × {args.draws} draws after {args.burnin} burn-in, full batch, "
          f"L_n(w*) = {ours['loss_init']:.4g}")
    print(f"  grokscope llc      : {ours['llc']:.2f} ± {ours['llc_std']:.2f} (chains {np.round(ours['llc_chain'], 2)}); "
          f"R̂ {ours['rhat']:.3f}; {t_ours:.1f} s; warnings: {ours['warnings'] or 'none'}")
    print(f"  devinterp {version('devinterp')} SGLD: {dev.mean():.2f} ± {dev.std(ddof=1):.2f} "
          f"(chains {np.round(dev, 2)}); {t_dev:.1f} s")
    spread = math.hypot(ours["llc_std"], dev.std(ddof=1)) / math.sqrt(args.chains)
    print(f"  difference {ours['llc'] - dev.mean():+.2f}, {abs(ours['llc'] - dev.mean()) / spread:.1f} standard "
          "errors of the difference")


if __name__ == "__main__":
    main()
