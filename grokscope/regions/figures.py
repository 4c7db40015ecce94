"""Region pictures from a store: the stored ``regions`` results of a run as :class:`RegionPicture`
objects (:func:`pictures`), drawn as a grid of panels (PNG/PDF/SVG) or an animated GIF
(:func:`regions_figure`). Reads the store only; the maths is :mod:`.core`."""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any, Sequence

import numpy as np

from .core import PALETTE_SIZE, RegionPicture, RegionsError
from grokscope.engine.selection import SelectionError, select_steps

FIGURE_SUFFIXES = (".png", ".pdf", ".svg", ".gif")
DEFAULT_PANELS = 6   # checkpoints in a still figure when no steps are given
DEFAULT_FRAMES = 24  # frames of a GIF when no steps are given


def _fmt_steps(steps: Sequence[int]) -> str:
    s = list(steps)
    return ", ".join(map(str, s)) if len(s) <= 12 else f"{', '.join(map(str, s[:5]))}, ..., " \
        f"{', '.join(map(str, s[-3:]))} ({len(s)} checkpoints)"


def region_runs(tree: Any) -> list[str]:
    """Paths of the runs of a store's tree that hold finished ``regions`` results."""
    return [node.path.strip("/") for node in tree.subtree
            if "regions" in node.children and node["regions"].ds.sizes.get("step", 0) > 0]


def pictures(tree: Any, run: str, steps: str | Sequence[int] | None = None, default_n: int = DEFAULT_PANELS
             ) -> list[tuple[int, RegionPicture]]:
    """``[(step, picture)]`` of ``run``'s stored ``regions`` at the checkpoints ``steps`` selects (the
    engine's ``--steps`` grammar: ``0,100,1000``, ``log:N``, ``every:K``, ``all``; None: ``log:default_n``),
    each with the train/test accuracy of the ``acc`` probe at that step when the store has it."""

    if run not in region_runs(tree):
        raise RegionsError(f"run {run!r} has no regions results in the store (have: "
                           f"{', '.join(region_runs(tree)) or 'none'}); compute them with "
                           f"`grokscope probe RUN --metrics regions` or `grokscope regions RUN`")
    ds = tree[f"{run}/regions"].to_dataset()
    avail = [int(s) for s in ds.step.values]
    spec = steps if isinstance(steps, str) or steps is None else ",".join(map(str, steps))
    try:
        chosen, missing = select_steps(spec or f"log:{default_n}", avail)
    except SelectionError as e:
        raise RegionsError(str(e)) from None
    if missing:
        raise RegionsError(f"step(s) {', '.join(map(str, missing))} have no regions results; stored steps: "
                           f"{_fmt_steps(avail)}")
    acc = tree[f"{run}/acc"].to_dataset() if "acc" in tree[run].children else None
    out = []
    for step in chosen:
        one = ds.sel(step=step).load()
        accuracy = {}
        if acc is not None and step in acc.step.values:
            accuracy = {str(sp): float(acc["accuracy"].sel(step=step, split=sp)) for sp in acc["split"].values}
        out.append((step, RegionPicture(a=one["a"].values, b=one["b"].values,
                                        boundary=one["boundary"].values.astype(bool),
                                        decision=one["decision"].values.astype(bool),
                                        fill=one["fill"].values, n_regions=int(one["n_regions"]),
                                        corners=[(int(i), int(c)) for i, c in
                                                 zip(one["point_index"].values, one["point_class"].values)],
                                        accuracy=accuracy)))
    return out


# -- drawing ------------------------------------------------------------------------------------------

_FILL = np.array([[0.99, 0.93, 0.85], [0.87, 0.93, 0.99], [0.90, 0.98, 0.88], [0.98, 0.89, 0.95],
                  [0.95, 0.95, 0.85], [0.88, 0.97, 0.97], [0.93, 0.90, 0.99], [0.97, 0.97, 0.97],
                  [0.99, 0.96, 0.80], [0.85, 0.95, 0.92]])
assert len(_FILL) == PALETTE_SIZE  # fill_index's colours
_EDGE = np.array([0.25, 0.25, 0.30])
_DECISION = np.array([0.85, 0.05, 0.10])


def _thicken(mask: np.ndarray) -> np.ndarray:
    """``mask`` grown by one pixel to the right and up (lines stay visible when the image is shrunk)."""
    out = mask.copy()
    out[:, 1:] |= mask[:, :-1]
    out[1:] |= mask[:-1]
    return out


def region_image(pic: RegionPicture, thicken: bool = False) -> np.ndarray:
    """RGB image ``(R, R, 3)`` of a picture: regions filled with light colours (by pattern), region
    boundaries dark grey, the decision boundary red on top."""
    img = _FILL[pic.fill.astype(np.int64) % len(_FILL)]
    img[pic.boundary] = _EDGE
    dec = _thicken(pic.decision) if thicken else pic.decision
    img[dec] = _DECISION
    return img


def _title(step: int, pic: RegionPicture) -> str:
    t = f"step {step}: {pic.n_regions} regions"
    if pic.accuracy:
        t += "\n" + ", ".join(f"{k} acc {v:.3f}" for k, v in pic.accuracy.items())
    return t


