"""``grokscope train``: train a preset (any field overridable) into a run folder."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import click
from grokscope.cli.ignored import warn_ignored
from grokscope.cli.spec_options import cli_trust, remember_vouched
from grokscope.codepath import with_code_folder
from grokscope.trust import UntrustedCode
from grokscope.cli import json_object


def _json_object(ctx: click.Context, param: click.Parameter, value: str | None) -> dict | None:

    return json_object(value, f"--{param.name.replace('_', '-')}")


def _betas(ctx: click.Context, param: click.Parameter, value: str | None) -> tuple[float, float] | None:
    if value is None:
        return None
    try:
        b = tuple(float(v) for v in value.split(","))
    except ValueError:
        b = ()
    if len(b) != 2:
        raise click.BadParameter(f"expected two numbers like '0.9,0.98', got {value!r}")
    return b  # type: ignore[return-value]


def _optional_number(option: str, value: str, kind=float):
    """``value`` as a number, or None for none/off/0/full (the option is then off)."""
    from grokscope.training.config import TrainConfigError

    if value.lower() in ("none", "off", "0", "full"):
        return None
    try:
        return kind(value)
    except ValueError:
        raise TrainConfigError(f"{option} {value!r}: expected a number, or none/0 for off") from None


# (click option name, TrainConfig field / override key)
_FIELD_OPTIONS = {
    "steps": "steps", "lr": "lr", "wd": "weight_decay", "seed": "seed", "save": "save",
    "eval_every": "eval_every", "loss": "loss", "optimizer": "optimizer", "betas": "betas",
    "momentum": "momentum", "warmup": "warmup_steps", "dtype": "dtype", "model": "model_arch",
    "model_kwargs": "model_kwargs", "dataset": "dataset_name", "dataset_kwargs": "dataset_kwargs",
    "dataset_seed": "dataset_seed", "shuffle": "shuffle",
}


def collect_overrides(opts: dict[str, Any]) -> dict[str, Any]:
    """The TrainConfig overrides named by the options the user gave (None = not given)."""
    out = {field: opts[name] for name, field in _FIELD_OPTIONS.items() if opts.get(name) is not None}
    if opts.get("reg") is not None:
        out["reg"] = None if opts["reg"].lower() == "none" else opts["reg"]
    if opts.get("batch_size") is not None:
        out["batch_size"] = _optional_number("--batch-size", opts["batch_size"], int)
    if opts.get("grad_clip") is not None:
        out["grad_clip"] = _optional_number("--grad-clip", opts["grad_clip"])
    if opts.get("grad_clip_value") is not None:
        out["grad_clip_value"] = _optional_number("--grad-clip-value", opts["grad_clip_value"])
    if opts.get("freeze"):
        out["freeze"] = [p for item in opts["freeze"] for p in item.split(",") if p and p != "none"]
    return out


@click.command("train")
@click.option("--preset", default=None, metavar="NAME",
              help="Preset to start from (default modadd-mlp; see --list-presets).")
@click.option("--list-presets", is_flag=True, help="List the presets and exit.")
@click.option("--out", type=click.Path(file_okay=False, path_type=Path), default=None,
              help="Run folder (default runs/PRESET).")
@click.option("--resume", is_flag=True,
              help="Continue the run in --out from its last checkpoint (its run.json gives the settings).")
@click.option("--steps", type=int, default=None, help="Number of optimiser updates.")
@click.option("--lr", type=float, default=None, help="Learning rate.")
@click.option("--wd", type=float, default=None, help="Weight decay.")
@click.option("--seed", type=int, default=None, help="Seed of the initialisation and data order.")
@click.option("--save", default=None, metavar="SPEC", help="Checkpoint steps: log:N | every:K | 1,10,100.")
@click.option("--eval-every", default=None, metavar="SPEC",
              help="Extra evaluation steps (every:K | log:N | list); every save step is evaluated.")
@click.option("--reg", default=None, metavar="NAME[:ARGS]", help="Training regulariser (or none).")
@click.option("--loss", type=click.Choice(["ce", "mse", "stablemax"]), default=None, help="Task loss (stablemax: Prieto et al.'s StableMax cross-entropy).")
@click.option("--optimizer", "--optim", "optimizer", type=click.Choice(["adamw", "sgd", "orthograd", "orthograd-sgd"]),
              default=None, help="adamw, sgd, or ⊥Grad (Prieto et al.) on top of AdamW (orthograd) or SGD (orthograd-sgd).")
@click.option("--betas", callback=_betas, default=None, metavar="B1,B2", help="AdamW betas.")
@click.option("--momentum", type=float, default=None, help="SGD momentum.")
@click.option("--warmup", type=int, default=None, help="Linear learning-rate warm-up steps.")
@click.option("--batch-size", default=None, metavar="N", help="Mini-batch size (0 or full: full batch).")
@click.option("--shuffle/--no-shuffle", default=None,
              help="A fresh random batch order every epoch (default), or the training set's own order.")
@click.option("--grad-clip", default=None, metavar="NORM", help="Clip the gradient norm (none: off).")
@click.option("--grad-clip-value", default=None, metavar="V", help="Clip each gradient entry (none: off).")
@click.option("--dtype", type=click.Choice(["float32", "float64"]), default=None)
@click.option("--model", default=None, metavar="ARCH", help="Model name (or pkg.module:factory).")
@click.option("--model-kwargs", callback=_json_object, default=None, metavar="JSON",
              help="Model arguments merged into the preset's, e.g. '{\"width\": 64}'.")
@click.option("--dataset", default=None, metavar="NAME", help="Dataset name.")
@click.option("--dataset-kwargs", callback=_json_object, default=None, metavar="JSON",
              help="Dataset arguments merged into the preset's, e.g. '{\"p\": 97}'.")
@click.option("--dataset-seed", type=int, default=None, help="Seed of the train/test split.")
@click.option("--freeze", multiple=True, metavar="PREFIX",
              help="Parameter-name prefixes to keep fixed (repeat or comma-separate).")
@click.option("--device", default="cpu", show_default=True, help="Torch device.")
@click.option("--threads", type=click.IntRange(min=1), default=None,
              help="torch threads for this run (default: chosen from the model's size, the batch and the "
                   "machine's free cores; one for the presets' small models; the first line says which).")
@click.option("--quiet", is_flag=True, help="No progress lines on stderr.")
def train(preset: str | None, list_presets: bool, out: Path | None, resume: bool, device: str,
          threads: int | None, quiet: bool, **opts: Any) -> None:
    """Train a model and save log-spaced checkpoints, a log and run.json into a run folder."""
    from grokscope.training import presets as P

    if list_presets:
        warn_ignored(click.get_current_context(), tuple(p.name for p in train.params if p.name != "list_presets"),
                     "with --list-presets (it lists the presets and trains nothing)")
        for name in P.preset_names():
            click.echo(f"{name:20s} {P.DESCRIPTIONS.get(name, '')}")
        return

    config, out = build_config(preset, out, resume, opts)
    model, dataset = opts.get("model"), opts.get("dataset")
    trust = cli_trust(model, dataset, None)  # the callables named here and the folders they come from
    # run.json keeps those folders, so a probe from anywhere (and its workers) can rebuild the model
    config.model = with_code_folder(config.model, model)
    config.dataset = with_code_folder(config.dataset, dataset)
    run(config, out, resume=resume, device=device, threads=threads, progress=not quiet, trust=trust)
    remember_vouched(model, dataset, out)
    _echo_summary(out)


def build_config(preset: str | None, out: Path | None, resume: bool, opts: dict[str, Any]):
    """The TrainConfig and run folder for the given CLI options (resume: run.json is the base)."""
    from grokscope import runs

    from grokscope.training import presets as P
    from grokscope.training.config import TrainConfig, TrainConfigError

    try:
        overrides = collect_overrides(opts)
        if resume and out is not None and preset is None and (out / runs.RUN_JSON).is_file():
            doc = runs.read_run_json(out)
            base = TrainConfig.from_run_json(doc, where=str(out / runs.RUN_JSON)).to_dict()
            config = P.apply_overrides(base, where=str(out / runs.RUN_JSON), **overrides)
        else:
            name = preset or P.DEFAULT_PRESET
            config = P.preset_config(name, **overrides)
            out = out if out is not None else Path("runs") / name
        return config.validate(), out
    except (TrainConfigError, runs.RunError, ValueError) as e:
        raise click.ClickException(str(e)) from None


def run(config, out: Path, resume: bool = False, device: str = "cpu", threads: int | None = None,
        progress: bool = True, trust=None) -> Path:
    """``train_run`` with the library's errors turned into clean CLI errors (``threads`` None: chosen,
    see :mod:`grokscope.training.threads`)."""
    from grokscope.datasets import DatasetError
    from grokscope.models import ModelError
    from grokscope.runs import RunError

    from grokscope.training.config import TrainConfigError
    from grokscope.training.trainer import TrainingError, train_run

    try:
        return train_run(config, out, resume=resume, progress=progress, device=device, trust=trust,
                         threads=threads or "auto")
    except (DatasetError, ModelError, TrainConfigError, TrainingError, RunError, UntrustedCode) as e:
        raise click.ClickException(str(e)) from None


def _echo_summary(out: Path) -> None:
    from grokscope import runs

    log = runs.read_log(out)
    ckpts = runs.list_checkpoints(out)
    last = log[-1] if log else {}
    click.echo(f"{out}: {len(ckpts)} checkpoints in {out / runs.CHECKPOINT_DIR}, "
               f"final train acc {100 * last.get('train_acc', float('nan')):.1f}%, "
               f"test acc {100 * last.get('test_acc', float('nan')):.1f}%")
