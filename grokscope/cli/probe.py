"""``grokscope probe``: run probes over checkpoints into a Zarr store, with progress; also the
progress and summary printing that ``demo`` and ``regions`` use."""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Any

import click

from grokscope.locations import join

from .locations import LOCATION, Location, open_location, storage_options_option
from .locations import cache_budget as parse_budget
from .locations import storage_options as cli_storage_options
from .spec_options import cli_spec, cli_trust, refuse_lone_spec_flags, spec_options, workspace_option, workspace_run
from grokscope.api import probe as run_probes, probe_config
from grokscope.engine.lock import StoreLocked, live_holder
from grokscope.engine.selection import SelectionError, parse_selection
from grokscope.locations import LocationError


class ProbeNames(click.ParamType):
    """A comma-separated list of probe names, checked against the registry (built-ins + entry points)."""

    name = "probe[,probe...]"

    def convert(self, value: Any, param: click.Parameter | None, ctx: click.Context | None) -> list[str]:
        if isinstance(value, list):
            return value
        from grokscope.probes import available_probes

        names = [v.strip() for v in str(value).split(",") if v.strip()]
        valid = available_probes()
        bad = [n for n in names if n not in valid]
        if bad or not names:
            self.fail(f"unknown probe {', '.join(map(repr, bad)) or repr(value)}; valid: "
                      f"{', '.join(sorted(valid))}", param, ctx)
        return names

    def shell_complete(self, ctx: click.Context, param: click.Parameter, incomplete: str):
        from click.shell_completion import CompletionItem

        from grokscope.probes import available_probes

        head, _, last = incomplete.rpartition(",")
        prefix = head + "," if head else ""
        return [CompletionItem(prefix + n) for n in sorted(available_probes()) if n.startswith(last)]


PROBE_NAMES = ProbeNames()


def parse_params(items: tuple[str, ...], metrics: list[str]) -> dict[str, dict[str, str]]:
    """``("lc.radius=0.01", ...)`` → ``{"lc": {"radius": "0.01"}}``, probes checked against ``metrics``."""
    out: dict[str, dict[str, str]] = {}
    for item in items:
        key, eq, value = item.partition("=")
        probe, dot, fld = key.partition(".")
        if not eq or not dot or not probe or not fld:
            raise click.BadParameter(f"{item!r}: expected PROBE.FIELD=VALUE (e.g. lc.radius=0.01)",
                                     param_hint="--param")
        if probe not in metrics:
            raise click.BadParameter(f"{item!r}: probe {probe!r} is not among --metrics "
                                     f"({', '.join(metrics)})", param_hint="--param")
        out.setdefault(probe, {})[fld.strip()] = value
    return out


def parse_steps_options(items: tuple[str, ...], metrics: list[str]) -> dict[str, str | None]:
    """``("log:20", "norm=0,100,1000")`` → ``{probe: spec}`` for every probe of ``metrics``: a bare
    spec applies to the probes without their own ``PROBE=SPEC`` (None: all checkpoints). Specs are
    checked (:func:`.selection.parse_selection`)."""

    default: str | None = None
    own: dict[str, str] = {}
    for item in items:
        probe, eq, spec = item.partition("=")
        if not eq:
            probe, spec = "", item
        probe, spec = probe.strip(), spec.strip()
        if probe and probe not in metrics:
            raise click.BadParameter(f"{item!r}: probe {probe!r} is not among --metrics "
                                     f"({', '.join(metrics)})", param_hint="--steps")
        try:
            parse_selection(spec)
        except SelectionError as e:
            raise click.BadParameter(str(e), param_hint="--steps") from None
        if probe:
            own[probe] = spec
        else:
            default = spec
    return {n: own.get(n, default) for n in metrics}


