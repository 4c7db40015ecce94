"""Local-complexity throughput: the paper's MNIST MLP and the CNN / ResNet cases (float32).

``--case mlp`` (784-200x4-10, P=25, r=0.005): this machine's matmul peak (one big matmul), time and
throughput (points x vertices / s) of ``local_complexity`` (its fast path for Sequential MLPs), of the
plain chunked path (every vertex through every layer), of one huge batch, and of a naive per-point
loop; the fraction of the matmul peak reached; and whether the counts are identical.

``--case cnn|preact|resnet18`` (P=20, r=0.005 as in the authors' CIFAR setting, random 3x32x32
points): ``cnn`` is 3x32x32 -> conv32 -> conv64/2 -> conv128/2, each BatchNorm (eval, random running
statistics) + ReLU, pooling and a linear head; ``preact`` grokscope's pre-activation ResNet18 preset
(width 16, no BatchNorm); ``resnet18`` the same at ResNet18 width 64. Prints the ``lc`` time, the best
plain forward of all 2P·n vertices (over vertices per forward and NCHW / channels-last), the authors'
algorithm re-implemented naively (batches of ``--naive-batch`` points, 256 in their CIFAR script,
every vertex forwarded, every pre-activation stored, signs compared to vertex 0), the ratios, points
per second, and whether the counts are identical. ``--before FILE`` also times another copy of
``probes/lc.py`` (e.g. ``git show REV:probes/lc.py``) on the same points.

    python benchmarks/bench_lc.py [--case mlp|cnn|preact|resnet18|all] [--threads 2] [--points N]
                                  [--repeat 3] [--cpu-time]

Run it under ``nice`` on a shared machine and say so with the numbers (they are then contended).
"""

from __future__ import annotations

import argparse
import importlib.util
import sys
import time
from typing import Any

import torch
from torch import nn

from grokscope.models.mlp import mlp
from grokscope.models.resnet import preact_resnet18
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


def mlp_case(args: argparse.Namespace) -> None:
    """The paper's MNIST MLP (see the module docstring)."""
    torch.manual_seed(0)
    points = args.points or 1000
    model = mlp(784, 10, depth=4, width=200).eval()
    x = torch.rand(points, 784)
    p, r = 25, 0.005
    v = 2 * p
    n_vert = points * v
    # FLOPs of the plain forward of every vertex up to the last ReLU input (the output layer is skipped)
    flops_plain = 2 * n_vert * (784 * 200 + 3 * 200 * 200)
    # the fast path: first layer on points and directions only, then P + 1 rows per point (no crossing)
    flops_fast = 2 * (points + p) * 784 * 200 + 2 * points * (p + 1) * 3 * 200 * 200

    peak = matmul_peak(args.repeat)
    print(f"matmul peak (2048^3 float32): {peak / 1e9:.1f} GFLOP/s")
    print(f"MLP 784-200x4-10, {points} points, P={p} ({n_vert} vertices), r={r}, float32")

    t_fast, fast = best_time(lambda: local_complexity(model, x, r, n_dirs=p), args.repeat)
    t_plain, plain = best_time(lambda: local_complexity(model, x, r, n_dirs=p, fast=False),
                               args.repeat)
    t_huge, huge = best_time(lambda: local_complexity(model, x, r, n_dirs=p, fast=False,
                                                      max_rows=n_vert), 1)
    frame = cross_polytope_frame(784, p, 0, torch.float32)
    k = min(args.naive_points, points)
    t_naive_k, naive = best_time(lambda: naive_per_point(model, x[:k], r, frame), 1)
    t_naive = t_naive_k * points / k

    def row(name: str, t: float, flops: float | None) -> None:
        eff = f"{flops / t / 1e9:7.1f} GFLOP/s = {100 * flops / t / peak:5.1f}% of peak" if flops else ""
        print(f"  {name:<38s} {t:8.3f} s  {n_vert / t / 1e6:7.2f} M vertices/s  {eff}")

    row("lc (fast path, auto rows)", t_fast, flops_fast)
    row("plain chunked (every vertex, all layers)", t_plain, flops_plain)
    row("one huge batch (plain)", t_huge, flops_plain)
    row(f"naive per-point loop (x{points / k:.0f} from {k})", t_naive, flops_plain)
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


