"""The ``spectral`` probe's α beside WeightWatcher's on the same matrices: every checkpoint of a run.

    python examples/spectral_vs_weightwatcher.py runs/demo [--every 5]

For each checkpoint (every ``--every``-th), builds the run's model with the checkpoint's weights and
compares, layer by layer, ``grokscope.probes.spectral`` (``powerlaw.Fit``, α ∈ (1, ∞)) with
WeightWatcher 0.7.7's ``analyze()`` (its default fit, ``pl_package="ww"``). Prints the number of
(checkpoint, layer) pairs, how many agree to 1e-9 relative, the largest relative difference of α and
of the stable rank, and where WeightWatcher gives an α that the probe leaves NaN (fewer than
``min_evals`` eigenvalues). WeightWatcher is not a grokscope dependency (it is in the ``test`` extra).
"""

from __future__ import annotations

import argparse
import logging
import math
from pathlib import Path

from grokscope import runs
from grokscope.engine.discovery import find_runs
from grokscope.engine.loading import load_into, read_state_dict
from grokscope.models import build_model
from grokscope.probes.base import ProbeContext
from grokscope.probes.spectral import SpectralProbe


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("run", type=Path)
    ap.add_argument("--every", type=int, default=1)
    args = ap.parse_args()
    import weightwatcher as ww

    logging.getLogger("weightwatcher").setLevel(logging.ERROR)
    (run,) = find_runs(args.run)
    spec = runs.read_run_json(args.run)
    params = SpectralProbe.make_params({})
    pairs = agree = 0
    worst_alpha = worst_sr = 0.0
    nan_ours = []
    for ck in run.checkpoints[:: args.every]:
        model = build_model(spec["model"])
        load_into(model, read_state_dict(ck), ck.path)
        ours = SpectralProbe().compute(model.eval(), None, params, ProbeContext(step=int(ck.step)))
        theirs = ww.WeightWatcher(model=model).analyze(plot=False, randomize=False, mp_fit=False).set_index("name")
        for layer in ours.layer.values:
            a = float(ours.alpha.sel(layer=layer))
            b = float(theirs.loc[str(layer), "alpha"])
            if math.isnan(a):
                nan_ours.append((int(ck.step), str(layer), b))
                continue
            pairs += 1
            rel = abs(a - b) / abs(b)
            agree += rel <= 1e-9
            worst_alpha = max(worst_alpha, rel)
            sr_a, sr_b = float(ours.stable_rank.sel(layer=layer)), float(theirs.loc[str(layer), "stable_rank"])
            worst_sr = max(worst_sr, abs(sr_a - sr_b) / abs(sr_b))
    print(f"{pairs} (checkpoint, layer) pairs over {len(run.checkpoints[:: args.every])} checkpoints of {args.run}: "
          f"alpha equal to 1e-9 relative in {agree}; largest relative difference: alpha {worst_alpha:.2e}, "
          f"stable rank {worst_sr:.2e}")
    if nan_ours:
        print(f"{len(nan_ours)} pairs where the probe leaves alpha NaN (< min_evals eigenvalues) and WeightWatcher "
              f"fits: {nan_ours[:5]}")


if __name__ == "__main__":
    main()
