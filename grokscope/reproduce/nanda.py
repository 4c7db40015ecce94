"""``grokscope reproduce nanda``: Nanda, Chan, Lieberum, Smith & Steinhardt, *Progress measures for
grokking via mechanistic interpretability* (ICLR 2023), the main run.

The paper's setting (preset ``modadd-transformer``): a + b mod 113 as tokens (a, b, '='), 30 % of
the pairs for training, a one-layer transformer without LayerNorm (d_model 128, 4 heads of 32,
d_mlp 512, ReLU, initialised as the authors' code), full-batch AdamW lr 1e-3, weight decay 1,
β = (0.9, 0.98), a 10-step linear warm-up, seed 0. We train :data:`STEPS` steps (the authors' code
runs 50 000 epochs; the paper's three phases end by ≈ 13 300) and save a checkpoint every
:data:`SAVE_EVERY` steps. The run resumes: an interrupted command continues from its last checkpoint,
so the run can be done in sittings.

Every checkpoint is probed with ``fourier`` (embedding Fourier norms, key frequencies, Gini,
restricted and excluded loss over all p² pairs), ``norm`` (Σθ², Musat's tangent measures) and
``acc``. Figure ``nanda.png``: train, test, restricted and excluded loss with the phase boundaries;
Gini and Σθ²; the embedding's Fourier norms at the last step. Table ``paper_vs_run.md``.

Phase boundaries, as we read them off the curves (the paper reads them off the same curves by eye):
memorisation ends at the first step with train accuracy ≥ 0.99; circuit formation ends and clean-up
starts when the test loss has fallen 10 % of the way from its peak (after memorisation) to its final
value; clean-up ends when it has fallen 90 % of the way.
"""

from __future__ import annotations

import json
import math
import time
from pathlib import Path
from typing import Any

import numpy as np

from grokscope import runs

from . import configs
from .training import markdown_table, probe, train

NAME = "nanda"
TITLE = "Nanda et al. (ICLR 2023): key frequencies, grokking and its three phases, a + b mod 113"
STEPS = 20_000
SAVE_EVERY = 250
PAPER = {"key_freqs": [14, 35, 41, 42, 52], "phases": (1_400, 9_400, 13_300), "generalisation": "≈ 10⁴"}
QUICK = {"p": 23, "steps": 200}
PROBES = {"fourier": ({"n_key": "5"}, None), "norm": ({}, None), "acc": ({}, None)}


def config(quick: bool = False):
    """The training configuration (the paper's, or ``--quick``'s small one: p = 23, a narrower model,
    200 steps)."""
    if not quick:
        save = ",".join(str(s) for s in sorted(set(range(0, STEPS + 1, SAVE_EVERY)) | {1, 10, 50, 100}))
        return configs.nanda(steps=STEPS, save=save)
    return configs.nanda(steps=QUICK["steps"], save="every:25", p=QUICK["p"],
                         model_kwargs={"d_model": 32, "n_heads": 2, "d_head": 16, "d_mlp": 64})


def _fall_step(steps: np.ndarray, loss: np.ndarray, start: int, fraction: float) -> int | None:
    """The first step after ``start`` where ``loss`` has fallen ``fraction`` of the way from its
    peak (after ``start``) to its final value (None: it never falls)."""
    after = steps >= start
    if not after.any():
        return None
    s, v = steps[after], loss[after]
    peak = int(np.nanargmax(v))
    top, end = float(v[peak]), float(v[-1])
    if not top > end:
        return None
    below = np.nonzero(v[peak:] <= top - fraction * (top - end))[0]
    return int(s[peak + below[0]]) if below.size else None


def phases(acc: Any) -> dict[str, int | None]:
    """``{"memorisation_end", "cleanup_start", "cleanup_end", "generalisation"}`` from the ``acc``
    group (see the module docstring; generalisation: first step with test accuracy ≥ 0.99)."""
    steps = acc.step.values
    train = acc.accuracy.sel(split="train").values
    test = acc.accuracy.sel(split="test").values
    test_loss = acc.loss.sel(split="test").values
    memorised = np.nonzero(train >= 0.99)[0]
    mem = int(steps[memorised[0]]) if memorised.size else None
    general = np.nonzero(test >= 0.99)[0]
    return {"memorisation_end": mem,
            "cleanup_start": _fall_step(steps, test_loss, mem or 0, 0.1),
            "cleanup_end": _fall_step(steps, test_loss, mem or 0, 0.9),
            "generalisation": int(steps[general[0]]) if general.size else None}


def load(store: Path, group: str) -> dict[str, Any]:
    """The three probe groups of the run, done steps only, in step order."""
    from grokscope.engine.store_view import load_group
    from grokscope.reading import done_steps

    return {p: done_steps(load_group(store, group, p)).sortby("step") for p in ("fourier", "norm", "acc")}