class _Bar:
    """The progress bar on stderr: jobs done / total, failures, jobs per second. When stderr is not a
    terminal (a log file, a pipe, CI), a plain line every :attr:`LINE_EVERY` seconds instead, so a
    long probe is never silent for minutes."""

    LINE_EVERY = 30.0

    def __init__(self, quiet: bool):
        self.quiet, self.bar, self.failed, self.rate = quiet, None, 0, 0.0
        self.lines, self.total, self.last_line = False, 0, 0.0

    def start(self, jobs: int, skipped: int, scheduler: str) -> None:
        if self.quiet:
            return
        click.echo(f"{jobs} job(s) to run, {skipped} already in the store; scheduler: {scheduler}", err=True)
        if jobs and not sys.stderr.isatty():
            import time

            self.lines, self.total, self.last_line = True, jobs, time.monotonic()
        elif jobs:
            self.bar = click.progressbar(length=jobs, label="probing", file=sys.stderr, show_pos=True,
                                         show_eta=True, item_show_func=self._show)
            self.bar.__enter__()

    def _show(self, _item: Any) -> str:
        return f"{self.failed} failed, {self.rate:.1f} jobs/s"

    def update(self, n: int, done: int, failed: int, rate: float) -> None:
        self.failed, self.rate = failed, rate
        if self.bar is not None:
            self.bar.update(n, current_item=done)
        elif self.lines:
            import time

            now = time.monotonic()
            if now - self.last_line >= self.LINE_EVERY or done >= self.total:
                self.last_line = now
                eta = f", about {(self.total - done) / rate:.0f} s left" if rate > 0 and done < self.total else ""
                click.echo(f"probing: {done}/{self.total} job(s) done, {failed} failed, {rate:.1f} jobs/s{eta}",
                           err=True)

    def close(self) -> None:
        if self.bar is not None:
            self.bar.__exit__(None, None, None)
            self.bar = None


@click.command()
@click.argument("path", type=LOCATION)
@click.option("-m", "--metrics", "--metric", "metrics", type=PROBE_NAMES, multiple=True,
              help="Probes to run: a comma list and/or repeated (default: acc). See `grokscope probes`.")
@click.option("--param", "params", multiple=True, metavar="PROBE.FIELD=VALUE",
              help="A probe parameter, e.g. --param lc.radius=0.01 (repeatable).")
@click.option("-o", "--out", type=Location(must_exist=False), default=None,
              help="The Zarr store: a folder or an fsspec URL such as s3://bucket/probes.zarr (default: "
                   "PATH/probes.zarr; DIR/probes.zarr with --workspace DIR).")
@click.option("--scheduler", default=None, metavar="ADDRESS|sync|local", envvar="GROKSCOPE_SCHEDULER",
              help="A Dask scheduler address (tcp://host:8786), 'sync' to run in this process, or "
                   "'local' (default) for an in-process cluster of worker processes. "
                   "Env: GROKSCOPE_SCHEDULER.")
@click.option("--workers", type=click.IntRange(1), default=None,
              help="Worker processes of the local cluster (default: one per core; per GPU with --device cuda).")
@click.option("--threads", type=click.IntRange(1), default=None,
              help="Torch threads per worker (default: cores / workers locally, 1 on a cluster).")
@click.option("--device", default="cpu", show_default=True,
              help="Device of the probes; 'cuda' jobs need workers with the GPU resource "
                   "(`dask worker ADDRESS --resources GPU=1`).")
@click.option("--steps", "steps", multiple=True, metavar="[PROBE=]SPEC",
              help="Which checkpoints to probe: 'all' (default), '0,100,1000' (exactly these steps), "
                   "'log:N' (about N log-spaced) or 'every:K' (one near every K steps); 'PROBE=SPEC' "
                   "for one probe only, e.g. --steps norm=log:10 (repeatable).")
@click.option("--overwrite/--resume", default=False, show_default=True,
              help="Recompute (and replace) results already in the store, or skip them.")
@click.option("--flush-interval", type=click.FloatRange(0), default=1.0, show_default=True,
              help="Seconds between commits of finished jobs to the store, stretched to 10x the "
                   "last commit's duration when commits are slow (0: commit every job).")
@click.option("--recheck/--no-recheck", default=True, show_default=True,
              help="Hash the checkpoints of jobs already done and recompute those whose content "
                   "changed since (a replaced checkpoint); --no-recheck trusts the store.")
@click.option("--dry-run", is_flag=True, help="Show what would be computed, compute nothing.")
@click.option("--estimate", is_flag=True,
              help="Jobs, bytes to read and write, and a time projected from one timed job per probe; "
                   "writes nothing.")
