"""The engine's GPU path, checked as far as a CPU allows: the precision each probe needs is in force
during its forward and backward passes and the user's own settings come back; GPU jobs go only to
workers that advertise the GPU resource; GPU workers are spawned, one per device; every probe keeps
to the device the engine gives it (explicit ``cpu``, and ``meta`` where shapes suffice); no code
hard-codes a device, and the client never touches CUDA."""

from __future__ import annotations

import re
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file
from torch import nn

from grokscope import runs
from grokscope.datasets import load_dataset
from grokscope.engine.discovery import find_runs
from grokscope.engine.jobs import ProbeRequest, Task, run_task
from grokscope.functional.precision import (PRECISION_MODES, _pairs, _restore, _save, fp32_state, is_strict,
                                            precision_guard, reduced_precision)
from grokscope.models import build_model
from grokscope.probes import BUILTIN, Probe, ProbeContext, ProbeError, get_probe
from grokscope.trust import Trust
from tests.engine.conftest import ROOT
from tests.probes.test_contract import DIGITS, MLP, case

# -- a model that records what its forward and backward passes ran under ------------------------

RECORDS: list[tuple[str, dict]] = []


class Recorder(nn.Module):
    """Identity; appends ``("forward", fp32_state())`` per call, ``("backward", ...)`` per gradient."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        RECORDS.append(("forward", fp32_state()))
        if x.requires_grad:
            x.register_hook(lambda g: (RECORDS.append(("backward", fp32_state())), g)[1])
        return x


def recording_mlp(in_dim: int = 64, hidden: int = 12, n_classes: int = 10) -> nn.Module:
    """An MLP for 8x8 digits with a :class:`Recorder` after its hidden ReLU."""
    return nn.Sequential(nn.Flatten(), nn.Linear(in_dim, hidden), nn.ReLU(), Recorder(),
                         nn.Linear(hidden, n_classes))


def _flags() -> tuple:
    """Every precision setting torch has, read independently of the module under test (legacy flags
    that torch refuses to read in a mixed state read as 'refused')."""
    def legacy(read):
        try:
            return read()
        except RuntimeError:
            return "refused"
    return (tuple(torch._C._get_fp32_precision_getter(b, o) for b, o in _pairs()),
            legacy(torch.get_float32_matmul_precision), legacy(lambda: torch.backends.cudnn.allow_tf32),
            legacy(lambda: torch.backends.cuda.matmul.allow_tf32), torch.is_autocast_enabled("cpu"))


@pytest.fixture
def restore_flags():
    saved = _save()
    yield
    _restore(saved)


def _one_checkpoint_run(path: Path, model: dict, dataset: dict, steps=(0,)) -> Path:
    torch.manual_seed(0)
    net = build_model(model, Trust.of([__name__]))
    runs.write_run_json(path, model, dataset, {"loss": "ce"})
    for s in steps:
        runs.save_checkpoint(runs.checkpoint_path(path, s), {k: v.clone() for k, v in net.state_dict().items()}, s)
    return path


def _task(run_dir: Path, name: str, overrides: dict, device: str = "cpu") -> Task:
    found = find_runs(run_dir)[0]
    req = ProbeRequest(name, get_probe(name).make_params(overrides))
    return Task(run="r", spec=found.spec, checkpoint=found.checkpoints[0], previous=None, probes=(req,),
                device=device, trust=Trust.of([__name__]), where=str(run_dir / "run.json"))


SMALL = {"lc": {"n_points": "8", "n_dirs": "4", "radius": "0.01"}, "regions": {"resolution": "8"},
         "collapse": {"n_points": "16"}, "acc": {}}


def test_strict_probes_run_in_ieee_float32_and_the_users_settings_come_back(tmp_path, restore_flags):
    """The user runs TF32/bf16 and autocast; ``lc``, ``regions`` and ``collapse`` still see IEEE
    float32 and no autocast in every forward and backward pass the engine's job makes, ``acc`` (a
    "default" probe) sees the user's settings, and the settings are the user's again afterwards."""
    run = _one_checkpoint_run(tmp_path / "r", {"factory": f"{__name__}:recording_mlp", "kwargs": {}},
                              {**DIGITS, "kwargs": {"n_train": 40, "n_test": 20}})
    torch.set_float32_matmul_precision("medium")  # TF32 on cuBLAS, bf16 on oneDNN
    torch.backends.cudnn.allow_tf32 = True        # torch's default: TF32 convolutions
    with torch.autocast("cpu", dtype=torch.bfloat16):
        before = _flags()
        seen = {}
        for name, overrides in SMALL.items():
            RECORDS.clear()
            (out,) = run_task(_task(run, name, overrides))
            assert out.ok, out.error
            seen[name] = list(RECORDS)
            assert _flags() == before, name
    for name in ("lc", "regions", "collapse"):
        assert get_probe(name).precision_mode == "strict"
        assert any(kind == "forward" for kind, _ in seen[name]), name
        for kind, state in seen[name]:
            assert is_strict(state), (name, kind, state)
    assert any(kind == "backward" for kind, _ in seen["collapse"])  # gradients under the guard too
    assert get_probe("acc").precision_mode == "default"
    (_, state), *_ = seen["acc"]
    assert state["autocast.cpu"] is True and state["mkldnn.matmul"] == "bf16" and state["cuda.matmul"] == "tf32"
    assert not torch.is_autocast_enabled("cpu") and torch.get_float32_matmul_precision() == "medium"


@pytest.mark.parametrize("setup", [
    "defaults", "matmul medium", "cudnn tf32 off (legacy)", "new api: conv ieee only", "new api: all tf32",
    "new api: mkldnn bf16"])
def test_the_guard_restores_every_setting_also_when_the_body_raises(setup, restore_flags):
    {"defaults": lambda: None,
     "matmul medium": lambda: torch.set_float32_matmul_precision("medium"),
     "cudnn tf32 off (legacy)": lambda: setattr(torch.backends.cudnn, "allow_tf32", False),
     "new api: conv ieee only": lambda: setattr(torch.backends.cudnn.conv, "fp32_precision", "ieee"),
     "new api: all tf32": lambda: setattr(torch.backends, "fp32_precision", "tf32"),
     "new api: mkldnn bf16": lambda: setattr(torch.backends.mkldnn.matmul, "fp32_precision", "bf16"),
     }[setup]()
    before = _flags()
    with pytest.raises(KeyError):
        with precision_guard("strict"):
            assert is_strict()
            # torch's own legacy readers agree with the guard (they refuse a mix of old and new flags)
            assert torch.backends.cudnn.allow_tf32 is False and torch.backends.cuda.matmul.allow_tf32 is False
            raise KeyError("body fails")
    assert _flags() == before
    with reduced_precision():
        state = fp32_state()
        assert state["cuda.matmul"] == state["cuda.conv"] == "tf32" and torch.backends.cudnn.allow_tf32 is True
    assert _flags() == before
    with precision_guard("default"):
        assert _flags() == before
    with pytest.raises(ValueError, match="precision mode must be one of strict, default, got 'fast'"):
        with precision_guard("fast"):
            pass


def test_autocast_is_off_inside_the_guard_and_on_again_after():
    lin = nn.Linear(4, 4)
    x = torch.randn(2, 4)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        assert lin(x).dtype == torch.bfloat16
        with precision_guard("strict"):
            assert lin(x).dtype == torch.float32 and not torch.is_autocast_enabled("cpu")
        assert lin(x).dtype == torch.bfloat16


class _BadMode(Probe):
    name = "badmode"
    precision_mode = "fast"


def test_an_unknown_precision_mode_is_refused_in_one_line(monkeypatch):
    from grokscope.testing import ProbeContractError, check_probe

    monkeypatch.setenv("GROKSCOPE_PROBES", f"badmode={__name__}:_BadMode")
    with pytest.raises(ProbeError) as e:
        get_probe("badmode")
    assert str(e.value) == (f"{__name__}:_BadMode (probe 'badmode'): precision_mode must be one of "
                            "strict, default, got 'fast'")
    with pytest.raises(ProbeContractError, match="precision_mode must be one of strict, default, got 'fast'"):
        check_probe(_BadMode, None, None)
    assert {get_probe(n).precision_mode for n in BUILTIN} <= set(PRECISION_MODES)


# -- routing: GPU jobs only on GPU workers, GPU workers spawned -----------------------------------

def test_gpu_jobs_go_only_to_the_worker_that_advertises_the_gpu(tmp_path):
    """A real cluster of two worker processes, one started with ``GPU=1``: the driver's ``cuda``
    submissions all run on that one; ``cpu`` submissions use both."""
    from distributed import Client, Nanny, Scheduler, SpecCluster, get_task_stream

    from grokscope.engine.cluster import _forkserver
    from grokscope.engine.dispatch import results as _results

    run = _one_checkpoint_run(tmp_path / "r", MLP, {**DIGITS, "kwargs": {"n_train": 40, "n_test": 20}},
                              steps=range(8))
    found = find_runs(run)[0]
    req = ProbeRequest("acc", get_probe("acc").default_params())
    tasks = [Task(run="r", spec=found.spec, checkpoint=ck, previous=None, probes=(req,), device="cpu")
             for ck in found.checkpoints]
    spec = {"gpu": {"cls": Nanny, "options": {"nthreads": 1, "resources": {"GPU": 1}}},
            "cpu": {"cls": Nanny, "options": {"nthreads": 1}}}
    with _forkserver(), SpecCluster(workers=spec, scheduler={"cls": Scheduler, "options": {"dashboard_address": ":0"}}
                                    ) as cluster, Client(cluster) as client:
        client.wait_for_workers(2)
        names = {addr: w["name"] for addr, w in client.scheduler_info()["workers"].items()}
        with get_task_stream(client) as ts:
            results = list(_results(client, tasks, "cuda"))
        assert len(results) == 8 and all(outs[0].ok for _, outs in results)
        ran_on = [names[t["worker"]] for t in ts.data if t["key"].startswith("run_task")]
        assert len(ran_on) == 8 and set(ran_on) == {"gpu"}
        with get_task_stream(client) as ts:
            assert len(list(_results(client, tasks * 4, "cpu"))) == 32
        assert {names[t["worker"]] for t in ts.data if t["key"].startswith("run_task")} == {"gpu", "cpu"}


def _worker_facts() -> tuple[str, bool, bool]:
    import os
    import signal

    import torch

    return (os.environ.get("CUDA_VISIBLE_DEVICES", "<unset>"), signal.getsignal(signal.SIGINT) == signal.SIG_IGN,
            torch.cuda.is_initialized())


def test_local_gpu_workers_are_spawned_one_per_device():
    """``--device cuda`` on one machine: one spawned worker process per visible GPU, each seeing only
    its own (``CUDA_VISIBLE_DEVICES``), advertising ``GPU=1``, ignoring Ctrl-C like the CPU workers."""
    from distributed import Client

    from grokscope.engine.cluster import _gpu_cluster, _spawn

    with _spawn(), _gpu_cluster(["3", "5"]) as cluster, Client(cluster) as client:
        client.wait_for_workers(2)
        kinds = {type(w.process.process._process).__name__ for w in cluster.workers.values()}
        assert kinds == {"SpawnProcess"}
        assert sorted(w["resources"]["GPU"] for w in client.scheduler_info()["workers"].values()) == [1, 1]
        facts = sorted(client.run(_worker_facts).values())
        assert facts == [("3", True, False), ("5", True, False)]


# -- device placement: every probe on the device the engine gives it ------------------------------

ALL = {name: case(name) for name in BUILTIN}
# what stops a probe on the meta device once it needs values (a count, a numpy copy): fine; a tensor
# made on another device than the model's is not ("Tensor on device cpu is not on the expected device")
NEEDS_VALUES = re.compile(r"item\(\) cannot be called on meta|Cannot copy out of meta tensor|"
                          r"can't convert meta device type tensor to numpy|register_meta function for torch\.\w+")


def test_every_probe_runs_through_the_engine_on_the_device_it_is_given(tmp_path):
    """Each built-in probe as an engine job with an explicit device (``Task.device``, the way
    ``--device cuda`` passes one): its result equals a direct ``compute`` with ``ProbeContext.device``."""
    import xarray as xr

    assert set(ALL) == set(BUILTIN)
    for name, (model_spec, data_spec, overrides) in sorted(ALL.items()):
        run = _one_checkpoint_run(tmp_path / name, model_spec, data_spec)
        (out,) = run_task(_task(run, name, overrides, device="cpu"))
        assert out.ok, (name, out.error)
        cls = get_probe(name)
        model = build_model(find_runs(run)[0].spec["model"]).to(torch.device("cpu"))
        model.load_state_dict(load_file(str(runs.checkpoint_path(run, 0))))
        with precision_guard(cls.precision_mode):
            direct = cls().compute(model.eval(), load_dataset(data_spec).to(torch.device("cpu")),
                                   cls.make_params(overrides),
                                   ProbeContext(step=0, run="r", device=torch.device("cpu"),
                                                run_spec=find_runs(run)[0].spec))
        xr.testing.assert_identical(out.result, direct.load())


def test_every_probe_keeps_to_the_models_device_on_meta():
    """On the ``meta`` device (shapes, no values) each probe's declared template has the CPU template's
    sizes, and ``compute`` gets as far as it can without values: it never makes a tensor on another
    device than the model's (what would put a GPU job's tensors on the CPU)."""
    import copy

    from tests.probes.test_contract import _setup

    meta = torch.device("meta")
    for name, (model_spec, data_spec, overrides) in sorted(ALL.items()):
        cls = get_probe(name)
        model, data = _setup(model_spec, data_spec)
        params = cls.make_params(overrides)
        m, d = copy.deepcopy(model).to(meta), data.to(meta)
        on_cpu, on_meta = cls().template(model, data, params), cls().template(m, d, params)
        assert (on_cpu is None) == (on_meta is None), name
        if on_cpu is not None:
            assert dict(on_meta.sizes) == dict(on_cpu.sizes), name
        try:
            with precision_guard(cls.precision_mode):
                cls().compute(m, d, params, ProbeContext(step=0, run="r", device=meta))
        except Exception as e:  # noqa: BLE001 - sorted below
            assert NEEDS_VALUES.search(str(e)), f"{name}: {type(e).__name__}: {e}"


def test_no_hard_coded_device_and_no_cuda_in_the_client():
    """No ``.cuda()``, ``device="cuda"``, ``torch.device("cuda")`` or ``.to("cuda")`` in the package
    (devices come from ``ProbeContext.device`` / the model); the modules that run in the client
    (driver, cluster, model check, store, discovery, the CLI) never call ``torch.cuda``."""
    hard = re.compile(r"""\.cuda\(|device\s*=\s*["']cuda|torch\.device\(\s*["']cuda|\.to\(\s*["']cuda""")
    files = [p for d in ("grokscope", "probes", "datasets") for p in (ROOT / d).rglob("*.py")]
    assert len(files) > 50
    found = [f"{p.relative_to(ROOT)}:{i}" for p in files
             for i, line in enumerate(p.read_text().splitlines(), 1) if hard.search(line)]
    assert found == []
    client = [ROOT / "grokscope/engine" / f for f in ("driver.py", "planning.py", "prepare.py", "dispatch.py", "commit.py",
                                                       "outcomes.py", "cluster.py", "model_check.py", "store.py", "store_view.py",
                                                       "store_schema.py",
                                                       "discovery.py", "config.py")]
    client += list((ROOT / "grokscope/cli").glob("*.py"))
    found = [f"{p.relative_to(ROOT)}:{i}" for p in client
             for i, line in enumerate(p.read_text().splitlines(), 1) if "torch.cuda" in line]
    assert found == []


# -- the prepared device check ---------------------------------------------------------------------

def test_gpu_check_without_a_gpu_says_skipped_and_exits_0():
    import subprocess
    import sys

    from tests.engine.conftest import subprocess_env

    env = subprocess_env()
    env["CUDA_VISIBLE_DEVICES"] = ""  # no GPU, also on a machine that has one
    r = subprocess.run([sys.executable, str(ROOT / "benchmarks" / "gpu_check.py")], env=env, cwd=ROOT,
                       capture_output=True, text=True, timeout=120)
    assert r.returncode == 0 and r.stdout.strip() == "no GPU: skipped", r.stderr


@pytest.mark.slow
def test_gpu_check_runs_through_on_the_cpu():
    """The script's own code, on the CPU at tiny sizes (float32 against float64): every section prints,
    and float32 on the CPU agrees with float64 (no LC count differs, PGD's points within ε/10)."""
    import subprocess
    import sys

    from tests.engine.conftest import subprocess_env

    r = subprocess.run([sys.executable, str(ROOT / "benchmarks" / "gpu_check.py"), "--device", "cpu",
                        "--models", "mlp"], env=subprocess_env(), cwd=ROOT, capture_output=True, text=True,
                       timeout=600)
    assert r.returncode == 0, r.stderr
    out = r.stdout
    for needle in ("== mlp", "LC per layer", "PGD-10 guarded", "PGD-10 tf32 forced", "align guarded",
                   "LLC guarded", "inference:", "headline sweep", "done in"):
        assert needle in out, needle
    lc_rows = [line for line in out.splitlines() if "|" in line and "/" in line]
    assert lc_rows and all(cell.split("|")[0].strip() == "0,0" for line in lc_rows
                           for cell in re.split(r"\s{3,}", line.strip())[1:])
    assert "apart by more than ε/10: 0 of" in out


def test_local_gpu_choice_and_the_device_jobs_ask_for(monkeypatch):
    """``--device cuda`` takes every visible GPU (or the first ``--workers``), ``cuda:N`` the N-th
    alone; jobs on the local GPU workers ask for ``cuda`` (each worker sees only its own GPU, as
    ``cuda:0``), jobs elsewhere for what ``--device`` says; a GPU the host does not show is one line."""
    from grokscope.engine.cluster import job_device, local_gpus
    from grokscope.engine.config import EngineConfig, EngineError

    def cfg(**kw):
        return EngineConfig(probes=[], out=Path("s.zarr"), **kw)

    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "3,5")
    assert local_gpus(cfg(device="cuda")) == ["3", "5"]
    assert local_gpus(cfg(device="cuda", workers=1)) == ["3"]
    assert local_gpus(cfg(device="cuda:1")) == ["5"]
    for bad in ("cuda:2", "cuda:x"):
        with pytest.raises(EngineError) as e:
            local_gpus(cfg(device=bad))
        assert str(e.value) == f"--device {bad}: this host shows 2 GPU(s) (3, 5); use cuda (all of them) or cuda:0..cuda:1"
    assert job_device(cfg(device="cuda:1")) == "cuda"
    assert job_device(cfg(device="cuda:1", scheduler="tcp://h:8786")) == "cuda:1"
    assert job_device(cfg(device="cuda:1", scheduler="sync")) == "cuda:1"
    assert job_device(cfg(device="cpu")) == "cpu"
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "")
    with pytest.raises(EngineError, match="^--device cuda: this host shows no GPU"):
        local_gpus(cfg(device="cuda"))


def test_overlapping_guards_in_two_threads_keep_strict_until_the_last_one_leaves(restore_flags):
    """A Dask worker with several threads: guards that overlap in time stay strict for both, and the
    settings come back once the last one leaves (not the first one's view of them)."""
    import threading

    torch.set_float32_matmul_precision("high")
    before = _flags()
    a_in, b_in, a_out = threading.Event(), threading.Event(), threading.Event()
    seen = {}

    def a():
        with precision_guard("strict"):
            a_in.set()
            b_in.wait(10)
        a_out.set()

    def b():
        a_in.wait(10)
        with precision_guard("strict"):
            b_in.set()
            a_out.wait(10)
            seen["b after a left"] = is_strict({k: v for k, v in fp32_state().items() if "autocast" not in k})

    threads = [threading.Thread(target=f) for f in (a, b)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(20)
    assert seen == {"b after a left": True} and _flags() == before
