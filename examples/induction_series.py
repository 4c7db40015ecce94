"""The induction-head series: a two-layer attention-only transformer trained on repeated random spans
(``grokscope train --preset induction``), probed with ``acc`` (the ICL score: loss at the last token
minus loss at a token before any repeat), and its figure.

    python examples/induction_series.py OUT [--steps 800] [--every 20] [--seed 0] [--figure docs/induction.png]
    python examples/induction_series.py OUT --llc [--llc-figure docs/induction_llc.png]

Trains into ``OUT/run`` (a run folder: ``run.json``, ``checkpoints/step-*.safetensors``; re-running
resumes it), probes it into ``OUT/run/probes.zarr``, draws the ICL score and the loss by position over
steps, and prints (and writes to ``OUT/induction.json``) the ICL score at the first and last
checkpoint, the step at which the ICL score has completed half of its largest fall
(:func:`grokscope.analysis.curves.change_point`) and the checkpoint interval of its steepest fall. The
run folder is an ordinary grokscope run: ``grokscope probe OUT/run --metrics ...`` adds other probes
over the same series. ``--llc`` also probes ``llc`` (the LM loss) and ``rllc`` (one component per
attention head) with :data:`LLC_PARAMS`, draws them beside the ICL score and adds, for each curve, the
checkpoint interval of its steepest move after :data:`SKIP` steps. See ``docs/induction.md``.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import numpy as np

# the chains' settings of --llc: a 256-sequence subset in mini-batches of 64, 2 chains of 60 draws after
# 30 burn-in steps (about 7 s per checkpoint for llc and all 8 heads on 2 shared cores)
LLC_PARAMS = {"n_train": 256, "batch_size": 64, "n_chains": 2, "n_draws": 60, "n_burnin": 30}
SKIP = 60  # the steepest-move intervals ignore the first steps (the fast initial rise or fall)


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


def steepest(steps: np.ndarray, values: np.ndarray, direction: str, span: int = 5) -> list[float]:
    """``[from step, to step, change]``: the ``span``-checkpoint interval after :data:`SKIP` over which
    ``values`` rise (``direction="rise"``) or fall the most."""
    start = int(np.searchsorted(steps, SKIP))
    moves = values[start + span:] - values[start:len(values) - span]
    k = int(np.argmax(moves) if direction == "rise" else np.argmin(moves)) + start
    return [int(steps[k]), int(steps[k + span]), float(values[k + span] - values[k])]


def llc_series(out: Path, numbers: dict) -> dict:
    """Probe ``llc`` and ``rllc`` (every head) over ``out/run`` with :data:`LLC_PARAMS`; returns both
    groups and adds to ``numbers`` the steepest-move intervals of the ICL score, the LLC and each head."""
    import grokscope
    from grokscope.engine.store_view import load_group

    run = out / "run"
    summary = grokscope.probe(run, {"llc": LLC_PARAMS, "rllc": {**LLC_PARAMS, "components": "heads"}},
                              scheduler="sync")
    if not summary.ok:
        raise SystemExit(f"probing failed: {summary.failures[0]}")
    llc = load_group(run / "probes.zarr", run.name, "llc")
    rllc = load_group(run / "probes.zarr", run.name, "rllc")
    steps = llc.step.values
    numbers["llc_first"], numbers["llc_last"] = float(llc.llc.values[0]), float(llc.llc.values[-1])
    numbers["llc_rhat_max"] = float(np.nanmax(llc.rhat.values))
    numbers["steepest_llc_rise"] = steepest(steps, llc.llc.values, "rise")
    numbers["steepest_head_rise"] = {str(c): steepest(steps, rllc.llc.sel(component=c).values, "rise")
                                     for c in rllc.component.values}
    return {"llc": llc, "rllc": rllc}


def llc_figure(acc, llc, rllc, numbers: dict, path: Path) -> None:
    """Three panels over steps: the test ICL score, the LLC (± its chains' spread) and each head's
    restricted LLC (layer 0 solid, layer 1 dashed)."""
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, (a, b, c) = plt.subplots(1, 3, figsize=(13, 3.6))
    a.plot(acc.step.values, acc.icl_score.sel(split="test").values)
    a.set(xlabel="step", ylabel="nats", title="ICL score (test)")
    steps = llc.step.values
    b.plot(steps, llc.llc.values)
    b.fill_between(steps, llc.llc.values - llc.llc_std.values, llc.llc.values + llc.llc_std.values, alpha=0.3)
    b.set(xlabel="step", ylabel="λ̂", title="LLC (next-token loss)")
    for comp in rllc.component.values:
        layer = str(comp).split(":")[1].split(".")[0]
        c.plot(steps, rllc.llc.sel(component=comp).values, "-" if layer == "0" else "--", label=str(comp))
    c.set(xlabel="step", ylabel="λ̂ (restricted)", title="Per-head restricted LLC")
    c.legend(fontsize=7, ncol=2)
    for ax, key in ((a, "steepest_fall_5"), (b, "steepest_llc_rise")):
        lo, hi = numbers[key][:2]
        ax.axvspan(lo, hi, color="grey", alpha=0.15)
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=110)


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
    ap.add_argument("--llc", action="store_true", help="also probe llc and per-head rllc, and draw them")
    ap.add_argument("--llc-figure", type=Path, default=None, help="default: OUT/induction_llc.png")
    args = ap.parse_args()
    got = series(args.out, args.steps, args.every, args.seed)
    figure(got["acc"], got["numbers"], args.figure or args.out / "induction.png")
    if args.llc:
        acc, numbers = got["acc"], got["numbers"]
        numbers["steepest_fall_5"] = steepest(acc.step.values, acc.icl_score.sel(split="test").values, "fall")
        chains = llc_series(args.out, numbers)
        llc_figure(acc, chains["llc"], chains["rllc"], numbers, args.llc_figure or args.out / "induction_llc.png")
    (args.out / "induction.json").write_text(json.dumps(got["numbers"], indent=2) + "\n")
    print(json.dumps(got["numbers"], indent=2))


if __name__ == "__main__":
    main()
