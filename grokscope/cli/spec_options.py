"""The options that name a model, a dataset, the code the user vouches for and a workspace, shared by
``init``, ``probe``, ``probes`` and ``train``: parsed into a run spec and a :class:`~grokscope.trust.Trust`
(torch and the engine are imported inside the functions, so ``grokscope --help`` stays light)."""

from __future__ import annotations

import os
import sys
from pathlib import Path
from typing import Any

import click
from grokscope import trust as trustmod
from grokscope.cli import json_object
from grokscope.codepath import ImportSideEffects, watch_imports
from grokscope.codepath import code_folder
from grokscope.codepath import with_code_folder
from grokscope.trust import Trust, split_entries
from grokscope.trust import UntrustedCode


def _json_option(text: str | None, what: str) -> dict[str, Any]:

    return json_object(text or None, what) or {}


def model_spec_from(model: str, kwargs: str | None, folder: Path | None = None) -> dict[str, Any]:
    """``--model pkg.module:factory|NAME`` + ``--model-kwargs JSON`` as a run.json model spec.

    ``--model hf`` takes the ``config.json`` of ``folder`` (or of its first ``checkpoint-*``), or the
    path in ``--model-kwargs '{"config": PATH}'``, into the spec, refused if it needs remote code.
    """
    key = "factory" if ":" in model else "arch"
    kw = _json_option(kwargs, "--model-kwargs")
    if model == "hf" and not isinstance(kw.get("config"), dict):
        from grokscope.models.hf import HFError, find_config, read_config

        try:
            where = Path(kw["config"]) if isinstance(kw.get("config"), str) else (
                find_config(folder) if folder is not None else None)
        except HFError as e:
            raise click.UsageError(str(e)) from None
        if where is None:
            raise click.UsageError(f"--model hf: no config.json in {folder or 'the folder'} or its "
                                   "checkpoint-* folders; pass --model-kwargs '{\"config\": PATH}'")
        try:
            kw["config"] = read_config(where)
        except HFError as e:
            raise click.UsageError(str(e)) from None
    return {key: model, "kwargs": kw}


def vouched_by(model: str | None, dataset: str | None) -> list[str]:
    """The callables this command line names (``--model``/``--dataset`` import paths): vouched for."""
    return [v for v in (model, dataset) if v and ":" in v and not v.startswith("file:")]


def vouched_folders(model: str | None, dataset: str | None) -> list[str]:
    """The folders the callables this command line names are imported from (the working directory
    is searched last): vouched for with them (:mod:`grokscope.codepath`)."""

    named = vouched_by(model, dataset)
    if named and os.getcwd() not in sys.path:  # factories importable from here; last, so nothing
        sys.path.append(os.getcwd())  # here shadows an installed module
    return sorted({f for f in map(code_folder, named) if f})


def cli_trust(model: str | None, dataset: str | None, trust_code: str | None) -> Any:
    """The :class:`grokscope.trust.Trust` of this invocation: the user's allow-list, ``--trust-code``
    and the callables named by ``--model``/``--dataset`` (with the folders they are imported from)."""

    return Trust.from_user([*split_entries(trust_code), *vouched_by(model, dataset),
                            *vouched_folders(model, dataset)])


def dataset_name_from(dataset: str) -> str:
    """``--dataset`` as stored in run.json: a ``file:`` path made absolute (workers and later commands
    may run in another folder)."""
    if dataset.startswith("file:"):
        return "file:" + str(Path(dataset[5:]).expanduser().resolve())
    return dataset


def cli_spec(model: str | None, model_kwargs: str | None, dataset: str | None,
             dataset_kwargs: str | None, dataset_seed: int, loss: str | None,
             trust: Any = None, folder: Path | None = None) -> dict[str, Any] | None:
    """The run spec given on the command line (None when neither --model nor --dataset is given).

    Model kwargs that the data determines (``in_dim``, ``out_dim``, ``p``, ...) are filled in as the
    trainer does, so ``--model mlp --dataset digits`` is enough for a built-in MLP. ``trust`` is
    :func:`cli_trust`'s (None: computed here).
    """
    if model is None and dataset is None:
        return None
    if model is None or dataset is None:
        raise click.UsageError("third-party checkpoints need both --model and --dataset")
    if trust is None:
        trust = cli_trust(model, dataset, None)
    vouched_folders(model, dataset)  # the working directory importable, as for cli_trust

    mspec = with_code_folder(model_spec_from(model, model_kwargs, folder), model)
    dspec = with_code_folder({"name": dataset_name_from(dataset),
                              "kwargs": _json_option(dataset_kwargs, "--dataset-kwargs"),
                              "seed": dataset_seed}, dataset)
    from grokscope.datasets import DatasetError, load_dataset
    from grokscope.engine.loading import CheckpointError
    from grokscope.models import ModelError

    try:
        # the checkpoint folder and the working directory, listed before the user's module is
        # imported and checked after: a module that trains when imported is refused, named
        local = [f for f in (folder, Path.cwd()) if isinstance(f, Path)]  # a remote folder holds no code
        with watch_imports(local, [model, dataset], "--model/--dataset"):
            from grokscope.models.lightning import lightning_spec

            mspec = lightning_spec(mspec, _first_checkpoint(folder), trust, "--model")
            data = load_dataset(dspec, trust, "--dataset")
            from grokscope.training.trainer import resolve_model_spec

            mspec = resolve_model_spec(mspec, data, trust)
    except ImportSideEffects as e:
        raise click.ClickException(str(e)) from None
    except (DatasetError, ModelError, UntrustedCode, CheckpointError) as e:
        raise click.UsageError(str(e)) from e
    train = {"loss": loss} if loss else {}
    return {"format": 1, "model": mspec, "dataset": dspec, "train": train}


