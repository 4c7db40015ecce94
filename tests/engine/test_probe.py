"""``grokscope probe`` end to end (in-process scheduler): values, store layout, failures, third-party
checkpoints, resume/growth, parameter refusal, the registry on the command line."""

from __future__ import annotations

import json

import numpy as np
import torch
import xarray as xr
from safetensors.torch import load_file, save_file

from grokscope import runs
from grokscope.engine.hashing import state_dict_hash
from grokscope.engine.store_view import load_group, open_store
from grokscope.models import build_model
from tests.engine.conftest import ROOT
from tests.helpers import DIGITS, MLP, TinyNet, digits_data, make_run, sgd_snapshots, tiny_net

DIGITS_ARGS = ["--dataset", "digits", "--dataset-kwargs", json.dumps(DIGITS["kwargs"])]


def reference_acc(model: torch.nn.Module, state: dict) -> np.ndarray:
    """(loss, accuracy) x (train, test) computed the obvious way, in float64."""
    model.load_state_dict(state)
    model = model.double().eval()
    data = digits_data()
    out = np.zeros((2, 2))
    with torch.no_grad():
        for j, split in enumerate(("train", "test")):
            x, y = data.split(split)
            logits = model(x.double())
            out[0, j] = torch.nn.functional.cross_entropy(logits, y).item()
            out[1, j] = (logits.argmax(1) == y).double().mean().item()
    return out


def test_acc_values_layout_and_attrs(tmp_path, cli):
    make_run(tmp_path / "runs" / "a", [0, 3, 10])
    make_run(tmp_path / "runs" / "b", [0, 7], seed=1)
    r = cli("probe", tmp_path / "runs", "--scheduler", "sync", "--metrics", "acc")
    assert r.exit_code == 0, r.output
    assert "5 job(s) done, 0 failed" in r.stderr
    dt = open_store(tmp_path / "runs" / "probes.zarr")
    assert set(dt.children) == {"a", "b"} and set(dt["a"].children) == {"acc"}
    ds = load_group(tmp_path / "runs" / "probes.zarr", "a", "acc")
    assert list(ds.step.values) == [0, 3, 10] and list(ds.split.values) == ["train", "test"]
    assert ds.loss.dims == ("step", "split") and ds.done.all() and (ds.error == "").all()
    for i, step in enumerate([0, 3, 10]):
        path = runs.checkpoint_path(tmp_path / "runs" / "a", step)
        state = load_file(str(path))
        ref = reference_acc(build_model(MLP), state)
        np.testing.assert_allclose(ds.loss.values[i], ref[0], rtol=1e-5)
        np.testing.assert_allclose(ds.accuracy.values[i], ref[1], atol=1e-12)
        assert ds.checkpoint_hash.values[i] == state_dict_hash(state)
    assert ds.accuracy.values[-1, 0] > ds.accuracy.values[0, 0] + 0.2  # the snapshots did learn
    assert ds.attrs["params"] == {"loss": "auto", "batch_size": 4096, "icl_early": 50, "icl_late": 500}
    assert ds.attrs["model"] == MLP and ds.attrs["dataset"] == DIGITS
    assert ds.attrs["grokscope_version"] and ds.attrs["probe"] == "acc"
    assert dt["a"].attrs["path"] == str((tmp_path / "runs" / "a").resolve())
    # plain xarray, no grokscope helper, sees every run and probe
    import warnings
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        plain = xr.open_datatree(tmp_path / "runs" / "probes.zarr", engine="zarr")
    assert {n.path for n in plain.subtree} >= {"/a/acc", "/b/acc"}
    assert (tmp_path / "runs" / "probes.zarr" / ".grokscope.lock").exists() is False


