"""What ``grokscope demo [DIR]`` runs and says: the probes and parameters of the demo, and the plain
words about a training log and the demo's timing. The command itself (train the default preset into
DIR, probe it with every probe that applies, write the figures and the report, and say what the run
shows) is :mod:`grokscope.cli.demo`.

Training runs in a child process while the probe engine probes each checkpoint as soon as it is
written (``probe_runs(..., follow=...)``): the default run saves 100 log-spaced checkpoints, most of
them in its first seconds, so the probes keep the other core busy while training goes on.

Probes of the default preset (one-hot ``a + b mod 59``, a ReLU MLP):

* ``acc``, ``lc`` (local complexity around train/test/random/boundary points), ``align`` (Jacobian
  alignment, 512 points per split instead of 1024: see ``DEMO_PARAMS``) and ``fourier`` (the
  modular-arithmetic Fourier measures) on every checkpoint;
* ``pgd`` on every checkpoint: L-inf PGD inside the dataset's box ``[0, 1]^118``. The inputs are
  one-hot pairs, so a perturbed input is no longer a pair of numbers: robust accuracy at radius ε
  measures how far the network's decision stays flat around the lattice points (the input-space
  robustness of Humayun et al.), not robustness to a meaningful change of the question (512 test
  points instead of 1024);
* ``norm`` (Musat's weight-decay geometry) on every checkpoint too: its Lanczos tangent split costs
  ~0.9 CPU-seconds a checkpoint (it was CG at ~1.7 s, hence a ``log:16`` subset before).
  ``--probe-steps norm=log:16`` still picks a subset, chosen from the preset's save schedule before
  training, so the choice does not move while the run grows;
* ``regions`` (the linear-region picture on the plane through three training points) on ``log:12``.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

TRAIN_THRESHOLD = 0.99
TEST_THRESHOLD = 0.95
DEMO_PROBES = ("acc", "lc", "align", "fourier", "pgd", "norm", "regions")
# norm on every checkpoint; the report draws region pictures at a few onsets, chosen among 12
# log-spaced stored ones
DEMO_STEPS = ("regions=log:12",)
# Half the default points for align and pgd (each split still 512 points): on the demo run's store
# computed with 1024, the means over the first 512 points stay within 1.5 % of each curve's range
# (align) and 1.5 accuracy points (pgd robust accuracy) at every checkpoint, for half the cost.
# lc keeps its 1024 (at 512, LC around random/boundary points moved by up to 10 % of their range).
DEMO_PARAMS = {"align": {"n_points": "512"}, "pgd": {"n_points": "512"}}
TIMING_FILE = "demo_timing.json"
# Seconds between store commits. A commit writes every variable of every probe group with results
# (~100 arrays here) and zarr spends ~4 ms on each write into a sharded array, whatever its size:
# committing every second (the engine's default) cost the demo's driver ~20 CPU-seconds, every 30 s
# costs ~2. A killed demo loses at most the last 30 s of probing (re-running recomputes it).
FLUSH_INTERVAL = 30.0


def summarise_log(records: list[dict[str, Any]], mem: float = TRAIN_THRESHOLD,
                  grok: float = TEST_THRESHOLD) -> dict[str, Any]:
    """What a training log shows, from ``log.jsonl`` records.

    Returns ``{"steps": last logged step, "t_mem": first step with train acc >= mem, "t_grok": first
    step with test acc >= grok, "mem", "grok": the thresholds, "ratio": t_grok / t_mem,
    "final_train_acc", "final_test_acc", "wall_s": wall time of the last record, "grokked": ratio >= 5}``;
    steps never reached are None (and ``ratio`` then None, ``grokked`` False).
    """
    from grokscope.analysis import first_logged_step

    out: dict[str, Any] = {"steps": None, "t_mem": None, "t_grok": None, "mem": mem, "grok": grok,
                           "ratio": None, "final_train_acc": None, "final_test_acc": None, "wall_s": None,
                           "grokked": False}
    if not records:
        return out
    last = max(records, key=lambda r: r["step"])
    t_mem = first_logged_step(records, "train_acc", mem)
    t_grok = first_logged_step(records, "test_acc", grok)
    ratio = None
    if t_mem is not None and t_grok is not None:
        ratio = t_grok / t_mem if t_mem > 0 else float("inf")
    out.update(steps=int(last["step"]), t_mem=t_mem, t_grok=t_grok, ratio=ratio,
               final_train_acc=last.get("train_acc"), final_test_acc=last.get("test_acc"),
               wall_s=last.get("wall"), grokked=ratio is not None and ratio >= 5)
    return out


def describe(summary: dict[str, Any]) -> list[str]:
    """Human-readable lines for :func:`summarise_log`'s result."""
    s = summary
    pct = lambda v: "n/a" if v is None else f"{100 * v:.1f}%"  # noqa: E731
    lines = [f"trained {s['steps']} steps in {s['wall_s'] or 0:.0f} s; final train acc "
             f"{pct(s['final_train_acc'])}, test acc {pct(s['final_test_acc'])}"]
    for key, split, thr in (("t_mem", "train", s["mem"]), ("t_grok", "test", s["grok"])):
        lines.append(f"{split} acc first >= {100 * thr:g} % at step {s[key]} (training log)"
                     if s[key] is not None else f"{split} acc never reached {100 * thr:g} %")
    if s["ratio"] is not None:
        verdict = "grokking" if s["grokked"] else "no clear delay"
        lines.append(f"generalisation came {s['ratio']:.1f}x later than memorisation ({verdict})")
    return lines


