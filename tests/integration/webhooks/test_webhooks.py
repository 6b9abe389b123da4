"""Webhooks end to end: API -> events outbox -> asyncio dispatcher (webhooks.dispatch) -> real HTTP receiver."""

from __future__ import annotations

import asyncio
import base64
import time
from urllib.parse import urlencode

import pytest
from falcon import testing

from envoi import runtime
from envoi.api.app import create_app
from envoi.webhooks.dispatch import Dispatcher
from envoi.webhooks.service import Webhooks
from tests.conftest import basic
from tests.support import paths
from tests.support.delivery import send as queue_message
from tests.support.relay import wait_until
from tests.support.webhook_receiver import Receiver

FORM = {"Content-Type": "application/x-www-form-urlencoded"}


@pytest.fixture(scope="module")
def hook_settings(settings):
    # Tests allowlist their receiver on 127.0.0.1 and use short retry delays.
    return settings.replace(webhook_allow=("127.0.0.1/32",), webhook_retry_schedule=(0.3,),
                            webhook_retry_for=3600, webhook_timeout=10, webhook_per_endpoint=2)


@pytest.fixture(scope="module")
def hook_services(hook_settings):
    svc = runtime.build(hook_settings, pool_size=3)
    yield svc
    svc.close()


@pytest.fixture(scope="module")
def api_services(hook_services):
    """The shared `client` serves these services and their settings."""
    return hook_services


@pytest.fixture(autouse=True)
def nothing_left_due(db):
    """The dispatcher claims every due delivery, whoever's: each test removes the ones it made, so that a
    retry it left scheduled does not count in the next test's dispatcher round."""
    first = db.execute("SELECT coalesce(max(id), 0) AS id FROM webhook_deliveries").fetchone()["id"]
    yield
    db.execute("DELETE FROM webhook_deliveries WHERE id > %s", (first,))


@pytest.fixture
def receiver():
    with Receiver() as r:
        yield r


def pump(services, rounds: int = 1, webhooks: Webhooks | None = None) -> int:
    """The dispatcher, in this process, until nothing is due (each round: claim, send, write results)."""
    return sum(asyncio.run(Dispatcher(webhooks or services.webhooks, services.metrics).drain()) for _ in range(rounds))


def post(client, path, key, **params):
    return client.simulate_post(path, body=urlencode(params, doseq=True), headers={**FORM, **basic(key)})


def send(services, domain, to="rcpt@webhooks.test"):
    # Test mode: a relay running in a later test records these as delivered without sending them.
    return queue_message(services, domain["account_id"], domain, to, o_testmode="yes")


def signing_key(client, key) -> str:
    resp = client.simulate_get("/v5/accounts/http_signing_key", headers=basic(key))
    assert resp.status_code == 200
    return resp.json["http_signing_key"]


def test_signed_webhook_carries_the_events_api_item(client, hook_services, receiver, domain, api_key, db):
    receiver.signing_key = signing_key(client, api_key)
    sealed = db.execute("SELECT key_sealed FROM webhook_signing_keys WHERE account_id = %s",
                        (domain["account_id"],)).fetchone()["key_sealed"]
    assert receiver.signing_key.encode() not in bytes(sealed)  # not stored in the clear
    resp = post(client, f"/v3/domains/{domain['name']}/webhooks", api_key, id="accepted", url=receiver.url("/ok"))
    assert resp.status_code == 200, resp.text
    assert resp.json == {"message": "Webhook has been created", "webhook": {"urls": [receiver.url("/ok")]}}

    message_id = send(hook_services, domain)
    pump(hook_services)
    [got] = receiver.got("/ok")
    assert got["valid"] and got["content_type"] == "application/json"
    assert len(got["payload"]["signature"]["token"]) == 50
    events = client.simulate_get(f"/v3/{domain['name']}/events", params={"event": "accepted"},
                                 headers=basic(api_key)).json["items"]
    [item] = [e for e in events if e["message"]["headers"]["message-id"] == message_id]
    assert got["payload"]["event-data"] == item

    attempts = client.simulate_get(f"/v3/domains/{domain['name']}/webhooks/accepted/attempts",
                                   headers=basic(api_key)).json["items"]
    assert [(a["status"], a["outcome"], a["attempt"]) for a in attempts] == [(200, "delivered", 1)]
    assert len(attempts[0]["response"]) <= 1024 and attempts[0]["latency_ms"] >= 0

    # Regenerating the key changes what the receiver must verify with.
    new = client.simulate_post("/v5/accounts/http_signing_key", headers=basic(api_key)).json["http_signing_key"]
    assert new != receiver.signing_key and signing_key(client, api_key) == new