def test_bad_checkpoints_are_named_and_the_rest_is_probed(tmp_path, cli):
    run = make_run(tmp_path / "r", [0, 1, 2, 3])
    trunc = runs.checkpoint_path(run, 2)
    trunc.write_bytes(trunc.read_bytes()[:300])
    marker = tmp_path / "pwned"
    from tests.engine.test_loading import Evil

    torch.save({"0.weight": torch.zeros(12, 64), "payload": Evil(marker)},
               run / "checkpoints" / "step-00000005.pt")
    r = cli("probe", run, "--scheduler", "sync", "-o", tmp_path / "s.zarr")
    assert r.exit_code == 1
    assert not marker.exists()
    err = r.stderr
    assert "3 job(s) done, 2 failed" in err
    assert "step-00000002.safetensors: unreadable safetensors file" in err
    assert "step-00000005.pt: refused: this pickle needs code to load" in err
    ds = load_group(tmp_path / "s.zarr", "r", "acc")
    assert list(ds.step.values) == [0, 1, 2, 3, 5]
    assert list(ds.done.values) == [True, True, False, True, False]
    assert "unreadable" in str(ds.error.values[2]) and "refused" in str(ds.error.values[4])
    assert np.isnan(ds.loss.values[2]).all() and np.isfinite(ds.loss.values[3]).all()
    # a rerun retries only the failed jobs
    r2 = cli("probe", run, "--scheduler", "sync", "-o", tmp_path / "s.zarr", "--json", "-q")
    assert r2.exit_code == 1
    summary = json.loads(r2.stdout)
    assert summary["skipped"] == 3 and summary["jobs"] == 2 and summary["failed"] == 2
    assert not marker.exists()


def _lightning_folder(root, steps):
    """What a plain PyTorch script using Lightning's conventions writes."""
    torch.manual_seed(0)
    net = TinyNet()
    folder = root / "lightning_logs" / "version_0" / "checkpoints"
    folder.mkdir(parents=True)
    for step, sd in sgd_snapshots(net, steps):
        torch.save({"epoch": step // 10, "global_step": step, "pytorch-lightning_version": "2.5.0",
                    "state_dict": {f"model.{k}": v for k, v in sd.items()},
                    "optimizer_states": [{"state": {}, "param_groups": [{"lr": 0.5}]}],
                    "hyper_parameters": {"hidden": 16}},
                   folder / f"epoch={step // 10}-step={step}.ckpt")
    torch.save({"state_dict": {f"model.{k}": v for k, v in sd.items()}}, folder / "last.ckpt")
    return root


def _hf_folder(root, steps):
    """What a plain PyTorch script using the Hugging Face Trainer's layout writes."""
    torch.manual_seed(1)
    net = TinyNet()
    for step, sd in sgd_snapshots(net, steps):
        d = root / f"checkpoint-{step}"
        d.mkdir(parents=True)
        save_file({k: v.contiguous() for k, v in sd.items()}, str(d / "model.safetensors"),
                  metadata={"format": "pt"})
        torch.save({"state": {}}, d / "optimizer.pt")
        torch.save({"rng": torch.get_rng_state()}, d / "rng_state.pth")
        (d / "trainer_state.json").write_text(json.dumps({"global_step": step}))
    return root


def test_third_party_lightning_and_hf(tmp_path, cli):
    light = _lightning_folder(tmp_path / "light", [0, 5, 20])
    r = cli("probe", light, "--scheduler", "sync", "--model", "tests.helpers:tiny_net", *DIGITS_ARGS)
    assert r.exit_code == 0, r.output
    assert "last.ckpt" in r.stderr  # skipped, with the reason
    ds = load_group(light / "probes.zarr", "lightning_logs__version_0", "acc")
    assert list(ds.step.values) == [0, 5, 20] and ds.done.all()
    ck = torch.load(light / "lightning_logs/version_0/checkpoints/epoch=2-step=20.ckpt", weights_only=True)
    ref = reference_acc(tiny_net(), {k[6:]: v for k, v in ck["state_dict"].items()})
    np.testing.assert_allclose(ds.loss.values[-1], ref[0], rtol=1e-5)
    np.testing.assert_allclose(ds.accuracy.values[-1], ref[1])

    hf = _hf_folder(tmp_path / "hf", [0, 4, 12])
    r = cli("probe", hf, "--scheduler", "sync")
    assert r.exit_code == 1 and "no run.json and no --model/--dataset" in r.stderr
    r = cli("init", hf, "--model", "tests.helpers:tiny_net", "--model-kwargs", '{"hidden": 8}', *DIGITS_ARGS)
    assert r.exit_code == 1 and "shape mismatch" in r.output and "body.1.weight" in r.output
    r = cli("init", hf, "--model", "tests.helpers:tiny_net", *DIGITS_ARGS)
    assert r.exit_code == 0, r.output
    spec = runs.read_run_json(hf)
    assert spec["model"] == {"factory": "tests.helpers:tiny_net", "path": str(ROOT),  # where `tests` is
                             "kwargs": {"in_dim": 64, "n_classes": 10}}
    r = cli("probe", hf, "--scheduler", "sync")
    assert r.exit_code == 0, r.output
    ds = load_group(hf / "probes.zarr", "hf", "acc")
    assert list(ds.step.values) == [0, 4, 12] and ds.done.all()
    ref = reference_acc(tiny_net(), load_file(str(hf / "checkpoint-12" / "model.safetensors")))
    np.testing.assert_allclose(ds.loss.values[-1], ref[0], rtol=1e-5)


