"""Fixtures of the engine tests: the repository root importable (``tests.helpers``) here and in
subprocesses, and a CLI runner."""

from __future__ import annotations

import os
import subprocess
import sys
from contextlib import contextmanager
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))


def subprocess_env() -> dict[str, str]:
    """The environment for ``grokscope``/``dask`` subprocesses: repo root on PYTHONPATH, 1 thread."""
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join([str(ROOT), env.get("PYTHONPATH", "")]).rstrip(os.pathsep)
    env.update(OMP_NUM_THREADS="1", MKL_NUM_THREADS="1")
    return env


@pytest.fixture
def cli():
    """Invoke a grokscope sub-command in-process: ``cli("probe", path, "--scheduler", "sync")``."""
    from click.testing import CliRunner

    from grokscope.cli import main

    runner = CliRunner()

    def invoke(*args: object):
        return runner.invoke(main, [str(a) for a in args], catch_exceptions=False)

    return invoke


@contextmanager
def tmpfs(mnt: Path, size: str):
    """A tmpfs of ``size`` (``"4m"``) mounted at the new folder ``mnt`` while in the block, unmounted
    after (needs root; the test is skipped otherwise)."""
    mnt.mkdir()
    r = subprocess.run(["mount", "-t", "tmpfs", "-o", f"size={size}", "tmpfs", str(mnt)], capture_output=True)
    if r.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs here: {r.stderr.decode().strip()}")
    try:
        yield mnt
    finally:
        subprocess.run(["umount", "-l", str(mnt)], check=False)


@pytest.fixture
def small_fs(tmp_path):
    """A 4 MiB tmpfs mounted at ``tmp_path/fs`` (needs root; skipped otherwise)."""
    with tmpfs(tmp_path / "fs", "4m") as mnt:
        yield mnt
