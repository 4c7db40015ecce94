"""Flags a command would not use in the combination given: named, with what is used instead.

A command never drops an option silently: where a flag given on the command line has no effect
(``report --json --out page.html``: no page is written), the command warns on stderr or, where going
on would surprise (the flag changes what is computed), refuses with a usage error.
"""

from __future__ import annotations

import click
from click.core import ParameterSource


def given(ctx: click.Context, *names: str) -> list[str]:
    """The options among ``names`` (parameter names) that the command line set, as the user spells
    them (``--out``, ``--no-regions``), in the order given."""
    out = []
    for name in names:
        if ctx.get_parameter_source(name) in (None, ParameterSource.DEFAULT):
            continue
        param = next((p for p in ctx.command.params if p.name == name), None)
        value = ctx.params.get(name)
        if isinstance(param, click.Option) and param.is_flag and param.secondary_opts and not value:
            out.append(param.secondary_opts[0])
        elif isinstance(param, click.Option):
            out.append(max(param.opts, key=len))
        else:
            out.append(name)
    return out


def _flags(flags: list[str]) -> str:
    return ", ".join(flags) + (" is" if len(flags) == 1 else " are")


def warn_ignored(ctx: click.Context, names: tuple[str, ...], why: str) -> list[str]:
    """Warn on stderr that the given ones of ``names`` are ignored, ``why`` saying with what and what is
    used instead (``"with --json (the summaries go to stdout)"``); returns those flags."""
    flags = given(ctx, *names)
    if flags:
        click.echo(f"warning: {_flags(flags)} ignored {why}", err=True)
    return flags


def refuse_ignored(ctx: click.Context, names: tuple[str, ...], why: str) -> None:
    """A usage error naming the given ones of ``names``, which would be ignored ``why``."""
    flags = given(ctx, *names)
    if flags:
        raise click.UsageError(f"{_flags(flags)} ignored {why}")


def demo_ignored(ctx: click.Context, directory, config, names: list[str]) -> None:
    """``grokscope demo``'s flags that would have no effect: the probing options with ``--metrics ''``,
    and ``--steps``/``--seed`` for a DIRECTORY whose finished run had other ones (it is re-read)."""
    from grokscope import runs

    if not names:
        warn_ignored(ctx, ("probe_steps", "scheduler", "with_report"),
                     "with --metrics '' (nothing is probed, plotted or reported)")
    try:
        train = runs.read_run_json(directory).get("train") or {}
    except runs.RunError:
        return
    finished = any(s == config.steps for s, _ in runs.list_checkpoints(directory))
    differ = [k for k in ("steps", "seed") if k in train and train[k] != getattr(config, k)]
    if finished and differ:
        warn_ignored(ctx, tuple(differ), f"for {directory}, which holds a finished demo run with "
                     + ", ".join(f"{k}={train[k]}" for k in differ)
                     + " (it is re-read as it is; pass another DIRECTORY for a new run)")
