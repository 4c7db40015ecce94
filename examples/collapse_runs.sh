#!/usr/bin/env bash
# The runs, probes and figures of docs/collapse.md. Run from the repository root.
set -euo pipefail
OUT=${1:-runs/collapse}
# the default preset as it was when docs/collapse.md was written: 40 % train, lr 3e-3 (today's: 60 %, 6e-3)
T=(grokscope train --preset modadd-mlp --lr 3e-3 --dataset-kwargs '{"train_fraction": 0.4}' --threads 1 --quiet)

# 1. The default task (a + b mod 59, 2x128 MLP, AdamW lr 3e-3, full batch, 6000 steps): with weight
#    decay 1 (the preset), without, and without but with StableMax or ⊥Grad (~2 min of CPU each).
"${T[@]}" --out "$OUT/wd1"
"${T[@]}" --wd 0 --out "$OUT/wd0"
"${T[@]}" --wd 0 --loss stablemax --out "$OUT/wd0_stablemax"
"${T[@]}" --wd 0 --optim orthograd --out "$OUT/wd0_orthograd"
grokscope probe "$OUT" --metrics acc,collapse -o "$OUT/probes.zarr"
# 2. The three runs without weight decay for longer (20 000 steps; ~6 min of CPU each)
L="--wd 0 --steps 20000 --save log:60 --eval-every every:200"
"${T[@]}" $L --out "$OUT/long/wd0_20k"
"${T[@]}" $L --loss stablemax --out "$OUT/long/wd0_stablemax_20k"
"${T[@]}" $L --optim orthograd --out "$OUT/long/wd0_orthograd_20k"
grokscope probe "$OUT/long" --metrics acc,collapse -o "$OUT/long/probes.zarr"
python examples/collapse_figure.py collapse "$OUT/probes.zarr" "$OUT/long/probes.zarr" --out docs/collapse.png

# 3. PGD vs APGD-CE over a short digits run (the digits-mlp recipe, 5000 steps)
grokscope train --preset digits-mlp --steps 5000 --save log:30 --threads 1 --quiet --out "$OUT/digits/d5k"
for attack in pgd apgd; do
  grokscope probe "$OUT/digits" --metrics pgd --param pgd.steps=20 --param pgd.alpha=0.0156 --param pgd.attack=$attack \
      -o "$OUT/digits/$attack.zarr"
done
python examples/collapse_figure.py attacks "$OUT/digits/pgd.zarr" "$OUT/digits/apgd.zarr" d5k --out docs/pgd_apgd.png
