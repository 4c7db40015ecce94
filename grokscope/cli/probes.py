"""``grokscope probes``: list the available probes, their parameters and outputs."""

from __future__ import annotations

import json
from typing import Any

import click

from .spec_options import cli_spec, cli_trust, spec_options


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
                    "outputs": {k: list(v) for k, v in cls.outputs.items()}, "tasks": list(cls.tasks),
                    "task_outputs": {t: {k: list(v) for k, v in o.items()} for t, o in cls.task_outputs.items()}})
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
        for task, outs in p.get("task_outputs", {}).items():
            for k, dims in outs.items():
                click.echo(f"    -> {k}({', '.join(['step', *dims])})  [{task} datasets]")
        click.echo("")
    if kinks is not None:
        from grokscope.functional.kinks import format_kinks

        click.echo(f"lc layers of {model} on {dataset} ({len(kinks)}, counted by default; a call site "
                   "'module#opK' can be named in --param lc.layers=..., a module name there counts its output):")
        for line in format_kinks(kinks) or ["(none: no kinked module or call was seen)"]:
            click.echo(f"    {line}")
