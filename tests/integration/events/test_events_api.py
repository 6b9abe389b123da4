"""The events API: filter expressions, paging that stays correct while events arrive, isolation, trace."""

from __future__ import annotations

import time
from urllib.parse import quote, urlsplit

import pytest

from envoi.dev.sink import Sink
from envoi.events.service import compile_filters, matches, parse_filters
from tests.conftest import basic
from tests.support.delivery import route, send
from tests.support.dns_server import DnsServer
from tests.support.events import record
from tests.support.relay import RelayThread, relay_settings, wait_until


def get(client, url, key, **params):
    return client.simulate_get(url, params=params or None, headers=basic(key))


def follow(client, url, key):
    parts = urlsplit(url)
    return client.simulate_get(parts.path, headers=basic(key))


def ids(resp):
    assert resp.status_code == 200, resp.text
    return [item["id"] for item in resp.json["items"]]


@pytest.fixture
def sample(services, domain):
    d = domain
    return {
        "acc": record(services, d, "accepted", recipient="ann@one.test", subject="Hello world again",
                      tags=["welcome", "promo"]),
        "del": record(services, d, "delivered", recipient="ann@one.test", subject="Hello world again",
                      tags=["welcome"]),
        "tmp": record(services, d, "failed", severity="temporary", recipient="bob@two.test",
                      subject="World hello, reversed", sender="Billing <billing@corp.test>"),
        "perm": record(services, d, "failed", severity="permanent", recipient="cid@three.test",
                       subject="Your invoice", sender="Billing <billing@corp.test>", message_id="inv-1@corp.test"),
    }


@pytest.mark.parametrize(("params", "expected"), [
    ({"event": "delivered OR failed"}, {"del", "tmp", "perm"}),
    ({"event": "NOT accepted"}, {"del", "tmp", "perm"}),
    ({"event": "failed", "severity": "NOT temporary"}, {"perm"}),
    ({"event": ["accepted", "delivered"]}, {"acc", "del"}),
    ({"recipient": "ann@one.test"}, {"acc", "del"}),
    ({"recipient": "ann@one.test OR cid@three.test", "event": "NOT delivered"}, {"acc", "perm"}),
    ({"subject": '"hello world"'}, {"acc", "del"}),
    ({"subject": "hello world"}, {"acc", "del", "tmp"}),  # both words, any order
    ({"subject": "hello AND NOT again"}, {"tmp"}),
    ({"subject": "(invoice OR again) AND NOT hello"}, {"perm"}),
    ({"subject": "hell"}, set()),  # whole words only
    ({"from": "billing@corp.test"}, {"tmp", "perm"}),
    ({"tags": "welcome AND NOT promo"}, {"del"}),
    ({"tags": "promo OR nothing"}, {"acc"}),
    ({"message-id": "<inv-1@corp.test>"}, {"perm"}),
    ({"size": ">1000 <2000"}, {"acc", "del", "tmp", "perm"}),
    ({"size": ">=1235", "event": "NOT failed"}, set()),
])
def test_filter_expressions(client, api_key, domain, sample, params, expected):
    resp = get(client, f"/v3/{domain['name']}/events", api_key, **params)
    by_id = {v["id"]: k for k, v in sample.items()}
    assert {by_id[i] for i in ids(resp)} == expected
    # the live stream's Python matcher agrees with the SQL
    query = {k: v if isinstance(v, list) else [v] for k, v in params.items()}
    compiled = compile_filters(parse_filters(query))
    assert {k for k, data in sample.items() if matches(compiled, data)} == expected


@pytest.mark.parametrize(("params", "message"), [
    ({"event": "(failed"}, "missing ')'"),
    ({"subject": '"unclosed'}, "unbalanced quote"),
    ({"event": "failed OR"}, "a term is missing"),
    ({"limit": "301"}, "limit must be between 1 and 300"),
    ({"begin": "yesterday"}, "not a valid date"),
    ({"begin": "1e300"}, "not a valid date"),
    ({"end": "nan"}, "not a valid date"),
    ({"size": "big"}, "not a number"),
    ({"event": "(" * 400 + "failed" + ")" * 400}, "nested deeper than 20"),
    ({"event": "NOT " * 200 + "failed"}, "nested deeper than 20"),
])
def test_bad_queries_get_400(client, api_key, domain, params, message):
    resp = get(client, f"/v3/{domain['name']}/events", api_key, **params)
    assert resp.status_code == 400 and message in resp.json["message"]


def test_bad_page_token(client, api_key, domain):
    resp = client.simulate_get(f"/v3/{domain['name']}/events/bm9wZQ", headers=basic(api_key))
    assert resp.status_code == 400 and resp.json == {"message": "invalid page token"}


def test_paging_is_stable_while_new_events_arrive(client, services, api_key, domain):
    base = time.time() - 100
    original = [record(services, domain, "delivered", ts=base + i)["id"] for i in range(25)]
    # descending (newest first), the default without begin
    resp = get(client, f"/v3/{domain['name']}/events", api_key, limit="10")
    seen = list(ids(resp))
    pages = [ids(resp)]
    for _page in range(5):
        for _ in range(3):  # new events arrive between page fetches
            record(services, domain, "delivered")
        resp = follow(client, resp.json["paging"]["next"], api_key)
        if not ids(resp):
            break
        pages.append(ids(resp))
        seen += ids(resp)
    assert seen == original[::-1]  # every original event exactly once, in order, no newcomer
    assert [len(p) for p in pages] == [10, 10, 5]


