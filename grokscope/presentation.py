"""How a probe's results are shown: panels, events and the words that describe them.

A probe declares these on its class (``panels``, ``events``; see :mod:`grokscope.probes.base`) and the
engine writes them into every group it creates (attribute ``presentation``, plain JSON). ``grokscope
plot``, ``grokscope report`` and ``ds.grok`` read them from there, so a probe shows up in every view
without an edit anywhere else, even where its code is not installed. This module needs neither torch
nor xarray.

* :class:`PanelSpec` — one panel of ``grokscope plot``: a variable over step, which dim is drawn as line
  style or shade (``hue``), scale and limits, which onsets get vertical lines. ``per="layer"`` draws one
  panel per label of that dim; ``headline=False`` panels are drawn only on request (``--layers``).
* :class:`EventSpec` — an event the probe defines: a change point (the step at which half of the curve's
  largest rise or fall is done, :func:`grokscope.analysis.change_point`) or a threshold onset (the first
  step at which the curve reaches a named threshold: ``acc`` declares memorisation and generalisation,
  ``pgd`` robustness@ε), with the words the report uses for it. Every event becomes a row of the onset
  table and a lead/lag question "before or after generalisation?".
* ``panel_order`` — where a probe's panels go among the others (:func:`probe_order`), stored with the
  panels and events.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import Any, Callable

from grokscope.errors import GrokscopeError


DEFAULT_PANEL_ORDER = 1000  # a probe that states no panel_order goes after those that do


def probe_order(probes: Any, order: Callable[[str], float | None] | None = None) -> list[str]:
    """Probe names in panel order: by each probe's ``panel_order`` (``order(name)``: what its stored
    groups or its installed class state; None or unknown: :data:`DEFAULT_PANEL_ORDER`), then by name."""
    def key(p: str) -> tuple[float, str]:
        value = order(p) if order is not None else None
        return (DEFAULT_PANEL_ORDER if value is None else float(value), p)
    return sorted(set(probes), key=key)


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


THRESHOLDS = ("mem", "grok", "robust")  # the named thresholds of threshold events (standard_onsets' arguments)


@dataclass(frozen=True)
class EventSpec:
    """An event of ``var`` read on the split ``split`` when the variable has one (else its first label)
    and at the first label of any other dim; ``words`` name it in sentences ("the fall of LC around
    training points").

    A change point (``threshold`` None): the step at which half of the largest ``direction``
    (``"rise"`` or ``"fall"``) of the curve is done. A threshold onset (``threshold`` one of
    :data:`THRESHOLDS`): the first step at which the curve reaches that threshold (``direction``
    ``"rise"``: at or above it), the threshold raised clear of the task's chance level; the split must
    then be there (no fallback to another split). ``per``: one event per label of that dim, ``name``
    formatted with it (``"robustness@{:g}"``)."""

    name: str
    var: str
    direction: str
    words: str = ""
    split: str | None = None
    probe: str = ""
    threshold: str | None = None
    per: str | None = None

    def __post_init__(self) -> None:
        if self.direction not in ("rise", "fall"):
            raise PresentationError(f"event {self.name!r} of probe {self.probe!r}: direction must be 'rise' "
                                    f"or 'fall', not {self.direction!r}")
        if self.threshold is not None and self.threshold not in THRESHOLDS:
            raise PresentationError(f"event {self.name!r} of probe {self.probe!r}: threshold must be one of "
                                    f"{', '.join(THRESHOLDS)}, not {self.threshold!r}")

    @property
    def kind(self) -> str:
        """``"threshold"`` or ``"change"``."""
        return "change" if self.threshold is None else "threshold"


def to_attrs(panels: tuple[PanelSpec, ...] | list[PanelSpec], events: tuple[EventSpec, ...] | list[EventSpec],
             order: float | None = None) -> dict[str, Any]:
    """The JSON form stored as a group's ``presentation`` attribute (``order``: the probe's
    ``panel_order``)."""
    def plain(spec: Any) -> dict[str, Any]:
        d = dataclasses.asdict(spec)
        d.pop("probe", None)
        return {k: (list(v) if isinstance(v, tuple) else v) for k, v in d.items()}
    out: dict[str, Any] = {"panels": [plain(p) for p in panels], "events": [plain(e) for e in events]}
    if order is not None:
        out["order"] = order
    return out


def stored_order(attrs: Any) -> float | None:
    """The ``panel_order`` in a group's ``presentation`` attribute, or None."""
    value = attrs.get("order") if isinstance(attrs, dict) else None
    return float(value) if isinstance(value, (int, float)) and not isinstance(value, bool) else None


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
    views then draw its variables generically). A stored presentation written before threshold events
    were declared gets the installed class's threshold events added (same names are not repeated)."""
    found = from_attrs(probe, group_attrs.get("presentation"))
    if declared is None:
        return found
    if found is None:
        return declared(probe)
    panels, events = found
    if not any(e.threshold for e in events):
        named = {e.name for e in events}
        events += [e for e in (declared(probe) or ([], []))[1] if e.threshold and e.name not in named]
    return panels, events


def group_order(probe: str, group_attrs: dict[str, Any], declared: Callable[[str], float | None] | None = None
                ) -> float | None:
    """The ``panel_order`` of one stored probe group: stored with its presentation, else what the
    installed probe class states (``declared(probe)``), else None."""
    value = stored_order(group_attrs.get("presentation"))
    return value if value is not None or declared is None else declared(probe)
