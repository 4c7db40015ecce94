"""Training runs of the reproductions: train a config into a folder in a child process, reuse a
finished run, resume an interrupted one, and optionally stop as soon as a logged metric reaches a
threshold (GrokAlign's "steps to 85 % test accuracy")."""

from __future__ import annotations

import multiprocessing
import sys
from pathlib import Path
from typing import Any

from grokscope import runs
from grokscope.analysis import first_logged_step
from grokscope.errors import GrokscopeError
from grokscope.reproduce import ReproduceError
from grokscope.api import probe as run_probes


def _child(config: Any, directory: str, resume: bool, threads: int) -> None:
    """Body of the training process: ``train_run``; a domain error ends it with one line and exit 1."""
    import torch

    from grokscope.training.trainer import train_run

    if threads:
        torch.set_num_threads(threads)
    try:
        train_run(config, Path(directory), resume=resume, progress=False)
    except GrokscopeError as e:
        print(f"Error: {e}", file=sys.stderr)
        raise SystemExit(1) from None


def stop_step(directory: Path, stop: tuple[str, float] | None) -> int | None:
    """The first logged step of ``directory`` whose ``stop[0]`` is ``>= stop[1]`` (None: not yet / no stop)."""
    if stop is None:
        return None
    return first_logged_step(runs.read_log(directory), stop[0], stop[1])


def is_done(config: Any, directory: Path, stop: tuple[str, float] | None = None) -> bool:
    """Whether ``directory`` holds this run finished: its last step logged, or the stop reached."""
    log = runs.read_log(directory)
    return bool(log) and (log[-1]["step"] >= config.steps or stop_step(directory, stop) is not None)


def train(config: Any, directory: Path, stop: tuple[str, float] | None = None, threads: int = 1,
          echo: bool = True) -> dict[str, Any]:
    """Train ``config`` into ``directory`` (resuming what is there; a finished run is only re-read).
    A run of another configuration in ``directory`` is refused, naming the fields that differ.

    With ``stop = (log key, threshold)`` the child is terminated once a log record reaches the
    threshold. Returns ``{"steps": last logged step, "stop_step": first step at the threshold or
    None, "wall_s": training wall seconds of the log, "reused": bool}``.
    """
    from grokscope.training.trainer import config_differences

    directory = Path(directory)
    if (directory / runs.RUN_JSON).is_file():
        diff = config_differences(config, directory)
        if diff:
            raise ReproduceError(f"{directory} holds a run of another configuration (another --out, or "
                                 f"remove the folder):\n  " + "\n  ".join(diff))
    reused = is_done(config, directory, stop)
    if not reused:
        resume = (directory / runs.RUN_JSON).is_file()
        if echo:
            print(f"training {directory} ({'resuming' if resume else 'new run'}, {config.steps} steps"
                  + (f", stop at {stop[0]} >= {stop[1]}" if stop else "") + ")", file=sys.stderr)
        proc = multiprocessing.get_context("spawn").Process(
            target=_child, args=(config, str(directory), resume, threads), daemon=True)
        proc.start()
        try:
            while proc.is_alive():
                proc.join(1.0)
                if stop is not None and stop_step(directory, stop) is not None:
                    break
        finally:
            if proc.is_alive():
                proc.terminate()
                proc.join()
        if proc.exitcode not in (0, None) and not is_done(config, directory, stop):
            raise ReproduceError(f"training into {directory} failed (exit code {proc.exitcode})")
    log = runs.read_log(directory)
    hit = stop_step(directory, stop)
    wall = next((r.get("wall") for r in log if r["step"] == hit), None) if hit is not None else None
    return {"steps": int(log[-1]["step"]), "stop_step": hit,
            "wall_s": float(wall if wall is not None else log[-1].get("wall", float("nan"))), "reused": reused}


def probe(run_dir: Path, store: Path, requests: dict[str, tuple[dict[str, str], str | None]]) -> Any:
    """Probe ``run_dir`` into ``store`` with ``{probe: (params as text, steps spec or None)}`` on the
    local Dask cluster (resumable: what the store has is not recomputed). Returns the engine's Summary;
    a failed job raises :class:`ReproduceError` listing them."""

    summary = run_probes(run_dir, {n: p for n, (p, _) in requests.items()}, out=store,
                         steps={n: steps for n, (_, steps) in requests.items()}, flush_interval=30.0)
    if summary.failures:
        raise ReproduceError(f"{len(summary.failures)} probe job(s) on {run_dir} failed:\n  "
                                   + "\n  ".join(f.line() for f in summary.failures[:10]))
    return summary


def markdown_table(header: list[str], rows: list[list[Any]]) -> str:
    """A Markdown table (cells as given, ``str()``-ed)."""
    lines = ["| " + " | ".join(header) + " |", "| " + " | ".join("---" for _ in header) + " |"]
    lines += ["| " + " | ".join(str(c) for c in row) + " |" for row in rows]
    return "\n".join(lines) + "\n"