def test_failing_endpoint_is_retried_and_406_is_not(client, hook_services, receiver, domain, api_key, db):
    receiver.signing_key = signing_key(client, api_key)
    receiver.script = {"/flaky": [500, 200], "/reject": [406], "/gone": [410]}
    resp = post(client, f"/v3/domains/{domain['name']}/webhooks", api_key, id="accepted",
                url=[receiver.url("/flaky"), receiver.url("/reject"), receiver.url("/gone")])
    assert resp.status_code == 200, resp.text
    send(hook_services, domain)
    pump(hook_services)
    assert [r["status"] for r in receiver.got("/flaky")] == [500]
    assert [r["status"] for r in receiver.got("/reject")] == [406]

    time.sleep(0.4)  # the retry delay is 0.3 s in these settings
    pump(hook_services)
    time.sleep(0.4)
    pump(hook_services)
    flaky = receiver.got("/flaky")
    assert [r["status"] for r in flaky] == [500, 200]
    assert all(r["valid"] for r in flaky)
    assert flaky[0]["payload"]["event-data"]["id"] == flaky[1]["payload"]["event-data"]["id"]  # stable event id
    assert len(receiver.got("/reject")) == 1  # 406: never retried
    assert len(receiver.got("/gone")) == 1  # nor 410
    rows = db.execute("SELECT url, status, attempts FROM webhook_deliveries WHERE domain_id = %s ORDER BY url",
                      (domain["id"],)).fetchall()
    assert [(r["status"], r["attempts"]) for r in rows] == [("delivered", 2), ("rejected", 1), ("rejected", 1)]
    attempts = client.simulate_get(f"/v3/domains/{domain['name']}/webhooks/attempts",
                                   params={"url": receiver.url("/flaky")}, headers=basic(api_key)).json["items"]
    assert [(a["status"], a["outcome"]) for a in attempts] == [(200, "delivered"), (500, "retry")]
    registry = hook_services.metrics.registry
    assert registry.get_sample_value("envoi_webhook_attempts_total", {"outcome": "retry"}) >= 1
    assert registry.get_sample_value("envoi_webhook_attempts_total", {"outcome": "rejected"}) >= 2
    assert isinstance(hook_services.webhooks.backlog(), int)


def test_slow_endpoint_does_not_hold_up_another_tenant(client, hook_services, receiver, services):
    slow_account = services.accounts.create_account("slow")
    slow = services.accounts.add_domain(slow_account["id"], f"slow{time.monotonic_ns()}.example.test",
                                        dkim_key_size=1024, verified=True)
    fast_account = services.accounts.create_account("fast")
    fast = services.accounts.add_domain(fast_account["id"], f"fast{time.monotonic_ns()}.example.test",
                                        dkim_key_size=1024, verified=True)
    pump(hook_services)  # settle webhook deliveries other tests left pending first: the dispatcher serves everyone
    with Receiver() as other:
        hook_services.webhooks.create(slow, "accepted", [receiver.url("/slow")])
        hook_services.webhooks.create(fast, "accepted", [other.url("/fast")])
        receiver.delay = {"/slow": 0.3}
        for n in range(5):
            send(hook_services, slow, f"r{n}@webhooks.test")
        send(hook_services, fast)  # queued last
        started = time.monotonic()
        pump(hook_services)
        assert len(other.got("/fast")) == 1
        assert other.requests[0]["at"] - started < 0.3  # not behind the slow backlog (5 x 0.3 s)
        slow_times = sorted(r["at"] for r in receiver.got("/slow"))
        assert len(slow_times) == 5
        # At most 2 (ENVOI_WEBHOOK_PER_ENDPOINT) at once at the slow endpoint: three waves of 0.3 s.
        assert slow_times[-1] - slow_times[0] >= 0.5


