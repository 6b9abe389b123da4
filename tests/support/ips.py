"""The IP inventory fixture: registered as a plugin in tests/conftest.py."""

from __future__ import annotations

import pytest


@pytest.fixture
def clean_ips(db):
    """The IP inventory (IPs, pools, their audit) is one for the region, not a tenant's: a test that
    manages it starts from an empty one and leaves it empty for the relays of other tests."""
    def wipe():
        db.execute("DELETE FROM ip_pools")
        db.execute("DELETE FROM ips")
        db.execute("DELETE FROM ip_audit")

    wipe()
    yield
    wipe()