@click.option("--follow", is_flag=True,
              help="While a trainer is writing a run under PATH (its run folder's lock names a live "
                   "process), keep probing its new checkpoints as they appear; return once it is gone.")
@click.option("--json", "as_json", is_flag=True, help="Print the summary as JSON on stdout.")
@click.option("-q", "--quiet", is_flag=True, help="No progress bar.")
@click.option("--split-tolerance", type=click.FloatRange(0), default=0.01, show_default=True,
              help="How far acc may differ from the run's own logged accuracy at the same step before "
                   "the split check warns that the data or split is not the run's.")
@storage_options_option
@click.option("--cache-budget", default=None, metavar="SIZE",
              help="For checkpoints at a URL: the most bytes of checkpoint files held on each machine's "
                   "local disk at once (e.g. 2GB; default: one checkpoint per worker thread). Workers fetch "
                   "a checkpoint, probe it and delete it.")
@spec_options
@workspace_option
@click.pass_context
def probe(ctx: click.Context, path: Path, metrics: tuple[list[str], ...], params: tuple[str, ...],
          out: Path | str | None, scheduler: str | None, workers: int | None, threads: int | None, device: str,
          steps: tuple[str, ...], overwrite: bool, flush_interval: float, recheck: bool, dry_run: bool,
          estimate: bool, follow: bool, as_json: bool, quiet: bool, split_tolerance: float, model: str | None,
          model_kwargs: str | None, dataset: str | None, dataset_kwargs: str | None, dataset_seed: int,
          loss: str | None, trust_code: str | None, workspace: Path | None, storage_options: str | None = None,
          cache_budget: str | None = None) -> None:
    """Run probes over every checkpoint under PATH (or those --steps selects) into a Zarr store (one
    group per run and probe).

    Jobs already in the store are skipped (resume); new checkpoints are appended. Exits non-zero when
    any job failed, after listing each failed job and why.
    """
    from grokscope.probes import ProbeError

    names: list[str] = []
    for group in metrics or (["acc"],):
        for n in group:
            if n not in names:
                names.append(n)
    overrides = parse_params(params, names)
    selections = parse_steps_options(steps, names)
    if device not in ("cpu", "cuda") and not device.startswith("cuda:"):
        raise click.BadParameter(f"{device!r}: expected cpu or cuda", param_hint="--device")
    refuse_lone_spec_flags(ctx, ("model_kwargs", "dataset_kwargs", "dataset_seed", "loss"),
                            model is None and dataset is None)
    if follow and dry_run:
        click.echo("warning: --follow is ignored with --dry-run (it shows what the store lacks now)", err=True)
    if workers is not None and scheduler not in (None, "", "local"):
        click.echo(f"warning: --workers {workers} is ignored with --scheduler {scheduler} (it sizes the "
                   "local cluster; the scheduler's own workers run the jobs)", err=True)
    remote = {"storage_options": cli_storage_options(storage_options), "cache_budget": parse_budget(cache_budget)}
    path = open_location(path, storage_options)  # a URL: listed once, here
    if follow and hasattr(path, "source"):
        raise click.UsageError(f"--follow watches a training run on this machine's disk; {path} is remote "
                               "(run the same command again to probe the checkpoints added since)")
    trust = cli_trust(model, dataset, trust_code)
    spec = cli_spec(model, model_kwargs, dataset, dataset_kwargs, dataset_seed, loss, trust, path)
    home = workspace if workspace is not None else path  # where the store goes
    if out is None and hasattr(home, "source"):  # a remote series: the store beside it
        out = join(str(home), "probes.zarr")
    path = workspace_run(path, workspace)
    try:
        cfg = probe_config({n: overrides.get(n) for n in names}, out or home / "probes.zarr", selections,
                           scheduler=scheduler, workers=workers, threads=threads, device=device,
                           overwrite=overwrite, spec=spec, flush_interval=flush_interval, dry_run=dry_run,
                           trust=trust, recheck=recheck, **remote)
    except ProbeError as e:
        raise click.BadParameter(str(e), param_hint="--param/--metrics") from e
    if estimate:
        _print_estimate(path, cfg, as_json)
        return
    more = {"follow": training_under(path)} if follow and not dry_run else {}
    summary = run_with_progress(path, cfg, quiet=quiet or as_json, split_tolerance=split_tolerance, **more)
    report_summary(summary, as_json, dry_run)
    if not summary.ok:
        ctx.exit(1)


