"""``grokscope probe --estimate``: the jobs the run would do, the checkpoint bytes it would read, the
result bytes of one timed job per probe, and nothing written (no store created, an existing store
byte-identical, no lock)."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

import pytest
from click.testing import CliRunner

from grokscope.cli import main
from grokscope.engine.driver import EngineConfig, probe_runs
from grokscope.engine.estimate import estimate
from grokscope.engine.jobs import ProbeRequest
from grokscope.probes import get_probe
from tests.helpers import make_run

STEPS = [0, 1, 3, 8, 20]


def _digest(root: Path) -> dict[str, str]:
    return {str(p.relative_to(root)): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(root.rglob("*")) if p.is_file()}


def _cfg(out: Path, steps: str | None = None) -> EngineConfig:
    return EngineConfig(probes=[ProbeRequest("acc", get_probe("acc").make_params({}), steps),
                                ProbeRequest("spectral", get_probe("spectral").make_params({}), steps)],
                        out=out, scheduler="sync")


def test_estimate_counts_jobs_and_bytes_and_writes_nothing(tmp_path):
    run = make_run(tmp_path / "r", STEPS)
    before = _digest(tmp_path)
    res = CliRunner().invoke(main, ["probe", str(run), "--metrics", "acc,spectral", "--estimate", "--json"])
    assert res.exit_code == 0, res.output
    est = json.loads(res.output)
    assert est["jobs"] == 10 and est["jobs_by_probe"] == {"acc": 5, "spectral": 5} and est["checkpoints"] == 5
    ckpt_bytes = sum(p.stat().st_size for p in (run / "checkpoints").glob("*.safetensors"))
    assert est["read_bytes"] == ckpt_bytes and est["recheck_bytes"] == 0
    assert set(est["seconds_by_probe"]) == {"acc", "spectral"} and all(s > 0 for s in est["seconds_by_probe"].values())
    # acc: loss and accuracy on two splits, float64 = 32 bytes a job
    assert est["write_bytes_by_probe"]["acc"] == 5 * 32
    assert est["projected_seconds"] > 0 and not est["failures"]
    assert _digest(tmp_path) == before and not (run / "probes.zarr").exists()


def test_estimate_of_a_resumed_store_counts_what_is_left(tmp_path):
    run = make_run(tmp_path / "r", STEPS)
    out = tmp_path / "p.zarr"
    assert probe_runs(run, _cfg(out, "0,1")).ok
    before = _digest(out)
    est = estimate(run, _cfg(out))
    assert est.jobs == 6 and est.skipped == 4 and est.checkpoints == 3
    done_bytes = sum((run / "checkpoints" / f"step-{s:08d}.safetensors").stat().st_size for s in (0, 1))
    assert est.recheck_bytes == done_bytes
    assert _digest(out) == before  # no lock file, no write
    assert "estimate: 6 job(s) over 1 run(s) and 3 checkpoint(s), 4 already done" in est.lines()[0]


def test_a_failing_probe_is_reported_not_timed(tmp_path):
    run = make_run(tmp_path / "r", [0, 2])
    (run / "checkpoints" / "step-00000000.safetensors").write_bytes(b"garbage")
    est = estimate(run, EngineConfig(probes=[ProbeRequest("acc", get_probe("acc").make_params({}), "0")],
                                     out=tmp_path / "p.zarr", scheduler="sync"))
    assert est.jobs == 1 and "acc" not in est.seconds_by_probe
    assert any("unreadable" in f or "safetensors" in f for f in est.failures)


@pytest.mark.parametrize("flag", ["--estimate"])
def test_estimate_refuses_what_the_run_refuses(tmp_path, flag):
    res = CliRunner().invoke(main, ["probe", str(tmp_path), "--metrics", "acc", flag])
    assert res.exit_code != 0 and res.output.strip().count("\n") == 0
