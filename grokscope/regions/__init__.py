"""Linear-region pictures: the spline partition of a piecewise-linear network on a 2-D plane (the
paper's SplineCam-style figures, computed on a pixel grid). :mod:`.core` is the maths (the plane, the
activation patterns on its grid, the points it goes through), :mod:`.figures` draws the pictures the
``regions`` probe stored; ``grokscope regions`` (``grokscope.cli.regions``) is the command."""

from __future__ import annotations

from .core import (PIECEWISE_LINEAR_ACTIVATIONS, SMOOTH_MODULES, UNHOOKED_KINKS, Plane, RegionMap,
                   RegionPicture, RegionsError, activation_boundaries, check_piecewise_linear, default_points,
                   fill_index, grid_axis, parse_points, plane_forward)
from .figures import DEFAULT_FRAMES, DEFAULT_PANELS, FIGURE_SUFFIXES, draw_map, pictures, region_image, \
    region_runs, regions_figure

__all__ = ["DEFAULT_FRAMES", "DEFAULT_PANELS", "FIGURE_SUFFIXES", "PIECEWISE_LINEAR_ACTIVATIONS", "Plane",
           "RegionMap", "RegionPicture", "RegionsError", "SMOOTH_MODULES", "UNHOOKED_KINKS",
           "activation_boundaries", "check_piecewise_linear", "default_points", "draw_map", "fill_index",
           "grid_axis", "parse_points", "pictures", "plane_forward", "region_image", "region_runs", "regions_figure"]
