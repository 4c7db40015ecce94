"""How well does the grokking-delay law forecast when a modular-addition run generalises?

Trains a grid of the demo's run (``--preset modadd-mlp``: one-hot ``a + b mod 59``, 2×128 ReLU MLP,
AdamW, full batch) over learning rate η, weight decay λ and train fraction, then asks
``grokscope forecast`` (:mod:`grokscope.forecast`) for each run's generalisation step, the law's two
constants calibrated on the *other* runs (leave-one-out), and compares with the step the run actually
generalised at. Prints (and writes ``OUT/forecast.md``) one row per run and the median and worst
errors.

    python examples/forecast_sweep.py --out runs/forecast            # the 27-run grid (~20 CPU-minutes)
    python examples/forecast_sweep.py --out runs/forecast --quick    # 4 runs, a smoke test
    python examples/forecast_sweep.py --out runs/forecast --table-only

Each run trains for ``clip(8 / (ηλ), 1000, 8000)`` steps (the law's delay scales as 1/(ηλ)), evaluates
every 10 steps and saves 80 log-spaced checkpoints. Runs already in ``OUT`` are reused.
"""

from __future__ import annotations

import argparse
import itertools
import math
import subprocess
import sys
from pathlib import Path

LRS = (3e-3, 6e-3, 1.2e-2)
WDS = (0.5, 1.0, 2.0)
FRACTIONS = (0.5, 0.6, 0.7)
QUICK = ((6e-3, 1.0, 0.6), (3e-3, 1.0, 0.6), (6e-3, 2.0, 0.6), (1.2e-2, 0.5, 0.6))


def run_name(lr: float, wd: float, frac: float) -> str:
    return f"lr{lr:g}-wd{wd:g}-f{frac:g}"


def steps_for(lr: float, wd: float) -> int:
    return int(min(8000, max(1000, math.ceil(8 / (lr * wd)))))


def train(out: Path, lr: float, wd: float, frac: float, threads: int) -> Path:
    """``grokscope train`` of one cell into ``out/<name>`` (skipped when its last checkpoint exists)."""
    run = out / run_name(lr, wd, frac)
    steps = steps_for(lr, wd)
    if (run / "checkpoints" / f"step-{steps:08d}.safetensors").exists():
        return run
    cmd = [sys.executable, "-m", "grokscope.cli", "train", "--preset", "modadd-mlp", "--out", str(run),
           "--lr", str(lr), "--wd", str(wd), "--steps", str(steps), "--save", "log:80",
           "--eval-every", "every:10", "--dataset-kwargs", f'{{"train_fraction": {frac}}}',
           "--threads", str(threads), "--quiet"]
    if (run / "run.json").exists():
        cmd = [sys.executable, "-m", "grokscope.cli", "train", "--out", str(run), "--resume",
               "--threads", str(threads), "--quiet"]
    subprocess.run(cmd, check=True)
    return run


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--out", type=Path, required=True)
    ap.add_argument("--quick", action="store_true", help="4 runs instead of the 27-run grid")
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--table-only", action="store_true", help="no training: the table of the runs in OUT")
    args = ap.parse_args()
    cells = QUICK if args.quick else tuple(itertools.product(LRS, WDS, FRACTIONS))
    runs = []
    for lr, wd, frac in cells:
        if args.table_only:
            run = args.out / run_name(lr, wd, frac)
            if not (run / "run.json").exists():
                continue
        else:
            run = train(args.out, lr, wd, frac, args.threads)
            print(f"trained {run.name}", file=sys.stderr, flush=True)
        runs.append(run)

    from grokscope.forecast import sweep_table

    text = sweep_table(runs)
    (args.out / "forecast.md").write_text(text + "\n")
    print(text)


if __name__ == "__main__":
    main()
