#!/usr/bin/env bash
# The `fourier` and `norm` probes on the default modular-addition run, and Musat's closed-form
# simulation written as a run (docs/fourier_norm.md). Run from the repository root.
set -euo pipefail
OUT=${1:-runs}

# 1. modadd-mlp with 40 % train and lr 3e-3 (the preset before the demo's faster recipe; a + b mod 59,
#    one-hot pairs, 2x128 MLP, AdamW wd 1; ~2-3 min on 2 cores).
grokscope train --out "$OUT/modadd-mlp" --lr 3e-3 --dataset-kwargs '{"train_fraction": 0.4}'

grokscope probe "$OUT/modadd-mlp" --metrics fourier,norm,acc
python examples/fourier_norm.py "$OUT/modadd-mlp/probes.zarr" modadd-mlp --out docs/fourier_norm.png

# 2. Musat §7 at the paper's setting (p = 37, h = 512, lr 1e-3, 5000 steps; ~2-5 min of CPU).
grokscope simulate musat --p 37 --hidden 512 --lr 1e-3 --steps 5000 --save log:60 --eval-every every:100 \
    --out "$OUT/musat-p37"
grokscope probe "$OUT/musat-p37" --metrics fourier,norm,acc
python examples/fourier_norm.py "$OUT/musat-p37/probes.zarr" musat-p37 --out "$OUT/musat-p37/fourier_norm.png"