def _first_checkpoint(folder: Path | None) -> str | None:
    """The first checkpoint (by step) of the first run under ``folder`` that has one, or None."""
    from grokscope.engine.discovery import DiscoveryError, find_runs

    if folder is None:
        return None
    try:
        return next((r.checkpoints[0].path for r in find_runs(folder) if r.checkpoints), None)
    except DiscoveryError:
        return None


def spec_options(f):
    """The options that describe a third-party run's model and data."""
    opts = [
        click.option("--model", "model", default=None, metavar="NAME|pkg.module:factory",
                     help="Model for checkpoints without run.json: a built-in name or an importable factory."),
        click.option("--model-kwargs", default=None, metavar="JSON", help="Keyword arguments of the model factory."),
        click.option("--dataset", default=None, metavar="NAME", help="Dataset the probes use (see grokscope.datasets)."),
        click.option("--dataset-kwargs", default=None, metavar="JSON", help="Keyword arguments of the dataset."),
        click.option("--dataset-seed", default=0, show_default=True, type=int, help="Seed of the dataset split."),
        click.option("--loss", type=click.Choice(["ce", "mse", "stablemax"]), default=None,
                     help="Loss the model was trained with (acc's loss); default ce."),
        click.option("--trust-code", default=None, metavar="MODULE[,MODULE]",
                     help="Modules (or pkg.module:callable) whose code a run.json may name; see "
                          "'security model' in docs/engine.md. Also $GROKSCOPE_TRUST_CODE."),
    ]
    for o in reversed(opts):
        f = o(f)
    return f


def workspace_option(f):
    """``--workspace DIR``: grokscope's files for PATH (run.json, log.jsonl, the store) live in DIR."""
    return click.option(
        "--workspace", type=click.Path(file_okay=False, path_type=Path), default=None, metavar="DIR",
        help="Keep grokscope's files (run.json, the imported log, probes.zarr) in DIR instead of PATH, "
             "which is then only read (a read-only or shared checkpoint folder). DIR's run.json names "
             "PATH, so `grokscope probe DIR` works too.")(f)


def remember_vouched(model: str | None, dataset: str | None, home: Path) -> None:
    """Add the callables ``--model``/``--dataset`` named, and their folders, to the user's allow-list
    (after ``init`` or ``train`` wrote ``home``), saying so, so a later probe of ``home`` from any
    folder may import them."""

    for target in [*vouched_by(model, dataset), *vouched_folders(model, dataset)]:
        added = trustmod.remember(target)
        what = f"code imported from {target}" if os.path.isabs(target) else target
        if added is not None:
            click.echo(f"trusting {what} from now on: added to {added} (so `grokscope probe {home}` "
                       "may import it from any folder; delete the line to revoke)", err=True)


def workspace_run(path: Path, workspace: Path | None) -> Path:
    """The folder to probe for ``PATH --workspace DIR``: DIR when its run.json (``init --workspace``)
    names PATH's checkpoints, PATH when DIR holds no run.json (the store still goes to DIR); a DIR
    whose run.json names other checkpoints is refused."""
    from grokscope import runs as runfmt

    if workspace is None or not (workspace / runfmt.RUN_JSON).is_file():
        return path
    named = runfmt.checkpoint_dir(workspace).resolve()
    if named not in (path.resolve(), runfmt.checkpoint_dir(path).resolve()):
        raise click.UsageError(f"--workspace {workspace}: its run.json is for the checkpoints in {named}, "
                               f"not {path}; use another workspace for {path}")
    return workspace


def refuse_lone_spec_flags(ctx: click.Context, names: tuple[str, ...], alone: bool) -> None:
    """UsageError when spec options are given without --model/--dataset (they would be ignored)."""
    from click.core import ParameterSource

    if not alone:
        return
    given = [f"--{n.replace('_', '-')}" for n in names
             if ctx.get_parameter_source(n) not in (None, ParameterSource.DEFAULT)]
    if given:
        raise click.UsageError(f"{', '.join(given)} only apply with --model and --dataset (checkpoints "
                               "without run.json); each run.json gives its own model, dataset and loss")