# -- CNN / ResNet cases -------------------------------------------------------------------------------

def bench_cnn() -> nn.Sequential:
    """3x32x32 -> conv32 -> conv64/2 -> conv128/2 (BatchNorm + ReLU each) -> pool -> linear(10)."""
    layers: list[nn.Module] = []
    c_in = 3
    for c, stride in ((32, 1), (64, 2), (128, 2)):
        layers += [nn.Conv2d(c_in, c, 3, stride=stride, padding=1), nn.BatchNorm2d(c), nn.ReLU()]
        c_in = c
    model = nn.Sequential(*layers, nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(c_in, 10))
    with torch.no_grad():
        for m in model.modules():
            if isinstance(m, nn.BatchNorm2d):
                m.running_mean.uniform_(-0.2, 0.2)
                m.running_var.uniform_(0.5, 1.5)
    return model.eval()


CASES = {"cnn": (bench_cnn, 256), "preact": (lambda: preact_resnet18(width=16).eval(), 128),
         "resnet18": (lambda: preact_resnet18(width=64).eval(), 16)}


def naive_batched(model: nn.Module, x: torch.Tensor, r: float, frame: torch.Tensor, batch: int) -> torch.Tensor:
    """The authors' algorithm, re-implemented plainly: per batch of ``batch`` points, all their
    vertices in one forward, the pre-activation of every ReLU module stored (a copy: ReLUs may be
    in-place), then per layer a neuron counts when some vertex's ``sign`` differs from vertex 0's.
    Returns ``(n, layers)`` int64."""
    acts = [m for m in model.modules() if isinstance(m, nn.ReLU)]
    stored: list[torch.Tensor] = []
    handles = [a.register_forward_pre_hook(lambda mod, args: stored.append(args[0].clone())) for a in acts]
    signed = torch.cat([frame, -frame])
    v = signed.shape[0]
    out = []
    try:
        with torch.no_grad():
            for i in range(0, len(x), batch):
                xb = x[i:i + batch]
                verts = (xb.reshape(len(xb), 1, -1) + r * signed[None]).reshape(len(xb) * v, *x.shape[1:])
                stored.clear()
                model(verts)
                counts = []
                for t in stored:
                    s = torch.sign(t.reshape(len(xb), v, -1))
                    counts.append((s != s[:, :1]).any(dim=1).sum(dim=1))
                out.append(torch.stack(counts, dim=1))
    finally:
        for h in handles:
            h.remove()
    return torch.cat(out)


def best_plain_forward(model: nn.Module, verts: torch.Tensor, repeat: int, sizes: tuple[int, ...]
                       ) -> tuple[float, str, dict[str, float]]:
    """Best time of one plain forward of all ``verts`` over vertices per forward and memory format."""
    import copy

    times: dict[str, float] = {}
    formats = {"nchw": (model, verts),
               "channels-last": (copy.deepcopy(model).to(memory_format=torch.channels_last),
                                 verts.contiguous(memory_format=torch.channels_last))}
    with torch.no_grad():
        for fmt, (m, vv) in formats.items():
            for bs in sizes:
                t, _ = best_time(lambda: [m(vv[i:i + bs]) for i in range(0, len(vv), bs)], repeat)
                times[f"{bs} {fmt}"] = t
    key = min(times, key=times.get)  # type: ignore[arg-type]
    return times[key], key, times


def load_lc(path: str) -> Any:
    """Another copy of ``probes/lc.py`` as a module (its relative imports made absolute)."""
    import tempfile
    from pathlib import Path

    text = Path(path).read_text().replace("from .base import", "from grokscope.probes.base import")
    tmp = Path(tempfile.mkdtemp()) / "lc_other.py"
    tmp.write_text(text)
    spec = importlib.util.spec_from_file_location("lc_other", tmp)
    assert spec and spec.loader
    mod = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = mod  # dataclasses look their module up
    spec.loader.exec_module(mod)
    return mod


