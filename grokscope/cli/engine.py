"""``grokscope init | scan | probes | probe``: the engine's commands (torch/dask imported inside)."""

from __future__ import annotations

import json
import os
import sys
from pathlib import Path
from typing import Any

import click


# -- shared option types --------------------------------------------------------------------------

class ProbeNames(click.ParamType):
    """A comma-separated list of probe names, checked against the registry (built-ins + entry points)."""

    name = "probe[,probe...]"

    def convert(self, value: Any, param: click.Parameter | None, ctx: click.Context | None) -> list[str]:
        if isinstance(value, list):
            return value
        from grokscope.probes import available_probes

        names = [v.strip() for v in str(value).split(",") if v.strip()]
        valid = available_probes()
        bad = [n for n in names if n not in valid]
        if bad or not names:
            self.fail(f"unknown probe {', '.join(map(repr, bad)) or repr(value)}; valid: "
                      f"{', '.join(sorted(valid))}", param, ctx)
        return names

    def shell_complete(self, ctx: click.Context, param: click.Parameter, incomplete: str):
        from click.shell_completion import CompletionItem

        from grokscope.probes import available_probes

        head, _, last = incomplete.rpartition(",")
        prefix = head + "," if head else ""
        return [CompletionItem(prefix + n) for n in sorted(available_probes()) if n.startswith(last)]


PROBE_NAMES = ProbeNames()


def _json_option(text: str | None, what: str) -> dict[str, Any]:
    from grokscope.cli import json_object

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
    from grokscope.codepath import code_folder

    named = vouched_by(model, dataset)
    if named and os.getcwd() not in sys.path:  # factories importable from here; last, so nothing
        sys.path.append(os.getcwd())  # here shadows an installed module
    return sorted({f for f in map(code_folder, named) if f})


def cli_trust(model: str | None, dataset: str | None, trust_code: str | None) -> Any:
    """The :class:`grokscope.trust.Trust` of this invocation: the user's allow-list, ``--trust-code``
    and the callables named by ``--model``/``--dataset`` (with the folders they are imported from)."""
    from grokscope.trust import Trust, split_entries

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
    from grokscope.codepath import with_code_folder

    mspec = with_code_folder(model_spec_from(model, model_kwargs, folder), model)
    dspec = with_code_folder({"name": dataset_name_from(dataset),
                              "kwargs": _json_option(dataset_kwargs, "--dataset-kwargs"),
                              "seed": dataset_seed}, dataset)
    from grokscope.codepath import ImportSideEffects, watch_imports
    from grokscope.datasets import DatasetError, load_dataset
    from grokscope.engine.loading import CheckpointError
    from grokscope.models import ModelError
    from grokscope.trust import UntrustedCode

    try:
        # the checkpoint folder and the working directory, listed before the user's module is
        # imported and checked after: a module that trains when imported is refused, named
        with watch_imports([folder, Path.cwd()], [model, dataset], "--model/--dataset"):
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


# -- init -----------------------------------------------------------------------------------------

@click.command()
@click.argument("path", type=click.Path(exists=True, file_okay=False, path_type=Path))
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
def init(path: Path, model: str | None, model_kwargs: str | None, dataset: str | None,
         dataset_kwargs: str | None, dataset_seed: int, loss: str | None, trust_code: str | None,
         force: bool, log_path: Path | None, log_format: str | None, log_pattern: str | None,
         log_columns: str | None, log_step: str, steps_per_epoch: int | None, workspace: Path | None) -> None:
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

    if model is None:
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
    records = _import_log(path, log_path, log_format, log_columns, log_step, force, home, log_pattern)
    if records is None and log_path is None:
        from grokscope.cli.ignored import warn_ignored

        warn_ignored(click.get_current_context(), ("log_format", "log_pattern", "log_columns", "log_step"),
                     f"without a log (no --log given, and no trainer_state.json or metrics.csv found in {path})")
    try:
        home.mkdir(parents=True, exist_ok=True)
        runfmt.write_run_json(home, spec["model"], spec["dataset"], spec["train"],
                              checkpoints=ck_dir.absolute() if workspace is not None else None,
                              steps_per_epoch=steps_per_epoch)
        if records is not None:
            from grokscope.runlog import write_log

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


