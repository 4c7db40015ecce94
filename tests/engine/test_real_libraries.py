"""Checkpoint series written by the real libraries, analysed with no glue code.

A Lightning run (``ModelCheckpoint(every_n_train_steps=10, save_top_k=-1, save_last=True)``, a
``CSVLogger``) and a plain PyTorch loop saving ``.pth`` state dicts, each trained here in seconds
from files written the way a user writes them (a module with the model, a training script), then
``grokscope init PATH --model ...`` and ``grokscope probe PATH --metrics acc,lc,align,pgd,norm``.
``acc`` must equal each library's own evaluation at every checkpoint (``fourier`` does not apply: it
needs modular-arithmetic data). The probe's wall time is printed (``-s``), never asserted.
"""

from __future__ import annotations

import json
import runpy
import sys
import textwrap
import time
from pathlib import Path

import numpy as np
import pytest
import torch

from grokscope.engine.store_view import load_group

pytest.importorskip("lightning")

DATA = '''
import numpy as np

rng = np.random.default_rng(0)
x = rng.normal(size=(600, 20)).astype(np.float32)
y = (x @ rng.normal(size=(20, 4))).argmax(1)
perm = rng.permutation(600)
train_idx, test_idx = perm[:400], perm[400:]
np.savez("data.npz", x=x, y=y, train_idx=train_idx, test_idx=test_idx)
'''

LITMOD = '''
import lightning as L
import torch
from torch import nn


class LitMLP(L.LightningModule):
    def __init__(self, in_dim: int = 20, hidden: int = 32, n_classes: int = 4, lr: float = 0.2):
        super().__init__()
        self.save_hyperparameters()
        self.net = nn.Sequential(nn.Linear(in_dim, hidden), nn.ReLU(), nn.Linear(hidden, n_classes))

    def forward(self, x):
        return self.net(x)

    def training_step(self, batch, batch_idx):
        x, y = batch
        return nn.functional.cross_entropy(self(x), y)

    def validation_step(self, batch, batch_idx):
        x, y = batch
        logits = self(x)
        self.log("val_loss", nn.functional.cross_entropy(logits, y))
        self.log("val_acc", (logits.argmax(1) == y).float().mean())

    def configure_optimizers(self):
        return torch.optim.SGD(self.parameters(), lr=self.hparams.lr)
'''

TRAIN_LIT = DATA + '''
import lightning as L
import torch
from lightning.pytorch.callbacks import ModelCheckpoint
from lightning.pytorch.loggers import CSVLogger
from torch.utils.data import DataLoader, TensorDataset

from litmod import LitMLP

xt, yt = torch.from_numpy(x), torch.from_numpy(y)
train = DataLoader(TensorDataset(xt[train_idx], yt[train_idx]), batch_size=50, shuffle=True)
val = DataLoader(TensorDataset(xt[test_idx], yt[test_idx]), batch_size=200)
L.seed_everything(0)
trainer = L.Trainer(max_steps=40, val_check_interval=10, check_val_every_n_epoch=None,
                    callbacks=[ModelCheckpoint(every_n_train_steps=10, save_top_k=-1, save_last=True)],
                    logger=CSVLogger("."), accelerator="cpu", enable_progress_bar=False,
                    enable_model_summary=False, num_sanity_val_steps=0, log_every_n_steps=5)
trainer.fit(LitMLP(hidden=24), train, val)
'''

MODEL = '''
from torch import nn


def make(in_dim: int = 20, n_classes: int = 4) -> nn.Module:
    return nn.Sequential(nn.Linear(in_dim, 32), nn.ReLU(), nn.Linear(32, n_classes))
'''

