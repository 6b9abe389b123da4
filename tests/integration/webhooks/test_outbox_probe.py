"""A large batch of events (a batch send's accepted events, outside a pipeline) first asks which of its
(account, domain, type) could match a webhook, and sends only those events to the outbox statement: the
outbox rows must be exactly those the statement makes from every event."""

from __future__ import annotations

import uuid

import pytest

from envoi import runtime
from envoi.webhooks import store


@pytest.fixture(scope="module")
def hook_services(settings):
    svc = runtime.build(settings.replace(webhook_allow=("127.0.0.1/32",)), pool_size=2)
    yield svc
    svc.close()


def _domain(svc, account: dict) -> dict:
    return svc.accounts.add_domain(account["id"], f"{uuid.uuid4().hex[:8]}.example.test", dkim_key_size=1024,
                                   verified=True)


def _outbox(svc, events: list[tuple]) -> tuple[bool, list[tuple]]:
    """(whether a statement was made, the rows it made), rolled back."""
    with svc.db.transaction() as conn:
        first = conn.execute("SELECT coalesce(max(id), 0) AS id FROM webhook_deliveries").fetchone()["id"]
        made = store.enqueue_for_events(conn, events) is not None
        rows = [tuple(r.values()) for r in conn.execute(
            "SELECT account_id, domain_id, event_type, url, endpoint, event_id, payload FROM webhook_deliveries"
            " WHERE id > %s ORDER BY id", (first,))]
        conn.rollback()
    return made, rows


def test_a_large_batch_makes_the_same_outbox_rows_as_the_statement_alone(hook_services, db, monkeypatch):
    svc = hook_services
    parent = svc.accounts.create_account(f"parent-{uuid.uuid4().hex[:6]}")
    sub = svc.accounts.create_account(f"sub-{uuid.uuid4().hex[:6]}")
    db.execute("UPDATE accounts SET parent_id = %s WHERE id = %s", (parent["id"], sub["id"]))
    plain = svc.accounts.create_account(f"plain-{uuid.uuid4().hex[:6]}")
    a1, a2, s1 = _domain(svc, plain), _domain(svc, plain), _domain(svc, sub)
    svc.webhooks.create(a1, "accepted", ["http://127.0.0.1:9/a1-accepted"])                     # domain level
    svc.webhooks.account_create(parent["id"], "http://127.0.0.1:9/parent", ["accepted"], "parent's")  # the sub's
    svc.webhooks.account_create(plain["id"], "http://127.0.0.1:9/plain", ["delivered"], "account level")
    svc.webhooks.account_create(plain["id"], "http://127.0.0.1:9/a1-accepted", ["accepted"], "both levels")

    def events(domain: dict, kind: str, n: int) -> list[tuple]:
        return [(domain["account_id"], domain["id"], kind, f"{kind}-{uuid.uuid4().hex}",
                 f'{{"event": "{kind}", "n": {i}}}') for i in range(n)]

    mixed = events(a2, "accepted", 40) + events(a1, "accepted", 30) + events(s1, "accepted", 20) \
        + events(a2, "delivered", 10) + events(s1, "delivered", 10)
    probed, rows = _outbox(svc, mixed)
    monkeypatch.setattr(store, "PROBE_ABOVE", 10**9)
    _, statement_alone = _outbox(svc, mixed)
    assert probed and rows == statement_alone
    # a2's accepted events reach plain's account-level URL; a1's reach it once (as the domain's); s1's the parent's
    assert {r[3] for r in rows} == {"http://127.0.0.1:9/a1-accepted", "http://127.0.0.1:9/parent",
                                    "http://127.0.0.1:9/plain"}
    assert len(rows) == 40 + 30 + 20 + 10

    monkeypatch.setattr(store, "PROBE_ABOVE", 64)
    nothing = events(s1, "delivered", 70) + events(s1, "opened", 10)
    assert _outbox(svc, nothing) == (False, [])  # no statement at all
    monkeypatch.setattr(store, "PROBE_ABOVE", 10**9)
    assert _outbox(svc, nothing) == (True, [])
