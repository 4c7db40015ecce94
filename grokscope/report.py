"""``grokscope report``: onsets and phases of every run of a probe store (text or ``--json``)."""

from __future__ import annotations

import json
import math
from pathlib import Path

import click


def _fmt(v) -> str:
    if isinstance(v, dict):
        return ", ".join(f"{k}: {_fmt(x)}" for k, x in v.items())
    if isinstance(v, float):
        return "—" if math.isnan(v) else (f"{v:.0f}" if v == int(v) and abs(v) >= 1 else f"{v:.3g}")
    return str(v)


def _json_safe(v):
    """NaN → null, recursively (JSON has no NaN)."""
    if isinstance(v, dict):
        return {str(k): _json_safe(x) for k, x in v.items()}
    if isinstance(v, float) and math.isnan(v):
        return None
    return v


@click.command()
@click.argument("store", type=click.Path(exists=True, path_type=Path))
@click.option("--mem", "mem_threshold", default=0.99, show_default=True, help="Train-accuracy threshold of t_mem.")
@click.option("--grok", "grok_threshold", default=0.95, show_default=True, help="Test-accuracy threshold of t_grok.")
@click.option("--robust", "robust_threshold", default=0.5, show_default=True,
              help="Robust-accuracy threshold of t_robust(eps).")
@click.option("--json", "as_json", is_flag=True, help="Machine-readable output on stdout.")
def report(store: Path, mem_threshold: float, grok_threshold: float, robust_threshold: float, as_json: bool) -> None:
    """Onset steps (memorisation, grokking, robustness) and LC phases for every run in STORE."""
    import xarray as xr

    from grokscope.analysis import run_onsets
    from grokscope.plots import iter_runs

    tree = xr.open_datatree(store, engine="zarr", consolidated=False)
    result = {path: run_onsets(node, mem_threshold, grok_threshold, robust_threshold)
              for path, node in iter_runs(tree)}
    if as_json:
        click.echo(json.dumps(_json_safe(result), indent=2))
        return
    for path, onsets in result.items():
        click.echo(path)
        for line in format_onsets(onsets):
            click.echo(line)


def format_onsets(onsets: dict) -> list[str]:
    """One indented line per onset/phase value (NaN shown as —)."""
    return [f"  {k:16s} {_fmt(v)}" for k, v in onsets.items()]