def draw_map(ax: Any, rmap: RegionPicture, title: str, labels: Sequence[str] = ("x0", "x1", "x2"),
             thicken: bool = True, axis_labels: tuple[bool, bool] = (True, True)) -> None:
    """Draw one map into a matplotlib axes: the image, the triangle and the three labelled points."""
    ax.imshow(region_image(rmap, thicken), origin="lower", extent=rmap.extent, interpolation="nearest")
    tri = np.array([[0, 0], [1, 0], [0, 1], [0, 0]])
    ax.plot(tri[:, 0], tri[:, 1], ls=":", lw=0.8, color="0.2")
    for (pa, pb), lab, off in zip(((0, 0), (1, 0), (0, 1)), labels, ((-5, -11), (5, -11), (-5, 5))):
        ax.plot(pa, pb, "o", ms=6, mfc="white", mec="black", mew=1.3)
        ax.annotate(lab, (pa, pb), xytext=off, textcoords="offset points", fontsize=7, fontweight="bold",
                    ha="right" if off[0] < 0 else "left",
                    bbox=dict(boxstyle="round,pad=0.12", fc="white", ec="none", alpha=0.85))
    ax.set_title(title, fontsize=8)
    if axis_labels[0]:
        ax.set_xlabel("a  (x0 → x1)", fontsize=7)
    if axis_labels[1]:
        ax.set_ylabel("b  (x0 → x2)", fontsize=7)
    ax.tick_params(labelsize=6)


def _heading(run: str, ds_attrs: dict[str, Any], pic: RegionPicture) -> str:
    split = (ds_attrs.get("params") or {}).get("split", "train")
    pts = ", ".join(f"x{k} = #{i} (class {c})" for k, (i, c) in enumerate(pic.corners))
    return (f"{run}: plane x0 + a(x1 - x0) + b(x2 - x0) through {split} points {pts}\n"
            "grey: linear-region boundaries (activation pattern changes); red: decision boundary "
            "(predicted class changes)")


def regions_figure(store: Any, run: str, steps: Sequence[int] | str | None, out: Path, *,
                   fps: float = 2.0, columns: int | None = None) -> Path:
    """Draw ``run``'s stored region pictures (``store``: a path or an opened tree) at the checkpoints
    ``steps`` selects (see :func:`pictures`; None: 6 log-spaced ones, 24 for a GIF). ``out`` ending in
    ``.gif`` gives an animation (``fps`` frames per second), ``.png``/``.pdf``/``.svg`` a grid of panels
    (``columns`` per row), at about one screen pixel per grid point. Returns ``out``."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from grokscope.reading import open_store

    out = Path(out)
    suffix = out.suffix.lower()
    if suffix not in FIGURE_SUFFIXES:
        raise RegionsError(f"--out {out}: unsupported format {out.suffix!r}; use one of "
                           f"{', '.join(FIGURE_SUFFIXES)}")
    if not (math.isfinite(fps) and fps > 0):
        raise RegionsError(f"fps must be a positive number, got {fps!r}")
    tree = store if not isinstance(store, (str, Path)) else open_store(store)
    chosen = pictures(tree, run, steps, DEFAULT_FRAMES if suffix == ".gif" else DEFAULT_PANELS)
    head = _heading(run, dict(tree[f"{run}/regions"].attrs), chosen[0][1])
    out.parent.mkdir(parents=True, exist_ok=True)
    panel = 3.2  # inches per panel side; the axes take about 80 % of it
    dpi = int(min(220, max(80, len(chosen[0][1].a) / (0.8 * panel))))
    if suffix == ".gif":
        from matplotlib.animation import PillowWriter

        fig, ax = plt.subplots(figsize=(panel * 1.45, panel * 1.55))
        fig.subplots_adjust(left=0.14, right=0.96, bottom=0.1, top=0.8)
        fig.suptitle(head.replace(" through", "\nthrough").replace("; ", ";\n"), fontsize=6)
        writer = PillowWriter(fps=fps)
        with writer.saving(fig, str(out), dpi=max(80, dpi // 1.45)):
            for step, pic in chosen:
                ax.clear()
                draw_map(ax, pic, _title(step, pic))
                writer.grab_frame()
        plt.close(fig)
        return out
    ncol = max(1, columns or (len(chosen) if len(chosen) <= 4 else 3 if len(chosen) <= 6 else 4))
    nrow = math.ceil(len(chosen) / ncol)
    fig, axes = plt.subplots(nrow, ncol, figsize=(panel * ncol, panel * nrow + 0.7), squeeze=False)
    for k, (ax, (step, pic)) in enumerate(zip(axes.flat, chosen)):
        draw_map(ax, pic, _title(step, pic), axis_labels=(k + ncol >= len(chosen), k % ncol == 0))
    for ax in list(axes.flat)[len(chosen):]:
        ax.axis("off")
    fig.suptitle(head, fontsize=7)
    fig.tight_layout()
    fig.savefig(out, dpi=dpi)
    plt.close(fig)
    if suffix == ".png":
        _shrink_png(out)
    return out


def _shrink_png(path: Path, colors: int = 128) -> None:
    """Re-save a PNG with an adaptive palette (the figure has few colours: about half the bytes)."""
    from PIL import Image

    with Image.open(path) as im:
        q = im.convert("RGB").quantize(colors=colors, method=Image.Quantize.MEDIANCUT,
                                       dither=Image.Dither.NONE)
    q.save(path, optimize=True)