def test_resume_grows_step_and_refuses_other_params(tmp_path, cli):
    run = make_run(tmp_path / "r", [0, 1, 2])
    store = tmp_path / "s.zarr"
    args = ["probe", run, "--scheduler", "sync", "-o", store, "--json", "-q"]
    first = json.loads(cli(*args).stdout)
    assert (first["jobs"], first["skipped"]) == (3, 0)
    before = load_group(store, "r", "acc")
    # new checkpoints appear (the training went on, and one earlier step was back-filled)
    net = build_model(MLP)
    for step in (5, 9):
        torch.manual_seed(step)
        runs.save_checkpoint(runs.checkpoint_path(run, step), net.state_dict(), step)
    second = json.loads(cli(*args).stdout)
    assert (second["jobs"], second["skipped"]) == (2, 3)
    after = load_group(store, "r", "acc")
    assert list(after.step.values) == [0, 1, 2, 5, 9] and after.done.all()
    xr.testing.assert_identical(after.isel(step=slice(0, 3)), before)
    # other parameters for the same group are refused, with the difference named
    r = cli("probe", run, "--scheduler", "sync", "-o", store, "--param", "acc.batch_size=7")
    assert r.exit_code == 1
    assert "r/acc: stored parameters differ (batch_size: stored 4096, requested 7)" in r.output
    assert "--overwrite" in r.output
    r = cli("probe", run, "--scheduler", "sync", "-o", store, "--param", "acc.batch_size=7",
            "--overwrite", "--json", "-q")
    assert r.exit_code == 0 and json.loads(r.stdout)["jobs"] == 5
    redo = load_group(store, "r", "acc")
    assert redo.attrs["params"]["batch_size"] == 7
    np.testing.assert_allclose(redo.loss.values, after.loss.values, rtol=1e-6)
    # a different model spec for the run is refused too
    spec = runs.read_run_json(run)
    runs.write_run_json(run, {**spec["model"], "kwargs": {**spec["model"]["kwargs"], "width": 12}},
                        {**spec["dataset"], "seed": 3}, spec["train"])
    r = cli("probe", run, "--scheduler", "sync", "-o", store, "--param", "acc.batch_size=7")
    assert r.exit_code == 1 and "another model/dataset spec" in r.output


def test_metrics_and_params_are_validated(tmp_path, cli):
    run = make_run(tmp_path / "r", [0])
    r = cli("probe", run, "--metrics", "acc,nope")
    assert r.exit_code == 2 and "unknown probe 'nope'" in r.output and "valid: " in r.output
    assert "acc" in r.output.split("valid: ")[1]
    r = cli("probe", run, "-m", "acc", "--param", "lc.radius=1")
    assert r.exit_code == 2 and "not among --metrics" in r.output
    r = cli("probe", run, "-m", "acc", "--param", "acc.nope=1")
    assert r.exit_code == 2 and "has no parameter 'nope'" in r.output
    r = cli("probe", run, "-m", "acc", "--param", "acc.batch_size=x")
    assert r.exit_code == 2 and "bad value for acc.batch_size" in r.output
    r = cli("probe", run, "--model", "mlp")
    assert r.exit_code == 2 and "need both --model and --dataset" in r.output
    r = cli("probe", run, "--model", "mlp", "--dataset", "digits", "--model-kwargs", "[1]")
    assert r.exit_code == 2 and "--model-kwargs must be a JSON object" in r.output
    r = cli("probe", run, "-o", run)
    assert r.exit_code == 1 and "is not a Zarr store; refusing to write into it" in r.output
    r = cli("probe", run, "-m", "acc", "--metric", "acc", "--dry-run")
    assert r.exit_code == 0 and "1 job(s) over 1 run(s) would be computed" in r.stderr


def test_probes_listing(cli):
    r = cli("probes", "--json")
    listing = {p["name"]: p for p in json.loads(r.stdout)}
    assert listing["acc"]["params"] == {"loss": "auto", "batch_size": 4096, "icl_early": 50, "icl_late": 500}
    assert listing["acc"]["outputs"] == {"loss": ["split"], "accuracy": ["split"]}
    assert listing["acc"]["tasks"] == ["classification", "causal_lm"] and listing["lc"]["tasks"] == ["classification"]
    assert listing["acc"]["task_outputs"] == {"causal_lm": {"loss_by_position": ["split", "position"],
                                                            "icl_score": ["split"]}}
    text = cli("probes").stdout
    assert "--param acc.batch_size=4096" in text and "loss(step, split)" in text
    assert "-> icl_score(step, split)  [causal_lm datasets]" in text


