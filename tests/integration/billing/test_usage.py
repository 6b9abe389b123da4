"""Usage from the stats rollups (Postgres, the billing truth): an account's recipients accepted today and
this month, before and after the rollups are folded, and never another account's."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import pytest

from envoi.billing.usage import day_period
from tests.support.api import accepted, send_form


@pytest.fixture
def nothing_left_queued(db, domain):
    yield
    db.execute("UPDATE recipients SET status = 'failed' WHERE domain_id = %s AND status = 'queued'", (domain["id"],))


def test_usage_counts_the_accounts_accepted_recipients(client, services, account, domain, api_key,
                                                       nothing_left_queued):
    other = services.accounts.create_account("usage-other")
    accepted(send_form(client, api_key, domain, to=["a@dest.test", "b@dest.test", "c@dest.test"]))
    assert services.usage.day(account["id"]) == 3  # pending rollups count too
    services.stats.fold()
    accepted(send_form(client, api_key, domain))
    assert services.usage.day(account["id"]) == 4
    assert services.usage.month(account["id"]) == 4
    assert services.usage.day(other["id"]) == 0
    yesterday = datetime.now(UTC).date() - timedelta(days=1)
    assert services.usage.accepted(account["id"], day_period(yesterday)) == 0