def test_previous_pages(client, services, api_key, domain):
    base = time.time() - 100
    original = [record(services, domain, "delivered", ts=base + i)["id"] for i in range(25)]
    p1 = get(client, f"/v3/{domain['name']}/events", api_key, limit="10", begin=str(base - 1),
             end=str(base + 30), ascending="no")
    p2 = follow(client, p1.json["paging"]["next"], api_key)
    p3 = follow(client, p2.json["paging"]["next"], api_key)
    end = follow(client, p3.json["paging"]["next"], api_key)
    assert ids(p1) + ids(p2) + ids(p3) == original[::-1] and ids(end) == []
    assert ids(follow(client, p2.json["paging"]["previous"], api_key)) == ids(p1)
    assert ids(follow(client, p3.json["paging"]["previous"], api_key)) == ids(p2)
    # before the end: the last full page, up to and including the last event
    assert ids(follow(client, end.json["paging"]["previous"], api_key)) == (ids(p2) + ids(p3))[-10:]
    assert ids(follow(client, p1.json["paging"]["previous"], api_key)) == []
    assert ids(follow(client, p1.json["paging"]["last"], api_key)) == original[9::-1]


def test_polling_ascending_from_begin(client, services, api_key, domain, db):
    base = time.time() - 100
    original = [record(services, domain, "delivered", ts=base + i)["id"] for i in range(12)]
    resp = get(client, f"/v3/{domain['name']}/events", api_key, limit="5", begin=str(base - 1))
    collected = ids(resp)
    for round_no in range(20):
        if round_no < 4:
            record(services, domain, "accepted")  # arrives while we page
        resp = follow(client, resp.json["paging"]["next"], api_key)
        if not ids(resp):
            break
        collected += ids(resp)
    everything = [r["event_id"] for r in db.execute(
        "SELECT event_id FROM events WHERE domain_id = %s ORDER BY ts, id", (domain["id"],))]
    assert collected == everything and collected[:12] == original  # no duplicates, no gaps
    # the empty last page stays put: polling its next URL later returns what arrived since
    newer = record(services, domain, "opened")["id"]
    assert ids(follow(client, resp.json["paging"]["next"], api_key)) == [newer]


def test_tenant_isolation(client, services, api_key, domain, sample):
    other = services.accounts.create_account("other-logs")
    _, other_key = services.accounts.create_key(other["id"], "admin")
    token = urlsplit(get(client, f"/v3/{domain['name']}/events", api_key).json["paging"]["next"]).path
    message_id = sample["perm"]["message"]["headers"]["message-id"]
    for path in (f"/v3/{domain['name']}/events", token, f"/v3/{domain['name']}/messages/{message_id}/trace",
                 f"/v3/{domain['name']}/stats/total?event=accepted", f"/v3/{domain['name']}/tags"):
        resp = client.simulate_get(path.split("?")[0], query_string=path.partition("?")[2],
                                   headers=basic(other_key))
        assert resp.status_code == 404, path
        assert resp.json == {"message": f"Domain not found: {domain['name']}"}


def test_retention_hides_events_older_than_the_plan_keeps(client, services, api_key, domain):
    old = record(services, domain, "delivered", ts=time.time() - 31 * 86400)
    fresh = record(services, domain, "delivered")
    got = ids(get(client, f"/v3/{domain['name']}/events", api_key))
    assert fresh["id"] in got and old["id"] not in got


@pytest.fixture
def relay_env(services, settings, domain):
    with Sink() as sink, DnsServer() as dns:
        relay_cfg = relay_settings(settings, sink, dns)
        with RelayThread(services, relay_cfg):
            yield sink, dns


def test_trace_shows_every_attempt(client, services, account, domain, api_key, db, relay_env):
    sink, dns = relay_env
    route(dns, "trace.test")
    sink.set_script({"data": ["451 4.3.0 Try again later"]})
    message_id = send(services, account["id"], domain, "t@trace.test")
    wait_until(lambda: db.execute("SELECT 1 FROM events WHERE message_id = %s AND event = 'delivered'",
                                  (message_id,)).fetchone(), 20)
    resp = client.simulate_get(f"/v3/{domain['name']}/messages/{quote(f'<{message_id}>')}/trace",
                               headers=basic(api_key))
    assert resp.status_code == 200, resp.text
    trace = resp.json
    assert trace["message-id"] == message_id and trace["subject"] == "Hi" and trace["method"] == "http"
    assert services.storage.get(domain["id"], trace["storage"]["key"]) is not None  # where its body is kept
    [rcpt] = trace["recipients"]
    assert rcpt["recipient"] == "t@trace.test" and rcpt["status"] == "delivered"
    first, second = rcpt["attempts"]
    assert (first["attempt-no"], first["event"], first["severity"]) == (1, "failed", "temporary")
    assert first["smtp"]["code"] == 451 and first["smtp"]["enhanced-code"] == "4.3.0"
    assert first["retry-seconds"] is not None
    assert (second["attempt-no"], second["event"], second["smtp"]["code"]) == (2, "delivered", 250)
    for attempt in (first, second):
        assert attempt["mx-host"] == "mx.trace.test" and attempt["tls"] is False
        assert "egress-ip" in attempt and attempt["session-seconds"] is not None
        assert attempt["seconds-since-accepted"] >= 0
    assert second["timestamp"] > first["timestamp"] and rcpt["final-at"] == second["timestamp"]
    missing = client.simulate_get(f"/v3/{domain['name']}/messages/nope@x/trace", headers=basic(api_key))
    assert missing.status_code == 404 and missing.json == {"message": "Message not found"}
