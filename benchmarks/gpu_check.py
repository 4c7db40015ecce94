"""One prepared GPU check of grokscope's probes: ``python benchmarks/gpu_check.py`` (sized for under 5
minutes on one GPU, ``--quick`` for about one; not yet timed on one: the float64 references run on the
host's CPU cores). Without a GPU it prints ``no GPU: skipped`` and exits 0.

For three models on CIFAR-shaped inputs (3x32x32 in [0, 1]) — an MLP, a CNN with BatchNorm and the
pre-activation ResNet18 at width 16 (Humayun et al.'s CIFAR-10 model) — at two checkpoints each
(initial weights, and after a short training on the GPU), it prints:

* **agreement** of every probe computed on the GPU in float32 with the same probe on the CPU in
  float64, on the same checkpoint: LC count mismatches per layer (the float64 reference uses the
  float32 frame, so only precision differs), PGD robust-accuracy difference per radius and the
  distance between the adversarial points (in units of the radius), alignment's largest relative
  error, the LLC mean difference (the SGLD noise is drawn on each device, so LLC differs by chain
  noise too: compare with ``llc_std``). Once with the engine's precision guard
  (``grokscope.functional.precision``: what the engine runs) and once with TF32 forced on for every
  product and convolution, to show what the guard prevents;
* **throughput** under the guard: plain inference images/s at the batch the probes use, LC and PGD
  points/s, the achieved TFLOP/s (forward FLOPs counted by ``torch.utils.flop_counter``; LC counted
  as 2P + 1 forward rows per point, PGD as steps x (forward + backward ~ 3 forwards) + 1 per radius),
  and the projected time of the headline sweep: 100 checkpoints x 1 024 points x (LC with 40
  vertices + PGD-10 at 6 radii).

The data are synthetic (uniform images, labels from a fixed random linear teacher): agreement and
speed do not depend on CIFAR's pixels, and the check needs no download. ``--device cpu`` runs the same
code on the CPU at tiny sizes (float32 against float64), to check the script itself where there is no
GPU (``tests/engine/test_gpu_ready.py`` does).
"""

from __future__ import annotations

import argparse
import math
import os
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

RADII_LC = (0.005, 0.05)      # the papers' radius, and ten times it
EPS = (0.03, 0.06, 0.10, 0.13, 0.16, 0.20)  # PGD radii (Humayun et al.)
PGD_STEPS = 10
N_DIRS = 20                  # 40 vertices


def _models(tiny: bool):
    """``{name: (factory, kwargs)}``: an MLP, a CNN with BatchNorm, the pre-activation ResNet18 w16."""
    from torch import nn

    from grokscope.models import build_model

    def mlp():
        return build_model({"arch": "mlp", "kwargs": {"in_dim": 3 * 32 * 32, "out_dim": 10, "depth": 4,
                                                      "width": 32 if tiny else 200}})

    def cnn_bn():
        c = 8 if tiny else 32
        return nn.Sequential(nn.Conv2d(3, c, 3, padding=1), nn.BatchNorm2d(c), nn.ReLU(),
                             nn.Conv2d(c, 2 * c, 3, stride=2, padding=1), nn.BatchNorm2d(2 * c), nn.ReLU(),
                             nn.Conv2d(2 * c, 2 * c, 3, stride=2, padding=1), nn.BatchNorm2d(2 * c), nn.ReLU(),
                             nn.Flatten(), nn.Linear(2 * c * 8 * 8, 10))

    def resnet():
        return build_model({"arch": "preact_resnet18", "kwargs": {"width": 4 if tiny else 16}})

    return {"mlp": mlp, "cnn-bn": cnn_bn, "preact-resnet18-w16": resnet}


def _data(n_train: int, n_test: int, seed: int = 0):
    """Uniform 3x32x32 images; labels from a fixed random linear teacher on 4x4-pooled images."""
    import torch

    from grokscope.datasets.base import Data

    g = torch.Generator().manual_seed(seed)
    x = torch.rand(n_train + n_test, 3, 32, 32, generator=g)
    teacher = torch.randn(3 * 8 * 8, 10, generator=g)
    pooled = torch.nn.functional.avg_pool2d(x, 4).flatten(1)
    y = ((pooled - pooled.mean(0)) @ teacher).argmax(1)
    return Data(name="synthetic-cifar", x_train=x[:n_train], y_train=y[:n_train], x_test=x[n_train:],
                y_test=y[n_train:], n_classes=10, box_low=torch.zeros(3, 32, 32), box_high=torch.ones(3, 32, 32))