TRAIN_LOOP = DATA + '''
import json
import os

import torch

from model import make

torch.manual_seed(0)
net = make()
opt = torch.optim.SGD(net.parameters(), lr=0.2)
xt, yt = torch.from_numpy(x), torch.from_numpy(y)
os.makedirs("ckpts", exist_ok=True)
with open("eval.jsonl", "w") as log:
    for step in range(101):
        if step in (0, 5, 20, 50, 100):
            net.eval()
            with torch.no_grad():
                out = {s: net(xt[i]) for s, i in (("train", train_idx), ("test", test_idx))}
            rec = {"step": step}
            for s, i in (("train", train_idx), ("test", test_idx)):
                rec[f"{s}_acc"] = int((out[s].argmax(1) == yt[i]).sum()) / len(i)
                rec[f"{s}_loss"] = float(torch.nn.functional.cross_entropy(out[s], yt[i]))
            log.write(json.dumps(rec) + "\\n")
            torch.save(net.state_dict(), f"ckpts/ckpt_{step}.pth")
            torch.save(net.state_dict(), "ckpts/last.pth")  # the latest again, under an alias
            net.train()
        opt.zero_grad()
        torch.nn.functional.cross_entropy(net(xt[train_idx]), yt[train_idx]).backward()
        opt.step()
'''

METRICS = "acc,lc,align,pgd,norm"
SMALL = ["--param", "lc.n_points=16", "--param", "lc.n_dirs=4", "--param", "align.n_points=16",
         "--param", "pgd.n_points=16", "--param", "pgd.steps=3", "--param", "norm.n_train=16",
         "--param", "norm.proj_iters=3", "--param", "norm.power_iters=3"]


def _write_and_run(folder: Path, files: dict[str, str], script: str, monkeypatch) -> None:
    """Write the user's files into ``folder`` and run ``script`` there as ``python script`` would
    (in this process: torch is imported once); the user's modules are forgotten afterwards."""
    for name, text in files.items():
        (folder / name).write_text(textwrap.dedent(text))
    monkeypatch.chdir(folder)
    with monkeypatch.context() as m:
        m.syspath_prepend(str(folder))
        runpy.run_path(str(folder / script), run_name="__main__")
    for name in files:
        sys.modules.pop(Path(name).stem, None)


def _probe(cli, path: Path, *more: str) -> tuple[dict, float]:
    t0 = time.perf_counter()
    r = cli("probe", path, "--metrics", METRICS, *SMALL, "--scheduler", "sync", "--json", "-q", *more)
    wall = time.perf_counter() - t0
    assert r.exit_code == 0, r.output
    return json.loads(r.stdout), wall


def _check_probes(store: Path, run: str, steps: list[int]) -> None:
    for probe in METRICS.split(","):
        ds = load_group(store, run, probe)
        assert list(ds.step.values) == steps and ds.done.all(), probe


def test_lightning_run_analysed_with_no_glue_code(tmp_path, cli, monkeypatch):
    _write_and_run(tmp_path, {"litmod.py": LITMOD, "train_lit.py": TRAIN_LIT}, "train_lit.py", monkeypatch)
    run = tmp_path / "lightning_logs" / "version_0"
    r = cli("init", run, "--model", "litmod:LitMLP", "--dataset", "file:data.npz")
    assert r.exit_code == 0, r.output
    assert "last.ckpt is global_step 40 (inside it), the step of checkpoints/epoch=4-step=40.ckpt; skipped" in r.stderr
    spec = json.loads((run / "run.json").read_text())
    # the saved hyper_parameters, not the class defaults (hidden=24 was given to the constructor)
    assert spec["model"] == {"factory": "litmod:LitMLP", "path": str(tmp_path),
                             "kwargs": {"in_dim": 20, "hidden": 24, "n_classes": 4, "lr": 0.2}}
    summary, wall = _probe(cli, run)
    print(f"\nlightning: probe {METRICS} over 4 checkpoints: {wall:.1f} s wall "
          f"({json.dumps(summary['seconds_by_probe'])})")
    assert summary["failed"] == 0 and summary["warnings"] == [
        f"version_0: {run}/checkpoints/last.ckpt: last.ckpt is global_step 40 (inside it), the step of "
        "checkpoints/epoch=4-step=40.ckpt; skipped, an alias"]
    _check_probes(run / "probes.zarr", "version_0", [10, 20, 30, 40])
    # acc equals Lightning's own validation at every checkpoint (metrics.csv logs it at step - 1)
    import csv

    rows = [r for r in csv.DictReader(open(run / "metrics.csv")) if r.get("val_acc")]
    acc = load_group(run / "probes.zarr", "version_0", "acc")
    assert [int(r["step"]) + 1 for r in rows] == [10, 20, 30, 40]
    np.testing.assert_allclose(acc.accuracy.sel(split="test").values, [float(r["val_acc"]) for r in rows],
                               rtol=0, atol=1e-7)
    np.testing.assert_allclose(acc.loss.sel(split="test").values, [float(r["val_loss"]) for r in rows],
                               rtol=1e-5)


