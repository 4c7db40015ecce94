"""The ``ds.grok`` and ``dt.grok`` accessors (:func:`register_accessors`)."""

from __future__ import annotations

from typing import Any

import numpy as np

from grokscope.reading import done_steps

from .curves import change_point, lc_phases, lead_lag, onset
from .runs import Onset, run_events, run_summary, select_curve, standard_onsets


def register_accessors() -> None:
    """Register ``ds.grok`` on Datasets and ``dt.grok`` on DataTrees (done on import)."""
    import xarray as xr

    if not hasattr(xr.Dataset, "grok"):
        xr.register_dataset_accessor("grok")(DatasetGrok)
    if not hasattr(xr.DataTree, "grok"):
        xr.register_datatree_accessor("grok")(TreeGrok)


class DatasetGrok:
    """``ds.grok`` on one probe group (finished steps only).

    ``ds.grok.onset("accuracy", 0.95, split="test")``, ``ds.grok.change("lc_total_mean", "fall",
    split="train")``, ``ds.grok.lc_phases(split="train")``; keywords select down to a curve over step.
    """

    def __init__(self, ds):
        self._ds = done_steps(ds)

    def curve(self, var: str, **sel) -> tuple[np.ndarray, np.ndarray]:
        """``(steps, values)`` of ``var`` selected down to a curve over step."""
        return self._ds["step"].values, select_curve(self._ds, var, **sel).values

    def onset(self, var: str, threshold: float, above: bool = True, window: int = 1, patience: int = 1,
              **sel) -> float:
        """:func:`onset` of ``var``'s curve."""
        return onset(*self.curve(var, **sel), threshold, above, window, patience)

    def change(self, var: str, direction: str = "rise", fraction: float = 0.5, window: int = 5,
               **sel) -> float:
        """:func:`change_point` of ``var``'s curve."""
        return change_point(*self.curve(var, **sel), direction, fraction, window)

    def lc_phases(self, var: str = "lc_total_mean", window: int = 5, **sel) -> dict[str, Any]:
        """:func:`lc_phases` of ``var``'s curve (a length-1 ``radius`` is dropped automatically)."""
        return lc_phases(*self.curve(var, **sel), window)

    def _as_run(self):
        """This probe group as a run node with one child (named by its ``probe`` attribute), so the
        run-level methods work on a Dataset from ``load_group`` or ``dt["run/acc"].to_dataset()``."""
        import xarray as xr

        probe = self._ds.attrs.get("probe")
        if not probe:
            raise ValueError("this Dataset is not a probe group of a grokscope store (no 'probe' attribute); "
                             "use a run node: grokscope.open_store(path)['<run>'].grok")
        run_attrs = {k: self._ds.attrs[k] for k in ("model", "dataset", "task") if k in self._ds.attrs}
        return xr.DataTree.from_dict({"/": xr.Dataset(attrs=run_attrs), str(probe): self._ds})

    def onsets(self, **thresholds) -> dict[str, Onset]:
        """:func:`standard_onsets` of this probe group alone (a run node's ``dt["<run>"].grok.onsets()``
        combines every probe of the run)."""
        return TreeGrok(self._as_run()).onsets(**thresholds)

    def events(self, fraction: float = 0.5, change_window: int = 5, **thresholds) -> dict[str, Onset]:
        """:func:`run_events` of this probe group alone (onsets and change points)."""
        return TreeGrok(self._as_run()).events(fraction, change_window, **thresholds)

    def summary(self, **kwargs) -> dict[str, Any]:
        """:func:`run_summary` of this probe group alone."""
        return TreeGrok(self._as_run()).summary(**kwargs)

    def lead_lag(self, a: str, b: str, **kwargs) -> dict[str, Any]:
        """:func:`lead_lag` between two events of this probe group (:meth:`events`)."""
        return TreeGrok(self._as_run()).lead_lag(a, b, **kwargs)


class TreeGrok:
    """``dt.grok`` on a run node (children = probe groups) or a whole store (first run if only one).

    ``dt["run"].grok.onsets()``, ``.summary()``, ``.lead_lag("lc_fall", "generalisation")``.
    """

    def __init__(self, tree):
        self._tree = tree

    def _run(self):
        node = self._tree
        if any("step" in c.dims for c in node.children.values()):
            return node
        runs = [n for n in node.subtree if n.children and any("step" in c.dims for c in n.children.values())]
        if len(runs) != 1:
            names = ", ".join(n.path for n in runs) or "none"
            raise ValueError(f"select one run first (dt['<run>'].grok); runs here: {names}")
        return runs[0]

    def onsets(self, **thresholds) -> dict[str, Onset]:
        """:func:`standard_onsets` of the run."""
        return standard_onsets(self._run(), **thresholds)

    def events(self, fraction: float = 0.5, change_window: int = 5, **thresholds) -> dict[str, Onset]:
        """:func:`run_events` of the run (onsets and change points)."""
        return run_events(self._run(), fraction, change_window, **thresholds)

    def summary(self, **kwargs) -> dict[str, Any]:
        """:func:`run_summary` of the run."""
        return run_summary(self._run(), **kwargs)

    def lead_lag(self, a: str, b: str, **kwargs) -> dict[str, Any]:
        """:func:`lead_lag` between two named events of :meth:`events` (e.g. ``"lc_fall"``); an
        undetermined order says why in ``"why"`` (the threshold never reached and the curve's highest
        value, or a change no larger than the noise)."""
        events = self.events(**kwargs)
        for name in (a, b):
            if name not in events:
                raise KeyError(f"no event {name!r} for this run (have: {', '.join(events)})")
        out = lead_lag(events[a].step, events[b].step, a, b)
        if out["order"] == "undetermined":
            out["why"] = "; ".join(_missing_why(events[n]) for n in (a, b) if not events[n].found)
        return out


def _missing_why(ev: Onset) -> str:
    """Why an event has no step, in a few words."""
    d = ev.detail or {}
    if ev.kind == "threshold":
        top = d.get("max")
        return (f"{ev.name}: {ev.var} never reached {ev.threshold:.3g}"
                + ("" if top is None or top != top else f" (its highest: {top:.3g})"))
    needed = d.get("needed")
    if needed is not None and needed == needed and d.get("size") is not None:
        return (f"{ev.name}: no clear change (largest move {d['size']:.3g}, a clear change needs "
                f"{d['needed']:.3g})")
    return f"{ev.name}: no clear change"

