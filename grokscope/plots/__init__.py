"""Figures of a probe store over log-step (what ``grokscope plot`` draws).

Small multiples: one panel per measure, every run of the store overlaid in its own colour, only the
panels whose data exist. The x axis of every panel is the training step on a *symlog* scale (linear
between 0 and 1, logarithmic above), so step 0 is drawn at 0 and every tick and onset line sits at its
true step. Onsets (:func:`grokscope.analysis.standard_onsets`) are dashed vertical lines in the run's
colour, labelled at the top of the panel ("mem", "gen", "ε=0.1").

Panels (each probe declares its own, ``Probe.panels``; a probe that declares none gets one generic
panel per variable), each only where some selected run has finished steps of it:

=========================  ==================================================================
acc                        accuracy and loss, train/test (line style per split)
lc                         mean LC around each split's points (all layers); ``layers=True``
                           adds one panel per layer (``lc_mean``)
pgd                        PGD robust accuracy per ε: a colour scale (plasma, dark = small ε)
                           for one run, shades of each run's colour when runs are overlaid
align                      centroid alignment, Jacobian alignment, ‖J‖_F (per split)
fourier                    Fourier norms of the embedding as a heat map over (step, frequency),
                           one panel per run; Fourier Gini
norm                       ‖θ‖² and the tangent fraction of the weight-decay direction
=========================  ==================================================================

``metrics`` entries are probe names (``acc``) or ``probe.variable`` (``align.pc1_mean``: any variable
over ``step`` with at most :data:`MAX_LINES` lines, or one extra dim drawn as a heat map).

The package keeps one job a module: :mod:`.runs` (store access), :mod:`.plan` (the panel
plan), :mod:`.draw` (matplotlib figures), :mod:`.files` (figure files). Public: :func:`plot_store` (files), :func:`overview_figure` / :func:`fourier_figure` (matplotlib
Figures), :func:`plan_panels` (which panels would be drawn), :func:`iter_runs`, :func:`select_runs`,
:func:`plot_run` (one run, one file). The ``grokscope plot`` command is :mod:`grokscope.cli.plot`.
"""

from __future__ import annotations

from .draw import fourier_figure, overview_figure, run_caption
from .files import DPI, FORMATS, plot_run, plot_store, slug
from .plan import MAX_LINES, Panel, Spec, curve_block, plan_panels, probe_specs
from .runs import RUN_COLOURS, PlotError, iter_runs, open_store, select_runs

__all__ = ["DPI", "FORMATS", "MAX_LINES", "RUN_COLOURS", "Panel", "PlotError", "Spec", "curve_block",
           "fourier_figure", "iter_runs", "open_store", "overview_figure", "plan_panels", "plot_run",
           "plot_store", "probe_specs", "run_caption", "select_runs", "slug"]
