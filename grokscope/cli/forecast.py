"""``grokscope forecast STORE_OR_RUN``: the step at which each run should generalise, from its weight-norm
series, η and λ (:mod:`grokscope.forecast`), updated as its checkpoints arrive (``--follow``)."""

from __future__ import annotations

import json
import math
import time
from dataclasses import asdict
from pathlib import Path

import click
from grokscope.cli.probe import training_under


@click.command()
@click.argument("path", metavar="STORE_OR_RUN", type=click.Path(exists=True, path_type=Path))
@click.option("--calibration", type=click.Path(dir_okay=False, path_type=Path), default=None,
              help="The law's constants (a JSON file written by --calibrate); default: the built-in "
                   "calibration of the demo's architecture (modadd-mlp).")
@click.option("--calibrate", "calibrate_to", type=click.Path(dir_okay=False, path_type=Path), default=None,
              help="Fit the constants on the runs under STORE_OR_RUN that generalised and write them to this file.")
@click.option("--every", is_flag=True, help="One line per checkpoint's forecast (how it moved as checkpoints came).")
@click.option("--follow", is_flag=True,
              help="While a trainer is writing a run under STORE_OR_RUN, print the forecast again at every new "
                   "checkpoint; return once the trainer is gone.")
@click.option("--poll", type=click.FloatRange(0.1), default=2.0, show_default=True, help="Seconds between looks (--follow).")
@click.option("--json", "as_json", is_flag=True, help="Every run's forecasts as JSON on stdout.")
def forecast(path: Path, calibration: Path | None, calibrate_to: Path | None, every: bool, follow: bool, poll: float,
             as_json: bool) -> None:
    """Forecast the step at which each run under STORE_OR_RUN generalises (the grokking-delay law)."""
    from grokscope.forecast import (Calibration, ForecastError, builtin_calibration, calibrate, describe, forecasts,
                                    model_warning, read_run, read_runs)

    def series():
        out, problems = [], []
        for r in read_runs(path):
            try:
                out.append(read_run(r))
            except ForecastError as e:
                problems.append(str(e))
        for p in problems:
            click.echo(f"warning: {p}", err=True)
        return out

    if calibrate_to is not None:
        cal = calibrate(series())
        cal.save(calibrate_to)
        click.echo(f"calibrated on {cal.n_runs} runs: κ = {cal.kappa:.4g}, log V* = {cal.log_vstar:.4g}, "
                   f"interval ×[{math.exp(cal.q_lo):.2f}, {math.exp(cal.q_hi):.2f}] -> {calibrate_to}")
        return
    cal = Calibration.load(calibration) if calibration is not None else builtin_calibration()
    seen: dict[str, int] = {}
    while True:
        all_series = series()
        for s in all_series:
            if as_json:
                continue
            last = int(s.steps[-1])
            if seen.get(s.name) == last:
                continue
            seen[s.name] = last
            warn = model_warning(s, cal)
            if warn:
                click.echo(f"warning: {warn}", err=True)
            for line in describe(s, cal, every):
                click.echo(line)
        if as_json:
            click.echo(json.dumps({s.name: {"t_mem": s.t_mem, "t_grok": s.t_grok, "eta": s.eta, "lambda": s.lam,
                                            "forecasts": [asdict(f) for f in forecasts(s, cal)]}
                                   for s in all_series}, indent=2))
        if not follow or not _training(path):
            return
        time.sleep(poll)


def _training(path: Path) -> bool:

    return training_under(path)()
