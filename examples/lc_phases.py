"""Plot local-complexity phases and delayed robustness of one run from its probe store.

Makes ``lc_phases.png`` and ``delayed_robustness.png`` with the same code as ``grokscope reproduce
humayun-mnist`` (:mod:`grokscope.reproduce.humayun`) and prints the numbers behind them
(docs/lc_pgd.md quotes them)::

    grokscope train --preset digits-mlp --save "$(python examples/lc_phases.py --save-spec)" --out runs/lc-digits
    grokscope probe runs/lc-digits --metrics acc,lc,pgd --param pgd.steps=20
    python examples/lc_phases.py runs/lc-digits --out docs

The store is ``RUN/probes.zarr`` unless ``--store`` says otherwise; the run's group is the run
folder's name unless ``--group`` says otherwise.
"""

from __future__ import annotations

import argparse
import math
from pathlib import Path

from grokscope.reproduce.configs import save_spec
from grokscope.reproduce.humayun import load, plot, summarise


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("run", nargs="?", type=Path, help="the run folder")
    ap.add_argument("--store", type=Path, help="probe store (default RUN/probes.zarr)")
    ap.add_argument("--group", help="the run's group in the store (default: the run folder's name)")
    ap.add_argument("--out", type=Path, default=Path("docs"))
    ap.add_argument("--eps", type=float, default=0.16, help="the radius to highlight and time")
    ap.add_argument("--save-spec", action="store_true", help="print the --save list for the training run")
    args = ap.parse_args()
    if args.save_spec:
        print(save_spec(100_000))
        return
    if args.run is None:
        ap.error("give the run folder")
    store = args.store or args.run / "probes.zarr"
    acc, lc, pgd = load(args.run, store, args.group or args.run.name)
    for f in plot(acc, lc, pgd, args.out, args.eps):
        print(f"wrote {f}")
    for k, v in summarise(acc, lc, pgd, args.eps).items():
        print(f"{k:28s} {v:.4g}")
    print("LC total mean per split (step: train test random boundary) and robust acc at eps:")
    r = pgd["robust_acc"].sel(split="test", eps=args.eps, method="nearest")
    a = acc["accuracy"].sel(split="test")
    for i, s in enumerate(lc["step"].values):
        vals = " ".join(f"{v:7.2f}" for v in lc["lc_total_mean"].isel(step=i, radius=0).values)
        rv = r.sel(step=s).item() if s in r["step"].values else math.nan
        av = a.sel(step=s).item() if s in a["step"].values else math.nan
        print(f"{s:7d}: {vals}   test acc {av:.4f}   robust {rv:.4f}")


if __name__ == "__main__":
    main()
