"""The `envoi` command line under test: the region's settings as the CLI reads them (ENVOI_* variables)."""

from __future__ import annotations

import base64

import pytest


@pytest.fixture
def cli_env(settings, monkeypatch):
    """The region's settings as the CLI reads them: from ENVOI_* variables. A module that needs more
    (Stripe's) sets them on the returned monkeypatch."""
    monkeypatch.setenv("ENVOI_REGION", settings.region)
    monkeypatch.setenv(f"ENVOI_DATABASE_URL_{settings.region.upper()}", settings.database_url)
    monkeypatch.setenv(f"ENVOI_REDIS_URL_{settings.region.upper()}", settings.redis_url)
    monkeypatch.setenv("ENVOI_SECRET_KEY", base64.b64encode(settings.secret_key).decode())
    monkeypatch.setenv("ENVOI_LOOKUP_KEY", base64.b64encode(settings.lookup_key).decode())
    return monkeypatch