def test_a_killed_dispatchers_claims_come_back_after_the_lease(client, hook_services, hook_settings, receiver,
                                                               domain):
    hook_services.webhooks.create(domain, "accepted", [receiver.url("/ok")])
    send(hook_services, domain)
    short = Webhooks(hook_settings.replace(webhook_lease=0.5), hook_services.db, hook_services.sealer, None)

    def lease() -> object:  # this test's delivery's lease (the shared test database may hold others' rows)
        with hook_services.db.transaction() as conn:
            return conn.execute("SELECT leased_until FROM webhook_deliveries WHERE domain_id = %s",
                                (domain["id"],)).fetchone()["leased_until"]

    rows, _ = short.claim(500)  # a dispatcher claims, then dies before sending
    assert domain["id"] in {r["domain_id"] for r in rows}
    leased = lease()
    assert leased is not None
    pump(hook_services)
    assert lease() == leased and receiver.got("/ok") == []  # still leased: not handed out again
    time.sleep(0.6)
    pump(hook_services)
    assert len(receiver.got("/ok")) == 1


def test_ssrf_refused_at_save_and_at_dial(client, services, settings, hook_services, receiver, domain,
                                          api_key, db):
    plain = testing.TestClient(create_app(settings, services))  # no allowlist
    for url in (receiver.url("/x"), "http://169.254.169.254/latest/meta-data", "http://[::ffff:127.0.0.1]/",
                "http://2130706433/", "http://0x7f.0.0.1/", "http://10.0.0.1/", "http://100.64.0.1/",
                "http://[fd00::1]/", "http://localhost:1/", "gopher://example.com/", "javascript:alert(1)"):
        resp = post(plain, f"/v3/domains/{domain['name']}/webhooks", api_key, id="delivered", url=url)
        assert resp.status_code == 400, url
        assert "url" in resp.json["message"].lower()
    assert db.execute("SELECT count(*) AS n FROM webhooks WHERE domain_id = %s", (domain["id"],)).fetchone()["n"] == 0

    # Saved while allowed (e.g. DNS said public then), but at dial time the address is refused: a literal
    # address before the request, a host name by the dispatcher's resolver.
    hook_services.webhooks.create(domain, "accepted", [receiver.url("/dial")])
    db.execute("INSERT INTO webhooks (account_id, domain_id, event_type, url, endpoint) VALUES (%s, %s, 'accepted',"
               " %s, %s)", (domain["account_id"], domain["id"], f"http://localhost:{receiver.port}/named",
                            f"http://localhost:{receiver.port}"))
    send(hook_services, domain)
    strict = Webhooks(settings, hook_services.db, hook_services.sealer, None)
    pump(hook_services, webhooks=strict)
    assert receiver.got("/dial") == [] and receiver.got("/named") == []
    attempts = db.execute("SELECT d.url, a.status_code, a.error, a.outcome FROM webhook_attempts a"
                          " JOIN webhook_deliveries d ON d.id = a.delivery_id WHERE d.domain_id = %s ORDER BY d.url",
                          (domain["id"],)).fetchall()
    assert [(a["status_code"], a["outcome"]) for a in attempts] == [(None, "retry"), (None, "retry")]
    assert all(a["error"].startswith("refused") for a in attempts), attempts
    assert "localhost resolves to a private or reserved address" in attempts[1]["error"]
    # The synchronous path (a test webhook sent from the API) refuses it too.
    [delivery_id] = [r["id"] for r in db.execute("SELECT id FROM webhook_deliveries WHERE domain_id = %s AND url = %s",
                                                 (domain["id"], receiver.url("/dial")))]
    db.execute("UPDATE webhook_deliveries SET next_attempt_at = now() WHERE id = %s", (delivery_id,))
    assert strict.deliver(delivery_id) == "retry"
    assert receiver.got("/dial") == []


