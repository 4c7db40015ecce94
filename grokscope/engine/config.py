"""What a probe run is asked to do (:class:`EngineConfig`) and the error that stops it before it
starts (:class:`EngineError`); shared by the driver and the cluster set-up."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from grokscope.errors import GrokscopeError

from .jobs import ProbeRequest


class EngineError(GrokscopeError, RuntimeError):
    """The probe run cannot start (no runs, no model spec, no GPU workers, ...)."""



@dataclass
class EngineConfig:
    """Everything ``grokscope probe`` decides besides the path (see the CLI's help for each)."""

    probes: list[ProbeRequest]
    out: Path | str  # a local folder, or an fsspec URL (s3://bucket/probes.zarr)
    scheduler: str | None = None  # None / "local": in-process LocalCluster; "sync"; or an address
    workers: int | None = None
    threads: int | None = None
    device: str = "cpu"
    overwrite: bool = False
    spec: dict[str, Any] | None = None  # model/dataset/train for runs without run.json
    flush_interval: float = 1.0
    dry_run: bool = False
    trust: Any = None  # grokscope.trust.Trust: code the user vouched for (None: built-ins/entry points only)
    recheck: bool = True  # hash the checkpoints of done jobs and recompute those that changed
    storage_options: dict[str, Any] = field(default_factory=dict)  # fsspec options of remote locations
    cache_budget: int | None = None  # bytes of remote checkpoint files held per machine (.fetch)

    def fetch_settings(self) -> Any:
        """The :class:`.fetch.FetchSettings` the jobs of this request carry."""
        from .fetch import FetchSettings

        return FetchSettings(storage_options=dict(self.storage_options), budget=self.cache_budget)
