"""User code that ``--model``/``--dataset`` imports and that acts when imported: a real Lightning script
that defines its LightningModule at top level and trains below it (no ``__main__`` guard). ``init``
imports it, which trains again and writes new checkpoints and logs; grokscope refuses it in one line
naming the module and the fix, and takes nothing from the changed folder."""

from __future__ import annotations

import os
import runpy
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
from click.testing import CliRunner

from grokscope.cli import main

pytest.importorskip("lightning")

TRAIN_PL = '''
import lightning as L
import numpy as np
import torch
from lightning.pytorch.callbacks import ModelCheckpoint
from lightning.pytorch.loggers import CSVLogger
from torch import nn
from torch.utils.data import DataLoader, TensorDataset


class Net(L.LightningModule):
    def __init__(self, in_dim: int = 6, n_classes: int = 3):
        super().__init__()
        self.save_hyperparameters()
        self.net = nn.Sequential(nn.Linear(in_dim, 8), nn.ReLU(), nn.Linear(8, n_classes))

    def forward(self, x):
        return self.net(x)

    def training_step(self, batch, batch_idx):
        x, y = batch
        return nn.functional.cross_entropy(self(x), y)

    def configure_optimizers(self):
        return torch.optim.SGD(self.parameters(), lr=0.1)


# the training, at top level: it runs whenever this module is imported
rng = np.random.default_rng(0)
x = rng.normal(size=(60, 6)).astype(np.float32)
y = rng.integers(0, 3, size=60)
np.savez("data.npz", x=x, y=y, train_idx=np.arange(40), test_idx=np.arange(40, 60))
L.seed_everything(0)
trainer = L.Trainer(max_steps=4, callbacks=[ModelCheckpoint(every_n_train_steps=2, save_top_k=-1)],
                    logger=CSVLogger("."), accelerator="cpu", enable_progress_bar=False,
                    enable_model_summary=False, log_every_n_steps=1)
trainer.fit(Net(), DataLoader(TensorDataset(torch.from_numpy(x), torch.from_numpy(y)), batch_size=20))
'''


def _init(tmp_path, run, module: str, monkeypatch):
    """``grokscope init RUN --model MODULE:Net`` with the user's folder on the import path."""
    monkeypatch.syspath_prepend(str(tmp_path))
    try:
        return CliRunner().invoke(main, ["init", str(run), "--model", f"{module}:Net",
                                         "--dataset", f"file:{tmp_path / 'data.npz'}"])
    finally:
        sys.modules.pop(module, None)


def test_a_module_that_trains_when_imported_is_refused(tmp_path, monkeypatch):
    (tmp_path / "train_pl.py").write_text(textwrap.dedent(TRAIN_PL))
    monkeypatch.chdir(tmp_path)
    with monkeypatch.context() as m:  # the user's own `python train_pl.py`
        m.syspath_prepend(str(tmp_path))
        runpy.run_path(str(tmp_path / "train_pl.py"), run_name="__main__")
    sys.modules.pop("train_pl", None)
    run = tmp_path / "lightning_logs" / "version_0"
    before = sorted(p.name for p in (run / "checkpoints").iterdir())
    assert before and not (tmp_path / "lightning_logs" / "version_1").exists()
    res = _init(tmp_path, run, "train_pl", monkeypatch)
    assert res.exit_code == 1, res.output
    err = res.output.strip().splitlines()
    assert len(err) == 1 and "Traceback" not in res.output, res.output
    assert "importing module 'train_pl' changed" in err[0]
    assert "lightning_logs/version_1" in err[0]  # what the import wrote
    assert "a module without side effects" in err[0] and 'if __name__ == "__main__":' in err[0]
    assert not (run / "run.json").exists()  # nothing taken from the changed folder


def test_a_module_without_side_effects_is_used(tmp_path, monkeypatch):
    """The fix the message names: the same class in a module of its own; init then succeeds."""
    text = textwrap.dedent(TRAIN_PL)
    cls, _, training = text.partition("# the training, at top level")
    (tmp_path / "netmod.py").write_text(cls)
    (tmp_path / "train.py").write_text("from netmod import Net\n" + "\n".join(
        line for line in cls.splitlines() if line.startswith(("import", "from"))) + "\n# " + training)
    monkeypatch.chdir(tmp_path)
    with monkeypatch.context() as m:
        m.syspath_prepend(str(tmp_path))
        runpy.run_path(str(tmp_path / "train.py"), run_name="__main__")
    sys.modules.pop("netmod", None)
    run = tmp_path / "lightning_logs" / "version_0"
    res = _init(tmp_path, run, "netmod", monkeypatch)
    assert res.exit_code == 0, res.output
    assert (run / "run.json").exists()
    # the same module turned into one that trains when imported: a bare probe of the run refuses it
    # (a new process, as a later `grokscope probe` is: this one has the model cached)
    (tmp_path / "netmod.py").write_text(text)
    root = Path(__file__).resolve().parents[2]
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(tmp_path), str(root), os.environ.get("PYTHONPATH", "")])}
    res = subprocess.run([sys.executable, "-m", "grokscope.cli", "probe", str(run), "-m", "acc", "--scheduler",
                          "sync"], capture_output=True, text=True, env=env, cwd=tmp_path, timeout=300)
    out = res.stdout + res.stderr
    assert res.returncode == 1 and "Traceback" not in out, out
    assert "model check failed, nothing computed for this run: " in out
    assert "importing module 'netmod' changed" in out