def _print_estimate(path: Path, cfg: Any, as_json: bool) -> None:
    """``probe --estimate``: :func:`grokscope.engine.estimate.estimate` in words (or JSON on stdout)."""
    from grokscope.engine.discovery import DiscoveryError
    from grokscope.engine.driver import EngineError
    from grokscope.engine.estimate import estimate
    from grokscope.engine.store_schema import StoreError

    try:
        est = estimate(path, cfg)
    except (DiscoveryError, StoreError, EngineError) as e:
        raise click.ClickException(str(e)) from None
    if as_json:
        click.echo(json.dumps(est.as_dict(), indent=2))
        return
    for w in est.warnings:
        click.echo(f"warning: {w}", err=True)
    for line in est.lines():
        click.echo(line)


def training_under(path: Path):
    """A callable telling whether a trainer is writing a run under ``path`` now: whether any run
    folder found there has a lock held by a live process (:func:`.lock.live_holder`; a store's lock
    is not a run folder's, so this probe run's own lock does not count)."""
    from grokscope.engine.discovery import DiscoveryError, find_runs

    def live() -> bool:
        try:
            return any(live_holder(r.path) for r in find_runs(Path(path)))
        except DiscoveryError:
            return False

    return live


def run_with_progress(path: Path, cfg: Any, quiet: bool = False, progress: Any = None, **follow: Any) -> Any:
    """:func:`grokscope.api.probe` of ``cfg`` (``**follow``: its ``follow``/``poll``/``split_tolerance``) with the progress
    bar on stderr (or the callback ``progress(n, done, failed, rate)`` instead); refusals become
    ClickExceptions.

    Returns the engine's ``Summary`` (also used by ``grokscope demo``, with ``follow=`` and ``poll=``).
    """
    from grokscope.engine.discovery import DiscoveryError
    from grokscope.engine.driver import EngineError, Interrupted
    from grokscope.engine.store_schema import StoreError

    bar = _Bar(quiet or progress is not None)
    try:
        return run_probes(path, config=cfg, progress=progress or bar.update, start=bar.start, **follow)
    except Interrupted as e:
        bar.close()
        click.echo(str(e), err=True)
        sys.exit(e.code)  # the shell's code for a run ended by that signal: 130 (SIGINT), 143 (SIGTERM)
    except (DiscoveryError, StoreError, StoreLocked, EngineError, LocationError) as e:
        raise click.ClickException(str(e)) from None
    finally:
        bar.close()


def report_summary(s: Any, as_json: bool = False, dry_run: bool = False) -> None:
    if as_json:
        click.echo(json.dumps({
            "store": str(s.store), "runs": s.runs, "jobs": s.jobs, "skipped": s.skipped,
            "excluded": s.excluded,
            "completed": s.completed, "failed": len(s.failures), "seconds": round(s.seconds, 3),
            "probe_seconds": round(s.probe_seconds, 3),
            "seconds_by_probe": {k: round(v, 3) for k, v in s.seconds_by_probe.items()},
            "scheduler": s.scheduler, "took_over_lock": s.took_over,
            "failures": [vars(f) for f in s.failures], "warnings": s.warnings}, indent=2))
    err = (lambda m: click.echo(m, err=True))
    if s.took_over:
        err(f"took over a stale lock of {s.took_over.get('pid')} on {s.took_over.get('host')} "
            "(that process is gone)")
    for w in s.warnings:
        err(f"warning: {w}")
    if dry_run:
        err(f"dry run: {s.jobs} job(s) over {s.runs} run(s) would be computed, {s.skipped} are done")
        return
    rate = s.completed / s.seconds if s.seconds > 0 else 0.0
    left_out = f", {s.excluded} not selected by --steps" if s.excluded else ""
    err(f"{s.completed} job(s) done, {len(s.failures)} failed, {s.skipped} skipped (already done){left_out} "
        f"over {s.runs} run(s) in {s.seconds:.1f} s ({rate:.1f} jobs/s) -> {s.store}")
    if s.failures:
        err(f"{len(s.failures)} failed job(s):")
        for f in s.failures:
            err(f"  {f.line()}")
