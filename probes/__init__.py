"""Probes by name. Built-ins are listed in ``BUILTIN``; third-party packages register theirs under
the entry-point group ``grokscope.probes`` (``name = "pkg.module:ProbeClass"``).

To add a built-in probe: write ``probes/<name>.py`` with the maths as a plain function and a thin
:class:`Probe` subclass, list it here, and add ``tests/probes/test_<name>.py`` (see CONTRIBUTING.md).
"""

from __future__ import annotations

from grokscope.registry import Registry, import_target

from .base import (EventSpec, PanelSpec, Probe, ProbeContext, ProbeError, check_at_least, check_bounds,
                   check_choice, check_work, params_attrs, parse_value, template_dataset, validate_params)

BUILTIN = {
    "acc": "grokscope.probes.acc:AccProbe",
    "lc": "grokscope.probes.lc:LCProbe",
    "pgd": "grokscope.probes.pgd:PGDProbe",
    "align": "grokscope.probes.align:AlignProbe",
    "fourier": "grokscope.probes.fourier:FourierProbe",
    "norm": "grokscope.probes.norm:NormProbe",
    "regions": "grokscope.probes.regions:RegionsProbe",
    "llc": "grokscope.probes.llc:LLCProbe",
    "collapse": "grokscope.probes.collapse:CollapseProbe",
    "spectral": "grokscope.probes.spectral:SpectralProbe",
}

ENTRY_POINT_GROUP = "grokscope.probes"
ENV_VAR = "GROKSCOPE_PROBES"

__all__ = ["EventSpec", "PanelSpec", "Probe", "ProbeContext", "ProbeError", "available_probes", "check_at_least",
           "check_bounds", "check_choice", "check_work", "get_probe", "params_attrs", "parse_value", "template_dataset",
           "validate_params"]


REGISTRY = Registry("probe", BUILTIN, ENTRY_POINT_GROUP, env_var=ENV_VAR, error=ProbeError)


def available_probes() -> dict[str, str]:
    """``{name: "module:Class"}`` of every probe that can be loaded: built-ins, entry points, and
    probes named in the environment variable ``GROKSCOPE_PROBES`` (``name=pkg.module:Class``,
    comma-separated; for probes under development, without packaging; worker processes started
    by the engine inherit it). A name defined twice is listed once; :func:`get_probe` refuses it,
    naming both sources.

    Built-in modules that do not exist yet are left out.
    """
    return REGISTRY.available()


def get_probe(name: str) -> type[Probe]:
    """The probe class called ``name``; :class:`ProbeError` lists the valid names otherwise."""
    entry = REGISTRY.entry(name)
    cls = import_target(entry.target, ProbeError)
    if not (isinstance(cls, type) and issubclass(cls, Probe)):
        raise ProbeError(f"{entry.target} (probe {name!r}) is not a grokscope Probe subclass")
    from grokscope.functional.precision import PRECISION_MODES

    if cls.precision_mode not in PRECISION_MODES:
        raise ProbeError(f"{entry.target} (probe {name!r}): precision_mode must be one of "
                         f"{', '.join(PRECISION_MODES)}, got {cls.precision_mode!r}")
    return cls


def declared_presentation(name: str) -> tuple[list[PanelSpec], list[EventSpec]] | None:
    """The panels and events the installed probe class ``name`` declares, or None when no such probe
    can be loaded (an unknown or broken probe module must not stop the views)."""
    try:
        cls = get_probe(name)
    except Exception:  # noqa: BLE001
        return None
    return list(cls.panel_specs()), list(cls.event_specs())


def declared_order(name: str) -> float | None:
    """The ``panel_order`` of the installed probe class ``name``, or None when it cannot be loaded."""
    try:
        return float(get_probe(name).panel_order)
    except Exception:  # noqa: BLE001
        return None
