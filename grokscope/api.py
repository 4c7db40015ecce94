"""The front door of the probe engine: ``grokscope.probe(path, {"acc": {}, "lc": {"radius": "0.01"}})``.

:func:`probe_config` is the one place a request "probe these runs" is built (each probe's parameters
parsed and bounded by the probe itself); :func:`probe` runs one. ``grokscope probe``, ``grokscope demo``,
``grokscope regions`` and ``grokscope reproduce`` all come through here.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Mapping
from pathlib import Path
from typing import Any

from grokscope.engine.storefs import store_fs
from grokscope.locations import is_url, join
from grokscope.runlog import DEFAULT_TOLERANCE, store_split_checks

Probes = Mapping[str, Mapping[str, Any] | None] | Iterable[str] | str


def probe_config(probes: Probes, out: str | Path, steps: Mapping[str, str | None] | None = None,
                 **options: Any) -> Any:
    """The :class:`~grokscope.engine.config.EngineConfig` of a request.

    ``probes``: probe names (``"acc,lc"``, ``["acc", "lc"]``) or ``{name: {field: value}}``; values are
    parsed as ``--param`` text is (``"0.01"``, ``"a,b"``, JSON) or taken as they are. ``steps``:
    ``{name: selection}`` (``"log:16"``, ``"every:5"``, ``"0,10,20"``; None: every checkpoint).
    ``out``: the store, a local folder or an fsspec URL (``s3://bucket/probes.zarr``).
    ``options``: the other fields of ``EngineConfig`` (``scheduler``, ``workers``, ``threads``,
    ``device``, ``overwrite``, ``spec``, ``flush_interval``, ``dry_run``, ``trust``, ``recheck``,
    ``storage_options``: the filesystem's keyword arguments for URLs, such as
    ``{"endpoint_url": ..., "key": ...}``, used and never written into the store; ``cache_budget``).
    Raises :class:`~grokscope.probes.ProbeError` naming the probe and parameter at fault.
    """
    from grokscope.engine.config import EngineConfig
    from grokscope.engine.jobs import ProbeRequest
    from grokscope.probes import get_probe

    if isinstance(probes, str):
        probes = [p.strip() for p in probes.split(",") if p.strip()]
    wanted = dict(probes) if isinstance(probes, Mapping) else {name: None for name in probes}
    requests = [ProbeRequest(name, get_probe(name).make_params({k: _text(v) for k, v in (given or {}).items()}),
                             (steps or {}).get(name))
                for name, given in wanted.items()]
    return EngineConfig(probes=requests, out=str(out) if is_url(out) else Path(out), **options)


def probe(path: str | Path, probes: Probes = "acc", *, out: str | Path | None = None,
          steps: Mapping[str, str | None] | None = None, config: Any = None,
          progress: Callable[[int, int, int, float], None] | None = None,
          start: Callable[[int, int, str], None] | None = None, follow: Callable[[], bool] | None = None,
          poll: float = 1.0, split_tolerance: float = DEFAULT_TOLERANCE, **options: Any) -> Any:
    """Run ``probes`` over every checkpoint under ``path`` into the store ``out`` (default
    ``path/probes.zarr``; an fsspec URL such as ``s3://bucket/probes.zarr`` with
    ``storage_options={...}`` among ``options``, used and never stored); returns the engine's ``Summary`` (jobs done, failures with their reasons,
    warnings). ``config``: a prepared :func:`probe_config` instead of ``probes``/``out``/``steps``/
    ``options``. ``progress``, ``start``, ``follow``, ``poll``: see
    :func:`grokscope.engine.driver.probe_runs`. Resumable: what the store holds is not recomputed.
    When ``acc`` was probed, its accuracies are compared with each run's own log
    (:func:`grokscope.runlog.store_split_checks`, ``split_tolerance``): a run whose splits look
    swapped or different from its training's adds its lines to the summary's warnings.
    """
    from grokscope.engine.driver import probe_runs

    if config is None:
        config = probe_config(probes, out if out is not None else join(path, "probes.zarr"), steps, **options)
    summary = probe_runs(path, config, progress=progress, start=start, follow=follow, poll=poll)
    if any(r.name == "acc" for r in config.probes) and not config.dry_run and \
            store_fs(config.out, config.storage_options).exists("zarr.json"):
        for lines in store_split_checks(config.out, split_tolerance, storage_options=config.storage_options).values():
            summary.warnings.extend(lines)
    return summary


def _text(value: Any) -> str:
    """A Python value as ``--param`` text (lists as JSON, so nested values survive)."""
    import json

    if isinstance(value, str):
        return value
    if isinstance(value, (list, tuple, dict)):
        return json.dumps(value)
    return str(value).lower() if isinstance(value, bool) else str(value)
