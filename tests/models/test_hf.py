"""``--model hf`` with the real transformers library: the output adapter, a missing transformers,
activations recognised by what they compute, real ``Trainer`` runs (a GPT-2 and a BERT sequence
classifier) probed with no glue code, and a hub cache layout as a checkpoint series."""

from __future__ import annotations

import json
import math
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import torch
from torch import nn

transformers = pytest.importorskip("transformers")

from grokscope.engine.store_view import load_group  # noqa: E402
from grokscope.models import build_model  # noqa: E402
from grokscope.models.hf import HFError, HFLogits  # noqa: E402
from tests.models import hf_runs  # noqa: E402

ROOT = Path(__file__).resolve().parents[2]
SMALL_PARAMS = {"lc": ["lc.n_points=24", "lc.n_dirs=4"], "align": ["align.n_points=24"],
                "pgd": ["pgd.n_points=24", "pgd.steps=3"],
                "norm": ["norm.n_train=12", "norm.proj_iters=3", "norm.power_iters=3"]}


def small(metrics: list[str]) -> list[str]:
    """``--param`` options that keep the probes of ``metrics`` small (sizes only)."""
    return [x for m in metrics for p in SMALL_PARAMS.get(m, []) for x in ("--param", p)]


@pytest.fixture
def cli():
    """Invoke a grokscope sub-command in-process: ``cli("probe", path, "--scheduler", "sync")``."""
    from click.testing import CliRunner

    from grokscope.cli import main

    runner = CliRunner()
    return lambda *args: runner.invoke(main, [str(a) for a in args], catch_exceptions=False)


def _tiny_gpt2(**kw):
    from transformers import GPT2Config

    args = dict(vocab_size=11, n_positions=5, n_embd=8, n_layer=1, n_head=2, pad_token_id=10,
                bos_token_id=10, eos_token_id=10, num_labels=3)
    return GPT2Config(**{**args, **kw})


# -- the output adapter ---------------------------------------------------------------------------

def test_logits_adapter_heads_positions_and_embedding_view():
    from transformers import BertConfig, BertForSequenceClassification, GPT2ForSequenceClassification, GPT2LMHeadModel

    torch.manual_seed(0)
    x = torch.randint(0, 10, (4, 5))
    lm = GPT2LMHeadModel(_tiny_gpt2()).eval()
    with torch.no_grad():
        ref = lm(input_ids=x).logits  # (4, 5, 11)
        for position, want in (("last", ref[:, -1]), ("first", ref[:, 0]), ("mean", ref.mean(1)), (2, ref[:, 2])):
            got = HFLogits(lm, position=position)(x)
            torch.testing.assert_close(got, want)
        with pytest.raises(HFError, match="has no 'start_logits'.*logits.*--model-kwargs"):
            HFLogits(lm, head="start_logits")(x)
    with pytest.raises(HFError, match="position must be one of last, first, mean or an integer"):
        HFLogits(lm, position="middle")
    # sequence classifiers pool inside: (n, C); the embedding view computes the same logits
    for net in (GPT2ForSequenceClassification(_tiny_gpt2()),
                BertForSequenceClassification(BertConfig(vocab_size=11, hidden_size=8, num_hidden_layers=1,
                                                         num_attention_heads=2, intermediate_size=16,
                                                         max_position_embeddings=5, num_labels=3))):
        net.eval()
        wrapped = HFLogits(net)
        with torch.no_grad():
            want = net(input_ids=x).logits
            torch.testing.assert_close(wrapped(x), want)
            torch.testing.assert_close(wrapped.forward_embedded(wrapped.embed(x)), want)
        assert wrapped(x).shape == (4, 3)


def test_missing_transformers_is_one_line(tmp_path):
    folder = tmp_path / "ckpts"
    (folder / "checkpoint-1").mkdir(parents=True)
    (folder / "checkpoint-1" / "config.json").write_text(_tiny_gpt2(architectures=["GPT2ForSequenceClassification"])
                                                         .to_json_string())
    (folder / "checkpoint-1" / "model.safetensors").write_bytes(b"")
    code = ("import sys; sys.modules['transformers'] = None\n"
            "from grokscope.cli import main\n"
            f"sys.argv = ['grokscope', 'init', {str(folder)!r}, '--model', 'hf', '--dataset', 'modular',"
            " '--dataset-kwargs', '{\"p\": 3}']\nmain()\n")
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=ROOT, timeout=120)
    assert r.returncode == 1
    lines = [ln for ln in r.stderr.splitlines() if ln.strip() and not ln.startswith(("Usage:", "Try "))]
    assert lines == ["Error: --model hf needs the transformers package: pip install grokscope[hf]"], r.stderr


