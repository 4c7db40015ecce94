"""``grokscope regions``: draw linear-region pictures from a probe store (computing them first, through
the probe engine, when given a run folder)."""

from __future__ import annotations

from pathlib import Path

import click
from grokscope.api import probe_config
from grokscope.cli.ignored import refuse_ignored, warn_ignored
from grokscope.cli.probe import report_summary, run_with_progress
from grokscope.engine.selection import select_steps

REGION_OPTIONS = ("resolution", "points", "split", "margin", "seed")


@click.command()
@click.argument("path", type=click.Path(exists=True, path_type=Path))
@click.option("--run", "run", default=None, help="Run of the store to draw [default: its only run with pictures].")
@click.option("--steps", default=None, metavar="SPEC",
              help="Checkpoints: 100,1000,... | log:N | every:K | all  [default: log:6, GIF log:24].")
@click.option("--out", type=click.Path(dir_okay=False, path_type=Path), default=None,
              help="Figure file: .png/.pdf/.svg (grid of panels) or .gif (animation)  "
                   "[default: plots/regions-<run>.png beside the store, as grokscope plot].")
@click.option("--store", type=click.Path(path_type=Path), default=None,
              help="Store of a run folder's pictures [default: PATH/probes.zarr].")
@click.option("--resolution", default=None, type=click.IntRange(min=2), help="Grid points per side [200].")
@click.option("--points", default=None, metavar="I,J,K",
              help="Indices of the three points in the split [default: 3 points of different classes].")
@click.option("--split", default=None, type=click.Choice(["train", "test"]), help="Split of the points [train].")
@click.option("--margin", default=None, type=float, help="View = [-margin, 1 + margin]² [0.25].")
@click.option("--seed", default=None, type=int, help="Seed of the default point choice [0].")
@click.option("--fps", default=2.0, show_default=True, type=float, help="GIF frames per second.")
@click.option("--scheduler", default="sync", show_default=True, metavar="ADDRESS|sync|local",
              help="Where a run folder's pictures are computed (see grokscope probe).")
@click.pass_context
def regions(ctx: click.Context, path: Path, run: str | None, steps: str | None, out: Path | None,
            store: Path | None, resolution: int | None, points: str | None, split: str | None,
            margin: float | None, seed: int | None, fps: float, scheduler: str) -> None:
    """Draw the linear regions of a run's checkpoints on the plane through three training points.

    PATH is a probe store holding ``regions`` results, or a run folder: then the ``regions`` probe
    runs first (into PATH/probes.zarr, resumable: pictures already there are reused) at the chosen
    checkpoints. Grey: activation-pattern boundaries of every ReLU-type unit; red: the decision
    boundary; one panel (or GIF frame) per checkpoint.
    """
    from grokscope.reading import open_store
    from grokscope.regions import FIGURE_SUFFIXES, DEFAULT_FRAMES, DEFAULT_PANELS, region_runs, regions_figure

    given = {k: v for k, v in (("resolution", resolution), ("points", points), ("split", split),
                               ("margin", margin), ("seed", seed)) if v is not None}
    is_store = (path / "zarr.json").exists()
    gif = out is not None and out.suffix.lower() == ".gif"
    if out is not None and out.suffix.lower() not in FIGURE_SUFFIXES:
        raise click.BadParameter(f"{out}: unsupported format {out.suffix!r}; use one of "
                                 f"{', '.join(FIGURE_SUFFIXES)}", param_hint="--out")
    steps = steps or f"log:{DEFAULT_FRAMES if gif else DEFAULT_PANELS}"

    if not gif:
        warn_ignored(ctx, ("fps",), "without a .gif --out (a grid of panels has no frame rate)")
    if is_store:
        refuse_ignored(ctx, ("store", "scheduler"), f"for {path}, a store whose pictures are already computed "
                       "(they say where a run folder's pictures are computed; pass the run folder instead)")
        if given:
            raise click.UsageError(f"--{', --'.join(given)}: these set how pictures are computed; {path} is a "
                                   "store whose pictures are already computed (pass the run folder instead)")
        store_path = path
    else:
        store_path = store or path / "probes.zarr"
        computed = _compute(path, store_path, steps, given, scheduler)
        run = run or (computed[0] if len(computed) == 1 else None)
    tree = open_store(store_path)
    have = region_runs(tree)
    if run is None:
        if len(have) != 1:
            raise click.UsageError(f"{store_path} holds pictures of {len(have)} runs ({', '.join(have) or 'none'}); "
                                   "choose one with --run")
        run = have[0]
    out = out or Path(store_path).parent / "plots" / f"regions-{run.replace('/', '_')}.png"
    out.parent.mkdir(parents=True, exist_ok=True)
    figure = regions_figure(tree, run, steps, out, fps=fps)
    click.echo(f"wrote {figure}")


def _compute(run_dir: Path, store: Path, steps: str, given: dict, scheduler: str) -> list[str]:
    """Run the ``regions`` probe over ``run_dir``'s checkpoints that ``steps`` selects, into ``store``;
    the names of the runs (store groups) it covered."""
    from grokscope.engine.discovery import find_runs

    runs = find_runs(run_dir)
    for r in runs:
        _, missing = select_steps(steps, r.steps)
        if missing:
            raise click.UsageError(f"{r.name}: no checkpoint at step(s) {', '.join(map(str, missing))}; "
                                   f"checkpoints: {', '.join(map(str, r.steps[:20]))}"
                                   f"{' ...' if len(r.steps) > 20 else ''}")

    cfg = probe_config({"regions": given}, store, {"regions": steps}, scheduler=scheduler)
    summary = run_with_progress(run_dir, cfg, quiet=True)
    if not summary.ok:
        report_summary(summary)
        raise click.ClickException(f"computing the region pictures of {run_dir} failed (listed above)")
    return [r.name for r in runs]
