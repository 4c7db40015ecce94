#!/usr/bin/env bash
# The `llc` probe on the default modular-addition run (docs/llc.md). Run from the repository root.
set -euo pipefail
OUT=${1:-runs}

# 1. The default preset as it was when docs/llc.md was written (a + b mod 59, one-hot pairs, 40 % train,
#    2x128 MLP, AdamW lr 3e-3 wd 1; today's preset: 60 % train, lr 6e-3), 40 log-spaced checkpoints.
grokscope train --out "$OUT/modadd" --save log:40 --lr 3e-3 --dataset-kwargs '{"train_fraction": 0.4}'
# 2. Calibrate ε on the last checkpoint (traces and warnings in $OUT/modadd/plots/llc-sweep-step-6000.png).
grokscope llc-sweep "$OUT/modadd" --lr 1e-5,1e-4,1e-3 --gamma 100 --param n_draws=100 --param n_burnin=50
# 3. acc on every checkpoint, llc on 16 log-spaced ones (100 burn-in steps + 100 draws, 4 chains).
grokscope probe "$OUT/modadd" --metrics acc,llc --steps llc=log:16 --param llc.n_draws=100 \
    --param llc.n_burnin=100 --out "$OUT/modadd.zarr"
python examples/llc.py "$OUT/modadd.zarr" modadd --out docs/llc.png
