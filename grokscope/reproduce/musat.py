"""``grokscope reproduce musat``: Musat, *The Geometry of Grokking*, the §7 simulation (Fig. 4).

The closed-form first-layer dynamics of :mod:`grokscope.simulate` at the paper's setting: a + b mod
37 on inputs e_a + e_b over the unordered pairs, 70 % train, 512 hidden units, η = 1e-3, 5 000
steps, float64, seed 0. Figure ``musat.png``: train and test accuracy and ‖E‖² over steps; table
``paper_vs_run.md``: the paper's description of the curve beside our numbers.
"""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any

from grokscope import runs

from .training import markdown_table

NAME = "musat"
TITLE = "Musat §7 (Fig. 4): grokking of the closed-form first-layer dynamics, a + b mod 37"
PAPER = {"p": 37, "hidden": 512, "lr": 1e-3, "steps": 5000}
QUICK = {"p": 11, "hidden": 64, "lr": 1e-3, "steps": 300}


def embedding_norms(run_dir: Path) -> tuple[list[int], list[float]]:
    """``(steps, ‖E‖²)`` over the run's checkpoints (``embed_linear.weight`` = Eᵀ)."""
    from safetensors.torch import load_file

    steps, norms = [], []
    for step, path in runs.list_checkpoints(run_dir):
        steps.append(step)
        norms.append(float((load_file(str(path))["embed_linear.weight"].double() ** 2).sum()))
    return steps, norms


def plot(run_dir: Path, out: Path) -> Path:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    log = runs.read_log(run_dir)
    fig, ax = plt.subplots(figsize=(7.5, 4.2))
    ax.plot([r["step"] for r in log], [r["test_acc"] for r in log], color="tab:orange", label="test acc")
    ax.plot([r["step"] for r in log], [r["train_acc"] for r in log], color="tab:blue", ls=":", label="train acc")
    ax.set_xlabel("step")
    ax.set_ylabel("accuracy")
    ax2 = ax.twinx()
    steps, norms = embedding_norms(run_dir)
    ax2.plot(steps, norms, color="k", lw=1, label="‖E‖²")
    ax2.set_ylabel("‖E‖²")
    ax.set_title("Musat §7 simulation: E ← E + η ΔE, W = Hᵀ(HHᵀ)⁻¹Y", fontsize=9)
    fig.legend(fontsize=8, loc="center right")
    fig.tight_layout()
    path = out / "musat.png"
    fig.savefig(path, dpi=120)
    plt.close(fig)
    return path


def _acc_at(log: list[dict], step: int) -> float:
    before = [r for r in log if r["step"] <= step]
    return float(before[-1]["test_acc"]) if before else math.nan


def table(run_dir: Path, quick: bool) -> str:
    from grokscope.analysis import first_logged_step

    log = runs.read_log(run_dir)
    steps, norms = embedding_norms(run_dir)
    t99 = first_logged_step(log, "test_acc", 0.99)
    chance = 1 / (QUICK if quick else PAPER)["p"]
    early = min(500, int(log[-1]["step"]))
    rows = [
        [f"test accuracy at step {early}", "at chance for ~500 steps", f"{_acc_at(log, early):.3f} (chance {chance:.3f})"],
        ["first step with test accuracy ≥ 0.99", "perfect by ~2 000 steps", "never" if t99 is None else str(t99)],
        ["train accuracy", "1 throughout (the readout interpolates)",
         f"min {min(r['train_acc'] for r in log):.3f} over the log"],
        ["‖E‖² at the start → largest → end", "(not quoted)",
         f"{norms[0]:.0f} → {max(norms):.0f} → {norms[-1]:.0f}"],
    ]
    head = "" if not quick else "**--quick run: p = 11, 300 steps, for the tests — no claim.**\n\n"
    return f"# {TITLE}\n\n{head}" + markdown_table(["quantity", "paper", "this run"], rows)


def run(out: Path, quick: bool = False, threads: int = 1) -> dict[str, Any]:
    """Simulate into ``out/run`` (a finished run is reused), draw the figure, write the table."""
    import torch

    from grokscope.simulate import simulate_musat

    out = Path(out)
    run_dir = out / "run"
    setting = QUICK if quick else PAPER
    log = runs.read_log(run_dir)
    if not (log and log[-1]["step"] >= setting["steps"]):
        torch.set_num_threads(threads)
        simulate_musat(run_dir, seed=0, save="log:60", eval_every="every:100" if not quick else "every:20",
                       overwrite=True, **setting)
    files = [plot(run_dir, out)]
    (out / "paper_vs_run.md").write_text(table(run_dir, quick))
    (out / "results.json").write_text(json.dumps({"name": NAME, "quick": quick, "setting": setting,
                                                  "log_last": runs.read_log(run_dir)[-1]}, indent=1))
    return {"files": [*files, out / "paper_vs_run.md", out / "results.json"]}
