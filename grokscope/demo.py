"""``grokscope demo [DIR]``: train the default preset into DIR, probe it with every probe that applies,
write the figures and the report, and say what the run shows.

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

import json
import os
import sys
import time
from pathlib import Path
from typing import Any

import click

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


def probe_selections(names: list[str], steps_options: tuple[str, ...], save_steps: list[int]
                     ) -> dict[str, str | None]:
    """``{probe: explicit step list or None (all)}``: the ``[PROBE=]SPEC`` options (as for
    ``grokscope probe --steps``) resolved against the run's planned ``save_steps``, so that a
    ``log:N`` choice is the same while the run is still being written as at its end."""
    from grokscope.cli.engine import parse_steps_options
    from grokscope.engine.selection import parse_selection, select_steps

    out: dict[str, str | None] = {}
    for name, spec in parse_steps_options(steps_options, names).items():
        if spec is None or parse_selection(spec).kind == "all":
            out[name] = None
        else:
            chosen, _ = select_steps(spec, save_steps)
            out[name] = ",".join(map(str, chosen))
    return out


def load_average() -> str:
    try:
        return " / ".join(f"{v:.2f}" for v in os.getloadavg())
    except OSError:
        return "n/a"


def _train_child(config: Any, directory: str, resume: bool, threads: int, progress: bool) -> None:
    """Body of the training process: ``cli.train.run`` with its errors shown the CLI's way."""
    from grokscope.cli.train import run

    try:
        run(config, Path(directory), resume=resume, threads=threads, progress=progress)
    except click.ClickException as e:
        e.show()
        sys.exit(1)


class _Status:
    """Progress lines for the probing that runs beside training (at most one every ``every`` s)."""

    def __init__(self, quiet: bool, total: int, every: float = 5.0):
        self.quiet, self.total, self.every = quiet, total, every
        self.last = time.monotonic()

    def update(self, n: int, done: int, failed: int, rate: float) -> None:
        now = time.monotonic()
        if self.quiet or (now - self.last < self.every and done < self.total):
            return
        self.last = now
        fail = f", {failed} failed" if failed else ""
        click.echo(f"probing: {done}/{self.total} jobs{fail}, {rate:.1f} jobs/s", err=True)


@click.command("demo")
@click.argument("directory", required=False, type=click.Path(file_okay=False, path_type=Path),
                default=Path("runs/demo"))
@click.option("--steps", type=int, default=None, help="Train this many steps instead of the preset's.")
@click.option("--seed", type=int, default=None,
              help="Seed of the initialisation and data order instead of the preset's (0); the split stays.")
@click.option("--threads", type=int, default=1, show_default=True,
              help="torch threads for training (the default model is small: one thread is nearly as "
                   "fast as two on an idle machine and far faster on a busy one).")
@click.option("--metrics", default=",".join(DEMO_PROBES), show_default=True,
              help="Probes to run on the checkpoints ('' to skip probing, figures and report).")
@click.option("--probe-steps", "probe_steps", multiple=True, metavar="[PROBE=]SPEC",
              help="Which checkpoints a probe visits, as `grokscope probe --steps` (all, log:N, every:K, "
                   f"0,10,100), taken from the preset's save schedule (repeatable; default: "
                   f"{' '.join(DEMO_STEPS) or 'all'}).")
@click.option("--scheduler", default=None,
              help="Dask scheduler for probing (default: a local cluster; 'sync' in this process).")
@click.option("--report/--no-report", "with_report", default=True, show_default=True,
              help="Write DIRECTORY/report.html.")
