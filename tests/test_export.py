"""``grokscope export``: what it writes is read back with each tracker's own reader (TensorBoard's
``EventAccumulator``; the records of W&B's offline run file, parsed with wandb's own protobuf) and every
finite scalar of the store is found there, at its own step."""

from __future__ import annotations

import glob
import json
import struct
from pathlib import Path

import numpy as np
import pytest
from click.testing import CliRunner

from grokscope.cli import main
from grokscope.engine.driver import EngineConfig, probe_runs
from grokscope.engine.jobs import ProbeRequest
from grokscope.export import STEP_METRIC, ExportError, scalar_series, to_wandb
from grokscope.probes import get_probe
from grokscope.reading import open_store
from tests.helpers import make_run

STEPS = [0, 2, 5, 11, 30]


@pytest.fixture(scope="module")
def store(tmp_path_factory) -> Path:
    """Two runs probed with acc (split dim) and spectral (layer dim; NaN alphas: layers of < 20
    eigenvalues), the second run's steps probed in two passes, later steps first."""
    pytest.importorskip("powerlaw")
    root = tmp_path_factory.mktemp("exp")
    out = root / "probes.zarr"
    reqs = [ProbeRequest(n, get_probe(n).make_params({}), None) for n in ("acc", "spectral")]
    make_run(root / "runs" / "a", STEPS, seed=0)
    make_run(root / "runs" / "b", STEPS, seed=1)
    assert probe_runs(root / "runs" / "a", EngineConfig(probes=reqs, out=out, scheduler="sync")).ok
    late = [ProbeRequest(r.name, r.params, "11,30") for r in reqs]
    assert probe_runs(root / "runs" / "b", EngineConfig(probes=late, out=out, scheduler="sync")).ok
    assert probe_runs(root / "runs" / "b", EngineConfig(probes=reqs, out=out, scheduler="sync")).ok
    return out


def _expected(store: Path) -> dict[tuple[str, str], dict[int, float]]:
    """``{(run, tag): {step: value}}`` of every finite scalar, read straight from the store."""
    tree = open_store(store)
    out: dict[tuple[str, str], dict[int, float]] = {}
    for run in ("a", "b"):
        acc = tree[f"{run}/acc"].to_dataset()
        for split in acc.split.values:
            for var in ("accuracy", "loss"):
                out[(run, f"acc/{var}/split={split}")] = dict(zip(
                    acc.step.values.tolist(), acc[var].sel(split=split).values.tolist()))
        sp = tree[f"{run}/spectral"].to_dataset()
        for var in get_probe("spectral").outputs:
            for layer in sp.layer.values:
                vals = sp[var].sel(layer=layer).values
                out[(run, f"spectral/{var}/layer={layer}")] = {
                    int(s): float(v) for s, v in zip(sp.step.values, vals) if np.isfinite(v)}
    return out


def test_series_cover_every_finite_scalar(store):
    series = list(scalar_series(store))
    got = {(s.run, s.tag): dict(zip(s.steps.tolist(), s.values.tolist())) for s in series}
    want = _expected(store)
    assert got == want
    assert sum(s.n_nonfinite for s in series) > 0  # the NaN alphas are counted, not exported
    assert all(list(s.steps) == sorted(s.steps) for s in series)
    assert set(got[("b", "acc/accuracy/split=test")]) == set(STEPS)


def test_tensorboard_event_files_hold_every_point(store, tmp_path):
    pytest.importorskip("tensorboard")
    res = CliRunner().invoke(main, ["export", str(store), "--to", "tensorboard", str(tmp_path / "tb")])
    assert res.exit_code == 0, res.output
    _assert_event_files_hold(tmp_path / "tb", _expected(store), res.output)


def test_a_store_on_object_storage_exports_the_same(store, tmp_path, s3):
    """``export s3://…/probes.zarr``: the store read where it is, every point as from the local copy."""
    pytest.importorskip("tensorboard")
    url = s3.url("probes.zarr")
    s3.fs().put(str(store), url, recursive=True)
    res = CliRunner().invoke(main, ["export", url, "--to", "tensorboard", str(tmp_path / "tb")])
    assert res.exit_code == 0, res.output
    _assert_event_files_hold(tmp_path / "tb", _expected(store), res.output)
    res = CliRunner().invoke(main, ["export", s3.url("nothing.zarr"), "--to", "tensorboard", str(tmp_path / "tb2")])
    assert res.exit_code != 0 and len(res.output.strip().splitlines()) == 1 and "nothing.zarr" in res.output, res.output


