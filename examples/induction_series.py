"""The induction-head series: a two-layer attention-only transformer trained on repeated random spans
(``grokscope train --preset induction``), probed with ``acc`` (the ICL score: loss at the last token
minus loss at a token before any repeat), and its figure.

    python examples/induction_series.py OUT [--steps 800] [--every 20] [--seed 0] [--figure docs/induction.png]

Trains into ``OUT/run`` (a run folder: ``run.json``, ``checkpoints/step-*.safetensors``; re-running
resumes it), probes it into ``OUT/run/probes.zarr``, draws the ICL score and the loss by position over
steps, and prints (and writes to ``OUT/induction.json``) the ICL score at the first and last
checkpoint, the step at which the ICL score has completed half of its largest fall
(:func:`grokscope.analysis.curves.change_point`) and the checkpoint interval of its steepest fall. The
run folder is an ordinary grokscope run: ``grokscope probe OUT/run --metrics ...`` adds other probes
over the same series. See ``docs/induction.md``.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import numpy as np


def series(out: Path, steps: int = 800, every: int = 20, seed: int = 0, progress: bool = True) -> dict:
    """Train (or resume) the ``induction`` preset into ``out/run`` and probe ``acc`` with the ICL
    positions the dataset states; returns the numbers (see the module docstring) and the acc group."""
    import grokscope
    from grokscope.analysis.curves import change_point
    from grokscope.datasets import load_dataset
    from grokscope.engine.store_view import load_group
    from grokscope.training import preset_config, train_run

    cfg = preset_config("induction", steps=steps, save=f"every:{every}", seed=seed)
    run = out / "run"
    train_run(cfg, run, resume=True, progress=progress, threads=1)
    meta = load_dataset(cfg.dataset).meta
    icl = {"icl_early": meta["icl_early"], "icl_late": meta["icl_late"]}
    summary = grokscope.probe(run, {"acc": icl}, scheduler="sync")
    if not summary.ok:
        raise SystemExit(f"probing failed: {summary.failures[0]}")
    acc = load_group(run / "probes.zarr", run.name, "acc")
    steps_ = acc.step.values
    score = acc.icl_score.sel(split="test").values
    drops = np.diff(score)
    k = int(np.argmin(drops))
    numbers = {"steps": int(steps), "every": int(every), "seed": int(seed), **icl,
               "icl_first": float(score[0]), "icl_last": float(score[-1]),
               "change_point_step": float(change_point(steps_, score, direction="fall")),
               "steepest_fall": [int(steps_[k]), int(steps_[k + 1]), float(drops[k])],
               "late_loss_first": float(acc.loss_by_position.sel(split="test", position=icl["icl_late"]).values[0]),
               "late_loss_last": float(acc.loss_by_position.sel(split="test", position=icl["icl_late"]).values[-1]),
               "log_vocab": float(np.log(meta["vocab"]))}
    return {"numbers": numbers, "acc": acc}


def figure(acc, numbers: dict, path: Path) -> None:
    """ICL score over steps (train and test, the change point marked) and the test loss by position."""
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    steps = acc.step.values
    fig, (a, b) = plt.subplots(1, 2, figsize=(10, 3.6))
    for split, style in (("train", "--"), ("test", "-")):
        a.plot(steps, acc.icl_score.sel(split=split).values, style, label=split)
    a.axvline(numbers["change_point_step"], color="grey", lw=0.8)
    a.set(xlabel="step", ylabel=f"loss(token {numbers['icl_late']}) - loss(token {numbers['icl_early']})",
          title="In-context learning score")
    a.legend()
    lbp = acc.loss_by_position.sel(split="test").values.T  # (position, step)
    im = b.imshow(lbp, aspect="auto", origin="lower", cmap="viridis",
                  extent=(steps[0], steps[-1], acc.position.values[0] - 0.5, acc.position.values[-1] + 0.5))
    fig.colorbar(im, ax=b, label="test loss (nats)")
    b.set(xlabel="step", ylabel="predicted token position", title="Loss by position")
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=110)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("out", type=Path)
    ap.add_argument("--steps", type=int, default=800)
    ap.add_argument("--every", type=int, default=20)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--figure", type=Path, default=None, help="default: OUT/induction.png")
    args = ap.parse_args()
    got = series(args.out, args.steps, args.every, args.seed)
    figure(got["acc"], got["numbers"], args.figure or args.out / "induction.png")
    (args.out / "induction.json").write_text(json.dumps(got["numbers"], indent=2) + "\n")
    print(json.dumps(got["numbers"], indent=2))


if __name__ == "__main__":
    main()