def remember_vouched(model: str | None, dataset: str | None, home: Path) -> None:
    """Add the callables ``--model``/``--dataset`` named, and their folders, to the user's allow-list
    (after ``init`` or ``train`` wrote ``home``), saying so, so a later probe of ``home`` from any
    folder may import them."""
    from grokscope import trust as trustmod

    for target in [*vouched_by(model, dataset), *vouched_folders(model, dataset)]:
        added = trustmod.remember(target)
        what = f"code imported from {target}" if os.path.isabs(target) else target
        if added is not None:
            click.echo(f"trusting {what} from now on: added to {added} (so `grokscope probe {home}` "
                       "may import it from any folder; delete the line to revoke)", err=True)


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
    from grokscope.runlog import LogError, find_log, import_log

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


# -- scan -----------------------------------------------------------------------------------------

@click.command()
@click.argument("path", type=click.Path(exists=True, path_type=Path))
@click.option("--json", "as_json", is_flag=True, help="Print the full audit as JSON on stdout.")
def scan(path: Path, as_json: bool) -> None:
    """Audit the checkpoints under PATH: per run, the number of checkpoints, step range, gaps in the
    save schedule, duplicate weights, steps written out of order, dtype/shape drift, unreadable files."""
    from grokscope.engine.discovery import DiscoveryError
    from grokscope.engine.scan import format_report
    from grokscope.engine.scan import scan as do_scan

    skipped: list[Any] = []
    try:
        reports = do_scan(path, skipped)
    except DiscoveryError as e:
        raise click.ClickException(str(e)) from e
    for p in skipped:
        click.echo(f"warning: {p.path}: {p.reason}", err=True)
    if as_json:
        click.echo(json.dumps(reports, indent=2))
    else:
        click.echo(format_report(reports))


# -- probes ---------------------------------------------------------------------------------------

def probe_listing() -> list[dict[str, Any]]:
    """Every available probe: name, description, needs, parameters with defaults, outputs."""
    import dataclasses

    from grokscope.probes import available_probes, get_probe, params_attrs

    out = []
    for name, where in sorted(available_probes().items()):
        try:
            cls = get_probe(name)
        except Exception as e:  # noqa: BLE001 - a broken plugin is listed with its error
            out.append({"name": name, "source": where, "error": f"{type(e).__name__}: {e}"})
            continue
        params = params_attrs(cls.default_params()) if dataclasses.is_dataclass(cls.Params) else {}
        helps = {f.name: f.metadata["help"] for f in dataclasses.fields(cls.Params)
                 if "help" in f.metadata} if dataclasses.is_dataclass(cls.Params) else {}
        out.append({"name": name, "source": where, "description": cls.description,
                    "needs_data": cls.needs_data, "needs_grad": cls.needs_grad,
                    "needs_previous": cls.needs_previous, "params": params, "help": helps,
                    "outputs": {k: list(v) for k, v in cls.outputs.items()}})
    return out


def model_kinks(spec: dict[str, Any], trust: Any = None) -> list[Any]:
    """The kinks ``lc`` counts (and ``regions`` draws) in the model of a run spec, found by one forward
    pass of a training input (:func:`grokscope.functional.kinks.kink_layers`)."""
    from grokscope.datasets import load_dataset
    from grokscope.functional.kinks import kink_layers
    from grokscope.models import build_model
    from grokscope.models.adapters import continuous_view

    data = load_dataset(spec["dataset"], trust)
    model = build_model(spec["model"], trust)
    forward, z = continuous_view(model, data.x_train[:1], data.input_kind)
    return kink_layers(model, z, forward=forward)