def test_store_matches_the_trainers_log(tmp_path, cli):
    from grokscope.training import TrainConfig, train_run

    cfg = TrainConfig(model={"arch": "mlp", "kwargs": {"depth": 1, "width": 16}}, dataset=DIGITS,
                      optimizer="sgd", lr=0.5, steps=30, save="every:10")
    run = train_run(cfg, tmp_path / "t", progress=False)
    r = cli("probe", run, "--scheduler", "sync")
    assert r.exit_code == 0, r.output
    ds = load_group(run / "probes.zarr", "t", "acc")
    log = {rec["step"]: rec for rec in runs.read_log(run)}
    assert list(ds.step.values) == [0, 10, 20, 30]
    for i, step in enumerate(ds.step.values):
        rec = log[int(step)]
        np.testing.assert_allclose(ds.loss.values[i], [rec["train_loss"], rec["test_loss"]], rtol=1e-6)
        np.testing.assert_allclose(ds.accuracy.values[i], [rec["train_acc"], rec["test_acc"]], atol=1e-12)


def test_a_probe_that_needs_the_previous_checkpoint(tmp_path, cli, monkeypatch):
    from tests.helpers import TEST_PROBES

    monkeypatch.setenv("GROKSCOPE_PROBES", TEST_PROBES)
    run = make_run(tmp_path / "r", [0, 2, 5])
    r = cli("probe", run, "--scheduler", "sync", "-m", "delta,acc", "--param", "delta.scale=2")
    assert r.exit_code == 0, r.output
    ds = load_group(run / "probes.zarr", "r", "delta")
    assert list(ds.previous_step.values) == [-1, 0, 2]
    assert np.isnan(ds.delta.values[0])
    sds = [load_file(str(runs.checkpoint_path(run, s))) for s in (0, 2, 5)]
    for i in (1, 2):
        ref = sum(((sds[i][k].double() - sds[i - 1][k].double()) ** 2).sum() for k in sds[i]) ** 0.5
        np.testing.assert_allclose(ds.delta.values[i], 2 * float(ref), rtol=1e-9)
    assert ds.attrs["params"] == {"scale": 2.0}
    assert load_group(run / "probes.zarr", "r", "acc").done.all()


def test_cuda_without_gpus_is_refused_before_any_work(tmp_path, cli, monkeypatch):
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "")
    run = make_run(tmp_path / "r", [0])
    r = cli("probe", run, "--device", "cuda", "-o", tmp_path / "s.zarr")
    assert r.exit_code == 1 and "--device cuda: this host shows no GPU" in r.output
    assert not (tmp_path / "s.zarr").exists()


def test_flags_a_run_json_overrides_are_refused_or_warned_about(tmp_path, cli):
    """--model/--dataset for a run with its own run.json: refused when no run would use them (naming
    the flags and what is used instead), a warning per run that ignores them otherwise; spec options
    without --model/--dataset are refused; --workers with another scheduler is warned about."""
    run = make_run(tmp_path / "runs" / "a", [0, 2])
    r = cli("probe", run, "--model", "mlp", "--dataset", "modular", "--scheduler", "sync", "-q")
    assert r.exit_code == 0, r.output  # run.json is used; the flags are warned about
    (line,) = [x for x in r.stderr.splitlines() if x.startswith("warning: --model")]
    assert line.startswith("warning: --model/--model-kwargs ('mlp' (in_dim=3, out_dim=97)) and "
                           "--dataset/--dataset-kwargs/--dataset-seed ('modular' (seed=0)) ignored for run 'a': "
                           f"{run / 'run.json'} gives model 'mlp' (depth=1, ") and "dataset 'digits' (" in line
    assert line.endswith(f"which are used (drop the flags, or rewrite the run.json with `grokscope init {run} "
                         "--force --model ... --dataset ...`)")
    assert load_group(run / "probes.zarr", "a", "acc").done.all()
    r = cli("probe", run, "--model", "mlp", "--model-kwargs", json.dumps(MLP["kwargs"]), *DIGITS_ARGS,
            "--scheduler", "sync", "-q")
    assert r.exit_code == 0 and "ignored" not in r.output  # the same spec as its run.json: nothing ignored
    # a folder with a bare run that uses the flags: the run.json run is probed with its own spec, and warned about
    (make_run(tmp_path / "runs" / "b", [5]) / "run.json").unlink()
    r = cli("probe", tmp_path / "runs", "--model", "mlp", "--model-kwargs", json.dumps(MLP["kwargs"]),
            "--dataset", "modular", "--scheduler", "sync", "-q", "--workers", "2")
    assert r.exit_code == 1, r.output  # b's mlp does not fit modular's inputs: b fails, a is probed
    # one line for run b, from the model check before any job ran
    assert "b [*] the command line: model check failed, nothing computed for this run: modular: the model " \
           "loaded from " in r.stderr and "rejects its inputs of shape (3,) and dtype int64" in r.stderr
    assert "b step 5" not in r.stderr
    assert "warning: --workers 2 is ignored with --scheduler sync" in r.stderr
    assert "warning: --dataset/--dataset-kwargs/--dataset-seed ('modular' (seed=0)) ignored for run 'a'" in r.stderr
    assert load_group(tmp_path / "runs" / "probes.zarr", "a", "acc").done.all()
    for flags in (["--loss", "mse"], ["--dataset-seed", "3", "--model-kwargs", "{}"]):
        r = cli("probe", run, *flags)
        assert r.exit_code == 2 and "only apply with --model and --dataset" in r.output, r.output
        assert flags[0] in r.output


