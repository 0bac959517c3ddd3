"""Shared fixtures: every test gets its own model cache, so tests never touch ~/.cache."""

from __future__ import annotations

from pathlib import Path

import pytest


@pytest.fixture(autouse=True)
def bridge_home(tmp_path_factory: pytest.TempPathFactory, monkeypatch: pytest.MonkeyPatch) -> Path:
    # One cache per session: synthetic models are built once and reused by later tests.
    home = tmp_path_factory.getbasetemp() / "a2e-home"
    monkeypatch.setenv("A2E_BRIDGE_HOME", str(home))
    # No test may reach the real hub (no network here, and none is needed): the download
    # tests point HF_ENDPOINT at their own local server and lift this themselves.
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    return home
