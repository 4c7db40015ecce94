"""``grokscope demo [DIR]``: train the default preset into DIR and say what the run shows."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import click

TRAIN_THRESHOLD = 0.99
TEST_THRESHOLD = 0.95
# Cheap enough for every checkpoint of the default run (norm's tangent-space solve is not: ~5 s each).
DEMO_PROBES = ("acc", "lc", "align", "fourier")


def summarise_log(records: list[dict[str, Any]]) -> dict[str, Any]:
    """What a training log shows, from ``log.jsonl`` records.

    Returns ``{"steps": last logged step, "t_train99": first step with train acc >= 0.99,
    "t_test95": first step with test acc >= 0.95, "ratio": t_test95 / t_train99, "final_train_acc",
    "final_test_acc", "wall_s": wall time of the last record, "grokked": ratio >= 5}``; steps never
    reached are None (and ``ratio`` then None, ``grokked`` False).
    """
    if not records:
        return {"steps": None, "t_train99": None, "t_test95": None, "ratio": None, "final_train_acc": None,
                "final_test_acc": None, "wall_s": None, "grokked": False}
    last = max(records, key=lambda r: r["step"])
    from grokscope.analysis import first_logged_step

    t_mem = first_logged_step(records, "train_acc", TRAIN_THRESHOLD)
    t_grok = first_logged_step(records, "test_acc", TEST_THRESHOLD)
    ratio = None
    if t_mem is not None and t_grok is not None:
        ratio = t_grok / t_mem if t_mem > 0 else float("inf")
    return {"steps": int(last["step"]), "t_train99": t_mem, "t_test95": t_grok, "ratio": ratio,
            "final_train_acc": last.get("train_acc"), "final_test_acc": last.get("test_acc"),
            "wall_s": last.get("wall"), "grokked": ratio is not None and ratio >= 5}


def describe(summary: dict[str, Any]) -> list[str]:
    """Human-readable lines for :func:`summarise_log`'s result."""
    s = summary
    pct = lambda v: "n/a" if v is None else f"{100 * v:.1f}%"  # noqa: E731
    lines = [f"trained {s['steps']} steps in {s['wall_s'] or 0:.0f} s; final train acc "
             f"{pct(s['final_train_acc'])}, test acc {pct(s['final_test_acc'])}"]
    lines.append(f"train acc first >= 99 % at step {s['t_train99']}" if s["t_train99"] is not None
                 else "train acc never reached 99 %")
    lines.append(f"test acc first >= 95 % at step {s['t_test95']}" if s["t_test95"] is not None
                 else "test acc never reached 95 %")
    if s["ratio"] is not None:
        verdict = "grokking" if s["grokked"] else "no clear delay"
        lines.append(f"generalisation came {s['ratio']:.1f}x later than memorisation ({verdict})")
    return lines


@click.command("demo")
@click.argument("directory", required=False, type=click.Path(file_okay=False, path_type=Path),
                default=Path("runs/demo"))
@click.option("--steps", type=int, default=None, help="Train this many steps instead of the preset's.")
@click.option("--threads", type=int, default=1, show_default=True,
              help="torch threads for training (the default model is small: one thread is nearly as "
                   "fast as two on an idle machine and far faster on a busy one).")
@click.option("--metrics", default=",".join(DEMO_PROBES), show_default=True,
              help="Probes to run on the checkpoints after training ('' to skip probing and plots).")
@click.option("--scheduler", default=None, help="Dask scheduler for probing (default: a local cluster).")
@click.option("--quiet", is_flag=True, help="No progress lines on stderr.")
def demo(directory: Path, steps: int | None, threads: int, metrics: str, scheduler: str | None,
         quiet: bool) -> None:
    """Train the default preset into DIRECTORY (default runs/demo), probe every checkpoint, plot the
    probes over steps and summarise what the run shows.

    Re-running continues (or simply re-reads) an existing demo run and store.
    """
    from grokscope import runs
    from grokscope.training.cli import run
    from grokscope.training.presets import DEFAULT_PRESET, preset_config

    config = preset_config(DEFAULT_PRESET, **({"steps": steps} if steps is not None else {}))
    resume = (directory / runs.RUN_JSON).is_file()
    run(config, directory, resume=resume, threads=threads, progress=not quiet)
    click.echo(f"run folder: {directory}  (preset {DEFAULT_PRESET})")
    click.echo(f"checkpoints: {len(runs.list_checkpoints(directory))} in {directory / runs.CHECKPOINT_DIR}")
    for line in describe(summarise_log(runs.read_log(directory))):
        click.echo(line)
    names = [m for m in metrics.split(",") if m.strip()]
    if names:
        probe_and_plot(directory, names, scheduler, quiet)


def probe_and_plot(run_dir: Path, names: list[str], scheduler: str | None = None, quiet: bool = False) -> None:
    """Probe every checkpoint of ``run_dir`` with ``names`` into ``run_dir/probes.zarr``, write
    ``run_dir/plots/*.png`` and print the onsets read off the store."""
    import xarray as xr

    from grokscope.analysis import run_onsets
    from grokscope.engine.cli import report_summary, run_with_progress
    from grokscope.engine.driver import EngineConfig
    from grokscope.engine.jobs import ProbeRequest
    from grokscope.plots import iter_runs, plot_run
    from grokscope.probes import get_probe
    from grokscope.report import format_onsets

    store = run_dir / "probes.zarr"
    cfg = EngineConfig(probes=[ProbeRequest(n, get_probe(n).make_params()) for n in names], out=store,
                       scheduler=scheduler)
    summary = run_with_progress(run_dir, cfg, quiet=quiet)
    report_summary(summary)
    tree = xr.open_datatree(store, engine="zarr", consolidated=False)
    for path, node in iter_runs(tree):
        png = plot_run(node, f"{path} ({', '.join(names)})", run_dir / "plots" / "demo.png")
        click.echo(f"probe store: {store}   figure: {png}")
        for line in format_onsets(run_onsets(node)):
            click.echo(line)
    if not summary.ok:
        raise click.ClickException(f"{len(summary.failures)} probe job(s) failed (listed above)")

