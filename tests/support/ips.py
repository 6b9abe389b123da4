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



UNTOUCHED = ("queued", 0, None)  # a recipient still queued, never attempted, not leased


def recipient_states(db, message_ids) -> list[tuple]:
    """(status, attempts, lease owner) of each recipient of these messages: UNTOUCHED when left alone."""
    rows = db.execute("SELECT r.status, r.attempts, r.lease_owner FROM recipients r JOIN messages m"
                      " ON m.id = r.message_pk WHERE m.message_id = ANY(%s)", (list(message_ids),)).fetchall()
    return [(r["status"], r["attempts"], r["lease_owner"]) for r in rows]