@click.command()
@click.option("--json", "as_json", is_flag=True, help="Print the listing as JSON on stdout.")
@spec_options
def probes(as_json: bool, model: str | None, model_kwargs: str | None, dataset: str | None,
           dataset_kwargs: str | None, dataset_seed: int, loss: str | None, trust_code: str | None) -> None:
    """List the available probes with their parameters (and defaults) and outputs (with dims).

    With --model and --dataset, also list the kinks that `lc` counts in that model (activation
    modules and functional calls such as F.relu, with the names `lc.layers` accepts).
    """
    listing = probe_listing()
    trust = cli_trust(model, dataset, trust_code)
    spec = cli_spec(model, model_kwargs, dataset, dataset_kwargs, dataset_seed, loss, trust)
    kinks = None
    if spec is not None:
        try:
            kinks = model_kinks(spec, trust)
        except Exception as e:  # noqa: BLE001 - a model that cannot run is reported, not a traceback
            raise click.ClickException(f"{model} on {dataset}: the model's forward failed: "
                                       f"{type(e).__name__}: {e}") from e
    if as_json:
        if kinks is not None:
            import dataclasses

            listing = {"probes": listing, "lc_layers": [dataclasses.asdict(k) for k in kinks]}
        click.echo(json.dumps(listing, indent=2))
        return
    for p in listing:
        if "error" in p:
            click.echo(f"{p['name']}  (unavailable: {p['error']})\n")
            continue
        needs = [k[6:] for k in ("needs_data", "needs_grad", "needs_previous") if p[k]]
        click.echo(f"{p['name']}  {p['description']}" + (f"  [needs {', '.join(needs)}]" if needs else ""))
        for k, v in p["params"].items():
            line = f"    --param {p['name']}.{k}={json.dumps(v) if not isinstance(v, str) else v}"
            click.echo(line + (f"  ({p['help'][k]})" if k in p.get("help", {}) else ""))
        for k, dims in p["outputs"].items():
            click.echo(f"    -> {k}({', '.join(['step', *dims])})")
        click.echo("")
    if kinks is not None:
        from grokscope.functional.kinks import format_kinks

        click.echo(f"lc layers of {model} on {dataset} ({len(kinks)}, counted by default; a call site "
                   "'module#opK' can be named in --param lc.layers=..., a module name there counts its output):")
        for line in format_kinks(kinks) or ["(none: no kinked module or call was seen)"]:
            click.echo(f"    {line}")


# -- probe ----------------------------------------------------------------------------------------

def parse_params(items: tuple[str, ...], metrics: list[str]) -> dict[str, dict[str, str]]:
    """``("lc.radius=0.01", ...)`` → ``{"lc": {"radius": "0.01"}}``, probes checked against ``metrics``."""
    out: dict[str, dict[str, str]] = {}
    for item in items:
        key, eq, value = item.partition("=")
        probe, dot, fld = key.partition(".")
        if not eq or not dot or not probe or not fld:
            raise click.BadParameter(f"{item!r}: expected PROBE.FIELD=VALUE (e.g. lc.radius=0.01)",
                                     param_hint="--param")
        if probe not in metrics:
            raise click.BadParameter(f"{item!r}: probe {probe!r} is not among --metrics "
                                     f"({', '.join(metrics)})", param_hint="--param")
        out.setdefault(probe, {})[fld.strip()] = value
    return out


def parse_steps_options(items: tuple[str, ...], metrics: list[str]) -> dict[str, str | None]:
    """``("log:20", "norm=0,100,1000")`` → ``{probe: spec}`` for every probe of ``metrics``: a bare
    spec applies to the probes without their own ``PROBE=SPEC`` (None: all checkpoints). Specs are
    checked (:func:`.selection.parse_selection`)."""
    from grokscope.engine.selection import SelectionError, parse_selection

    default: str | None = None
    own: dict[str, str] = {}
    for item in items:
        probe, eq, spec = item.partition("=")
        if not eq:
            probe, spec = "", item
        probe, spec = probe.strip(), spec.strip()
        if probe and probe not in metrics:
            raise click.BadParameter(f"{item!r}: probe {probe!r} is not among --metrics "
                                     f"({', '.join(metrics)})", param_hint="--steps")
        try:
            parse_selection(spec)
        except SelectionError as e:
            raise click.BadParameter(str(e), param_hint="--steps") from None
        if probe:
            own[probe] = spec
        else:
            default = spec
    return {n: own.get(n, default) for n in metrics}


