"""``init --model mymodule:make`` then a bare ``probe`` from any folder: run.json keeps the folder the
factory is imported from, used only where the user vouched for it (grokscope/codepath.py)."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

from grokscope import codepath, trust
from grokscope.engine.store_view import load_group
from tests.engine.conftest import subprocess_env
from tests.helpers import DIGITS, MLP, make_run

MODULE = '''
import pathlib

pathlib.Path({marker!r}).write_text("imported")


def make(**kwargs):
    from grokscope.models.mlp import mlp

    return mlp(**kwargs)
'''


def _grokscope(cwd: Path, *args: object, config: Path) -> subprocess.CompletedProcess:
    env = {**subprocess_env(), trust.CONFIG_DIR_ENV: str(config)}
    env.pop(trust.ENV_VAR, None)
    return subprocess.run([sys.executable, "-m", "grokscope.cli", *map(str, args)], cwd=cwd, env=env,
                          capture_output=True, text=True, timeout=600)


def test_init_then_a_bare_probe_from_another_folder(tmp_path):
    run = make_run(tmp_path / "run", [0, 3])
    (run / "run.json").unlink()
    proj, elsewhere, config = tmp_path / "proj", tmp_path / "elsewhere", tmp_path / "config"
    proj.mkdir()
    elsewhere.mkdir()
    (proj / "mymodule.py").write_text(MODULE.format(marker=str(tmp_path / "imported")))
    r = _grokscope(proj, "init", run, "--model", "mymodule:make", "--model-kwargs", json.dumps(MLP["kwargs"]),
                   "--dataset", "digits", "--dataset-kwargs", json.dumps(DIGITS["kwargs"]), config=config)
    assert r.returncode == 0, r.stderr
    spec = json.loads((run / "run.json").read_text())
    assert spec["model"]["path"] == str(proj.resolve())
    assert (config / trust.CONFIG_FILE).read_text().splitlines() == ["mymodule:make", str(proj.resolve())]
    # from another folder, in this process and on local worker processes: no --model, no PYTHONPATH
    r = _grokscope(elsewhere, "probe", run, "--scheduler", "sync", "-q", config=config)
    assert r.returncode == 0, r.stderr
    r = _grokscope(elsewhere, "probe", run, "--workers", "1", "--threads", "1", "-q", "-o", "local.zarr",
                   config=config)
    assert r.returncode == 0, r.stderr
    for store in (run / "probes.zarr", elsewhere / "local.zarr"):
        assert load_group(store, "run", "acc").done.all()


def test_a_folder_nobody_vouched_for_is_refused_before_any_import(tmp_path, cli):
    """A run.json that names a vouched-for callable but another folder to import it from."""
    run = make_run(tmp_path / "run", [0])
    evil = tmp_path / "evil"
    evil.mkdir()
    (evil / "labmod7.py").write_text(MODULE.format(marker=str(tmp_path / "imported")))
    spec = json.loads((run / "run.json").read_text())
    spec["model"] = {"factory": "labmod7:make", "kwargs": MLP["kwargs"], "path": str(evil)}
    (run / "run.json").write_text(json.dumps(spec))
    trust.remember("labmod7:make")  # the callable is trusted, its folder is not
    r = cli("probe", run, "--scheduler", "sync", "-q")
    assert r.exit_code == 1
    assert (f"says the code of the model 'labmod7:make' lives in {evil}, a folder you have not vouched for"
            in r.stderr)
    assert not (tmp_path / "imported").exists()
    # vouched for: imported from there
    trust.remember(str(evil))
    r = cli("probe", run, "--scheduler", "sync", "-q")
    assert r.exit_code == 0, r.output
    assert (tmp_path / "imported").exists() and str(evil) in sys.path


def test_code_folder_is_none_for_installed_modules(tmp_path):
    assert codepath.code_folder("numpy:zeros") is None and codepath.code_folder("json:loads") is None
    assert codepath.code_folder("no_such_module_xyz:f") is None
    assert codepath.code_folder("tests.helpers:tiny_net") == str(Path(__file__).resolve().parents[2])
    assert trust.Trust.of([str(tmp_path), "a.b", "a.b:c"]) == trust.Trust(
        callables=frozenset({"a.b:c"}), modules=frozenset({"a.b"}), folders=frozenset({str(tmp_path.resolve())}))


def test_train_with_a_factory_then_a_bare_probe_from_another_folder(tmp_path):
    """``grokscope train --model mymodule:make`` keeps the factory's folder in run.json and vouches for
    it as ``init`` does, so ``probe`` from elsewhere rebuilds the model (here and on a worker)."""
    proj, elsewhere, config = tmp_path / "proj", tmp_path / "elsewhere", tmp_path / "config"
    proj.mkdir()
    elsewhere.mkdir()
    (proj / "mymodule.py").write_text(MODULE.format(marker=str(tmp_path / "imported")))
    r = _grokscope(proj, "train", "--model", "mymodule:make", "--model-kwargs",
                   '{"in_dim": 64, "out_dim": 10, "depth": 1, "width": 16}', "--dataset", "digits", "--steps", "4", "--save", "every:2", "--quiet", "--out", "run",
                   config=config)
    assert r.returncode == 0, r.stderr
    run = proj / "run"
    spec = json.loads((run / "run.json").read_text())
    assert spec["model"]["factory"] == "mymodule:make" and spec["model"]["path"] == str(proj.resolve())
    assert (config / trust.CONFIG_FILE).read_text().splitlines() == ["mymodule:make", str(proj.resolve())]
    assert "trusting mymodule:make from now on" in r.stderr
    r = _grokscope(elsewhere, "probe", run, "--workers", "1", "--threads", "1", "-q", config=config)
    assert r.returncode == 0, r.stderr
    assert load_group(run / "probes.zarr", "run", "acc").done.all()
