"""Model builders by name. ``build_model({"arch": NAME, "kwargs": {...}})`` or
``build_model({"factory": "pkg.module:function", "kwargs": {...}})``.

To add a built-in model, write a builder function in a module of this package and list it in
``MODELS``. Token models (inputs are int64 token ids) also provide ``embed(tokens)`` and
``forward_embedded(h)`` so probes can work in embedding space (see :mod:`grokscope.models.adapters`).
"""

from __future__ import annotations

import importlib
from typing import Any

from torch import nn

from grokscope.errors import GrokscopeError

MODELS = {
    "mlp": "grokscope.models.mlp:mlp",
    "modular_mlp": "grokscope.models.modular:modular_mlp",
    "transformer": "grokscope.models.transformer:transformer",
    "cnn": "grokscope.models.cnn:cnn",
    "grokalign_cnn": "grokscope.models.cnn:grokalign_cnn",
    "preact_resnet18": "grokscope.models.resnet:preact_resnet18",
}


class ModelError(GrokscopeError, ValueError):
    """A model spec could not be turned into a model."""


def resolve_factory(path: str):
    """Import ``"pkg.module:function"`` and return the callable, with a clear error if it fails."""
    if ":" not in path:
        raise ModelError(f"model factory {path!r} must look like 'pkg.module:function'")
    mod_name, attr = path.split(":", 1)
    try:
        module = importlib.import_module(mod_name)
    except ImportError as e:
        raise ModelError(f"cannot import module {mod_name!r} for model factory {path!r}: {e}") from e
    try:
        obj = module
        for part in attr.split("."):
            obj = getattr(obj, part)
    except AttributeError as e:
        raise ModelError(f"module {mod_name!r} has no attribute {attr!r}") from e
    if not callable(obj):
        raise ModelError(f"model factory {path!r} is not callable")
    return obj


def factory_for(spec: dict[str, Any]):
    """``(callable, label)`` of a model spec: its ``factory`` import path or its built-in ``arch``."""
    if spec.get("factory"):
        return resolve_factory(spec["factory"]), spec["factory"]
    arch = spec.get("arch")
    if arch not in MODELS:
        raise ModelError(f"unknown model {arch!r}; valid names: {', '.join(sorted(MODELS))} "
                         "(or a factory 'pkg.module:function')")
    return resolve_factory(MODELS[arch]), arch


def build_model(spec: dict[str, Any]) -> nn.Module:
    """Build an ``nn.Module`` from a run's model spec (``{"arch"|"factory", "kwargs"}``)."""
    kwargs = dict(spec.get("kwargs") or {})
    factory, label = factory_for(spec)
    try:
        model = factory(**kwargs)
    except (TypeError, ValueError) as e:
        raise ModelError(f"bad arguments for model {label!r}: {e}") from e
    if not isinstance(model, nn.Module):
        raise ModelError(f"model factory {label!r} returned {type(model).__name__}, not an nn.Module")
    return model