def _as(data, device, dtype):
    out = data.to(device)
    for k in ("x_train", "x_test", "box_low", "box_high"):
        setattr(out, k, getattr(out, k).to(dtype))
    return out


def _sync(device) -> None:
    import torch

    if device.type == "cuda":
        torch.cuda.synchronize(device)


def _train(model, data, device, steps: int, seed: int = 0):
    """A short Adam training on the device (under the guard); returns the state dict (on the CPU)."""
    import torch

    from grokscope.functional.precision import precision_guard

    torch.manual_seed(seed)
    model = model.to(device).train()
    opt = torch.optim.Adam(model.parameters(), lr=1e-3)
    x, y = data.x_train.to(device), data.y_train.to(device)
    with precision_guard("strict"):
        for i in range(steps):
            idx = torch.randint(0, len(x), (min(256, len(x)),), device=device)
            opt.zero_grad()
            torch.nn.functional.cross_entropy(model(x[idx]), y[idx]).backward()
            opt.step()
    return {k: v.detach().cpu().clone() for k, v in model.state_dict().items()}


def _lc(model, x, device, dtype, n_points, max_rows=None, frame_dtype=None):
    from grokscope.probes.lc import local_complexity

    return local_complexity(model, x[:n_points].to(device, dtype), radius=RADII_LC, n_dirs=N_DIRS, seed=0,
                            dtype=dtype, frame_dtype=frame_dtype, max_rows=max_rows)


def _pgd(model, x, y, n_points):
    """(robust correctness (n_eps, n), last iterates (n_eps, 1, n, ...)) with Madry's step, seeded starts."""
    import torch

    from grokscope.probes.pgd import MADRY_ALPHA_SCALE, pgd_perturb

    x, y = x[:n_points], y[:n_points]
    adv = pgd_perturb(model, x, y, EPS, MADRY_ALPHA_SCALE / PGD_STEPS, PGD_STEPS, "linf", 1, True, 0.0, 1.0,
                      seed=0, alpha_relative=True)
    with torch.no_grad():
        pred = model(adv.reshape(-1, *x.shape[1:])).argmax(-1).view(len(EPS), 1, -1)
    return (pred == y).all(dim=1).cpu(), adv.cpu()


def _probe(name, model, data, device, overrides):
    from grokscope.functional.precision import precision_guard
    from grokscope.probes import ProbeContext, get_probe

    cls = get_probe(name)
    with precision_guard(cls.precision_mode):
        return cls().compute(model, data, cls.make_params(overrides),
                             ProbeContext(step=0, run="gpu_check", device=device)).load()


def _rel_err(a, b) -> tuple[float, str]:
    """Largest ``max|a - b| / max|b|`` over the float variables of two results, and that variable."""
    import numpy as np

    worst, where = 0.0, ""
    for k in b.data_vars:
        va, vb = np.asarray(a[k].values), np.asarray(b[k].values)
        if vb.dtype.kind != "f" or vb.size == 0:
            continue
        scale = float(np.nanmax(np.abs(vb))) or 1.0
        err = float(np.nanmax(np.abs(va - vb))) / scale if np.isfinite(va).any() else float("nan")
        if not err <= worst:
            worst, where = err, str(k)
    return worst, where


