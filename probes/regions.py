"""``regions``: the picture of a network's linear regions on the plane through three training points,
stored per checkpoint (Humayun et al.'s SplineCam-style figures, computed on a pixel grid).

The maths is :func:`grokscope.regions.activation_boundaries` (see docs/algorithms.md#regions); this
probe picks the three points (the same at every checkpoint), runs it, and stores the picture as data:
``boundary(b, a)`` (a linear-region boundary passes through the pixel), ``decision(b, a)`` (the decision
boundary does), ``fill(b, a)`` (a colour index of the pixel's region, equal regions equal index) and
``n_regions`` (distinct activation patterns in the view). ``grokscope regions`` and the report draw
from the store.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
from torch import nn

from grokscope.functional import eval_mode

from .base import PanelSpec, Probe, ProbeContext, ProbeError, check_work, fill_template, template_dataset


@dataclass(frozen=True)
class RegionsParams:
    resolution: int = 200           # grid points per side of the view
    margin: float = 0.25            # view = [-margin, 1 + margin]² in plane coordinates
    split: str = "train"            # the split the three points come from
    points: tuple[int, ...] = ()    # three indices into the split; (): three points of different classes
    seed: int = 0                   # seed of the default point choice


class RegionsProbe(Probe):
    """Linear regions and the decision boundary on the plane ``x0 + a (x1 - x0) + b (x2 - x0)``.

    Outputs: ``boundary``, ``decision`` (bool) and ``fill`` (int8 colour index) over ``(b, a)``
    (rows: coordinate ``b``); ``n_regions``; ``point_index`` and ``point_class`` of the corners
    ``x0, x1, x2``. Token models are drawn in embedding space. Models that are not piecewise linear
    are refused before any job runs.
    """

    name = "regions"
    panel_order = 70
    quick_params = {"resolution": "40"}
    precision_mode = "strict"  # sign patterns / exact zeros: no TF32, no autocast (functional.precision)
    description = "linear regions and decision boundary on the plane through three training points"
    Params = RegionsParams
    outputs = {"boundary": ("b", "a"), "decision": ("b", "a"), "fill": ("b", "a"), "n_regions": (),
               "point_index": ("corner",), "point_class": ("corner",)}
    panels = (PanelSpec("n_regions", "Linear regions on the plane through 3 training points",
                        "regions in the view (log scale)", yscale="log"),)

    @classmethod
    def check_params(cls, params: RegionsParams) -> None:
        if params.resolution < 2:
            raise ProbeError(f"regions.resolution must be >= 2, got {params.resolution}")
        check_work("regions", "regions.resolution squared (grid points)", params.resolution ** 2)
        if not (math.isfinite(params.margin) and params.margin >= 0):
            raise ProbeError(f"regions.margin must be a finite number >= 0, got {params.margin}")
        if params.split not in ("train", "test"):
            raise ProbeError(f"regions.split must be train or test, got {params.split!r}")
        if params.points and (len(params.points) != 3 or len(set(params.points)) != 3):
            raise ProbeError(f"regions.points must be three different indices, got {list(params.points)}")

    def check(self, model: nn.Module, data: Any, params: RegionsParams) -> None:
        from grokscope.regions import RegionsError, check_piecewise_linear

        try:
            check_piecewise_linear(model)
            self._points(data, params)
        except RegionsError as e:
            raise ProbeError(f"regions: {e}") from None

    @staticmethod
    def _points(data: Any, params: RegionsParams) -> tuple[list[int], torch.Tensor, torch.Tensor]:
        from grokscope.regions import default_points, parse_points

        x, y = data.split(params.split)
        index = (parse_points(list(params.points), len(x), params.split) if params.points
                 else default_points(y, params.seed))
        return index, x[index], y[index]

    def _frame(self, params: RegionsParams, layers: list[str]):  # -> xr.Dataset
        """The result's frame (zeros): the ``resolution²`` grid of the view, the three corners and the
        kinked ``layers`` the picture's patterns are made of."""
        from grokscope.regions import grid_axis

        axis = grid_axis(params.margin, params.resolution).numpy()
        return template_dataset(self.outputs, coords={"a": axis, "b": axis.copy(), "corner": ["x0", "x1", "x2"]},
                                dtypes={"boundary": bool, "decision": bool, "fill": np.int8, "n_regions": np.int64,
                                        "point_index": np.int64, "point_class": np.int64},
                                attrs={"layers": ",".join(layers)})

    def template(self, model: nn.Module, data: Any, params: RegionsParams, ctx: ProbeContext | None = None):
        """The grid from ``resolution`` and ``margin``; the layers from one forward pass of the split's
        first point (:func:`grokscope.functional.kinks.kink_layers`, the layers the picture's patterns
        use: which they are depends on the model, not on the point; no label or input value is read)."""
        from grokscope.functional.kinks import kink_layers

        forward, z = self._view(model, data.split(params.split)[0][:1], data)
        return self._frame(params, [k.name for k in kink_layers(model, z[:1], forward=forward)])

    @staticmethod
    def _view(model: nn.Module, x: torch.Tensor, data: Any) -> tuple[Any, torch.Tensor]:
        """``(forward, z)``: the corners ``x`` in the space the picture is drawn in (embedding space
        for token models), in the model's device and dtype."""
        from grokscope.functional.devices import model_device, model_dtype
        from grokscope.models.adapters import continuous_view

        forward, z = continuous_view(model, x.to(model_device(model)), data.input_kind)
        return forward, (z.to(model_dtype(model)) if z.is_floating_point() else z)

    def compute(self, model: nn.Module, data: Any, params: RegionsParams, ctx: ProbeContext):
        from grokscope.regions import Plane, activation_boundaries, fill_index

        index, x, y = self._points(data, params)
        with eval_mode(model):
            forward, z = self._view(model, x, data)
            plane = Plane.through(z[0], z[1], z[2], params.margin)
            rmap = activation_boundaries(model, plane, params.resolution, forward=forward)
        return fill_template(self._frame(params, rmap.layers),
                             {"boundary": rmap.boundary, "decision": rmap.decision,
                              "fill": fill_index(rmap.region), "n_regions": np.int64(rmap.n_regions),
                              "point_index": np.array(index, dtype=np.int64),
                              "point_class": y.cpu().numpy().astype(np.int64)})
