"""A run folder is data: hostile run folders whose run.json names code are refused before anything
is imported (a marker file the code would create never appears), on the client and on the worker;
the same folders run when the user vouches for the code (command line, --trust-code, environment,
the config allow-list written by `grokscope init`, an installed entry point)."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import pytest
import torch
from safetensors.torch import save_file

from grokscope import runs, trust
from grokscope.engine import jobs
from grokscope.engine.discovery import find_runs
from grokscope.engine.jobs import ProbeRequest, Task, run_task
from grokscope.engine.store_view import load_group
from grokscope.models import ModelError, build_model
from grokscope.probes import get_probe
from grokscope.registry import Registry, RegistryError
from tests.helpers import DIGITS, MLP, make_run

LAB = '''
import os
import pathlib
from subprocess import call

pathlib.Path({marker!r}).write_text("imported")


def make(**kwargs):
    from grokscope.models.mlp import mlp

    return mlp(**kwargs)


def load(seed=0, n=40):
    import numpy as np

    rng = np.random.default_rng(seed)
    x = rng.normal(size=(n, 64)).astype("float32")
    y = rng.integers(0, 10, n)
    return {{"x": x, "y": y, "train_idx": np.arange(n // 2), "test_idx": np.arange(n // 2, n)}}
'''


def _hostile(tmp_path: Path, model=None, dataset=None) -> tuple[Path, Path]:
    """A run with good checkpoints and a run.json naming ``model``/``dataset``; the marker path."""
    run = make_run(tmp_path / "run", [0, 2])
    runs.write_run_json(run, model or MLP, dataset or DIGITS, {"loss": "ce"})
    return run, tmp_path / "MARKER"


def _touch(marker: Path) -> str:
    return f"touch {marker}"


HOSTILE = {
    "subprocess model": lambda m: ({"factory": "subprocess:call", "kwargs": {"args": _touch(m), "shell": True}}, None),
    "os model": lambda m: ({"factory": "os:system", "kwargs": {"command": _touch(m)}}, None),
    "builtins model": lambda m: ({"factory": "builtins:open", "kwargs": {"file": str(m), "mode": "w"}}, None),
    "subprocess dataset": lambda m: (None, {"name": "subprocess:call", "kwargs": {"args": _touch(m), "shell": True}}),
    "os dataset": lambda m: (None, {"name": "os:system", "kwargs": {"command": _touch(m)}}),
    "builtins dataset": lambda m: (None, {"name": "builtins:open", "kwargs": {"file": str(m), "mode": "w"}}),
}


@pytest.mark.parametrize("case", sorted(HOSTILE))
def test_hostile_callables_are_refused_before_import(tmp_path, cli, case):
    run, marker = _hostile(tmp_path)
    model, dataset = HOSTILE[case](marker)
    _hostile(tmp_path, model, dataset)
    r = cli("probe", run, "--metrics", "acc", "--scheduler", "sync")
    assert r.exit_code == 1
    assert not marker.exists()
    target = (model or {}).get("factory") or dataset["name"]
    kind = "model" if model else "dataset"
    line = next(ln for ln in r.stderr.splitlines() if "vouched" in ln)
    assert f"{run / 'run.json'} names the {kind} callable {target!r}" in line
    assert f"--{kind} {target}" in line and f"--trust-code {target.split(':')[0]}" in line
    assert "GROKSCOPE_TRUST_CODE" in line and f"grokscope.{kind}s" in line
    # the user's vouching is obeyed (and then the job fails: these are no models or datasets)
    r = cli("probe", run, "--metrics", "acc", "--scheduler", "sync", "--trust-code", target)
    assert marker.exists() and r.exit_code == 1


def test_planted_module_is_never_imported_unless_vouched(tmp_path, cli, monkeypatch):
    run, marker = _hostile(tmp_path, {"factory": "mylab:make", "kwargs": MLP["kwargs"]})
    (run / "mylab.py").write_text(LAB.format(marker=str(marker)))
    monkeypatch.syspath_prepend(str(run))  # the worst case: the run folder is importable
    monkeypatch.chdir(run)
    sys.modules.pop("mylab", None)
    args = ["probe", run, "--metrics", "acc", "--scheduler", "sync", "-q"]
    r = cli(*args)
    assert r.exit_code == 1 and not marker.exists() and "mylab" not in sys.modules
    assert "names the model callable 'mylab:make'" in r.stderr
    # each way of vouching works: --trust-code (module or callable), the environment, --model
    on_cli = ["--model", "mylab:make", "--model-kwargs", json.dumps(MLP["kwargs"]), "--dataset", "digits"]
    ways = ((["--trust-code", "mylab"], None), ([], "mylab"), (["--trust-code", "mylab:make"], None), (on_cli, None))
    for i, (extra, env) in enumerate(ways):
        marker.unlink(missing_ok=True)
        sys.modules.pop("mylab", None)
        jobs._MODELS.clear()  # the worker's model cache would spare the import
        if env:
            monkeypatch.setenv(trust.ENV_VAR, env)
        r = cli(*args, "-o", tmp_path / f"s{i}.zarr", *extra)
        monkeypatch.delenv(trust.ENV_VAR, raising=False)
        assert r.exit_code == 0, r.output
        assert marker.exists(), (extra, env, r.output)
    ds = load_group(tmp_path / "s2.zarr", "run", "acc")
    assert ds.done.all() and list(ds.step.values) == [0, 2]


def test_trusting_a_module_does_not_trust_what_it_imports(tmp_path):
    marker = tmp_path / "M"
    lab = tmp_path / "lab"
    lab.mkdir()
    (lab / "mylab2.py").write_text(LAB.format(marker=str(tmp_path / "imported")))
    sys.path.insert(0, str(lab))
    try:
        t = trust.Trust.of(["mylab2"])
        with pytest.raises(ModelError, match="'os' is a module"):
            build_model({"factory": "mylab2:os.system", "kwargs": {"command": _touch(marker)}}, t)
        with pytest.raises(trust.UntrustedCode, match="defined in module 'subprocess'"):
            build_model({"factory": "mylab2:call", "kwargs": {"args": _touch(marker), "shell": True}}, t)
        assert not marker.exists()
        assert isinstance(build_model({"factory": "mylab2:make", "kwargs": MLP["kwargs"]}, t), torch.nn.Module)
        # trust in a callable is exact; the user's own allow-list is the default
        with pytest.raises(trust.UntrustedCode):
            build_model({"factory": "mylab2:make", "kwargs": MLP["kwargs"]}, trust.Trust.of(["mylab2:other"]))
        with pytest.raises(trust.UntrustedCode):
            build_model({"factory": "mylab2:make", "kwargs": MLP["kwargs"]})
        assert trust.remember("mylab2:make") == trust.config_file()
        assert trust.remember("mylab2:make") is None
        build_model({"factory": "mylab2:make", "kwargs": MLP["kwargs"]})
    finally:
        sys.path.remove(str(lab))
        sys.modules.pop("mylab2", None)


def test_worker_refuses_what_the_job_does_not_vouch_for(tmp_path):
    """The worker side alone (as if a client had not checked): run_task imports nothing unvouched."""
    run, marker = _hostile(tmp_path, {"factory": "subprocess:call", "kwargs": {"args": _touch(marker := tmp_path / "W"),
                                                                            "shell": True}})
    found = find_runs(run)[0]
    req = ProbeRequest("acc", get_probe("acc").default_params())
    task = Task(run="run", spec=found.spec, checkpoint=found.checkpoints[0], previous=None, probes=(req,),
                where=str(run / "run.json"))
    (out,) = run_task(task)
    assert not out.ok and "names the model callable 'subprocess:call'" in out.error and not marker.exists()
    dspec = {"name": "os:system", "kwargs": {"command": _touch(marker)}}
    task = Task(run="run", spec={**found.spec, "model": MLP, "dataset": dspec}, checkpoint=found.checkpoints[0],
                previous=None, probes=(req,), where=str(run / "run.json"))
    (out,) = run_task(task)
    assert not out.ok and "names the dataset callable 'os:system'" in out.error and not marker.exists()
    # the trust the client decided travels with the job
    task = Task(run="run", spec={**found.spec, "model": MLP}, checkpoint=found.checkpoints[0], previous=None,
                probes=(req,), trust=trust.Trust.of(["tests.helpers"]))
    assert run_task(task)[0].ok


def test_init_records_the_vouching_and_a_bare_probe_works(tmp_path, cli, monkeypatch):
    run = make_run(tmp_path / "r", [0, 1])
    (run / "run.json").unlink()
    lab = tmp_path / "lab"
    lab.mkdir()
    (lab / "mylab3.py").write_text(LAB.format(marker=str(tmp_path / "imported")))
    monkeypatch.syspath_prepend(str(lab))
    r = cli("init", run, "--model", "mylab3:make", "--model-kwargs", json.dumps(MLP["kwargs"]),
            "--dataset", "digits", "--dataset-kwargs", json.dumps(DIGITS["kwargs"]))
    assert r.exit_code == 0, r.output
    assert f"trusting mylab3:make from now on: added to {trust.config_file()}" in r.stderr
    assert trust.read_config() == ["mylab3:make", str(lab)]  # the callable and the folder it is imported from
    r = cli("probe", run, "--scheduler", "sync", "-q")
    assert r.exit_code == 0, r.output
    # another user (another configuration) gets the refusal
    monkeypatch.setenv(trust.CONFIG_DIR_ENV, str(tmp_path / "other-user"))
    r = cli("probe", run, "--scheduler", "sync", "-q", "-o", tmp_path / "o.zarr")
    assert r.exit_code == 1 and "names the model callable 'mylab3:make'" in r.stderr


def _fake_dist(site: Path, name: str, groups: dict[str, dict[str, str]]) -> None:
    info = site / f"{name}-0.1.dist-info"
    info.mkdir(parents=True)
    (info / "METADATA").write_text(f"Metadata-Version: 2.1\nName: {name}\nVersion: 0.1\n")
    (info / "entry_points.txt").write_text("".join(
        f"[{g}]\n" + "".join(f"{k} = {v}\n" for k, v in eps.items()) for g, eps in groups.items()))


def test_entry_points_vouch_and_duplicates_name_both_sources(tmp_path, cli, monkeypatch):
    run = make_run(tmp_path / "run", [0, 3])
    site = tmp_path / "site"
    site.mkdir()
    (site / "labpkg.py").write_text(LAB.format(marker=str(tmp_path / "imported")))
    _fake_dist(site, "labpkg", {"grokscope.models": {"labnet": "labpkg:make", "mlp": "labpkg:make"},
                                "grokscope.datasets": {"labdata": "labpkg:load"}})
    monkeypatch.syspath_prepend(str(site))
    runs.write_run_json(run, {"arch": "labnet", "kwargs": MLP["kwargs"]}, {"name": "labdata", "kwargs": {"n": 30}})
    r = cli("probe", run, "--scheduler", "sync", "--json", "-q")
    assert r.exit_code == 0, r.output
    ds = load_group(run / "probes.zarr", "run", "acc")
    assert ds.done.all()
    # an entry point's target named by path is vouched for by the installation too
    runs.write_run_json(run, {"factory": "labpkg:make", "kwargs": MLP["kwargs"]}, DIGITS)
    assert cli("probe", run, "--scheduler", "sync", "-q", "-o", tmp_path / "b.zarr").exit_code == 0
    with pytest.raises(ModelError) as e:
        build_model({"arch": "mlp", "kwargs": MLP["kwargs"]})
    assert ("model name 'mlp' is defined twice: grokscope.models.mlp:mlp (built-in); labpkg:make "
            "(entry point 'grokscope.models' of labpkg 0.1)") in str(e.value)


def test_registry_lists_and_refuses_without_importing(tmp_path):
    reg = Registry("model", {"a": "grokscope.models.mlp:mlp", "gone": "no_such_module_x:f"}, "grokscope.nothing")
    assert reg.available() == {"a": "grokscope.models.mlp:mlp"}
    with pytest.raises(RegistryError, match="unknown model 'b'; valid names: a"):
        reg.entry("b")
    with pytest.raises(trust.UntrustedCode):
        reg.check("no_such_module_y:f", trust.Trust(), "x.json")
    assert reg.check("no_such_module_y:f", trust.Trust.of(["no_such_module_y"]), "x.json") == "no_such_module_y:f"


def test_kwargs_must_be_plain_json():
    with pytest.raises(ModelError, match=r"model kwargs.width: .*not plain JSON"):
        build_model({"arch": "mlp", "kwargs": {**MLP["kwargs"], "width": object()}})


# -- Hugging Face configs --------------------------------------------------------------------------

def _bert_config(**extra) -> dict:
    from transformers import BertConfig

    cfg = BertConfig(vocab_size=8, hidden_size=8, num_hidden_layers=1, num_attention_heads=2,
                     intermediate_size=16, num_labels=7, max_position_embeddings=8).to_dict()
    cfg["architectures"] = ["BertForSequenceClassification"]
    cfg.update(extra)
    return json.loads(json.dumps(cfg))


def test_hf_model_from_config_and_auto_map_refused(tmp_path, cli):
    folder = tmp_path / "hf"
    cfg = _bert_config()
    net = build_model({"arch": "hf", "kwargs": {"config": cfg}})
    for step in (0, 5):
        d = folder / f"checkpoint-{step}"
        d.mkdir(parents=True)
        torch.manual_seed(step)
        for p in net.parameters():
            p.data.normal_(0, 0.2)
        save_file({k[len("model."):]: v.contiguous() for k, v in net.state_dict().items()},
                  str(d / "model.safetensors"))
        (d / "config.json").write_text(json.dumps(cfg))
    data = ["--dataset", "modular", "--dataset-kwargs", '{"p": 7}']
    r = cli("init", folder, "--model", "hf", *data)
    assert r.exit_code == 0, r.output
    assert runs.read_run_json(folder)["model"]["kwargs"]["config"]["model_type"] == "bert"
    r = cli("probe", folder, "--scheduler", "sync", "-q")
    assert r.exit_code == 0, r.output
    assert load_group(folder / "probes.zarr", "hf", "acc").done.all()
    # a config whose model needs remote code: refused by init, by probe (run.json) and by the loader
    marker = tmp_path / "MARKER"
    evil = _bert_config(auto_map={"AutoModel": "modeling_evil.EvilModel"})
    (folder / "checkpoint-0" / "config.json").write_text(json.dumps(evil))
    (folder / "checkpoint-0" / "modeling_evil.py").write_text(f"open({str(marker)!r}, 'w')\n")
    r = cli("init", folder, "--model", "hf", "--force", *data)
    assert r.exit_code == 2 and "needs remote code (auto_map: AutoModel -> modeling_evil.EvilModel)" in r.output
    assert "trust_remote_code=True" in r.output
    spec = runs.read_run_json(folder)
    runs.write_run_json(folder, {"arch": "hf", "kwargs": {"config": evil}}, spec["dataset"])
    r = cli("probe", folder, "--scheduler", "sync", "-o", tmp_path / "x.zarr")
    assert r.exit_code == 1 and "needs remote code" in r.stderr
    from grokscope.models.hf import HFError, read_config

    with pytest.raises(HFError, match=r"config.json: refused: this model needs remote code"):
        read_config(folder / "checkpoint-0" / "config.json")
    with pytest.raises(ModelError, match="does not define"):
        build_model({"arch": "hf", "kwargs": {"config": {**cfg, "model_type": "evil"}}})
    with pytest.raises(ModelError, match="not a model class of transformers"):
        build_model({"arch": "hf", "kwargs": {"config": {**cfg, "architectures": ["os"]}}})
    assert not marker.exists()


def test_local_cluster_workers_get_the_decision_with_the_job(tmp_path, cli):
    """Real worker processes: the vouched run is probed there (its Trust travels with the task), the
    hostile sibling is refused with its line, and its code never runs anywhere."""
    from tests.helpers import TinyNet, sgd_snapshots

    good = tmp_path / "runs" / "good"
    torch.manual_seed(0)
    runs.write_run_json(good, {"factory": "tests.helpers:tiny_net", "kwargs": {}}, DIGITS, {"loss": "ce"})
    for step, sd in sgd_snapshots(TinyNet(), [0, 4]):
        runs.save_checkpoint(runs.checkpoint_path(good, step), sd, step)
    marker = tmp_path / "MARKER"
    bad = make_run(tmp_path / "runs" / "bad", [0, 4])
    runs.write_run_json(bad, {"factory": "subprocess:call", "kwargs": {"args": _touch(marker), "shell": True}},
                        DIGITS)
    r = cli("probe", tmp_path / "runs", "--workers", "1", "--trust-code", "tests.helpers", "--json", "-q")
    assert r.exit_code == 1
    summary = json.loads(r.stdout)
    assert "local cluster" in summary["scheduler"] and summary["completed"] == 2
    (failure,) = summary["failures"]
    assert failure["run"] == "bad" and "names the model callable 'subprocess:call'" in failure["reason"]
    assert load_group(tmp_path / "runs" / "probes.zarr", "good", "acc").done.all()
    assert not marker.exists()