# -- activations of transformers, recognised by what they compute ---------------------------------

@pytest.mark.parametrize("name,label,piecewise", [
    ("gelu", "gelu", False), ("gelu_python", "gelu", False), ("gelu_new", "gelu_tanh", False),
    ("gelu_fast", "gelu_tanh", False), ("gelu_pytorch_tanh", "gelu_tanh", False),
    ("gelu_accurate", "gelu_tanh", False), ("quick_gelu", "quick_gelu", False), ("silu", "silu", False),
    ("mish", "mish", False), ("relu2", "relu_squared", False), ("gelu_10", "gelu", False),
])
def test_act2fn_activations_are_recognised(name, label, piecewise):
    from transformers.activations import ACT2FN

    from grokscope.functional.activations import recognise
    from grokscope.functional.kinks import module_kinks

    act = recognise(ACT2FN[name])
    assert act is not None and (act.label, act.kinks, act.piecewise_linear) == (label, (0.0,), piecewise)
    assert module_kinks(ACT2FN[name]) == (0.0,)


@pytest.mark.parametrize("name", ["sigmoid", "tanh", "linear", "laplace", "sqrtsoftplus"])
def test_smooth_or_linear_act2fn_entries_are_not_kinks(name):
    from transformers.activations import ACT2FN

    from grokscope.functional.kinks import module_kinks

    assert module_kinks(ACT2FN[name]) is None


class TimmLikeGELUTanh(nn.Module):
    """An activation written the way timm writes its own: a class around a functional call."""

    def forward(self, x):
        return nn.functional.gelu(x, approximate="tanh")


class HandLeaky(nn.Module):
    def forward(self, x):
        return torch.where(x > 0, x, 0.2 * x)


def test_own_activation_classes_are_counted_once_like_torch_ones():
    """LC of a net whose activations are foreign classes equals LC of the same net with torch's own
    modules computing the same function (an independent path: torch modules are known by class)."""
    from probes.lc import local_complexity

    torch.manual_seed(0)

    def net(acts):
        return nn.Sequential(nn.Linear(6, 12), acts[0], nn.Linear(12, 12), acts[1], nn.Linear(12, 3))

    foreign = net([TimmLikeGELUTanh(), HandLeaky()])
    native = net([nn.GELU(approximate="tanh"), nn.LeakyReLU(0.2)])
    native.load_state_dict(foreign.state_dict())
    x = torch.randn(20, 6)
    a = local_complexity(foreign, x, radius=(0.05, 0.2), n_dirs=4)
    b = local_complexity(native, x, radius=(0.05, 0.2), n_dirs=4)
    assert a.layers == ["1", "3"] and len(b.layers) == 2
    assert torch.equal(a.counts, b.counts) and a.counts.sum() > 0


def test_gpt2_and_bert_mlp_neurons_are_found():
    from transformers import BertConfig, BertForSequenceClassification, GPT2ForSequenceClassification

    from grokscope.functional.kinks import kink_layers
    from probes.fourier import find_neuron_module

    gpt = HFLogits(GPT2ForSequenceClassification(_tiny_gpt2(n_layer=2)))
    bert = HFLogits(BertForSequenceClassification(BertConfig(
        vocab_size=11, hidden_size=8, num_hidden_layers=2, num_attention_heads=2, intermediate_size=16,
        max_position_embeddings=5, num_labels=3)))
    x = torch.randint(0, 10, (2, 5))
    for net, names, width in (
            (gpt, ["model.transformer.h.0.mlp.act", "model.transformer.h.1.mlp.act"], 5 * 32),
            (bert, [f"model.bert.encoder.layer.{i}.intermediate.intermediate_act_fn" for i in (0, 1)], 5 * 16)):
        layers = kink_layers(net, net.embed(x).detach(), forward=net.forward_embedded)
        assert [l.name for l in layers] == names  # GELUActivation's inner F.gelu is not a second layer
        assert all(l.neurons == width and not l.piecewise_linear for l in layers)
        assert find_neuron_module(net)[0] == names[-1]


