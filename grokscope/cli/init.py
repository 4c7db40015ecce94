"""``grokscope init``: write run.json for a folder of third-party checkpoints (and import their log)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import click

from .locations import LOCATION, open_location, storage_options_option
from .spec_options import cli_spec, cli_trust, remember_vouched, spec_options, workspace_option
from grokscope.cli.ignored import warn_ignored
from grokscope.runlog import LogError, find_log, import_log
from grokscope.runlog import write_log


@click.command()
@click.argument("path", type=LOCATION)
@spec_options
@click.option("--force", is_flag=True, help="Replace an existing run.json (and imported log.jsonl).")
@click.option("--log", "log_path", type=click.Path(exists=True, dir_okay=False, path_type=Path), default=None,
              help="The run's own evaluation log to import into PATH/log.jsonl (default: a trainer_state.json "
                   "or a single metrics.csv found in PATH).")
@click.option("--log-format", type=click.Choice(["hf", "lightning", "jsonl", "csv", "text"]), default=None,
              help="Format of --log (default: from its name; text with --log-pattern).")
@click.option("--log-pattern", default=None, metavar="REGEX",
              help="--log is the printed output of a training script: a regular expression matched on each "
                   "line, whose named groups are the values, e.g. 'step (?P<step>\\d+).*test acc "
                   "(?P<test_acc>[\\d.]+)'.")
@click.option("--log-columns", default=None, metavar="NAME=COLUMN[,...]",
              help="The log's names for train_acc, test_acc, train_loss, test_loss, e.g. test_acc=val/acc.")
@click.option("--log-step", default="step", show_default=True, help="The log's step column.")
@click.option("--steps-per-epoch", type=click.IntRange(min=1), default=None, metavar="N",
              help="The numbers in the checkpoint names count epochs (ckpt_{epoch}.pth): each is N steps "
                   "(the optimiser steps of one epoch), so checkpoint k is step k*N, on the log's axis.")
@workspace_option
@storage_options_option
def init(path: Path, model: str | None, model_kwargs: str | None, dataset: str | None,
         dataset_kwargs: str | None, dataset_seed: int, loss: str | None, trust_code: str | None,
         force: bool, log_path: Path | None, log_format: str | None, log_pattern: str | None,
         log_columns: str | None, log_step: str, steps_per_epoch: int | None, workspace: Path | None,
         storage_options: str | None = None) -> None:
    """Write PATH/run.json (or DIR/run.json with --workspace DIR) for a folder of third-party
    checkpoints.

    The first checkpoint found is loaded into the model and run on two points of the data as a check
    (grokscope.engine.model_check: one line for a key or shape mismatch, rejected inputs, or an
    output that is not (n, n_classes) logits), so a wrong --model or --dataset is caught now rather
    than by every probe job. The run's own evaluation log, if any, is imported into PATH/log.jsonl (or
    DIR/log.jsonl), so that `report` can use it and `probe` can check the split against it. A
    LightningModule class given as --model is built from the hyper_parameters its checkpoints saved.
    """
    from grokscope import runs as runfmt

    from grokscope.engine.discovery import DiscoveryError, checkpoints_in, find_runs
    from grokscope.engine.loading import CheckpointError

    path = open_location(path, storage_options)
    remote = not isinstance(path, Path)
    if remote and workspace is None:
        raise click.UsageError(f"{path} is at a URL: init writes run.json into a local folder that names it, "
                               "--workspace DIR (then probe DIR)")
    if model is None and not remote:
        model = _hf_default(path)
    if model is None or dataset is None:
        raise click.UsageError("grokscope init needs --model and --dataset")
    home = workspace if workspace is not None else path  # where grokscope's files go
    target = home / runfmt.RUN_JSON
    if target.exists() and not force:
        raise click.ClickException(f"{target} exists (pass --force to replace it)")
    _refuse_unwritable(home, path, workspace)
    trust = cli_trust(model, dataset, trust_code)
    spec = cli_spec(model, model_kwargs, dataset, dataset_kwargs, dataset_seed, loss, trust, path)
    assert spec is not None
    ck_dir = runfmt.checkpoint_dir(path)
    from grokscope.engine.hub_cache import hub_checkpoints, is_hub_repo

    ckpts, problems = hub_checkpoints(path) if is_hub_repo(path) else checkpoints_in(ck_dir, path)
    from grokscope.engine.discovery import epochs_to_steps

    ckpts = epochs_to_steps(ckpts, {runfmt.STEPS_PER_EPOCH_KEY: steps_per_epoch})
    if not ckpts:
        try:
            below = [r.rel for r in find_runs(path) if r.path != path]
        except DiscoveryError:
            below = []
        where = f" (runs below it: {', '.join(below)}; init each of them)" if below else ""
        why = f"; {problems[0].path}: {problems[0].reason}" if problems else ""
        raise click.ClickException(f"{path}: no checkpoints with a step here{where}{why}")
    from grokscope.engine.model_check import ModelCheckError, check_model

    try:
        check_model(spec, ckpts[0], trust, "--model")
    except (ModelCheckError, CheckpointError) as e:
        raise click.ClickException(str(e)) from e
    records = (None if remote and log_path is None else  # a remote folder's own log: give it as --log
               _import_log(path, log_path, log_format, log_columns, log_step, force, home, log_pattern))
    if records is None and log_path is None:
        warn_ignored(click.get_current_context(), ("log_format", "log_pattern", "log_columns", "log_step"),
                     f"without a log (no --log given, and no trainer_state.json or metrics.csv found in {path})")
    try:
        home.mkdir(parents=True, exist_ok=True)
        runfmt.write_run_json(home, spec["model"], spec["dataset"], spec["train"],
                              checkpoints=ck_dir.absolute() if workspace is not None else None,
                              steps_per_epoch=steps_per_epoch)
        if records is not None:
            src, n, recs = records
            click.echo(f"imported {n} evaluation record(s) from {src} into {write_log(home, recs)}", err=True)
    except OSError as e:
        raise click.ClickException(_unwritable_words(home, path, workspace, e)) from None
    click.echo(f"wrote {target}: {len(ckpts)} checkpoints, steps {ckpts[0].step}..{ckpts[-1].step}; "
               f"{ckpts[0].label} loads into {spec['model'].get('factory') or spec['model'].get('arch')}",
               err=True)
    if steps_per_epoch:
        click.echo(f"  the numbers in the checkpoint names are epochs of {steps_per_epoch} steps "
                   "(--steps-per-epoch)", err=True)
    elif _counts_like_epochs(ckpts):
        click.echo(f"  steps {ckpts[0].step}..{ckpts[-1].step} are the numbers in the names, one apart: if they "
                   "count epochs, run init again with --force --steps-per-epoch N (N optimiser steps per "
                   "epoch) so that onsets and the log use steps", err=True)
    for p in problems:
        click.echo(f"  skipped {p.path}: {p.reason}", err=True)
    remember_vouched(model, dataset, home)


def _counts_like_epochs(ckpts: list[Any]) -> bool:
    """Whether the steps of ``ckpts`` came from their names and run 0, 1, 2, ... (or 1, 2, ...) one
    apart, as a per-epoch save does (``ckpt_{epoch}.pth``)."""
    steps = [c.step for c in ckpts if getattr(c, "step_source", "") == "name"]
    return (len(steps) == len(ckpts) >= 3 and steps[0] in (0, 1)
            and all(b - a == 1 for a, b in zip(steps, steps[1:])))


def _unwritable_words(home: Path, path: Path, workspace: Path | None, e: OSError) -> str:
    fix = ("choose a --workspace DIR you can write" if workspace is not None else
           f"keep grokscope's files in a folder you can write: grokscope init {path} --workspace DIR ... "
           "(PATH is then only read; `grokscope probe DIR` uses it)")
    return f"{home}: cannot write grokscope's run.json there ({e.strerror or e}); {fix}"


def _refuse_unwritable(home: Path, path: Path, workspace: Path | None) -> None:
    """One line naming ``home`` and the fix (``--workspace``) when run.json cannot be written there,
    before anything is imported or loaded."""
    import tempfile

    folder = home
    while not folder.exists() and folder.parent != folder:
        folder = folder.parent
    try:
        with tempfile.TemporaryFile(dir=folder):
            pass
    except OSError as e:
        raise click.ClickException(_unwritable_words(home, path, workspace, e)) from None


def _hf_default(path: Path) -> str | None:
    """``"hf"`` when ``path`` holds a Hugging Face ``config.json`` (one naming a ``model_type`` or
    ``architectures``; :func:`grokscope.models.hf.find_config`), said on stderr; else None."""
    from grokscope.models.hf import HFError, find_config
    from grokscope.runs import read_json_object

    try:
        found = find_config(path)
        doc = read_json_object(found, HFError) if found is not None else {}
    except HFError:
        return None
    if not (doc.get("model_type") or doc.get("architectures")):
        return None
    click.echo(f"--model hf: the model is the one {found} describes", err=True)
    return "hf"


def _import_log(path: Path, log_path: Path | None, fmt: str | None, columns: str | None, step: str,
                force: bool, home: Path | None = None, pattern: str | None = None) -> tuple[Path, int, list] | None:
    """``(source, n, records)`` of the run's own log (given, or found in ``path``) to import into
    ``home`` (default ``path``); None: none given or found."""
    from grokscope import runs as runfmt

    found = None
    if log_path is None:
        found = find_log(path)
        if found is None:
            return None
        log_path, fmt = found[0], fmt or found[1]
    dest = (home if home is not None else path) / runfmt.LOG_JSONL
    if dest.exists() and not force:
        if found is not None:
            click.echo(f"  keeping {dest} (not importing {log_path}; --force replaces it)", err=True)
            return None
        raise click.ClickException(f"{dest} exists (pass --force to replace it with the records of {log_path})")
    mapping: dict[str, str] = {}
    for item in (columns or "").split(","):
        if item.strip():
            k, eq, v = item.partition("=")
            if not eq:
                raise click.BadParameter(f"{item!r}: expected NAME=COLUMN", param_hint="--log-columns")
            mapping[k.strip()] = v.strip()
    try:
        records = import_log(log_path, fmt, mapping, step, pattern)
    except LogError as e:
        if found is not None:  # a log found, not asked for: say why it is not used, go on
            click.echo(f"  not importing {log_path} as the run's log: {e}", err=True)
            return None
        raise click.ClickException(str(e)) from None
    return log_path, len(records), records
