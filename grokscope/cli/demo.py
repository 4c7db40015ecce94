"""``grokscope demo [DIR]``: train the default preset into DIR, probe it with every probe that applies,
write the figures and the report, and say what the run shows (what runs, and why, is the docstring of
:mod:`grokscope.demo`).

Training runs in a child process while the probe engine probes each checkpoint as soon as it is
written (``probe_runs(..., follow=...)``). The figures are drawn once, in a second process beside the
onset summary, and the report embeds those same files.
"""

from __future__ import annotations

import json
import sys
import time
from pathlib import Path
from typing import Any

import click

from grokscope.demo import (DEMO_PARAMS, DEMO_PROBES, DEMO_STEPS, FLUSH_INTERVAL, TIMING_FILE, cpu_seconds,
                            describe, load_average, summarise_log, timing_line, training_seconds,
                            window_lines)
from grokscope.api import probe_config
from grokscope.cli.ignored import demo_ignored
from grokscope.cli.probe import parse_steps_options, report_summary, run_with_progress
from grokscope.cli.train import run
from grokscope.engine.selection import parse_selection, select_steps
from grokscope.training.schedule import parse_schedule


def probe_selections(names: list[str], steps_options: tuple[str, ...], save_steps: list[int]
                     ) -> dict[str, str | None]:
    """``{probe: explicit step list or None (all)}``: the ``[PROBE=]SPEC`` options (as for
    ``grokscope probe --steps``) resolved against the run's planned ``save_steps``, so that a
    ``log:N`` choice is the same while the run is still being written as at its end."""

    out: dict[str, str | None] = {}
    for name, spec in parse_steps_options(steps_options, names).items():
        if spec is None or parse_selection(spec).kind == "all":
            out[name] = None
        else:
            chosen, _ = select_steps(spec, save_steps)
            out[name] = ",".join(map(str, chosen))
    return out


def _train_child(config: Any, directory: str, resume: bool, threads: int, progress: bool) -> None:
    """Body of the training process: ``cli.train.run`` with its errors shown the CLI's way."""

    try:
        run(config, Path(directory), resume=resume, threads=threads, progress=progress)
    except click.ClickException as e:
        e.show()
        sys.exit(1)


class _Status:
    """Progress lines for the probing that runs beside training (at most one every ``every`` s)."""

    def __init__(self, quiet: bool, total: int, every: float = 5.0, run_dir: Path | None = None):
        self.quiet, self.total, self.every, self.run_dir = quiet, total, every, run_dir
        self.last = time.monotonic()
        self.forecast = ""

    def update(self, n: int, done: int, failed: int, rate: float) -> None:
        now = time.monotonic()
        if self.quiet or (now - self.last < self.every and done < self.total):
            return
        self.last = now
        fail = f", {failed} failed" if failed else ""
        click.echo(f"probing: {done}/{self.total} jobs{fail}, {rate:.1f} jobs/s", err=True)
        if self.run_dir is not None:  # the grokking forecast, updated as checkpoints arrive
            from grokscope.forecast import live_line

            line = live_line(self.run_dir)
            if line and line != self.forecast:
                self.forecast = line
                click.echo(line, err=True)


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

    t0 = time.perf_counter()
    overrides = {k: v for k, v in (("steps", steps), ("seed", seed)) if v is not None}
    config = preset_config(DEFAULT_PRESET, **overrides)
    names = [m.strip() for m in metrics.split(",") if m.strip()]

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
            timing["driver_cpu_s"] = cpu_seconds()
        if proc is not None:
            proc.join()
            timing["training_s"] = training_seconds(directory)
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


def _probe(directory: Path, names: list[str], selections: dict[str, str | None], scheduler: str | None,
           quiet: bool, proc: Any, n_saves: int):
    """Probe ``directory`` into ``directory/probes.zarr``, following the training process ``proc``
    (None: the run is complete) until it exits. Returns the engine's Summary."""
    from grokscope import runs

    cfg = probe_config({n: DEMO_PARAMS.get(n) for n in names}, directory / "probes.zarr", selections,
                       scheduler=scheduler, flush_interval=FLUSH_INTERVAL)
    if proc is None:
        return run_with_progress(directory, cfg, quiet=quiet)
    while not (runs.list_checkpoints(directory) and (directory / runs.RUN_JSON).is_file()):
        if not proc.is_alive():
            raise click.ClickException(f"training into {directory} failed before its first checkpoint "
                                       f"(exit code {proc.exitcode}; its error is above)")
        time.sleep(0.1)
    total = sum(n_saves if selections[n] is None else len(selections[n].split(",")) for n in names)
    status = _Status(quiet, total, run_dir=directory)
    if not quiet:
        click.echo(f"probing each checkpoint as it is written: {', '.join(names)} ({total} jobs)", err=True)
    return run_with_progress(directory, cfg, progress=status.update, follow=proc.is_alive, poll=1.0)


def _plot(store: str, out: str) -> tuple[list[str], float]:
    """``plot_store(store, out)`` (in a worker process): the figure paths and the seconds it took."""
    from grokscope.plots import plot_store

    t = time.perf_counter()
    return [str(p) for p in plot_store(Path(store), Path(out))], time.perf_counter() - t


def _figures_and_report(store: Path, directory: Path, with_report: bool, timing: dict[str, Any]) -> None:
    """Write the figures (``directory/plots``, in a second process: it takes one core for several
    seconds) while this process prints the plain-words summary of every run; then the report
    (``directory/report.html``), which embeds those figure files instead of drawing them again."""
    import multiprocessing
    from concurrent.futures import ProcessPoolExecutor

    from grokscope.analysis import run_summary
    from grokscope.plots import iter_runs
    from grokscope.reading import open_store
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
        paths, timing["figures_s"] = figures.result()
    html = None
    if with_report:
        t = time.perf_counter()
        # plot_store's files: one run's own figures, or (several runs) the overlay of them all
        drawn = {next(iter(sums)) if len(sums) == 1 else None: [Path(p) for p in paths]}
        html = write_report(store, directory / "report.html", summaries=sums, drawn=drawn)
        timing["report_s"] = time.perf_counter() - t
    timing["figures_and_report_s"] = time.perf_counter() - t0
    click.echo("figures: " + ", ".join(paths))
    if html is not None:
        click.echo(f"report: {html}")