class _Bar:
    """The progress bar on stderr: jobs done / total, failures, jobs per second. When stderr is not a
    terminal (a log file, a pipe, CI), a plain line every :attr:`LINE_EVERY` seconds instead, so a
    long probe is never silent for minutes."""

    LINE_EVERY = 30.0

    def __init__(self, quiet: bool):
        self.quiet, self.bar, self.failed, self.rate = quiet, None, 0, 0.0
        self.lines, self.total, self.last_line = False, 0, 0.0

    def start(self, jobs: int, skipped: int, scheduler: str) -> None:
        if self.quiet:
            return
        click.echo(f"{jobs} job(s) to run, {skipped} already in the store; scheduler: {scheduler}", err=True)
        if jobs and not sys.stderr.isatty():
            import time

            self.lines, self.total, self.last_line = True, jobs, time.monotonic()
        elif jobs:
            self.bar = click.progressbar(length=jobs, label="probing", file=sys.stderr, show_pos=True,
                                         show_eta=True, item_show_func=self._show)
            self.bar.__enter__()

    def _show(self, _item: Any) -> str:
        return f"{self.failed} failed, {self.rate:.1f} jobs/s"

    def update(self, n: int, done: int, failed: int, rate: float) -> None:
        self.failed, self.rate = failed, rate
        if self.bar is not None:
            self.bar.update(n, current_item=done)
        elif self.lines:
            import time

            now = time.monotonic()
            if now - self.last_line >= self.LINE_EVERY or done >= self.total:
                self.last_line = now
                eta = f", about {(self.total - done) / rate:.0f} s left" if rate > 0 and done < self.total else ""
                click.echo(f"probing: {done}/{self.total} job(s) done, {failed} failed, {rate:.1f} jobs/s{eta}",
                           err=True)

    def close(self) -> None:
        if self.bar is not None:
            self.bar.__exit__(None, None, None)
            self.bar = None


@click.command()
@click.argument("path", type=click.Path(exists=True, file_okay=False, path_type=Path))
@click.option("-m", "--metrics", "--metric", "metrics", type=PROBE_NAMES, multiple=True,
              help="Probes to run: a comma list and/or repeated (default: acc). See `grokscope probes`.")
@click.option("--param", "params", multiple=True, metavar="PROBE.FIELD=VALUE",
              help="A probe parameter, e.g. --param lc.radius=0.01 (repeatable).")
@click.option("-o", "--out", type=click.Path(path_type=Path), default=None,
              help="The Zarr store (default: PATH/probes.zarr; DIR/probes.zarr with --workspace DIR).")
@click.option("--scheduler", default=None, metavar="ADDRESS|sync|local", envvar="GROKSCOPE_SCHEDULER",
              help="A Dask scheduler address (tcp://host:8786), 'sync' to run in this process, or "
                   "'local' (default) for an in-process cluster of worker processes. "
                   "Env: GROKSCOPE_SCHEDULER.")
@click.option("--workers", type=click.IntRange(1), default=None,
              help="Worker processes of the local cluster (default: one per core; per GPU with --device cuda).")
@click.option("--threads", type=click.IntRange(1), default=None,
              help="Torch threads per worker (default: cores / workers locally, 1 on a cluster).")
@click.option("--device", default="cpu", show_default=True,
              help="Device of the probes; 'cuda' jobs need workers with the GPU resource "
                   "(`dask worker ADDRESS --resources GPU=1`).")
@click.option("--steps", "steps", multiple=True, metavar="[PROBE=]SPEC",
              help="Which checkpoints to probe: 'all' (default), '0,100,1000' (exactly these steps), "
                   "'log:N' (about N log-spaced) or 'every:K' (one near every K steps); 'PROBE=SPEC' "
                   "for one probe only, e.g. --steps norm=log:10 (repeatable).")
@click.option("--overwrite/--resume", default=False, show_default=True,
              help="Recompute (and replace) results already in the store, or skip them.")
@click.option("--flush-interval", type=click.FloatRange(0), default=1.0, show_default=True,
              help="Seconds between commits of finished jobs to the store, stretched to 10x the "
                   "last commit's duration when commits are slow (0: commit every job).")
@click.option("--recheck/--no-recheck", default=True, show_default=True,
              help="Hash the checkpoints of jobs already done and recompute those whose content "
                   "changed since (a replaced checkpoint); --no-recheck trusts the store.")
@click.option("--dry-run", is_flag=True, help="Show what would be computed, compute nothing.")
@click.option("--estimate", is_flag=True,
              help="Jobs, bytes to read and write, and a time projected from one timed job per probe; "
                   "writes nothing.")
@click.option("--follow", is_flag=True,
              help="While a trainer is writing a run under PATH (its run folder's lock names a live "
                   "process), keep probing its new checkpoints as they appear; return once it is gone.")