def test_v3_and_v4_management(client, hook_services, services, receiver, domain, api_key, db):
    base = f"/v3/domains/{domain['name']}/webhooks"
    urls = [receiver.url(f"/{n}") for n in range(4)]
    assert post(client, base, api_key, id="clicked", url=urls).status_code == 400  # more than 3
    assert post(client, base, api_key, id="bogus", url=urls[0]).status_code == 400
    assert db.execute("SELECT count(*) AS n FROM webhooks WHERE domain_id = %s", (domain["id"],)).fetchone()["n"] == 0
    assert post(client, base, api_key, id="clicked", url=urls[:2]).status_code == 200
    assert post(client, base, api_key, id="clicked", url=urls[0]).status_code == 400  # already exists
    resp = client.simulate_put(f"{base}/clicked", body=urlencode({"url": urls[2]}), headers={**FORM, **basic(api_key)})
    assert resp.json == {"message": "Webhook has been updated", "webhook": {"urls": [urls[2]]}}
    assert client.simulate_get(f"{base}/clicked", headers=basic(api_key)).json == {"webhook": {"urls": [urls[2]]}}

    v4 = f"/v4/domains/{domain['name']}/webhooks"
    resp = post(client, v4, api_key, url=urls[3], event_types=["delivered", "opened"])
    assert resp.json["webhooks"] == {"clicked": {"urls": [urls[2]]}, "delivered": {"urls": [urls[3]]},
                                     "opened": {"urls": [urls[3]]}}
    resp = client.simulate_put(v4, body=urlencode({"url": urls[3], "event_types": "permanent_fail"}),
                               headers={**FORM, **basic(api_key)})
    assert resp.json["webhooks"] == {"clicked": {"urls": [urls[2]]}, "permanent_fail": {"urls": [urls[3]]}}
    resp = client.simulate_delete(v4, params={"url": f"{urls[3]},{urls[2]}"}, headers=basic(api_key))
    assert resp.json["webhooks"] == {}
    assert client.simulate_get(f"{base}/clicked", headers=basic(api_key)).status_code == 404

    # Another tenant's key sees nothing of this domain.
    other = services.accounts.create_account("other")
    _, other_key = services.accounts.create_key(other["id"], "admin")
    assert client.simulate_get(base, headers=basic(other_key)).status_code == 404
    assert post(client, base, other_key, id="opened", url=urls[0]).status_code == 404
    assert db.execute("SELECT count(*) AS n FROM webhooks WHERE domain_id = %s", (domain["id"],)).fetchone()["n"] == 0


def test_expired_deliveries_and_attempts_are_purged(hook_services, receiver, domain, db):
    hook_services.webhooks.create(domain, "accepted", [receiver.url("/ok")])
    send(hook_services, domain)
    send(hook_services, domain)
    pump(hook_services)
    [old, new] = [r["id"] for r in db.execute("SELECT id FROM webhook_deliveries WHERE domain_id = %s ORDER BY id",
                                               (domain["id"],))]
    db.execute("UPDATE webhook_deliveries SET created_at = now() - interval '31 days' WHERE id = %s", (old,))
    assert hook_services.webhooks.purge_expired() >= 1
    left = db.execute("SELECT d.id, count(a.id) AS attempts FROM webhook_deliveries d LEFT JOIN webhook_attempts a"
                      " ON a.delivery_id = d.id WHERE d.domain_id = %s GROUP BY d.id", (domain["id"],)).fetchall()
    assert left == [{"id": new, "attempts": 1}]
    assert db.execute("SELECT count(*) AS n FROM webhook_attempts WHERE delivery_id = %s", (old,)).fetchone()["n"] == 0
    assert any(t.name == "purge expired webhook deliveries" for t in runtime.periodic_tasks(hook_services))


