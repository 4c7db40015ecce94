"""Fixtures of every test: the user's grokscope configuration (its trusted-code allow-list) lives in
a fresh folder per test, and no allow-list comes from the environment."""

from __future__ import annotations

import pytest


@pytest.fixture(autouse=True)
def _own_config(tmp_path_factory, monkeypatch):
    monkeypatch.setenv("GROKSCOPE_CONFIG_DIR", str(tmp_path_factory.mktemp("config")))
    monkeypatch.delenv("GROKSCOPE_TRUST_CODE", raising=False)


def _no_repository_datasets_as_hf_datasets() -> None:
    """With the repository root on ``sys.path`` (``python -m pytest`` from it) the folder ``datasets/``
    (installed as ``grokscope.datasets``), and with ``tests/`` on it (pytest's rootdir insertion) the
    test folder ``tests/datasets/``, would pass for the Hugging Face ``datasets`` package: transformers'
    Trainer then fails on ``datasets.Dataset``. Import the real package if it is installed; otherwise
    record that there is none (``sys.modules["datasets"] = None``: ``find_spec`` gives None,
    ``import datasets`` raises ImportError), as for an installed grokscope."""
    import importlib.util
    import sys
    from pathlib import Path

    root = Path(__file__).resolve().parents[1]

    def inside(p: str) -> bool:
        return Path(p or ".").resolve().is_relative_to(root)

    spec = importlib.util.find_spec("datasets")
    places = ([spec.origin] if spec and spec.origin else []) + list(spec.submodule_search_locations or []) if spec else []
    if not places or not all(inside(p) for p in places):
        return
    saved = list(sys.path)
    sys.path[:] = [p for p in sys.path if not inside(p)]
    for name in [n for n in sys.modules if n == "datasets" or n.startswith("datasets.")]:
        del sys.modules[name]  # ours, imported under the wrong name
    try:
        importlib.invalidate_caches()
        importlib.import_module("datasets")
    except ImportError:
        sys.modules["datasets"] = None  # type: ignore[assignment]
    finally:
        sys.path[:] = saved


_no_repository_datasets_as_hf_datasets()


@pytest.fixture(scope="session")
def _s3_endpoint():
    from tests.s3_server import have_s3, start_server

    if not have_s3():
        pytest.skip("moto[server] and s3fs are not installed (pip install -e '.[test]')")
    server, endpoint = start_server()
    yield endpoint
    server.stop()


@pytest.fixture
def s3(_s3_endpoint, monkeypatch):
    """A loopback S3 server (moto, real HTTP) with a fresh bucket; the environment points every S3
    client of this process and its children at it (``AWS_ENDPOINT_URL``, fake credentials)."""
    from tests.s3_server import environment, new_bucket

    for k, v in environment(_s3_endpoint).items():
        monkeypatch.setenv(k, v)
    return new_bucket(_s3_endpoint)