class Settings:
    """A user's own hyper-parameter object: pickled by class, so not loadable weights-only."""

    def __init__(self, hidden: int):
        self.hidden = hidden


def test_lightning_checkpoint_that_needs_code_is_one_line(tmp_path, cli, monkeypatch):
    """A LightningModule whose checkpoints cannot be read weights-only: one line naming the file."""
    _write_and_run(tmp_path, {"litmod.py": LITMOD, "train_lit.py": TRAIN_LIT}, "train_lit.py", monkeypatch)
    run = tmp_path / "lightning_logs" / "version_0"
    first = run / "checkpoints" / "epoch=1-step=10.ckpt"
    ck = torch.load(first, weights_only=True)
    ck["hyper_parameters"] = {"settings": Settings(24)}
    torch.save(ck, first)
    r = cli("init", run, "--model", "litmod:LitMLP", "--dataset", "file:data.npz")
    assert r.exit_code == 2
    (line,) = [x for x in r.output.splitlines() if "refused" in x]
    assert f"{first}: refused: this pickle needs code to load" in line and "Settings" in line


def test_plain_loop_pth_series_analysed_with_no_glue_code(tmp_path, cli, monkeypatch):
    _write_and_run(tmp_path, {"model.py": MODEL, "train.py": TRAIN_LOOP}, "train.py", monkeypatch)
    run = tmp_path / "ckpts"
    r = cli("init", run, "--model", "model:make", "--dataset", "file:data.npz", "--log", "eval.jsonl")
    assert r.exit_code == 0, r.output
    assert "last.pth holds the same weights as ckpt_100.pth (step 100); skipped, an alias" in r.stderr
    summary, wall = _probe(cli, run)
    print(f"\nplain loop: probe {METRICS} over 5 checkpoints: {wall:.1f} s wall "
          f"({json.dumps(summary['seconds_by_probe'])})")
    assert summary["failed"] == 0
    _check_probes(run / "probes.zarr", "ckpts", [0, 5, 20, 50, 100])
    logged = [json.loads(line) for line in open("eval.jsonl")]
    acc = load_group(run / "probes.zarr", "ckpts", "acc")
    for split in ("train", "test"):
        assert list(acc.accuracy.sel(split=split).values) == [r[f"{split}_acc"] for r in logged]
        np.testing.assert_allclose(acc.loss.sel(split=split).values, [r[f"{split}_loss"] for r in logged],
                                   rtol=1e-6)


def test_saved_hyper_parameters_are_passed_as_lightning_passes_them(tmp_path):
    """One dict argument (``hparams_name``), ``**kwargs``, and arguments the constructor does not take."""
    import lightning as L

    from grokscope.models.lightning import is_lightning_module, saved_hyper_parameters

    class OneDict(L.LightningModule):
        def __init__(self, config: dict):
            super().__init__()

    class Open(L.LightningModule):
        def __init__(self, d: int = 3, **rest):
            super().__init__()

    class Closed(L.LightningModule):
        def __init__(self, d: int = 3):
            super().__init__()

    path = tmp_path / "a.ckpt"
    torch.save({"hyper_parameters": {"d": 3, "x": 1}, "hparams_name": "config", "state_dict": {}}, path)
    assert saved_hyper_parameters(path, OneDict) == {"config": {"d": 3, "x": 1}}
    torch.save({"hyper_parameters": {"d": 3, "extra": 5, "_instantiator": "x.y"}, "hparams_name": "kwargs",
                "state_dict": {}}, path)
    assert saved_hyper_parameters(path, Open) == {"d": 3, "extra": 5}
    assert saved_hyper_parameters(path, Closed) == {"d": 3}
    assert is_lightning_module(Closed) and not is_lightning_module(torch.nn.Linear)
