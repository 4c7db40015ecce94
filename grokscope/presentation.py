"""How a probe's results are shown: panels, events and the words that describe them.

A probe declares these on its class (``panels``, ``events``; see :mod:`grokscope.probes.base`) and the
engine writes them into every group it creates (attribute ``presentation``, plain JSON). ``grokscope
plot``, ``grokscope report`` and ``ds.grok`` read them from there, so a probe shows up in every view
without an edit anywhere else, even where its code is not installed. This module needs neither torch
nor xarray.

* :class:`PanelSpec` — one panel of ``grokscope plot``: a variable over step, which dim is drawn as line
  style or shade (``hue``), scale and limits, which onsets get vertical lines. ``per="layer"`` draws one
  panel per label of that dim; ``headline=False`` panels are drawn only on request (``--layers``).
* :class:`EventSpec` — a change point the probe defines (the step at which half of the curve's largest
  rise or fall is done, :func:`grokscope.analysis.change_point`), with the words the report uses for it.
  Every event becomes a row of the onset table and a lead/lag question "before or after generalisation?".
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import Any, Callable

from grokscope.errors import GrokscopeError


BUILTIN_ORDER = ("acc", "lc", "pgd", "align", "fourier", "norm", "regions", "llc", "rllc")  # the built-in probes' panel order


def probe_order(probes: Any) -> list[str]:
    """Probe names in panel order: the built-ins first, in their usual order, then the rest by name."""
    n = len(BUILTIN_ORDER)
    return sorted(set(probes), key=lambda p: (BUILTIN_ORDER.index(p) if p in BUILTIN_ORDER else n, p))


class PresentationError(GrokscopeError, ValueError):
    """A probe's panels or events are malformed; the message names the probe and the field."""


@dataclass(frozen=True)
class PanelSpec:
    """One panel: ``var`` over step. ``hue`` is the dim drawn as line style / shade (None: one line per
    run); ``prefer`` picks one label of other dims (``(("radius", "first"),)``, ``(("split", "test"),)``);
    ``onsets`` which onsets get vertical lines (``"robustness"`` = every ``robustness@ε``); ``kind``
    ``"lines"`` or ``"heatmap"`` (over step and the one remaining dim); ``title`` may use ``{<per dim>}``;
    ``higher_is_better`` says which way is good (None: neither)."""

    var: str
    title: str
    ylabel: str
    hue: str | None = None
    kind: str = "lines"
    yscale: str = "linear"
    ylim: tuple[float, float] | None = None
    prefer: tuple[tuple[str, Any], ...] = ()
    onsets: tuple[str, ...] = ("memorisation", "generalisation")
    per: str | None = None
    headline: bool = True
    higher_is_better: bool | None = None
    probe: str = ""

    def __post_init__(self) -> None:
        if self.kind not in ("lines", "heatmap"):
            raise PresentationError(f"panel {self.probe}.{self.var}: kind must be 'lines' or 'heatmap', "
                                    f"not {self.kind!r}")
        if self.yscale not in ("linear", "log"):
            raise PresentationError(f"panel {self.probe}.{self.var}: yscale must be 'linear' or 'log', "
                                    f"not {self.yscale!r}")


@dataclass(frozen=True)
class EventSpec:
    """A change point of ``var`` (``direction`` ``"rise"`` or ``"fall"``), read on the split ``split``
    when the variable has one (else its first label) and at the first label of any other dim.
    ``words`` name it in sentences ("the fall of LC around training points")."""

    name: str
    var: str
    direction: str
    words: str = ""
    split: str | None = None
    probe: str = ""

    def __post_init__(self) -> None:
        if self.direction not in ("rise", "fall"):
            raise PresentationError(f"event {self.name!r} of probe {self.probe!r}: direction must be 'rise' "
                                    f"or 'fall', not {self.direction!r}")


def to_attrs(panels: tuple[PanelSpec, ...] | list[PanelSpec], events: tuple[EventSpec, ...] | list[EventSpec]
             ) -> dict[str, Any]:
    """The JSON form stored as a group's ``presentation`` attribute."""
    def plain(spec: Any) -> dict[str, Any]:
        d = dataclasses.asdict(spec)
        d.pop("probe", None)
        return {k: (list(v) if isinstance(v, tuple) else v) for k, v in d.items()}
    return {"panels": [plain(p) for p in panels], "events": [plain(e) for e in events]}


def from_attrs(probe: str, attrs: Any) -> tuple[list[PanelSpec], list[EventSpec]] | None:
    """``(panels, events)`` of a group's ``presentation`` attribute (None if absent or malformed)."""
    if not isinstance(attrs, dict):
        return None
    try:
        panels = []
        for d in attrs.get("panels") or []:
            d = dict(d)
            for key in ("prefer",):
                d[key] = tuple(tuple(x) for x in d.get(key) or ())
            for key in ("onsets", "ylim"):
                if d.get(key) is not None:
                    d[key] = tuple(d[key])
            panels.append(PanelSpec(**d, probe=probe))
        events = [EventSpec(**dict(d), probe=probe) for d in attrs.get("events") or []]
    except (TypeError, ValueError):
        return None
    return panels, events


def for_group(probe: str, group_attrs: dict[str, Any],
              declared: Callable[[str], tuple[list[PanelSpec], list[EventSpec]] | None] | None = None
              ) -> tuple[list[PanelSpec], list[EventSpec]] | None:
    """The panels and events of one stored probe group: its ``presentation`` attribute, else
    ``declared(probe)`` (the views pass :func:`grokscope.probes.declared_presentation`, the installed
    probe class's declarations, for stores written before the attribute existed), else None (the
    views then draw its variables generically)."""
    found = from_attrs(probe, group_attrs.get("presentation"))
    if found is not None or declared is None:
        return found
    return declared(probe)