def plot(groups: dict[str, Any], ph: dict[str, int | None], out: Path) -> Path:
    """Losses with the phase boundaries, Gini and Σθ², and the last step's embedding Fourier norms."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    acc, fourier, norm = groups["acc"], groups["fourier"], groups["norm"]
    fig, axes = plt.subplots(1, 3, figsize=(14, 4.2))
    ax = axes[0]
    for split, colour in (("train", "tab:blue"), ("test", "tab:orange")):
        ax.plot(acc.step, acc.loss.sel(split=split), color=colour, label=f"{split} loss")
    ax.plot(fourier.step, fourier.restricted_loss, color="tab:green", label="restricted loss")
    ax.plot(fourier.step, fourier.excluded_loss_all, color="tab:red", label="excluded loss (train)")
    for key, style in (("memorisation_end", ":"), ("cleanup_start", "--"), ("cleanup_end", "-.")):
        if ph[key] is not None:
            ax.axvline(ph[key], color="k", ls=style, lw=0.8, label=key.replace("_", " "))
    ax.set_yscale("log")
    ax.set_xlabel("step")
    ax.set_title("losses and phases", fontsize=9)
    ax.legend(fontsize=7)
    ax = axes[1]
    ax.plot(fourier.step, fourier.gini_real, color="tab:purple", label="Gini of W_E Fourier norms")
    ax.plot(fourier.step, fourier.gini_readout_real, color="tab:brown", label="Gini of W_L Fourier norms")
    ax.set_ylim(0, 1)
    ax.set_xlabel("step")
    ax2 = ax.twinx()
    ax2.plot(norm.step, norm.weight_sq, color="k", lw=1, label="Σθ²")
    ax2.set_ylabel("Σθ²")
    ax.legend(fontsize=7, loc="upper left")
    ax.set_title("sparsity in the Fourier basis and total weight", fontsize=9)
    ax = axes[2]
    last = fourier.isel(step=-1)
    ax.bar(last.freq, last.fourier_norms, color="tab:gray")
    for k in np.asarray(last.key_freq):
        ax.bar([int(k)], [float(last.fourier_norms.sel(freq=int(k)))], color="tab:purple")
    ax.set_xlabel("frequency k")
    ax.set_title(f"embedding Fourier norms at step {int(last.step)} (purple: key)", fontsize=9)
    fig.tight_layout()
    path = out / "nanda.png"
    fig.savefig(path, dpi=120)
    plt.close(fig)
    return path


def _step(s: int | None, last: int) -> str:
    return f"not reached by step {last}" if s is None else str(s)


def summary(groups: dict[str, Any], ph: dict[str, int | None], s_per_1000_steps: float) -> dict[str, Any]:
    """The numbers of the table, JSON-safe."""
    last = groups["fourier"].isel(step=-1)
    acc = groups["acc"].isel(step=-1)
    return {"key_freqs": sorted(int(k) for k in np.asarray(last.key_freq)), "phases": ph,
            "last_step": int(last.step), "gini_real_last": float(last.gini_real),
            "test_acc_last": float(acc.accuracy.sel(split="test")),
            "restricted_loss_last": float(last.restricted_loss), "s_per_1000_steps": s_per_1000_steps}


def table(s: dict[str, Any], quick: bool) -> str:
    """The Markdown table "paper vs this run"."""
    ph, last = s["phases"], s["last_step"]
    rows = [
        ["key frequencies (5 largest embedding Fourier norms)", str(PAPER["key_freqs"]), str(s["key_freqs"])],
        ["memorisation ends (train accuracy ≥ 0.99)", f"≈ {PAPER['phases'][0]}", _step(ph["memorisation_end"], last)],
        ["circuit formation ends / clean-up starts (test loss 10 % down)", f"≈ {PAPER['phases'][1]}",
         _step(ph["cleanup_start"], last)],
        ["clean-up ends (test loss 90 % down)", f"≈ {PAPER['phases'][2]}", _step(ph["cleanup_end"], last)],
        ["generalisation (test accuracy ≥ 0.99)", PAPER["generalisation"], _step(ph["generalisation"], last)],
        [f"Gini of the embedding's Fourier norms at step {last}", "high (sparse)", f"{s['gini_real_last']:.3f}"],
        ["wall time per 1 000 steps here (training log)", "—", f"{s['s_per_1000_steps']:.0f} s"],
    ]
    head = "" if not quick else f"**--quick run: p = {QUICK['p']}, {QUICK['steps']} steps, for the tests — no claim.**\n\n"
    return f"# {TITLE}\n\n{head}" + markdown_table(["quantity", "paper", "this run"], rows)


def run(out: Path, quick: bool = False, threads: int = 1) -> dict[str, Any]:
    """Train (or resume) into ``out/run``, probe every checkpoint into ``out/probes.zarr``, draw the
    figure and write the table; returns ``{"files", "summary"}``."""
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    run_dir, store = out / "run", out / "probes.zarr"
    t0 = time.perf_counter()
    r = train(config(quick), run_dir, threads=threads)
    log = runs.read_log(run_dir)
    wall = float(log[-1].get("wall", math.nan))
    s_per_1000_steps = wall / max(int(log[-1]["step"]), 1) * 1e3
    probe(run_dir, store, PROBES)
    groups = load(store, run_dir.name)
    ph = phases(groups["acc"])
    s = summary(groups, ph, s_per_1000_steps)
    s["reused_training"] = r["reused"]
    s["command_s"] = time.perf_counter() - t0
    files = [plot(groups, ph, out)]
    (out / "paper_vs_run.md").write_text(table(s, quick))
    (out / "results.json").write_text(json.dumps({"name": NAME, "quick": quick, "summary": s}, indent=1))
    return {"files": [*files, out / "paper_vs_run.md", out / "results.json"], "summary": s}