@click.option("--quiet", is_flag=True, help="No progress lines on stderr.")
def demo(directory: Path, steps: int | None, seed: int | None, threads: int, metrics: str,
         probe_steps: tuple[str, ...],
         scheduler: str | None, with_report: bool, quiet: bool) -> None:
    """Train the default preset into DIRECTORY (default runs/demo) and, while it trains, probe every
    checkpoint with acc, lc, align, fourier, pgd and norm (regions on a log-spaced subset); then write the
    figures (DIRECTORY/plots), the report (DIRECTORY/report.html) and the onset summary.

    Re-running continues (or simply re-reads) an existing demo run and store.
    """
    from grokscope import runs
    from grokscope.training.presets import DEFAULT_PRESET, preset_config
    from grokscope.training.schedule import parse_schedule

    t0 = time.perf_counter()
    overrides = {k: v for k, v in (("steps", steps), ("seed", seed)) if v is not None}
    config = preset_config(DEFAULT_PRESET, **overrides)
    names = [m.strip() for m in metrics.split(",") if m.strip()]
    from grokscope.cli.ignored import demo_ignored

    demo_ignored(click.get_current_context(), directory, config, names)
    save_steps = parse_schedule(config.save, config.steps)
    if not probe_steps:  # the defaults of the probes that run
        probe_steps = tuple(s for s in DEMO_STEPS if s.partition("=")[0] in names)
    try:
        selections = probe_selections(names, probe_steps, save_steps) if names else {}
    except click.BadParameter as e:
        raise click.BadParameter(e.message, param_hint="--probe-steps") from None
    timing: dict[str, Any] = {"load_average_start": load_average()}

    finished = any(s == config.steps for s, _ in runs.list_checkpoints(directory))
    proc = None
    if not finished:
        import multiprocessing

        resume = (directory / runs.RUN_JSON).is_file()
        proc = multiprocessing.get_context("spawn").Process(
            target=_train_child, args=(config, str(directory), resume, threads, not quiet), daemon=True)
        proc.start()
    try:
        summary = None
        if names:
            summary = _probe(directory, names, selections, scheduler, quiet, proc, len(save_steps))
            timing["probing_done_s"] = time.perf_counter() - t0
            timing["probe_seconds"] = summary.seconds_by_probe
            timing["driver_cpu_s"] = _cpu_seconds()
        if proc is not None:
            proc.join()
            timing["training_s"] = _training_seconds(directory)
            if proc.exitcode != 0:
                raise click.ClickException(f"training into {directory} failed (exit code {proc.exitcode}; "
                                           "its error is above)")
    finally:
        if proc is not None and proc.is_alive():
            proc.terminate()
            proc.join()

    click.echo(f"run folder: {directory}  (preset {DEFAULT_PRESET})")
    click.echo(f"checkpoints: {len(runs.list_checkpoints(directory))} in {directory / runs.CHECKPOINT_DIR}")
    from grokscope.analysis import grok_threshold_for

    grok = grok_threshold_for(runs.read_run_json(directory).get("dataset"))  # the report's threshold
    log_summary = summarise_log(runs.read_log(directory), grok=grok)
    for line in describe(log_summary) + window_lines(log_summary):
        click.echo(line)
    if summary is None:
        return
    from grokscope.cli.engine import report_summary

    report_summary(summary)
    store = directory / "probes.zarr"
    click.echo(f"probe store: {store}")
    for n in names:
        params = " ".join(f"{k}={v}" for k, v in (DEMO_PARAMS.get(n) or {}).items())
        where = "every checkpoint" if selections[n] is None else f"steps {selections[n]}"
        click.echo(f"  {n}: {where}" + (f" ({params}; default params otherwise)" if params else ""))
    _figures_and_report(store, directory, with_report, timing)
    timing["total_s"] = time.perf_counter() - t0
    timing["load_average_end"] = load_average()
    (directory / TIMING_FILE).write_text(json.dumps(timing, indent=2))
    click.echo(timing_line(timing))
    if not summary.ok:
        raise click.ClickException(f"{len(summary.failures)} probe job(s) failed (listed above)")


def _cpu_seconds() -> float:
    """CPU seconds of this process so far (the probe driver, the Dask scheduler and its nannies)."""
    import resource

    r = resource.getrusage(resource.RUSAGE_SELF)
    return r.ru_utime + r.ru_stime