@click.option("--json", "as_json", is_flag=True, help="Print the summary as JSON on stdout.")
@click.option("-q", "--quiet", is_flag=True, help="No progress bar.")
@click.option("--split-tolerance", type=click.FloatRange(0), default=0.01, show_default=True,
              help="How far acc may differ from the run's own logged accuracy at the same step before "
                   "the split check warns that the data or split is not the run's.")
@spec_options
@workspace_option
@click.pass_context
def probe(ctx: click.Context, path: Path, metrics: tuple[list[str], ...], params: tuple[str, ...],
          out: Path | None, scheduler: str | None, workers: int | None, threads: int | None, device: str,
          steps: tuple[str, ...], overwrite: bool, flush_interval: float, recheck: bool, dry_run: bool,
          estimate: bool, follow: bool, as_json: bool, quiet: bool, split_tolerance: float, model: str | None,
          model_kwargs: str | None, dataset: str | None, dataset_kwargs: str | None, dataset_seed: int,
          loss: str | None, trust_code: str | None, workspace: Path | None) -> None:
    """Run probes over every checkpoint under PATH (or those --steps selects) into a Zarr store (one
    group per run and probe).

    Jobs already in the store are skipped (resume); new checkpoints are appended. Exits non-zero when
    any job failed, after listing each failed job and why.
    """
    from grokscope.probes import ProbeError, get_probe

    from grokscope.engine.driver import EngineConfig
    from grokscope.engine.jobs import ProbeRequest

    names: list[str] = []
    for group in metrics or (["acc"],):
        for n in group:
            if n not in names:
                names.append(n)
    overrides = parse_params(params, names)
    selections = parse_steps_options(steps, names)
    try:
        requests = [ProbeRequest(n, get_probe(n).make_params(overrides.get(n)), selections[n]) for n in names]
    except ProbeError as e:
        raise click.BadParameter(str(e), param_hint="--param/--metrics") from e
    if device not in ("cpu", "cuda") and not device.startswith("cuda:"):
        raise click.BadParameter(f"{device!r}: expected cpu or cuda", param_hint="--device")
    _refuse_lone_spec_flags(ctx, ("model_kwargs", "dataset_kwargs", "dataset_seed", "loss"),
                            model is None and dataset is None)
    if follow and dry_run:
        click.echo("warning: --follow is ignored with --dry-run (it shows what the store lacks now)", err=True)
    if workers is not None and scheduler not in (None, "", "local"):
        click.echo(f"warning: --workers {workers} is ignored with --scheduler {scheduler} (it sizes the "
                   "local cluster; the scheduler's own workers run the jobs)", err=True)
    trust = cli_trust(model, dataset, trust_code)
    spec = cli_spec(model, model_kwargs, dataset, dataset_kwargs, dataset_seed, loss, trust, path)
    home = workspace if workspace is not None else path  # where the store goes
    path = workspace_run(path, workspace)
    cfg = EngineConfig(probes=requests, out=out or home / "probes.zarr", scheduler=scheduler,
                       workers=workers, threads=threads, device=device, overwrite=overwrite, spec=spec,
                       flush_interval=flush_interval, dry_run=dry_run, trust=trust, recheck=recheck)
    if estimate:
        _print_estimate(path, cfg, as_json)
        return
    more = {"follow": training_under(path)} if follow and not dry_run else {}
    summary = run_with_progress(path, cfg, quiet=quiet or as_json, **more)
    if "acc" in names and not dry_run and cfg.out.exists():
        from grokscope.runlog import store_split_checks

        for lines in store_split_checks(cfg.out, split_tolerance).values():
            summary.warnings.extend(lines)
    report_summary(summary, as_json, dry_run)
    if not summary.ok:
        ctx.exit(1)


def _print_estimate(path: Path, cfg: Any, as_json: bool) -> None:
    """``probe --estimate``: :func:`grokscope.engine.estimate.estimate` in words (or JSON on stdout)."""
    from grokscope.engine.discovery import DiscoveryError
    from grokscope.engine.driver import EngineError
    from grokscope.engine.estimate import estimate
    from grokscope.engine.store import StoreError

    try:
        est = estimate(path, cfg)
    except (DiscoveryError, StoreError, EngineError) as e:
        raise click.ClickException(str(e)) from None
    if as_json:
        click.echo(json.dumps(est.as_dict(), indent=2))
        return
    for w in est.warnings:
        click.echo(f"warning: {w}", err=True)
    for line in est.lines():
        click.echo(line)


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


