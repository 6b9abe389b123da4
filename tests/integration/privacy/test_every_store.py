"""A person's export and erasure reach every store: messages and bodies, events (tracking included),
webhook payloads and attempts, suppression entries, authorised recipients and the live stream in Redis.

The proof is a scan: after erasure, no text, JSON or bytea column of any table of the region's database,
and no key or value of its Redis, holds the address (as sent or lower-cased); and a send to it is still
suppressed."""

from __future__ import annotations

import asyncio
import email
import email.policy
import re
from urllib.parse import quote, urlencode, urlsplit

import psycopg
import pytest

from envoi import runtime
from envoi.webhooks.dispatch import Dispatcher
from tests.conftest import basic
from tests.support.delivery import events_of, send
from tests.support.regions import redis_entries
from tests.support.relay import wait_until
from tests.support.webhook_receiver import Receiver

FORM = {"Content-Type": "application/x-www-form-urlencoded"}
PERSON = "Erin.Gone@Dest.test"  # as the customer wrote it; stores keep it lower-cased or as given
OTHER = "stays@dest.test"
HTML = '<html><body><p>Hello Erin</p><a href="https://shop.example/erin">look</a></body></html>'


@pytest.fixture(scope="module")
def hook_services(settings):
    svc = runtime.build(settings.replace(webhook_allow=("127.0.0.1/32",), webhook_retry_schedule=(0.3,),
                                         webhook_timeout=10, webhook_per_endpoint=50, webhook_per_account=50),
                       pool_size=3)
    yield svc
    svc.close()


@pytest.fixture(scope="module")
def api_services(hook_services):
    return hook_services


@pytest.fixture
def receiver():
    with Receiver() as r:
        yield r


def post(client, path, key, method="post", **params):
    return getattr(client, f"simulate_{method}")(path, body=urlencode(params, doseq=True),
                                                  headers={**FORM, **basic(key)})


def pump_webhooks(services):
    asyncio.run(Dispatcher(services.webhooks).drain())


def needles() -> list[str]:
    return sorted({PERSON, PERSON.lower()})


def database_hits(dsn: str) -> list[str]:
    """Every (table.column) of the database whose value holds the address: text, JSON, arrays as text,
    and bytea (plaintext bytes: sealed values do not match)."""
    hits = []
    with psycopg.connect(dsn, autocommit=True) as conn:
        columns = conn.execute(
            "SELECT c.table_name, c.column_name, c.data_type FROM information_schema.columns c"
            " JOIN information_schema.tables t ON t.table_schema = c.table_schema AND t.table_name = c.table_name"
            " WHERE c.table_schema = 'public' AND t.table_type = 'BASE TABLE' AND c.data_type IN"
            " ('text', 'character varying', 'json', 'jsonb', 'bytea', 'ARRAY', 'USER-DEFINED')").fetchall()
        assert {(t, c) for t, c, _ in columns} >= {("suppress_bounces", "address_sealed"), ("events", "data"),
                                                   ("messages", "body"), ("webhook_attempts", "response")}
        for table, column, kind in columns:
            for needle in needles():
                if kind == "bytea":
                    sql = f'SELECT count(*) FROM "{table}" WHERE position(%s::bytea in "{column}") > 0'
                    arg = needle.encode()
                else:
                    sql = f'SELECT count(*) FROM "{table}" WHERE "{column}"::text ILIKE %s'
                    arg = f"%{needle}%"
                if conn.execute(sql, (arg,)).fetchone()[0]:
                    hits.append(f"{table}.{column}")
    return hits


def redis_hits(url: str) -> list[str]:
    """Every key of the region's Redis whose name or value holds the address (any type, any case)."""
    needle = PERSON.lower().encode()
    return [key for key, parts in redis_entries(url) if needle in b"\x00".join([key.encode(), *parts]).lower()]