def _forget_param(store, group: str, name: str) -> None:
    """Make a stored group look as if it was written before the probe had parameter ``name``."""
    import zarr

    g = zarr.open_group(str(store), path=group, mode="r+")
    params = {k: v for k, v in g.attrs["params"].items() if k != name}
    g.attrs.update({"params": params, "params_json": json.dumps(params, sort_keys=True)})


def test_a_parameter_added_later_keeps_old_stores_valid_where_its_default_is_the_old_behaviour(tmp_path, cli):
    """pgd's ``eps_unit`` (added with embedding-relative radii): a group stored without it was computed
    with absolute radii. On continuous inputs ``auto`` means absolute, so the old group is reused; on
    token inputs ``auto`` means embedding-relative, so the old group is refused, naming the parameter."""
    from grokscope import runs

    digits = make_run(tmp_path / "digits", [0, 1])
    args = ["--metrics", "pgd", "--param", "pgd.n_points=8", "--param", "pgd.steps=2", "--scheduler", "sync",
            "--json", "-q"]
    store = tmp_path / "d.zarr"
    assert json.loads(cli("probe", digits, "-o", store, *args).stdout)["jobs"] == 2
    _forget_param(store, "digits/pgd", "eps_unit")
    again = json.loads(cli("probe", digits, "-o", store, *args).stdout)
    assert (again["jobs"], again["skipped"]) == (0, 2)

    tokens = tmp_path / "tokens"
    model = {"arch": "modular_mlp", "kwargs": {"p": 7, "width": 16, "input": "tokens"}}
    runs.write_run_json(tokens, model, {"name": "modular", "kwargs": {"p": 7, "encoding": "tokens"}, "seed": 0},
                        {"loss": "ce"})
    for step in (0, 1):
        torch.manual_seed(step)
        runs.save_checkpoint(runs.checkpoint_path(tokens, step), build_model(model).state_dict(), step)
    store = tmp_path / "t.zarr"
    assert json.loads(cli("probe", tokens, "-o", store, *args).stdout)["jobs"] == 2
    _forget_param(store, "tokens/pgd", "eps_unit")
    r = cli("probe", tokens, "-o", store, *args[:-2])
    assert r.exit_code == 1
    assert "tokens/pgd: stored parameters differ (eps_unit: stored 'absolute', requested 'embedding_rms')" in r.output


def test_an_acc_group_stored_before_the_lm_task_is_reused(tmp_path, cli):
    """acc's ``icl_early``/``icl_late`` (added with the causal-LM task) do not change classification
    numbers: a group stored without them is reused, not recomputed or refused."""
    run = make_run(tmp_path / "a", [0, 1])
    store = tmp_path / "s.zarr"
    args = ["--metrics", "acc", "--scheduler", "sync", "--json", "-q"]
    assert json.loads(cli("probe", run, "-o", store, *args).stdout)["jobs"] == 2
    _forget_param(store, "a/acc", "icl_early")
    _forget_param(store, "a/acc", "icl_late")
    again = json.loads(cli("probe", run, "-o", store, *args).stdout)
    assert (again["jobs"], again["skipped"]) == (0, 2)