def _refuse_lone_spec_flags(ctx: click.Context, names: tuple[str, ...], alone: bool) -> None:
    """UsageError when spec options are given without --model/--dataset (they would be ignored)."""
    from click.core import ParameterSource

    if not alone:
        return
    given = [f"--{n.replace('_', '-')}" for n in names
             if ctx.get_parameter_source(n) not in (None, ParameterSource.DEFAULT)]
    if given:
        raise click.UsageError(f"{', '.join(given)} only apply with --model and --dataset (checkpoints "
                               "without run.json); each run.json gives its own model, dataset and loss")


def training_under(path: Path):
    """A callable telling whether a trainer is writing a run under ``path`` now: whether any run
    folder found there has a lock held by a live process (:func:`.lock.live_holder`; a store's lock
    is not a run folder's, so this probe run's own lock does not count)."""
    from grokscope.engine.discovery import DiscoveryError, find_runs
    from grokscope.engine.lock import live_holder

    def live() -> bool:
        try:
            return any(live_holder(r.path) for r in find_runs(Path(path)))
        except DiscoveryError:
            return False

    return live


def run_with_progress(path: Path, cfg: Any, quiet: bool = False, progress: Any = None, **follow: Any) -> Any:
    """``probe_runs(path, cfg, **follow)`` with the progress bar on stderr (or the callback
    ``progress(n, done, failed, rate)`` instead); refusals become ClickExceptions.

    Returns the engine's ``Summary`` (also used by ``grokscope demo``, with ``follow=`` and ``poll=``).
    """
    from grokscope.engine.discovery import DiscoveryError
    from grokscope.engine.driver import EngineError, Interrupted, probe_runs
    from grokscope.engine.lock import StoreLocked
    from grokscope.engine.store import StoreError

    bar = _Bar(quiet or progress is not None)
    try:
        return probe_runs(path, cfg, progress=progress or bar.update, start=bar.start, **follow)
    except Interrupted as e:
        bar.close()
        click.echo(str(e), err=True)
        sys.exit(e.code)  # the shell's code for a run ended by that signal: 130 (SIGINT), 143 (SIGTERM)
    except (DiscoveryError, StoreError, StoreLocked, EngineError) as e:
        raise click.ClickException(str(e)) from None
    finally:
        bar.close()


def report_summary(s: Any, as_json: bool = False, dry_run: bool = False) -> None:
    if as_json:
        click.echo(json.dumps({
            "store": str(s.store), "runs": s.runs, "jobs": s.jobs, "skipped": s.skipped,
            "excluded": s.excluded,
            "completed": s.completed, "failed": len(s.failures), "seconds": round(s.seconds, 3),
            "probe_seconds": round(s.probe_seconds, 3),
            "seconds_by_probe": {k: round(v, 3) for k, v in s.seconds_by_probe.items()},
            "scheduler": s.scheduler, "took_over_lock": s.took_over,
            "failures": [vars(f) for f in s.failures], "warnings": s.warnings}, indent=2))
    err = (lambda m: click.echo(m, err=True))
    if s.took_over:
        err(f"took over a stale lock of {s.took_over.get('pid')} on {s.took_over.get('host')} "
            "(that process is gone)")
    for w in s.warnings:
        err(f"warning: {w}")
    if dry_run:
        err(f"dry run: {s.jobs} job(s) over {s.runs} run(s) would be computed, {s.skipped} are done")
        return
    rate = s.completed / s.seconds if s.seconds > 0 else 0.0
    left_out = f", {s.excluded} not selected by --steps" if s.excluded else ""
    err(f"{s.completed} job(s) done, {len(s.failures)} failed, {s.skipped} skipped (already done){left_out} "
        f"over {s.runs} run(s) in {s.seconds:.1f} s ({rate:.1f} jobs/s) -> {s.store}")
    if s.failures:
        err(f"{len(s.failures)} failed job(s):")
        for f in s.failures:
            err(f"  {f.line()}")