def agreement(make, sd, data, dev, sizes) -> None:
    """Print one checkpoint's agreement of every probe on ``dev`` in float32, under the engine's guard
    and with TF32 forced on, against the same probe on the CPU in float64."""
    import torch

    from grokscope.functional.precision import precision_guard, reduced_precision

    cpu = torch.device("cpu")
    m32 = make().to(dev)
    m32.load_state_dict(sd)
    m32.eval()
    m64 = make().double().eval()
    m64.load_state_dict({k: v.double() if v.is_floating_point() else v for k, v in sd.items()})
    d32, d64 = _as(data, dev, torch.float32), _as(data, cpu, torch.float64)
    n_lc, n_pgd = sizes["agree_points"], sizes["pgd_points"]
    align_over = {"n_points": str(sizes["align_points"])}
    llc_over = {"n_train": str(sizes["llc_train"]), "n_chains": "2", "n_burnin": str(sizes["llc_burnin"]),
                "n_draws": str(sizes["llc_draws"]), "lr": "1e-4", "gamma": "100"}
    # the references, once: LC in float64 with the float32 frame, so only the arithmetic differs
    ref = {"lc": _lc(m64, d64.x_test, cpu, torch.float64, n_lc, frame_dtype=torch.float32),
           "pgd": _pgd(m64, d64.x_test, d64.y_test, n_pgd),
           "align": _probe("align", m64, d64, cpu, align_over), "llc": _probe("llc", m64, d64, cpu, llc_over)}
    arms = {"guarded": lambda: precision_guard("strict"), "tf32 forced": reduced_precision}
    got = {}
    for arm, guard in arms.items():
        with guard():
            got[arm] = {"lc": _lc(m32, d32.x_test, dev, torch.float32, n_lc),
                        "pgd": _pgd(m32, d32.x_test, d32.y_test, n_pgd),
                        "align": _probe("align", m32, d32, dev, align_over),
                        "llc": _probe("llc", m32, d32, dev, llc_over)}
    radii = ", ".join(map(str, RADII_LC))
    print(f"    LC per layer, {n_lc} points: points whose count differs at r = {radii}; "
          "summed |Δcount| / summed float64 count")
    print(f"      {'layer':<24}" + "".join(f"{arm:>32}" for arm in arms))
    for li, layer in enumerate(ref["lc"].layers):
        cells = []
        for arm in arms:
            a, b = got[arm]["lc"].counts[:, :, li], ref["lc"].counts[:, :, li]
            per_r = ",".join(str(int((a[:, k] != b[:, k]).sum())) for k in range(len(RADII_LC)))
            cells.append(f"{per_r} | {int((a - b).abs().sum())}/{int(b.sum())}")
        print(f"      {layer:<24}" + "".join(f"{c:>32}" for c in cells))
    acc64, adv64 = ref["pgd"]
    eps = torch.tensor(EPS, dtype=torch.float64)[:, None]
    for arm in arms:
        acc32, adv32 = got[arm]["pgd"]
        dacc = (acc32.double().mean(1) - acc64.double().mean(1)).abs()
        # (n_eps, restarts = 1, n, *input) -> per radius and point: ‖Δ‖∞ / ε
        dist = (adv32.double() - adv64).flatten(3).abs().amax(3)[:, 0] / eps
        print(f"    PGD-{PGD_STEPS} {arm}: |Δ robust acc| per radius {' '.join(f'{v:.3f}' for v in dacc.tolist())}; "
              f"adversarial points ‖Δ‖∞/ε median {float(dist.median()):.1e} max {float(dist.max()):.1e} "
              f"(apart by more than ε/10: {int((dist > 0.1).sum())} of {dist.numel()})")
    for arm in arms:
        err, var = _rel_err(got[arm]["align"], ref["align"])
        print(f"    align {arm}: largest relative error {err:.1e} ({var})")
    l64 = ref["llc"]
    for arm in arms:
        l32 = got[arm]["llc"]
        print(f"    LLC {arm}: {float(l32.llc):.4g} vs float64 {float(l64.llc):.4g}, Δ {float(l32.llc) - float(l64.llc):+.2g} "
              f"(chain std {float(l64.llc_std):.2g}: the SGLD noise differs by device and dtype); "
              f"loss at w* Δ {float(l32.loss_init) - float(l64.loss_init):+.1e}")


def _timed(fn, device, repeat: int = 3) -> float:
    """Best wall time of ``fn()`` over ``repeat`` runs after one warm-up."""
    fn()
    _sync(device)
    best = math.inf
    for _ in range(repeat):
        t0 = time.perf_counter()
        fn()
        _sync(device)
        best = min(best, time.perf_counter() - t0)
    return best