def test_export_then_erasure_reach_every_store(client, services, hook_services, account, domain, api_key, db,
                                               sink, relay, receiver):
    name = domain["name"]
    for kind in ("open", "click", "unsubscribe"):
        assert post(client, f"/v3/domains/{name}/tracking/{kind}", api_key, method="put",
                    active="yes").status_code == 200
    for event in ("accepted", "delivered", "opened", "clicked", "unsubscribed"):
        assert post(client, f"/v3/domains/{name}/webhooks", api_key, id=event,
                    url=receiver.url(f"/{event}")).status_code == 200
    assert post(client, "/v5/sandbox/auth_recipients", api_key, email=PERSON).status_code == 200

    # Mail to her alone (tracked), and one she shares with someone else (one stored copy, both in To).
    alone = send(services, account["id"], domain, PERSON, html=HTML, text="see https://shop.example/erin")
    shared = send(services, account["id"], domain, f"Erin <{PERSON}>, {OTHER}", o_tracking="no",
                  text="for you both")
    copy = wait_until(lambda: next((m for m in sink.messages() if alone in m["data"]), None))
    wait_until(lambda: len([e for e in events_of(db, shared) if e["event"] == "delivered"]) == 2)
    msg = email.message_from_bytes(copy["data"].encode("utf-8", "surrogateescape"), policy=email.policy.default)
    html = msg.get_body(("html",)).get_content()
    [click] = re.findall(r'href="(http://email\.[a-z0-9.-]+/c/[^"]+)"', html)
    [pixel] = re.findall(r'src="(http://email\.[a-z0-9.-]+/o/[^"]+)"', html)
    unsub = re.findall(r"<([^>]+)>", msg["List-Unsubscribe"])[0]
    assert client.simulate_get(urlsplit(click).path).status_code == 302
    assert client.simulate_get(urlsplit(pixel).path).status_code == 200
    assert client.simulate_post(urlsplit(unsub).path, body="List-Unsubscribe=One-Click",
                                headers=FORM).status_code == 200
    # A complaint and a bounce entry for her too, through the API.
    assert post(client, f"/v3/{name}/complaints", api_key, address=PERSON).status_code == 200
    assert post(client, f"/v3/{name}/bounces", api_key, address=PERSON, error=f"550 <{PERSON}> unknown").status_code == 200
    wait_until(lambda: {e["event"] for e in events_of(db, alone)} >= {"opened", "clicked", "unsubscribed"})
    wait_until(lambda: pump_webhooks(hook_services) or (
        len(receiver.got("/clicked")) == 1 and len(receiver.got("/delivered")) == 3), timeout=30)
    wait_until(lambda: len(services.stream.entries_about(account["id"], PERSON)) >= 6)  # the publisher is async

    # The export holds each store's data.
    exported = client.simulate_get(f"/v3/privacy/addresses/{quote(PERSON)}", headers=basic(api_key)).json
    assert {m["message_id"] for m in exported["messages"]} == {alone, shared}
    assert {b["message_id"] for b in exported["bodies"]} == {alone, shared}
    assert any("Hello Erin" in b["mime"] for b in exported["bodies"])
    assert {e["event"] for e in exported["events"]} >= {"accepted", "delivered", "opened", "clicked", "unsubscribed"}
    assert {e["event"] for e in exported["tracking"]} == {"opened", "clicked", "unsubscribed"}
    hooks = exported["webhook_deliveries"]
    assert {h["event_type"] for h in hooks} >= {"accepted", "delivered", "opened", "clicked", "unsubscribed"}
    assert all(h["attempts"] and h["attempts"][0]["status_code"] == 200 for h in hooks if h["status"] == "delivered")
    assert {(s["list"], s["address"]) for s in exported["suppressions"]} == {
        ("unsubscribes", PERSON.lower()), ("complaints", PERSON.lower()), ("bounces", PERSON.lower())}
    assert [r["address"] for r in exported["authorized_recipients"]] == [PERSON.lower()]
    assert len(exported["live_stream"]) >= 6 and exported["validations"] == []

    assert database_hits(services.settings.database_url) != []  # the scan does see her before erasure
    resp = client.simulate_delete(f"/v3/privacy/addresses/{quote(PERSON)}", headers=basic(api_key))
    assert resp.status_code == 200, resp.text
    assert resp.json["erased"]["suppression_entries"] == 3 and resp.json["erased"]["live_stream_entries"] >= 6

    assert database_hits(services.settings.database_url) == []
    assert redis_hits(services.settings.redis_url) == []
    # What belongs to the other recipient stays, without her.
    other = [e for e in events_of(db, shared) if e["data"]["recipient"] == OTHER]
    assert other and all(e["data"]["message"]["headers"]["to"] == "Erin <[erased]>, stays@dest.test" for e in other)
    again = client.simulate_get(f"/v3/privacy/addresses/{quote(PERSON)}", headers=basic(api_key)).json
    assert all(again[k] == [] for k in ("messages", "bodies", "events", "webhook_deliveries", "live_stream",
                                        "authorized_recipients"))
    assert {(s["list"], s["address"], s["erased"]) for s in again["suppressions"]} == {
        ("unsubscribes", None, True), ("complaints", None, True), ("bounces", None, True)}

    # Still suppressed: the next message to her is not sent.
    later = send(services, account["id"], domain, PERSON)
    events = wait_until(lambda: (e := events_of(db, later)) and len(e) == 2 and e)
    assert events[1]["event"] == "failed" and events[1]["data"]["reason"] == "suppress-complaint"
    assert sink.messages(to=PERSON.lower()) == [] or all(later not in m["data"] for m in sink.messages())
