"""Fixtures of every test: the user's grokscope configuration (its trusted-code allow-list) lives in
a fresh folder per test, and no allow-list comes from the environment."""

from __future__ import annotations

import pytest


@pytest.fixture(autouse=True)
def _own_config(tmp_path_factory, monkeypatch):
    monkeypatch.setenv("GROKSCOPE_CONFIG_DIR", str(tmp_path_factory.mktemp("config")))
    monkeypatch.delenv("GROKSCOPE_TRUST_CODE", raising=False)
