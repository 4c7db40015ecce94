"""Prieto et al.'s StableMax loss and ⊥Grad optimiser: the loss against a per-sample float64 reference
and finite differences, ⊥Grad's projection, and both wired into real (tiny) training runs."""

from __future__ import annotations

import math
from pathlib import Path

import torch
from click.testing import CliRunner

from grokscope import runs
from grokscope.cli import main
from grokscope.datasets import load_dataset
from grokscope.losses import LOSSES, stablemax_cross_entropy, stablemax_s, task_loss
from grokscope.models import build_model
from grokscope.probes.acc import loss_and_accuracy
from grokscope.training import trainer as T
from grokscope.training.orthograd import orthogonalise_grads_
from grokscope.training.presets import preset_config


def tiny(**over):
    kw = dict(steps=3, save="every:1", eval_every="every:1", model_kwargs={"width": 16},
              dataset_kwargs={"p": 11}, dtype="float64")
    kw.update(over)
    return preset_config("modadd-mlp", **kw)


def slow_stablemax(logits: torch.Tensor, y: torch.Tensor) -> list[float]:
    """−log(s(z_y) / Σ_j s(z_j)) sample by sample, in Python floats, straight from the paper."""
    def s(v: float) -> float:
        return v + 1 if v >= 0 else 1 / (1 - v)
    out = []
    for row, label in zip(logits.tolist(), y.tolist()):
        out.append(-math.log(s(row[label]) / sum(s(v) for v in row)))
    return out


def test_stablemax_matches_a_per_sample_reference() -> None:
    g = torch.Generator().manual_seed(0)
    z = torch.randn(40, 7, generator=g, dtype=torch.float64) * 5
    z[0, :] = 0.0
    z[1, 3] = 1.0  # 1/(1 − x) is singular at 1: the discarded branch must not poison anything
    y = torch.randint(0, 7, (40,), generator=g)
    ref = torch.tensor(slow_stablemax(z, y), dtype=torch.float64)
    torch.testing.assert_close(task_loss(z, y, "stablemax", reduction="none"), ref, rtol=1e-12, atol=1e-14)
    torch.testing.assert_close(task_loss(z, y, "stablemax"), ref.mean(), rtol=1e-12, atol=1e-14)
    torch.testing.assert_close(task_loss(z, y, "stablemax", reduction="sum"), ref.sum(), rtol=1e-12, atol=1e-14)
    assert [float(v) for v in stablemax_s(torch.tensor([-3.0, -1.0, 0.0, 2.0]))] == [0.25, 0.5, 1.0, 3.0]
    # float32 logits: computed in float64 as in the authors' code, returned in float32
    out32 = task_loss(z.float(), y, "stablemax", reduction="none")
    assert out32.dtype == torch.float32
    torch.testing.assert_close(out32, ref.float(), rtol=1e-6, atol=1e-6)
    assert "stablemax" in LOSSES


def test_stablemax_gradient_matches_finite_differences() -> None:
    g = torch.Generator().manual_seed(1)
    z = (torch.randn(6, 5, generator=g, dtype=torch.float64) * 3).requires_grad_(True)
    y = torch.randint(0, 5, (6,), generator=g)
    assert torch.autograd.gradcheck(lambda t: stablemax_cross_entropy(t, y, "sum"), (z,), eps=1e-6, atol=1e-7)
    # at the kink x = 0 both one-sided derivatives of s are 1, and no NaN comes from the x = 1 pole
    z0 = torch.tensor([[0.0, 1.0, -2.0, 40.0]], dtype=torch.float64, requires_grad=True)
    (gz,) = torch.autograd.grad(stablemax_cross_entropy(z0, torch.tensor([3]), "sum"), z0)
    assert torch.isfinite(gz).all()
    h = 1e-6
    for j in range(4):
        e = torch.zeros_like(z0)
        e[0, j] = h
        with torch.no_grad():
            fd = (stablemax_cross_entropy(z0 + e, torch.tensor([3]), "sum")
                  - stablemax_cross_entropy(z0 - e, torch.tensor([3]), "sum")) / (2 * h)
        assert abs(float(fd) - float(gz[0, j])) < 1e-7


def test_orthogonalise_grads_projects_and_keeps_the_norm() -> None:
    g = torch.Generator().manual_seed(2)
    params = [torch.nn.Parameter(torch.randn(5, 4, generator=g, dtype=torch.float64)),
              torch.nn.Parameter(torch.zeros(3, dtype=torch.float64)),
              torch.nn.Parameter(torch.randn(6, generator=g, dtype=torch.float64))]
    grads = [torch.randn(p.shape, generator=g, dtype=torch.float64) for p in params]
    grads[2] = 3.0 * params[2].detach() + 0.1 * grads[2]  # almost parallel to its tensor
    for p, gr in zip(params, grads):
        p.grad = gr.clone()
    orthogonalise_grads_(params)
    for p, gr in zip(params, grads):
        w, new = p.detach().reshape(-1), p.grad.reshape(-1)
        assert abs(float(w @ new)) <= 1e-12 * float(w.norm() * new.norm() + 1)
        assert math.isclose(float(new.norm()), float(gr.norm()), rel_tol=1e-12)
    torch.testing.assert_close(params[1].grad, grads[1])  # a zero tensor has no direction to remove
    # the reference: remove the projection on w, then rescale (written out for the first tensor)
    w, gr = params[0].detach().reshape(-1), grads[0].reshape(-1)
    perp = gr - (w @ gr) / (w @ w) * w
    torch.testing.assert_close(params[0].grad.reshape(-1), perp * gr.norm() / perp.norm())