def _training_seconds(directory: Path) -> float | None:
    from grokscope import runs

    log = runs.read_log(directory)
    return float(log[-1]["wall"]) if log and "wall" in log[-1] else None


def _probe(directory: Path, names: list[str], selections: dict[str, str | None], scheduler: str | None,
           quiet: bool, proc: Any, n_saves: int):
    """Probe ``directory`` into ``directory/probes.zarr``, following the training process ``proc``
    (None: the run is complete) until it exits. Returns the engine's Summary."""
    from grokscope import runs
    from grokscope.cli.engine import run_with_progress
    from grokscope.engine.driver import EngineConfig
    from grokscope.engine.jobs import ProbeRequest
    from grokscope.probes import get_probe

    cfg = EngineConfig(probes=[ProbeRequest(n, get_probe(n).make_params(DEMO_PARAMS.get(n)), selections[n])
                               for n in names],
                       out=directory / "probes.zarr", scheduler=scheduler, flush_interval=FLUSH_INTERVAL)
    if proc is None:
        return run_with_progress(directory, cfg, quiet=quiet)
    while not (runs.list_checkpoints(directory) and (directory / runs.RUN_JSON).is_file()):
        if not proc.is_alive():
            raise click.ClickException(f"training into {directory} failed before its first checkpoint "
                                       f"(exit code {proc.exitcode}; its error is above)")
        time.sleep(0.1)
    total = sum(n_saves if selections[n] is None else len(selections[n].split(",")) for n in names)
    status = _Status(quiet, total)
    if not quiet:
        click.echo(f"probing each checkpoint as it is written: {', '.join(names)} ({total} jobs)", err=True)
    return run_with_progress(directory, cfg, progress=status.update, follow=proc.is_alive, poll=1.0)


def _plot(store: str, out: str) -> tuple[list[str], float]:
    """``plot_store(store, out)`` (in a worker process): the figure paths and the seconds it took."""
    from grokscope.plots import plot_store

    t = time.perf_counter()
    return [str(p) for p in plot_store(Path(store), Path(out))], time.perf_counter() - t


def _figures_and_report(store: Path, directory: Path, with_report: bool, timing: dict[str, Any]) -> None:
    """Write the figures (``directory/plots``) and the report (``directory/report.html``) of ``store``
    — side by side, the figures in a second process: each takes one core for several seconds — and
    print the plain-words summary of every run and the paths."""
    import multiprocessing
    from concurrent.futures import ProcessPoolExecutor

    from grokscope.analysis import run_summary
    from grokscope.reading import open_store
    from grokscope.plots import iter_runs
    from grokscope.report import describe_run, write_report

    t0 = time.perf_counter()
    with ProcessPoolExecutor(1, mp_context=multiprocessing.get_context("spawn")) as pool:
        figures = pool.submit(_plot, str(store), str(directory / "plots"))
        t = time.perf_counter()
        sums = {path: run_summary(node) for path, node in iter_runs(open_store(store))}
        for path, summary in sums.items():
            click.echo(f"what {path} shows:")
            for line in describe_run(summary):
                click.echo(f"  {line}")
        timing["summary_s"] = time.perf_counter() - t
        html = None
        if with_report:
            t = time.perf_counter()
            html = write_report(store, directory / "report.html", summaries=sums)
            timing["report_s"] = time.perf_counter() - t
        paths, timing["figures_s"] = figures.result()
    timing["figures_and_report_s"] = time.perf_counter() - t0
    click.echo("figures: " + ", ".join(paths))
    if html is not None:
        click.echo(f"report: {html}")


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
        parts[-1] += f" (side by side: {f('figures_and_report_s')})"
    return "; ".join(parts) + f"; load average {timing.get('load_average_start')} -> {timing.get('load_average_end')}"
