"""GrokAlign vs. weight decay alone: steps until the test accuracy reaches a threshold.

Walker et al. (GrokAlign) report that penalising the input–output Jacobian's Frobenius norm makes
networks generalise much sooner than weight decay alone (7.56x on MNIST with CE). This script runs
the comparison with the project trainer (``grokscope train``, one process per run) on

* ``--setup mlp`` (default): a + b mod 59, one-hot pairs [e_a, e_b] (118 inputs), 40 % train, MLP
  118-256-256-59, AdamW lr 1e-3 wd 1.0, full batch, CE; the Jacobian w.r.t. the one-hot input;
* ``--setup transformer``: the ``modadd-transformer`` preset (Nanda et al., p = 113, 30 % train,
  AdamW lr 1e-3 wd 1 betas (0.9, 0.98)); the Jacobian w.r.t. the token-embedding output;

with arms ``wd`` (weight decay alone) and ``grokalign`` (``--reg grokalign:λ`` plus the same weight
decay), several seeds each (the seed sets initialisation; the train/test split is the same). Each run
is evaluated every ``--eval-every`` steps and stopped as soon as test accuracy ≥ ``--threshold`` (the
run folder keeps its log and checkpoints); a run that never gets there is reported as ``> cap``.
Prints a Markdown table and the median ratio of steps-to-threshold, and writes ``results.json``.

    python examples/grokalign_vs_wd.py --out runs/grokalign_vs_wd              # 3 seeds per arm
    python examples/grokalign_vs_wd.py --setup transformer --seeds 0 --max-steps 3000

Re-running reuses finished runs found in ``--out``. CPU heavy: run it under ``nice``.
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
import time
from dataclasses import asdict, dataclass
from pathlib import Path

from grokscope.analysis import first_logged_step
from grokscope.runs import read_log

SETUPS = {
    "mlp": ["--preset", "modadd-mlp", "--model", "mlp", "--model-kwargs", '{"depth": 2, "width": 256}',
            "--dataset-kwargs", '{"p": 59, "op": "add", "train_fraction": 0.4, "encoding": "onehot_concat"}',
            "--lr", "1e-3", "--wd", "1.0", "--batch-size", "full", "--loss", "ce"],
    "transformer": ["--preset", "modadd-transformer", "--lr", "1e-3", "--wd", "1.0", "--loss", "ce"],
}


@dataclass
class Result:
    arm: str
    seed: int
    steps_to_threshold: int | None  # None: not reached within the cap
    last_step: int
    last_test_acc: float
    wall_s: float
    run: str


def first_hit(log: list[dict], threshold: float) -> int | None:
    return first_logged_step(log, "test_acc", threshold)


def command(args, arm: str, seed: int, run: Path) -> list[str]:
    cmd = [sys.executable, "-m", "grokscope.cli", "train", *SETUPS[args.setup],
           "--steps", str(args.max_steps), "--eval-every", f"every:{args.eval_every}",
           "--save", args.save, "--seed", str(seed), "--threads", str(args.threads), "--quiet",
           "--out", str(run)]
    if arm == "grokalign":
        cmd += ["--reg", f"grokalign:{args.lam}"]
    if args.model_kwargs:
        cmd += ["--model-kwargs", args.model_kwargs]  # merged into the preset's by `grokscope train`
    return cmd


def finished(run: Path, args) -> Result | None:
    """A result from an earlier invocation, if that run reached the threshold or its cap."""
    log = read_log(run)
    hit = first_hit(log, args.threshold)
    if log and (hit is not None or log[-1]["step"] >= args.max_steps):
        return Result("", 0, hit, log[-1]["step"], log[-1]["test_acc"], log[-1].get("wall", float("nan")), str(run))
    return None


def run_all(args) -> list[Result]:
    jobs = [(arm, seed) for seed in args.seeds for arm in args.arms]
    results: list[Result] = []
    running: dict[tuple[str, int], tuple[subprocess.Popen, Path, float]] = {}
    pending = list(jobs)
    while pending or running:
        while pending and len(running) < args.jobs:
            arm, seed = pending.pop(0)
            run = args.out / f"{args.setup}{args.tag}-{arm}-seed{seed}"
            old = finished(run, args)
            if old is not None:
                old.arm, old.seed = arm, seed
                results.append(old)
                print(f"  reuse {run.name}: steps to threshold {old.steps_to_threshold}", flush=True)
                continue
            if run.exists():
                import shutil

                shutil.rmtree(run)  # an interrupted run of this script: start it again
            proc = subprocess.Popen(command(args, arm, seed, run), stdout=subprocess.DEVNULL)
            running[(arm, seed)] = (proc, run, time.perf_counter())
            print(f"  start {run.name} (pid {proc.pid})", flush=True)
        time.sleep(1.0)
        for key, (proc, run, t0) in list(running.items()):
            log = read_log(run)
            hit = first_hit(log, args.threshold)
            done = proc.poll() is not None
            if hit is None and not done:
                continue
            if not done:
                proc.terminate()  # threshold reached: stop this run early
                proc.wait()
            elif proc.returncode != 0 and hit is None:
                raise SystemExit(f"{run.name}: grokscope train failed with exit code {proc.returncode}")
            last = log[-1] if log else {"step": 0, "test_acc": float("nan"), "wall": float("nan")}
            results.append(Result(key[0], key[1], hit, last["step"], last["test_acc"],
                                  last.get("wall", round(time.perf_counter() - t0, 1)), str(run)))
            del running[key]
            print(f"  done  {run.name}: steps to threshold {hit} (last step {last['step']}, "
                  f"test acc {last['test_acc']:.3f})", flush=True)
    return sorted(results, key=lambda r: (r.arm, r.seed))


def table(results: list[Result], args) -> str:
    lines = ["| arm | seed | steps to test ≥ {:.0%} | training wall (s) |".format(args.threshold),
             "| --- | ---: | ---: | ---: |"]
    for r in results:
        steps = r.steps_to_threshold if r.steps_to_threshold is not None else f"> {r.last_step}"
        lines.append(f"| {r.arm} | {r.seed} | {steps} | {r.wall_s:.0f} |")
    return "\n".join(lines)


def summary(results: list[Result], args) -> dict:
    """Median steps-to-threshold per arm (a run that missed counts as its cap) and their ratio."""
    med = {}
    for arm in args.arms:
        steps = [r.steps_to_threshold if r.steps_to_threshold is not None else r.last_step
                 for r in results if r.arm == arm]
        misses = sum(r.steps_to_threshold is None for r in results if r.arm == arm)
        med[arm] = {"median_steps": statistics.median(steps) if steps else None, "missed": misses}
    out: dict = {"per_arm": med}
    if "wd" in med and "grokalign" in med and med["grokalign"]["median_steps"]:
        if med["grokalign"]["missed"] * 2 >= len(args.seeds):
            out["median_ratio_wd_over_grokalign"] = None  # GrokAlign's median itself is censored
        else:
            out["median_ratio_wd_over_grokalign"] = med["wd"]["median_steps"] / med["grokalign"]["median_steps"]
            out["ratio_is_lower_bound"] = med["wd"]["missed"] * 2 >= len(args.seeds)
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--setup", choices=sorted(SETUPS), default="mlp")
    ap.add_argument("--out", type=Path, default=Path("runs/grokalign_vs_wd"))
    ap.add_argument("--seeds", type=lambda s: [int(v) for v in s.split(",")], default=[0, 1, 2])
    ap.add_argument("--arms", type=lambda s: s.split(","), default=["wd", "grokalign"])
    ap.add_argument("--lam", type=float, default=1e-3, help="GrokAlign λ")
    ap.add_argument("--threshold", type=float, default=0.95)
    ap.add_argument("--max-steps", type=int, default=15000, help="cap per run")
    ap.add_argument("--eval-every", type=int, default=50)
    ap.add_argument("--save", default="log:30", help="checkpoint schedule of each run")
    ap.add_argument("--jobs", type=int, default=2, help="runs at a time")
    ap.add_argument("--threads", type=int, default=1, help="torch threads per run")
    ap.add_argument("--model-kwargs", default="", help="JSON model arguments for every run, replacing "
                    "the setup's (mlp: '{\"depth\": 2, \"width\": 256, \"bias\": false}' for a bias-free MLP)")
    ap.add_argument("--tag", default="", help="suffix of the run folder names (for variants)")
    args = ap.parse_args()
    bad = set(args.arms) - {"wd", "grokalign"}
    if bad:
        ap.error(f"unknown arms {sorted(bad)}; valid: wd, grokalign")
    args.out.mkdir(parents=True, exist_ok=True)
    print(f"setup {args.setup}: {' '.join(SETUPS[args.setup])} {args.model_kwargs} --steps {args.max_steps} "
          f"(wd arm; grokalign arm adds --reg grokalign:{args.lam})", flush=True)
    results = run_all(args)
    summ = summary(results, args)
    print(table(results, args))
    print(json.dumps(summ, indent=1))
    (args.out / f"results-{args.setup}{args.tag}.json").write_text(json.dumps(
        {"setup": args.setup, "args": {k: (str(v) if isinstance(v, Path) else v) for k, v in vars(args).items()},
         "results": [asdict(r) for r in results], "summary": summ}, indent=1))


if __name__ == "__main__":
    main()
