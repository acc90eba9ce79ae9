"""Test-wide settings."""

from __future__ import annotations

import pytest


@pytest.fixture(autouse=True)
def _no_storage_from_the_environment(monkeypatch):
    """Every command defaults its storage to $NAS_STORAGE: a user who exports it (the
    README's multi-machine recipe) must not point the tests at their database."""
    monkeypatch.delenv("NAS_STORAGE", raising=False)