def conv_case(name: str, args: argparse.Namespace) -> None:
    """One CNN / ResNet case (see the module docstring)."""
    make, default_points = CASES[name]
    n = args.points or default_points
    p, r = 20, 0.005
    torch.manual_seed(0)
    model = make()
    x = torch.randn(n, 3, 32, 32)
    frame = cross_polytope_frame(3 * 32 * 32, p, 0, torch.float32)
    verts = (x.reshape(n, 1, -1) + r * torch.cat([frame, -frame])[None]).reshape(n * 2 * p, 3, 32, 32)
    print(f"{name}: {n} random points, P={p} ({len(verts)} vertices), r={r}, float32")
    t_lc, res = best_time(lambda: local_complexity(model, x, r, n_dirs=p), args.repeat)
    t_fwd, how, sweep = best_plain_forward(model, verts, args.repeat, tuple(args.sizes))
    batch = min(args.naive_batch, n)
    t_naive, naive = best_time(lambda: naive_batched(model, x, r, frame, batch), 1)
    same = torch.equal(res.counts[:, 0], naive)
    print(f"  lc                               {t_lc:8.3f} s  {n / t_lc:8.2f} points/s  "
          f"x{t_lc / t_fwd:.2f} the best plain forward")
    print(f"  best plain forward of all vertices {t_fwd:6.3f} s  ({how} vertices per forward)")
    print("    sweep: " + ", ".join(f"{k}: {v:.3f}" for k, v in sweep.items()))
    print(f"  naive authors' algorithm (batch {batch}) {t_naive:.3f} s  = x{t_naive / t_lc:.2f} lc")
    print(f"  counts identical lc vs naive: {same} "
          f"({int((res.counts[:, 0] != naive).sum())} of {naive.numel()} differ); mean LC per layer: "
          f"{[round(v, 1) for v in res.counts.double().mean(0)[0].tolist()]}")
    if args.before:
        other = load_lc(args.before)
        t_b, res_b = best_time(lambda: other.local_complexity(model, x, r, n_dirs=p), args.repeat)
        print(f"  --before {args.before}: {t_b:.3f} s ({n / t_b:.2f} points/s) = x{t_b / t_lc:.2f} lc now; "
              f"counts identical: {torch.equal(res_b.counts, res.counts)}")
    print(f"  1 024 points: {1024 / n * t_lc:.0f} s per point set per checkpoint (lc, extrapolated)")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--case", choices=["mlp", *CASES, "all"], default="mlp")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--points", type=int, default=0, help="points (default: 1000 mlp, 256 cnn, 128 preact, "
                                                          "16 resnet18)")
    ap.add_argument("--repeat", type=int, default=3)
    ap.add_argument("--naive-points", type=int, default=100, help="mlp: points for the naive loop (extrapolated)")
    ap.add_argument("--naive-batch", type=int, default=256, help="conv cases: points per batch of the "
                                                                 "authors' algorithm (their CIFAR script: 256)")
    ap.add_argument("--sizes", type=lambda t: [int(v) for v in t.split(",")], default=[40, 80, 160, 320, 640],
                    help="conv cases: vertices per forward tried for the best plain forward")
    ap.add_argument("--before", default=None, metavar="FILE", help="conv cases: also time this copy of lc.py")
    ap.add_argument("--cpu-time", action="store_true",
                    help="time with process CPU time (robust to other jobs on a shared machine; use with "
                         "--threads 1, where CPU time is compute time)")
    ap.add_argument("--no-sweep", action="store_true", help="mlp: skip the rows-per-forward sweep")
    args = ap.parse_args()
    global CLOCK
    if args.cpu_time:
        CLOCK = time.process_time
    torch.set_num_threads(args.threads)
    clock = "process CPU time" if args.cpu_time else "wall clock"
    print(f"threads={args.threads}  timing: {clock}, best of {args.repeat}")
    for case in (["mlp", *CASES] if args.case == "all" else [args.case]):
        mlp_case(args) if case == "mlp" else conv_case(case, args)


if __name__ == "__main__":
    main()