def throughput(make, sd, data, dev, sizes) -> None:
    """Print images/s, points/s, TFLOP/s and the projected headline sweep of one model (guarded)."""
    import torch
    from torch.utils.flop_counter import FlopCounterMode

    from grokscope.functional.precision import precision_guard, reduced_precision

    model = make().to(dev)
    model.load_state_dict(sd)
    model.eval()
    x = data.x_test.to(dev)
    with FlopCounterMode(display=False) as fc:
        with torch.no_grad():
            model(x[:1])
    flops = fc.get_total_flops()  # forward FLOPs of one image
    rows = sizes["batch_rows"]
    xb = x[:1].expand(rows, *x.shape[1:]).contiguous() + 1e-3 * torch.rand(rows, *x.shape[1:], device=dev)

    def infer():
        with torch.no_grad():
            model(xb)

    with precision_guard("strict"):
        t_inf = _timed(infer, dev)
        n_lc = sizes["speed_points"]
        t_lc = _timed(lambda: _lc(model, x, dev, torch.float32, n_lc, max_rows=rows), dev, repeat=1)
        n_pgd = max(1, rows // len(EPS))
        n_pgd = min(n_pgd, len(x))
        t_pgd = _timed(lambda: _pgd(model, x, data.y_test.to(dev), n_pgd), dev, repeat=1)
    with reduced_precision():
        t_inf_tf32 = _timed(infer, dev)
    ips, lc_pps, pgd_pps = rows / t_inf, n_lc / t_lc, n_pgd / t_pgd
    lc_rows = (2 * N_DIRS + 1) * len(RADII_LC)
    pgd_rows = len(EPS) * (3 * PGD_STEPS + 1)
    tf = 1e-12 * flops
    print(f"    forward {flops / 1e6:.1f} MFLOP/image; batch {rows} rows")
    print(f"    inference: {ips:,.0f} images/s ({ips * tf:.2f} TFLOP/s); with TF32: {rows / t_inf_tf32:,.0f} images/s")
    print(f"    LC ({2 * N_DIRS} vertices, {len(RADII_LC)} radii): {lc_pps:,.1f} points/s = "
          f"{lc_pps * lc_rows:,.0f} vertex-images/s ({lc_pps * lc_rows / ips:.2f}x inference; "
          f"{lc_pps * lc_rows * tf:.2f} TFLOP/s)")
    print(f"    PGD-{PGD_STEPS} ({len(EPS)} radii): {pgd_pps:,.1f} points/s = {pgd_pps * pgd_rows:,.0f} "
          f"forward-equivalents/s ({pgd_pps * pgd_rows / ips:.2f}x inference; {pgd_pps * pgd_rows * tf:.2f} TFLOP/s)")
    # the headline sweep: LC at the papers' one radius with 40 vertices, PGD-10 at 6 radii
    sweep = 100 * 1024 * (1 / (lc_pps * len(RADII_LC)) + 1 / pgd_pps)
    print(f"    headline sweep (100 checkpoints x 1 024 points x LC 40 vertices + PGD-10 at 6 radii): "
          f"{sweep / 60:.1f} min on this device, one worker")


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--quick", action="store_true", help="fewer points and steps (about a minute)")
    ap.add_argument("--device", default="cuda", choices=("cuda", "cpu"),
                    help="cpu: run the same code on the CPU at tiny sizes (checks the script itself)")
    ap.add_argument("--models", default="mlp,cnn-bn,preact-resnet18-w16", help="comma-separated subset")
    args = ap.parse_args(argv)
    import torch

    if args.device == "cuda" and not torch.cuda.is_available():
        print("no GPU: skipped")
        return 0
    tiny = args.device == "cpu"
    dev = torch.device(args.device)
    torch.set_num_threads(os.cpu_count() or 1)
    if tiny:
        sizes = dict(agree_points=4, pgd_points=4, align_points=4, llc_train=16, llc_burnin=2, llc_draws=4,
                     batch_rows=64, speed_points=4, train_steps=3, n_train=64, n_test=32)
    elif args.quick:
        sizes = dict(agree_points=32, pgd_points=16, align_points=16, llc_train=32, llc_burnin=5,
                     llc_draws=8, batch_rows=4096, speed_points=256, train_steps=100, n_train=2048, n_test=1024)
    else:
        sizes = dict(agree_points=64, pgd_points=32, align_points=32, llc_train=64, llc_burnin=10,
                     llc_draws=20, batch_rows=8192, speed_points=1024, train_steps=300, n_train=4096, n_test=1024)
    t0 = time.perf_counter()
    name_dev = torch.cuda.get_device_name(dev) if dev.type == "cuda" else "CPU (script check, tiny sizes)"
    print(f"grokscope gpu_check on {name_dev}; torch {torch.__version__}; "
          f"{'quick' if args.quick else 'full'} sizes {sizes}")
    data = _data(sizes["n_train"], sizes["n_test"])
    makers = _models(tiny)
    for name in [m.strip() for m in args.models.split(",") if m.strip()]:
        if name not in makers:
            print(f"unknown model {name!r}; valid: {', '.join(makers)}")
            return 2
        make = makers[name]
        torch.manual_seed(0)
        init = {k: v.detach().clone() for k, v in make().state_dict().items()}
        trained = _train(_loaded(make, init), data, dev, sizes["train_steps"])
        n_params = sum(v.numel() for v in init.values())
        print(f"\n== {name} ({n_params:,} parameters in the state dict)")
        for label, sd in (("initial weights", init), (f"after {sizes['train_steps']} Adam steps", trained)):
            print(f"  checkpoint: {label}")
            agreement(make, sd, data, dev, sizes)
        print("  throughput (guarded, trained checkpoint)")
        throughput(make, trained, data, dev, sizes)
        print(f"  ({time.perf_counter() - t0:.0f} s so far)")
    print(f"\ndone in {time.perf_counter() - t0:.0f} s")
    return 0


def _loaded(make, sd):
    m = make()
    m.load_state_dict(sd)
    return m


if __name__ == "__main__":
    sys.exit(main())
