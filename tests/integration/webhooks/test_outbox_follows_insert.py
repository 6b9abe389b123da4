"""The webhook outbox made by the events' own INSERT (Events.record's follower): the relay's pipelined
outcome write sends each event's JSON once, and the outbox rows are what enqueue_for_events made."""

import time

import pytest

from envoi import runtime
from envoi.events.service import NewEvent, item
from envoi.infra.db import one_statement
from envoi.webhooks import store as webhooks_store


def _events(domain) -> list[NewEvent]:
    message = {"id": None, "account_id": domain["account_id"], "domain_id": domain["id"], "method": "http",
               "headers": {"to": "a@x.test", "message-id": "<m@x.test>", "from": "f@x.test", "subject": "s"},
               "tags": [], "user_variables": {}, "options": {}, "attachments": [], "size": 10}
    now = time.time()

    def new(event, **fields):
        data = item(event, message=message, recipient="a@x.test", ts=now, method="http", **fields)
        return NewEvent(domain["account_id"], domain["id"], None, data)

    return [new("delivered"), new("failed", severity="permanent", reason="bounce"), new("stored"),
            new("failed", severity="temporary", reason="generic"), new("delivered"), new("stored")]


def _outbox(db, events) -> list[tuple]:
    rows = db.execute("SELECT event_id, event_type, url, payload FROM webhook_deliveries WHERE event_id = ANY(%s)"
                      " ORDER BY id", ([ev.data["id"] for ev in events],)).fetchall()
    return [(r["event_id"], r["event_type"], r["url"], r["payload"]) for r in rows]


def _expected(events, domain_url, account_url) -> list[tuple]:
    # Domain URLs first, then account-level ones, in event order; "stored" has no webhook type.
    kinds = {"delivered": [domain_url, account_url], "permanent_fail": [domain_url], "temporary_fail": []}
    out = []
    for ev, kind in zip(events, ["delivered", "permanent_fail", None, "temporary_fail", "delivered", None], strict=True):
        out += [(ev.data["id"], kind, url, ev.data) for url in kinds.get(kind, [])]
    return out


@pytest.fixture(scope="module")
def services(settings):
    svc = runtime.build(settings.replace(webhook_allow=("127.0.0.1/32",)), pool_size=3)
    yield svc
    svc.close()


@pytest.fixture
def hooked(services, domain):
    domain_url, account_url = "http://127.0.0.1:9/d", "http://127.0.0.1:9/a"
    services.webhooks.create(domain, "delivered", [domain_url])
    services.webhooks.create(domain, "permanent_fail", [domain_url])
    services.webhooks.account_create(domain["account_id"], account_url, ["delivered"], "")
    return domain_url, account_url


def test_a_pipelined_write_makes_the_outbox_in_the_events_insert(services, domain, hooked, db, monkeypatch):
    def sent_again(*args, **kwargs):
        raise AssertionError("the events' JSON was sent again for the outbox")

    monkeypatch.setattr(webhooks_store, "enqueue_for_events", sent_again)
    events = _events(domain)
    with services.db.pipelined() as conn:  # as the relay's Recorder.write
        services.events.record(conn, events)
    assert _outbox(db, events) == _expected(events, *hooked)
    outbox = services.webhooks._outboxes[id(events)]
    # The outbox rows' count (not the 6 events'), known after commit: the listener's doorbell reads it.
    assert [cur.rowcount for cur in outbox] == [5]


def test_inside_one_statement_the_outbox_is_its_own_statement(services, domain, hooked, db):
    events = _events(domain)
    with services.db.pipelined() as conn, one_statement(conn):  # as the API's intake
        services.events.record(conn, events)
    assert _outbox(db, events) == _expected(events, *hooked)
