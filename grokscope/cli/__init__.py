"""The ``grokscope`` command. Sub-commands live beside the code they drive and are imported only
when used, so ``grokscope --help`` stays fast (no torch/dask import)."""

from __future__ import annotations

import importlib
import json
from typing import Any

import click
from grokscope.errors import GrokscopeError

COMMANDS = {
    "demo": ("grokscope.cli.demo:demo", "Train the default preset, probe it and plot what it shows."),
    "train": ("grokscope.cli.train:train", "Train a model and save log-spaced checkpoints."),
    "forecast": ("grokscope.cli.forecast:forecast", "When will this run grok? The delay law on its weight-norm series."),
    "init": ("grokscope.cli.init:init", "Write run.json for a folder of third-party checkpoints."),
    "scan": ("grokscope.cli.scan:scan", "Audit the checkpoints under a path."),
    "probes": ("grokscope.cli.probes:probes", "List the available probes, parameters and outputs."),
    "probe": ("grokscope.cli.probe:probe", "Run probes over checkpoints into a Zarr store."),
    "simulate": ("grokscope.cli.simulate:simulate", "Closed-form dynamics (Musat) written as a run."),
    "plot": ("grokscope.cli.plot:plot", "Plot a probe store over steps."),
    "export": ("grokscope.cli.export:export", "Every scalar of a probe store, at its own step, to TensorBoard or W&B."),
    "report": ("grokscope.cli.report:report", "One self-contained HTML page (or --json) about a probe store."),
    "llc-sweep": ("grokscope.cli.llc_sweep:llc_sweep", "Try llc step sizes and localisations on one checkpoint; plot the traces."),
    "regions": ("grokscope.cli.regions:regions", "Draw linear regions on the plane through three training points."),
    "reproduce": ("grokscope.cli.reproduce:reproduce", "A paper's headline result in one command (--list)."),
}


def json_object(text: str | None, what: str) -> dict[str, Any] | None:
    """Parse an option's JSON object (``--model-kwargs '{"width": 64}'``); None stays None.

    Raises ``click.BadParameter`` naming ``what`` for invalid JSON or a non-object.
    """
    if text is None:
        return None
    try:
        value = json.loads(text)
    except ValueError as e:
        raise click.BadParameter(f"{what} is not valid JSON ({e}): {text!r}") from None
    if not isinstance(value, dict):
        raise click.BadParameter(f"{what} must be a JSON object like '{{\"width\": 64}}', got {text!r}")
    return value


class LazyGroup(click.Group):
    """A click group whose sub-commands are imported on first use; a :class:`GrokscopeError` raised by
    any of them ends as one line (``Error: ...``) and exit code 1."""

    def invoke(self, ctx: click.Context) -> Any:

        try:
            return super().invoke(ctx)
        except GrokscopeError as e:
            raise click.ClickException(str(e)) from None

    def list_commands(self, ctx: click.Context) -> list[str]:
        return sorted(COMMANDS)

    def get_command(self, ctx: click.Context, name: str) -> click.Command | None:
        if name not in COMMANDS:
            return None
        module, attr = COMMANDS[name][0].split(":")
        try:
            return getattr(importlib.import_module(module), attr)
        except (ImportError, AttributeError) as e:
            raise click.ClickException(f"command {name!r} is not available: {e}") from e

    def format_commands(self, ctx: click.Context, formatter: click.HelpFormatter) -> None:
        with formatter.section("Commands"):
            formatter.write_dl([(n, COMMANDS[n][1]) for n in sorted(COMMANDS)])


@click.group(cls=LazyGroup, context_settings={"help_option_names": ["-h", "--help"],
                                              "auto_envvar_prefix": "GROKSCOPE"})
@click.version_option(package_name="grokscope")
def main() -> None:
    """grokscope: see why and when a network groks, from its saved checkpoints."""


if __name__ == "__main__":
    main()