def _assert_event_files_hold(tb: Path, want: dict[tuple[str, str], dict[int, float]], output: str) -> None:
    """The event files under ``tb/<run>/`` hold every point of ``want``, at its step, in order."""
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    n_points = sum(len(v) for v in want.values())
    assert f"{n_points} points of {len(want)} scalars from 2 run(s)" in output
    for run in ("a", "b"):
        acc = EventAccumulator(str(tb / run), size_guidance={"scalars": 0})
        acc.Reload()
        tags = set(acc.Tags()["scalars"])
        assert tags == {t for r, t in want if r == run and want[(r, t)]}
        for tag in tags:
            events = acc.Scalars(tag)
            assert [e.step for e in events] == sorted(want[(run, tag)])  # every step, in order
            np.testing.assert_allclose([e.value for e in events], [want[(run, tag)][s] for s in sorted(want[(run, tag)])],
                                       rtol=1e-6, atol=1e-30)  # float32 simple_value


def _wandb_records(path: str) -> list:
    """The protobuf records of a W&B ``.wandb`` run file (a LevelDB-style log: a 7-byte header
    ``:W&B`` + magic 0xBEE1 + version, then 32 KiB blocks of records each with a 7-byte header
    ``crc32c, length, type`` where type 1 = full, 2/3/4 = first/middle/last piece)."""
    from wandb.proto import wandb_internal_pb2 as pb

    data = Path(path).read_bytes()
    ident, magic, _ = struct.unpack("<4sHB", data[:7])
    assert ident == b":W&B" and magic == 0xBEE1
    pos, pieces, records = 7, b"", []
    while pos + 7 <= len(data):
        if 32768 - pos % 32768 < 7:
            pos += 32768 - pos % 32768
            continue
        _, length, kind = struct.unpack("<IHB", data[pos:pos + 7])
        pos += 7
        if kind == 0:
            break
        chunk, pos = data[pos:pos + length], pos + length
        if kind == 1:
            records.append(chunk)
        elif kind == 2:
            pieces = chunk
        elif kind == 3:
            pieces += chunk
        elif kind == 4:
            records.append(pieces + chunk)
    out = []
    for raw in records:
        r = pb.Record()
        r.ParseFromString(raw)
        out.append(r)
    return out


def test_wandb_offline_runs_hold_every_point_on_the_custom_step(store, tmp_path, monkeypatch):
    pytest.importorskip("wandb")
    monkeypatch.setenv("WANDB_MODE", "offline")
    monkeypatch.setenv("WANDB_SILENT", "true")
    monkeypatch.setenv("WANDB_CONFIG_DIR", str(tmp_path / "wbconfig"))
    summary = to_wandb(store, tmp_path / "wb", project="grokscope-test")
    assert summary.runs == ["a", "b"]
    want = _expected(store)
    files = sorted(glob.glob(str(tmp_path / "wb" / "wandb" / "offline-run-*" / "run-*.wandb")))
    assert len(files) == 2
    for path in files:
        records = _wandb_records(path)
        (run_rec,) = [r.run for r in records if r.WhichOneof("record_type") == "run"]
        run = run_rec.display_name
        metrics = [r.metric for r in records if r.WhichOneof("record_type") == "metric"]
        assert {m.glob_name: m.step_metric for m in metrics if m.glob_name} == {
            "acc/*": STEP_METRIC, "spectral/*": STEP_METRIC}
        got: dict[str, dict[int, float]] = {}
        for r in records:
            if r.WhichOneof("record_type") != "history":
                continue
            items = {i.key or "/".join(i.nested_key): json.loads(i.value_json) for i in r.history.item}
            step = int(items.pop(STEP_METRIC))
            for k, v in items.items():
                if not k.startswith("_"):
                    got.setdefault(k, {})[step] = v
        mine = {t: v for (r, t), v in want.items() if r == run and v}
        assert set(got) == set(mine)
        for tag, points in mine.items():
            assert set(got[tag]) == set(points)
            np.testing.assert_allclose([got[tag][s] for s in sorted(points)], [points[s] for s in sorted(points)],
                                       rtol=1e-12)


def test_bad_input_is_one_line(tmp_path, store):
    res = CliRunner().invoke(main, ["export", str(store), "--to", "tensorboard"])
    assert res.exit_code != 0 and "needs DIR" in res.output
    res = CliRunner().invoke(main, ["export", str(tmp_path), "--to", "tensorboard", str(tmp_path / "tb")])
    assert res.exit_code != 0 and "not a probe store" in res.output and len(res.output.strip().splitlines()) == 1
    with pytest.raises(ExportError, match="nope"):
        list(scalar_series(store, runs="nope"))