def test_orthograd_sgd_update_is_orthogonal_to_each_weight_tensor(tmp_path: Path) -> None:
    out = T.train_run(tiny(optimizer="orthograd-sgd", lr=0.5, weight_decay=0.0, momentum=0.0, steps=2),
                      tmp_path / "r", progress=False)
    doc = runs.read_run_json(out)
    assert doc["train"]["optimizer"] == "orthograd-sgd"
    from safetensors.torch import load_file

    w0, w1 = (load_file(str(runs.checkpoint_path(out, s))) for s in (0, 1))
    moved = 0
    for k in w0:
        d = (w1[k] - w0[k]).reshape(-1)
        if float(d.norm()) > 0:
            moved += 1
            cos = float(w0[k].reshape(-1) @ d) / (float(w0[k].norm()) * float(d.norm()))
            assert abs(cos) < 1e-10, k
    assert moved >= 4


def test_stablemax_orthograd_run_matches_a_hand_written_loop(tmp_path: Path) -> None:
    """Three ⊥AdamW updates on the StableMax loss against a plain float64 loop; run.json records both,
    and the acc probe's function gives the log's losses with the run's loss."""
    cfg = tiny(loss="stablemax", optimizer="orthograd", lr=0.01, weight_decay=0.1, betas=(0.8, 0.9))
    out = T.train_run(cfg, tmp_path / "r", progress=False)
    doc = runs.read_run_json(out)
    assert doc["train"]["loss"] == "stablemax" and doc["train"]["optimizer"] == "orthograd"
    data = load_dataset(doc["dataset"])
    x, y = data.x_train.double(), data.y_train
    torch.manual_seed(cfg.seed)
    model = build_model(doc["model"]).double()
    params = list(model.parameters())
    m = [torch.zeros_like(p) for p in params]
    v = [torch.zeros_like(p) for p in params]
    b1, b2 = cfg.betas
    log = runs.read_log(out)
    for t in range(3):
        lo, ac = loss_and_accuracy(model, x, y, "stablemax")
        assert math.isclose(lo, log[t]["train_loss"], rel_tol=1e-12) and ac == log[t]["train_acc"]
        grads = torch.autograd.grad(task_loss(model(x), y, "stablemax"), params)
        with torch.no_grad():
            for i, (p, g) in enumerate(zip(params, grads)):
                w, gf = p.reshape(-1), g.reshape(-1)
                perp = gf - (w @ gf) / (w @ w + 1e-30) * w
                g = (perp * gf.norm() / (perp.norm() + 1e-30)).view_as(p)
                p *= 1 - cfg.lr * cfg.weight_decay
                m[i] = b1 * m[i] + (1 - b1) * g
                v[i] = b2 * v[i] + (1 - b2) * g * g
                mh, vh = m[i] / (1 - b1 ** (t + 1)), v[i] / (1 - b2 ** (t + 1))
                p -= cfg.lr * mh / (vh.sqrt() + 1e-8)
        from safetensors.torch import load_file

        saved = load_file(str(runs.checkpoint_path(out, t + 1)))
        for k, val in model.state_dict().items():
            torch.testing.assert_close(saved[k], val, rtol=1e-10, atol=1e-12)


def test_cli_takes_stablemax_and_optim_orthograd(tmp_path: Path) -> None:
    res = CliRunner().invoke(main, ["train", "--loss", "stablemax", "--optim", "orthograd", "--steps", "2",
                                    "--save", "every:1", "--model-kwargs", '{"width": 16}',
                                    "--dataset-kwargs", '{"p": 11}', "--quiet", "--out", str(tmp_path / "r")],
                             catch_exceptions=False)
    assert res.exit_code == 0, res.output
    train = runs.read_run_json(tmp_path / "r")["train"]
    assert (train["loss"], train["optimizer"]) == ("stablemax", "orthograd")
    res = CliRunner().invoke(main, ["train", "--optim", "nope", "--out", str(tmp_path / "x")])
    assert res.exit_code == 2 and "orthograd" in res.output


def test_cli_choices_are_the_library_lists() -> None:
    """The CLI repeats LOSSES / OPTIMIZERS (to stay torch-free at import); they must not drift."""
    from grokscope.cli.spec_options import spec_options
    from grokscope.cli.train import train
    from grokscope.training.config import OPTIMIZERS

    opts = {p.name: p for p in train.params}
    assert list(opts["loss"].type.choices) == list(LOSSES)
    assert list(opts["optimizer"].type.choices) == list(OPTIMIZERS)
    import click

    init_opts = {p.name: p for p in spec_options(click.command()(lambda **k: None)).params}
    assert list(init_opts["loss"].type.choices) == list(LOSSES)
