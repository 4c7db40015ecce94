"""Probes by name. Built-ins are listed in ``BUILTIN``; third-party packages register theirs under
the entry-point group ``grokscope.probes`` (``name = "pkg.module:ProbeClass"``).

To add a built-in probe: write ``probes/<name>.py`` with the maths as a plain function and a thin
:class:`Probe` subclass, list it here, and add ``tests/probes/test_<name>.py`` (see CONTRIBUTING.md).
"""

from __future__ import annotations

import importlib
import importlib.util
import os
from importlib.metadata import entry_points

from .base import EventSpec, PanelSpec, Probe, ProbeContext, ProbeError, params_attrs, parse_value

BUILTIN = {
    "acc": "grokscope.probes.acc:AccProbe",
    "lc": "grokscope.probes.lc:LCProbe",
    "pgd": "grokscope.probes.pgd:PGDProbe",
    "align": "grokscope.probes.align:AlignProbe",
    "fourier": "grokscope.probes.fourier:FourierProbe",
    "norm": "grokscope.probes.norm:NormProbe",
    "regions": "grokscope.probes.regions:RegionsProbe",
}

ENTRY_POINT_GROUP = "grokscope.probes"
ENV_VAR = "GROKSCOPE_PROBES"

__all__ = ["EventSpec", "PanelSpec", "Probe", "ProbeContext", "ProbeError", "available_probes", "get_probe",
           "params_attrs", "parse_value"]


def _load(path: str) -> type[Probe]:
    mod, attr = path.split(":", 1)
    return getattr(importlib.import_module(mod), attr)


def available_probes() -> dict[str, str]:
    """``{name: "module:Class"}`` of every probe that can be loaded: built-ins, entry points, and
    probes named in the environment variable ``GROKSCOPE_PROBES`` (``name=pkg.module:Class``,
    comma-separated; for probes under development, without packaging; worker processes started
    by the engine inherit it).

    Built-in modules that do not exist yet are left out.
    """
    found = {}
    for name, path in BUILTIN.items():
        if importlib.util.find_spec(path.split(":")[0]) is not None:
            found[name] = path
    for ep in entry_points(group=ENTRY_POINT_GROUP):
        found.setdefault(ep.name, ep.value)
    for item in os.environ.get(ENV_VAR, "").replace(";", ",").split(","):
        name, eq, path = item.strip().partition("=")
        if eq and name.strip() and ":" in path:
            found.setdefault(name.strip(), path.strip())
    return found


def get_probe(name: str) -> type[Probe]:
    """The probe class called ``name``; :class:`ProbeError` lists the valid names otherwise."""
    probes = available_probes()
    if name not in probes:
        raise ProbeError(f"unknown probe {name!r}; valid: {', '.join(sorted(probes))}")
    cls = _load(probes[name])
    if not (isinstance(cls, type) and issubclass(cls, Probe)):
        raise ProbeError(f"{probes[name]} (probe {name!r}) is not a grokscope Probe subclass")
    return cls