def test_model_without_countable_layer_gives_one_lc_error(tmp_path, cli):
    cfg = hf_runs.modular_config(5)
    cfg.activation_function = "tanh"
    folder = tmp_path / "tanh"
    model = transformers.GPT2ForSequenceClassification(cfg)
    model.save_pretrained(folder / "checkpoint-3")
    r = cli("init", folder, "--model", "hf", "--dataset", "modular", "--dataset-kwargs", '{"p": 5}')
    assert r.exit_code == 0, r.output
    r = cli("probe", folder, "--metrics", "acc,lc", "--scheduler", "sync", "-q")
    assert r.exit_code == 1
    errors = [ln for ln in r.stderr.splitlines() if ln.startswith("Error")]
    assert len(errors) == 1 and "lc: this model has no layer to count" in errors[0]
    assert "nothing was computed" in errors[0] and "Traceback" not in r.stderr
    from probes.fourier import ProbeError, find_neuron_module

    with pytest.raises(ProbeError, match=r"set fourier.neuron_module=NAME .*e\.g\. one of .*transformer\.h\.0\.mlp"):
        find_neuron_module(HFLogits(model))


# -- real Trainer runs ----------------------------------------------------------------------------

def _needs_accelerate() -> None:
    pytest.importorskip("accelerate", reason="transformers' Trainer needs accelerate (in the test extra)")


def _eval_records(folder: Path) -> dict[int, float]:
    """``{step: eval_accuracy}`` from the Trainer's own trainer_state.json (its last checkpoint)."""
    last = max(folder.glob("checkpoint-*"), key=lambda p: int(p.name.split("-")[1]))
    state = json.loads((last / "trainer_state.json").read_text())
    return {r["step"]: r["eval_accuracy"] for r in state["log_history"] if "eval_accuracy" in r}


def _embedding_rms(folder: Path, step: int, x: torch.Tensor) -> float:
    """RMS of the input embeddings of ``x`` under transformers' own loading of ``checkpoint-step``."""
    net = transformers.AutoModelForSequenceClassification.from_pretrained(folder / f"checkpoint-{step}")
    with torch.no_grad():
        return float(net.get_input_embeddings()(x).double().pow(2).mean().sqrt())


def _check_series(folder: Path, run: str, metrics: list[str], x_train: torch.Tensor, log: list[dict]) -> None:
    store = folder / "probes.zarr"
    trainer = _eval_records(folder)
    assert trainer == {r["step"]: r["eval_accuracy"] for r in log} and len(trainer) >= 2
    acc = load_group(store, run, "acc")
    assert list(acc.step.values) == sorted(trainer)
    for i, step in enumerate(acc.step.values):  # exactly the Trainer's own evaluation
        assert float(acc.accuracy.sel(split="test").values[i]) == pytest.approx(trainer[int(step)], abs=1e-12)
    for m in metrics:
        ds = load_group(store, run, m)
        assert ds.done.all() and (ds.error == "").all(), (m, ds.error.values)
    if "pgd" in metrics:
        pgd = load_group(store, run, "pgd")
        for i, step in enumerate(pgd.step.values):
            rms = _embedding_rms(folder, int(step), x_train[:4096])
            np.testing.assert_allclose(pgd.eps_abs.values[i], np.array(pgd.eps.values) * rms, rtol=1e-5)
        assert pgd.attrs["params"]["eps_unit"] == "auto"
    if "lc" in metrics:
        lc = load_group(store, run, "lc")
        assert all("act" in str(n) for n in lc.layer.values)
        assert np.isfinite(lc.lc_total_mean.sel(split="train").values).all()
    if "norm" in metrics:
        assert np.isfinite(load_group(store, run, "norm").wd_tangent_frac.values).all()