def test_endpoint_backfill_matches_endpoint_of(db):
    """Migration 0055 fills webhooks.endpoint in SQL for URLs set before it: the same as endpoint_of."""

    from envoi.webhooks.store import endpoint_of

    migration = paths.ROOT / "envoi/infra/migrations/0055_webhook_url_endpoint.sql"
    update = next(s for s in migration.read_text().split(";") if "UPDATE webhooks" in s)
    expression = update.split("SET endpoint =", 1)[1]
    urls = ["https://hooks.example.com/a?b=1", "HTTP://User:Pw@Hooks.Example.COM:8080/x#f", "http://127.0.0.1:9/",
            "https://h.example"]
    rows = db.execute(f"SELECT url, {expression} AS endpoint FROM unnest(%s::text[]) AS webhooks(url)",
                      (urls,)).fetchall()
    assert {r["url"]: r["endpoint"] for r in rows} == {u: endpoint_of(u) for u in urls}


def test_dispatcher_doorbell_rings_only_for_batches_that_made_deliveries(client, hook_services, receiver, domain,
                                                                        api_key, db):
    doorbell = hook_services.webhooks.doorbell
    doorbell.conn.delete(doorbell.key)
    send(hook_services, domain)  # no webhook on this domain yet: no outbox row, no ring
    time.sleep(0.3)  # the ring, if any, goes out from the doorbell's own thread
    assert doorbell.conn.llen(doorbell.key) == 0
    resp = post(client, f"/v3/domains/{domain['name']}/webhooks", api_key, id="accepted", url=receiver.url("/bell"))
    assert resp.status_code == 200, resp.text
    send(hook_services, domain)
    wait_until(lambda: doorbell.conn.llen(doorbell.key) == 1, timeout=5)
    made = db.execute("SELECT endpoint, count(*) AS n FROM webhook_deliveries WHERE domain_id = %s AND url = %s"
                      " GROUP BY endpoint", (domain["id"], receiver.url("/bell"))).fetchall()
    assert [(r["endpoint"], r["n"]) for r in made] == [(receiver.url("/bell").rsplit("/", 1)[0], 1)]


SECRET = "s3cret-Pa55word"


