"""LC's two names for a counted tensor: the activation module that receives it (``layer``) and the
module that produced it (``produced_by``), in the probe's output and in the store."""

from __future__ import annotations

import torch
from click.testing import CliRunner
from torch import nn

from grokscope.cli import main
from grokscope.engine.store_view import load_group
from grokscope.probes import ProbeContext, get_probe
from grokscope.functional.layer_names import producing_modules
from tests.helpers import make_run


def _inputs_and_outputs(model: nn.Module, x: torch.Tensor) -> tuple[dict, dict]:
    """Every module's first input and output in one forward pass (the obvious way, for comparison)."""
    ins, outs = {}, {}

    def hook(name: str):
        def record(module, args, out) -> None:
            ins.setdefault(name, args[0])
            outs.setdefault(name, out)
        return record

    hooks = [m.register_forward_hook(hook(n)) for n, m in model.named_modules() if n]
    with torch.no_grad():
        model(x)
    for h in hooks:
        h.remove()
    return ins, outs


def test_lc_names_the_producing_layer_of_each_counted_tensor():
    from grokscope.datasets import load_dataset
    from grokscope.models.mlp import mlp

    data = load_dataset({"name": "digits", "kwargs": {"n_train": 100}, "seed": 0})
    torch.manual_seed(0)
    model = mlp(64, 10, depth=2, width=16)
    params = get_probe("lc").make_params({"n_points": "8", "n_dirs": "4", "splits": "train",
                                          "include_output": "true"})
    ds = get_probe("lc")().compute(model, data, params, ProbeContext(step=0))
    assert list(ds.layer.values) == ["2", "4", "output"]
    assert list(ds.produced_by.values) == ["1", "3", "5"]  # the Linear before each ReLU; the last Linear
    ins, outs = _inputs_and_outputs(model, data.x_train[:3])
    for layer, producer in zip(ds.layer.values[:2], ds.produced_by.values[:2]):
        assert torch.equal(ins[layer], outs[producer]) and isinstance(model.get_submodule(producer), nn.Linear)


class Residual(nn.Module):
    """A third party's naming, with a residual sum that no module produces."""

    def __init__(self):
        super().__init__()
        self.fc1, self.act1 = nn.Linear(4, 6), nn.ReLU()
        self.fc2, self.act2 = nn.Linear(6, 6), nn.ReLU()
        self.head = nn.Linear(6, 2)

    def forward(self, x):
        h = self.act1(self.fc1(x))
        return self.head(self.act2(self.fc2(h) + h))


def test_producer_of_a_sum_is_unnamed_and_the_mode_is_restored():
    model = Residual().train()
    assert producing_modules(model, model, torch.zeros(2, 4), ["act1", "act2", "output", "nope"]) == [
        "fc1", "", "head", ""]
    assert model.training
    # explicit layers count the modules' own outputs: each produced its own tensor
    assert producing_modules(model, model, torch.zeros(2, 4), ["fc1", "head", "output"], counts_output=True) == [
        "fc1", "head", "head"]


def test_the_store_carries_both_names(tmp_path):
    run = make_run(tmp_path / "r", [0, 4])
    res = CliRunner().invoke(main, ["probe", str(run), "-m", "lc", "--param", "lc.n_points=8", "--param",
                                    "lc.n_dirs=4", "--param", "lc.splits=train", "--scheduler", "sync", "-q"])
    assert res.exit_code == 0, res.output
    ds = load_group(run / "probes.zarr", "r", "lc")
    assert list(ds.layer.values) == ["2"] and list(ds.produced_by.values) == ["1"]
    assert ds["lc_mean"].sel(layer="2").dims == ("step", "split", "radius")