def test_trainer_gpt2_acc_is_the_trainers_evaluation(tmp_path, cli):
    """The quick version (the default suite): a short Trainer run, init with no model code (not even
    ``--model hf``: the config.json tells), then acc
    (equal to the Trainer's eval_accuracy at every checkpoint), pgd and fourier."""
    _needs_accelerate()
    folder = tmp_path / "gpt2"
    log = hf_runs.train_modular(folder, p=7, steps=10, every=5)
    # no --model: the folder's config.json says it is a Hugging Face model
    r = cli("init", folder, "--dataset", "modular", "--dataset-kwargs", '{"p": 7}')
    assert r.exit_code == 0, r.output
    assert f"--model hf: the model is the one {folder}/checkpoint-" in r.stderr
    assert json.loads((folder / "run.json").read_text())["model"]["arch"] == "hf"
    metrics = ["acc", "pgd", "fourier"]
    r = cli("probe", folder, "--metrics", ",".join(metrics), "--scheduler", "sync", "-q", *small(metrics))
    assert r.exit_code == 0, r.output
    from grokscope.datasets import load_dataset

    _check_series(folder, "gpt2", metrics, load_dataset({"name": "modular", "kwargs": {"p": 7}}).x_train, log)


@pytest.mark.slow
def test_trainer_gpt2_on_modular_arithmetic(tmp_path, cli):
    """A GPT-2 sequence classifier trained by ``transformers.Trainer`` on modular addition; every probe
    (fourier included: the data is modular arithmetic) with no glue code: init, then a bare probe."""
    _needs_accelerate()
    folder = tmp_path / "gpt2"
    log = hf_runs.train_modular(folder, p=7, steps=20, every=10)
    r = cli("init", folder, "--model", "hf", "--dataset", "modular", "--dataset-kwargs", '{"p": 7}')
    assert r.exit_code == 0, r.output
    assert "imported 2 evaluation record(s)" in r.stderr
    metrics = ["acc", "lc", "align", "pgd", "fourier", "norm"]
    t0 = time.perf_counter()
    r = cli("probe", folder, "--metrics", ",".join(metrics), "--scheduler", "sync", "-q", *small(metrics))
    wall = time.perf_counter() - t0
    assert r.exit_code == 0, r.output
    assert "SPLIT CHECK" not in r.stderr
    from grokscope.datasets import load_dataset

    data = load_dataset({"name": "modular", "kwargs": {"p": 7}, "seed": 0})
    _check_series(folder, "gpt2", metrics, data.x_train, log)
    fourier = load_group(folder / "probes.zarr", "gpt2", "fourier")
    assert fourier.attrs["neuron_module"] == "model.transformer.h.0.mlp.act"
    assert fourier.neuron.size == 64  # 4 * n_embd MLP neurons, at the last position
    assert "eager attention" in load_group(folder / "probes.zarr", "gpt2", "norm").attrs["attention"]
    print(f"\nprobe wall time, GPT-2 Trainer series (2 checkpoints, {','.join(metrics)}): {wall:.1f} s")


@pytest.mark.slow
def test_trainer_bert_on_token_data_local_cluster(tmp_path, cli):
    """A BERT sequence classifier trained by ``Trainer`` on a synthetic token task whose data and split
    are in ``data.npz``; probed on a LocalCluster of worker processes. fourier does not apply (the
    task is not modular arithmetic) and is not asked for."""
    _needs_accelerate()
    folder = tmp_path / "bert"
    log = hf_runs.train_tokens(folder, "bert", steps=30, every=10)
    r = cli("init", folder, "--model", "hf", "--dataset", "file:" + str(folder / "data.npz"),
            "--dataset-kwargs", '{"input_kind": "tokens"}')
    assert r.exit_code == 0, r.output
    metrics = ["acc", "lc", "align", "pgd", "norm"]
    t0 = time.perf_counter()
    r = cli("probe", folder, "--metrics", ",".join(metrics), "--workers", "2", "--threads", "1", "-q", *small(metrics))
    wall = time.perf_counter() - t0
    assert r.exit_code == 0, r.output
    assert "SPLIT CHECK" not in r.stderr
    d = np.load(folder / "data.npz")
    _check_series(folder, "bert", metrics, torch.from_numpy(d["x"][d["train_idx"]]), log)
    print(f"\nprobe wall time, BERT Trainer series (3 checkpoints, {','.join(metrics)}, LocalCluster 2 "
          f"workers): {wall:.1f} s")


# -- hub cache layout -----------------------------------------------------------------------------