def test_a_url_password_is_sent_but_never_shown_logged_or_stored_in_the_clear(client, hook_services,
                                                                             receiver, domain, api_key, db, caplog):
    receiver.signing_key = signing_key(client, api_key)
    receiver.script = {"/auth": [500, 200]}
    url = f"http://hook-user:{SECRET}@127.0.0.1:{receiver.port}/auth"
    shown = f"http://hook-user:***@127.0.0.1:{receiver.port}/auth"
    base = f"/v3/domains/{domain['name']}/webhooks"
    resp = post(client, base, api_key, id="accepted", url=url)
    assert resp.status_code == 200 and resp.json["webhook"] == {"urls": [shown]}
    for path in (base, f"{base}/accepted", f"/v4/domains/{domain['name']}/webhooks"):
        resp = client.simulate_get(path, headers=basic(api_key))
        assert resp.status_code == 200 and shown in resp.text and SECRET not in resp.text, path
    [row] = db.execute("SELECT url, url_sealed FROM webhooks WHERE domain_id = %s", (domain["id"],)).fetchall()
    assert row["url"] == shown and SECRET.encode() not in bytes(row["url_sealed"])

    send(hook_services, domain)
    with caplog.at_level("DEBUG"):
        pump(hook_services)  # 500: a failed attempt, logged
        time.sleep(0.4)
        pump(hook_services)
    assert f"to {shown}: retry (500)" in caplog.text and SECRET not in caplog.text
    got = receiver.got("/auth")
    assert [r["status"] for r in got] == [500, 200] and all(r["valid"] for r in got)
    assert {r["authorization"] for r in got} == {"Basic " + base64.b64encode(f"hook-user:{SECRET}".encode()).decode()}
    for filter_url in (url, shown):  # the attempts of a URL, named with or without its password
        resp = client.simulate_get(f"{base}/attempts", params={"url": filter_url}, headers=basic(api_key))
        assert [(a["status"], a["url"]) for a in resp.json["items"]] == [(200, shown), (500, shown)]
        assert SECRET not in resp.text
    stored = db.execute("SELECT d.url, d.url_sealed, a.error, a.response FROM webhook_deliveries d"
                        " JOIN webhook_attempts a ON a.delivery_id = d.id WHERE d.domain_id = %s",
                        (domain["id"],)).fetchall()
    assert len(stored) == 2 and all(SECRET not in repr(r) for r in stored)

    # A new password for the same URL replaces the old one (the webhook stays one URL).
    resp = client.simulate_put(f"{base}/accepted", body=urlencode({"url": url.replace(SECRET, "rotated-pw")}),
                               headers={**FORM, **basic(api_key)})
    assert resp.json["webhook"] == {"urls": [shown]}
    send(hook_services, domain)
    pump(hook_services)
    assert receiver.got("/auth")[-1]["authorization"] == "Basic " + base64.b64encode(b"hook-user:rotated-pw").decode()


def test_a_refused_url_is_named_without_its_password(client, domain, api_key):
    resp = post(client, f"/v3/domains/{domain['name']}/webhooks", api_key, id="opened",
                url=f"http://hook-user:{SECRET}@10.1.2.3/private")
    assert resp.status_code == 400 and "hook-user:***@10.1.2.3" in resp.json["message"] and SECRET not in resp.text


def test_migration_0065_seals_passwords_stored_in_the_clear(hook_services, hook_settings, receiver, domain,
                                                            db):
    from envoi.infra.migrate import migrate

    url = f"http://old:{SECRET}@127.0.0.1:{receiver.port}/legacy"
    shown = f"http://old:***@127.0.0.1:{receiver.port}/legacy"
    db.execute("INSERT INTO webhooks (account_id, domain_id, event_type, url, endpoint) VALUES (%s, %s, 'accepted', %s,"
               " %s)", (domain["account_id"], domain["id"], url, f"http://127.0.0.1:{receiver.port}"))
    send(hook_services, domain)  # an outbox row made before the migration: it carries the plain URL
    assert db.execute("SELECT url FROM webhook_deliveries WHERE domain_id = %s", (domain["id"],)).fetchone()["url"] == url
    db.execute("DELETE FROM schema_migrations WHERE version LIKE '0065%%'")
    with pytest.raises(RuntimeError, match="region key"):
        migrate(hook_settings.database_url)  # without the key it cannot seal, and changes nothing
    assert db.execute("SELECT url FROM webhooks WHERE domain_id = %s", (domain["id"],)).fetchone()["url"] == url
    assert migrate(hook_settings.database_url, hook_settings.secret_key) == ["0065_seal_webhook_url_passwords"]
    for table in ("webhooks", "webhook_deliveries"):
        [row] = db.execute(f"SELECT url, url_sealed FROM {table} WHERE domain_id = %s", (domain["id"],)).fetchall()
        assert row["url"] == shown and row["url_sealed"] is not None and SECRET.encode() not in bytes(row["url_sealed"])
    pump(hook_services)  # the pending delivery still dials with the password
    [got] = receiver.got("/legacy")
    assert got["authorization"] == "Basic " + base64.b64encode(f"old:{SECRET}".encode()).decode()