# Generalisation should come in the first quarter of the run, so that what follows it is seen.
WINDOW_FRACTION = 0.25


def window_lines(summary: dict[str, Any], fraction: float = WINDOW_FRACTION) -> list[str]:
    """Whether the run's window shows what follows generalisation: one line with ``t_grok / steps``,
    and a warning when it is above ``fraction`` or generalisation never came."""
    if summary.get("steps") is None:
        return []
    if summary.get("t_grok") is None:
        return [f"warning: test accuracy never reached {100 * summary['grok']:g} % in {summary['steps']} steps: "
                "onsets, lead/lag and phases after generalisation are undefined (train longer with --steps)"]
    share = summary["t_grok"] / max(summary["steps"], 1)
    line = f"generalisation at {share:.0%} of the run's {summary['steps']} steps"
    if share > fraction:
        return [line + f" (more than {fraction:.0%}: the phases after it may be cut short; train longer "
                       "with --steps)"]
    return [line + " (the rest of the window shows what follows it)"]


def load_average() -> str:
    """The 1, 5 and 15 minute load averages as "a / b / c" ("n/a" where the system has none)."""
    try:
        return " / ".join(f"{v:.2f}" for v in os.getloadavg())
    except OSError:
        return "n/a"


def cpu_seconds() -> float:
    """CPU seconds of this process so far (the probe driver, the Dask scheduler and its nannies)."""
    import resource

    r = resource.getrusage(resource.RUSAGE_SELF)
    return r.ru_utime + r.ru_stime


def training_seconds(directory: Path) -> float | None:
    from grokscope import runs

    log = runs.read_log(directory)
    return float(log[-1]["wall"]) if log and "wall" in log[-1] else None


def timing_line(timing: dict[str, Any]) -> str:
    """One line with the demo's phases (seconds) and the machine's load."""
    f = lambda k: "n/a" if timing.get(k) is None else f"{timing[k]:.0f} s"  # noqa: E731
    parts = [f"demo took {f('total_s')}"]
    if "training_s" in timing:
        parts.append(f"training {f('training_s')}")
    if timing.get("probe_seconds"):
        per = ", ".join(f"{k} {v:.0f}" for k, v in sorted(timing["probe_seconds"].items(), key=lambda kv: -kv[1]))
        parts.append(f"probes done at {f('probing_done_s')} (worker seconds: {per})")
    elif "probing_done_s" in timing:
        parts.append("nothing new to probe")
    for k, what in (("figures_s", "figures"), ("report_s", "report")):
        if k in timing:
            parts.append(f"{what} {f(k)}")
    if "figures_and_report_s" in timing:
        parts[-1] += f" (both: {f('figures_and_report_s')})"
    return "; ".join(parts) + f"; load average {timing.get('load_average_start')} -> {timing.get('load_average_end')}"