def _hub_repo(root: Path, names=("step0", "step1000", "step2000")) -> tuple[Path, dict[str, dict]]:
    cfg = hf_runs.modular_config(5)
    states = {}
    for i, name in enumerate(names):
        torch.manual_seed(i if name != names[-1] else 1)  # the last revision repeats the weights of the second
        states[name] = {k: v.clone() for k, v in transformers.GPT2ForSequenceClassification(cfg).state_dict().items()}
    repo = hf_runs.hub_cache(root, "toy-org/tiny-gpt2", {n: {"config": cfg, "state": s} for n, s in states.items()},
                             aliases={"main": names[-1]})
    orphan = repo / "snapshots" / ("f" * 40)
    orphan.mkdir()
    (orphan / "model.safetensors").symlink_to(next((repo / "snapshots").glob("*/model.safetensors")).resolve())
    return repo, states


def test_hub_cache_layout_is_a_checkpoint_series(tmp_path, cli):
    from grokscope.engine.discovery import find_runs

    repo, states = _hub_repo(tmp_path / "hub")
    assert (repo / "snapshots").is_dir() and all(p.is_symlink() for p in repo.glob("snapshots/*/*"))
    assert len(list((repo / "blobs").iterdir())) == 3  # one config blob, two distinct weight blobs
    runs = find_runs(tmp_path / "hub")
    assert [r.name for r in runs] == ["models--toy-org--tiny-gpt2"]
    run = runs[0]
    assert run.steps == [0, 1000, 2000]
    assert [c.label.split(":")[0] for c in run.checkpoints] == ["step0", "step1000", "step2000"]
    reasons = sorted(p.reason for p in run.problems)
    assert reasons == ["revision main (repeats revision step2000); skipped",
                       "snapshot that no revision in refs/ names (no step); skipped"]
    # scan: the same blob behind steps 1000 and 2000
    r = cli("scan", tmp_path / "hub")
    assert r.exit_code == 0, r.output
    assert "duplicate weights at steps 1000, 2000" in r.output and "the same file" in r.output
    # init with no model code (config.json of a snapshot), probe, acc equal to transformers' own model
    r = cli("init", repo, "--model", "hf", "--dataset", "modular", "--dataset-kwargs", '{"p": 5}')
    assert r.exit_code == 0, r.output
    assert "skipped" in r.stderr and "main" in r.stderr
    r = cli("probe", repo, "--metrics", "acc", "--scheduler", "sync", "-q")
    assert r.exit_code == 0, r.output
    acc = load_group(repo / "probes.zarr", "models--toy-org--tiny-gpt2", "acc")
    from grokscope.datasets import load_dataset

    data = load_dataset({"name": "modular", "kwargs": {"p": 5}, "seed": 0})
    for i, ck in enumerate(run.checkpoints):
        net = transformers.AutoModelForSequenceClassification.from_pretrained(Path(ck.path).parent).eval()
        with torch.no_grad():
            want = float((net(input_ids=data.x_test).logits.argmax(1) == data.y_test).double().mean())
        assert float(acc.accuracy.sel(split="test").values[i]) == want
    assert math.isclose(float(acc.accuracy.sel(split="test").values[1]),
                        float(acc.accuracy.sel(split="test").values[2]))


def test_hub_cache_checkpoint_revisions(tmp_path):
    from grokscope.engine.discovery import find_runs

    repo, _ = _hub_repo(tmp_path / "hub", names=("checkpoint-500", "checkpoint-1500"))
    (repo / "refs" / "step3000").write_text("0" * 40)  # a revision whose snapshot was never downloaded
    run = find_runs(repo)[0]
    assert run.steps == [500, 1500]
    assert any("names commit 000000000000, which has no snapshot here" in p.reason for p in run.problems)
    net = build_model({"arch": "hf", "kwargs": {"config": json.loads(
        (Path(run.checkpoints[0].path).parent / "config.json").read_text())}})
    assert isinstance(net, HFLogits)


def test_init_takes_hf_only_from_a_hugging_face_config(tmp_path):
    """Without ``--model``, ``init`` uses ``hf`` only for a config.json that names a model type or
    architectures (a training script's own config.json is not one)."""
    from grokscope.cli.init import _hf_default

    (tmp_path / "config.json").write_text('{"lr": 0.001, "epochs": 3}')
    assert _hf_default(tmp_path) is None
    (tmp_path / "config.json").write_text("{not json")
    assert _hf_default(tmp_path) is None
    (tmp_path / "config.json").write_text('{"model_type": "gpt2", "architectures": ["GPT2LMHeadModel"]}')
    assert _hf_default(tmp_path) == "hf"
    assert _hf_default(tmp_path / "missing") is None
