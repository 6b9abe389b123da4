"""Account-level webhooks (Mailgun's /v1/webhooks) through the official `mailgun` SDK: sends on two
domains of an account reach its account webhook, signed with its key, and another account's sends do not;
the outbox rows and attempts are the domain webhooks' own."""

from __future__ import annotations

import uuid

import pytest
from mailgun.client import Client

from envoi import runtime
from envoi.api.app import create_app
from envoi.dev.sink import Sink
from tests.integration.webhooks.test_webhooks import pump
from tests.support.delivery import events_of, route
from tests.support.dns_server import DnsServer
from tests.support.events import AppServer
from tests.support.relay import RelayThread, relay_settings, wait_until
from tests.support.webhook_receiver import Receiver


@pytest.fixture(scope="module")
def hook_services(settings):
    svc = runtime.build(settings.replace(webhook_allow=("127.0.0.1/32",), webhook_retry_schedule=(0.3,),
                                         webhook_retry_for=3600, webhook_timeout=10), pool_size=3)
    yield svc
    svc.close()


@pytest.fixture(scope="module")
def server(hook_services):
    with AppServer(create_app(hook_services.settings, hook_services)) as srv:
        yield srv


@pytest.fixture(autouse=True)
def nothing_left_due(db):
    """The dispatcher claims every due delivery: each test removes the ones it made."""
    first = db.execute("SELECT coalesce(max(id), 0) AS id FROM webhook_deliveries").fetchone()["id"]
    yield
    db.execute("DELETE FROM webhook_deliveries WHERE id > %s", (first,))


@pytest.fixture
def receiver():
    with Receiver() as r:
        yield r


def tenant(services, server, domains: int = 1):
    """A new account with verified domains and an SDK client on its admin key."""
    account = services.accounts.create_account(f"acct-{uuid.uuid4().hex[:6]}")
    rows = [services.accounts.add_domain(account["id"], f"{uuid.uuid4().hex[:8]}.example.test",
                                         dkim_key_size=1024, verified=True) for _ in range(domains)]
    _, secret = services.accounts.create_key(account["id"], "admin")
    return account, rows, Client(auth=("api", secret), api_url=server.url)


def sdk_send(sdk, domain: dict, to: str = "rcpt@acct-hooks.test") -> str:
    resp = sdk.messages.create(domain=domain["name"], data={"from": f"s@{domain['name']}", "to": to,
                                                            "subject": "hi", "text": "body"})
    assert resp.status_code == 200, resp.text
    return resp.json()["id"].strip("<>")


def message_ids(requests) -> list[str]:
    return sorted(r["payload"]["event-data"]["message"]["headers"]["message-id"] for r in requests)


def test_account_webhook_fires_for_every_domain_of_its_account_only(hook_services, server, receiver, db):
    account, (d1, d2), sdk = tenant(hook_services, server, domains=2)
    other, (d3,), other_sdk = tenant(hook_services, server)
    receiver.signing_key = hook_services.webhooks.signing_key(account["id"])

    created = sdk.account_webhooks.create(data={"url": receiver.url("/acct"), "event_types": ["accepted", "delivered"],
                                                "description": "every domain"})
    assert created.status_code == 200, created.text
    hook_id = created.json()["webhook_id"]
    assert other_sdk.account_webhooks.create(data={"url": receiver.url("/other"), "event_types": "accepted"}
                                             ).status_code == 200
    # The same URL as a domain webhook of d1 too: Mailgun deduplicates across levels, one POST per event.
    assert sdk.domains_webhooks.create(domain=d1["name"], data={"id": "accepted", "url": receiver.url("/acct")}
                                       ).status_code == 200

    listed = sdk.account_webhooks.get().json()["webhooks"]
    assert [(w["webhook_id"], w["url"], sorted(w["event_types"]), w["description"]) for w in listed] == [
        (hook_id, receiver.url("/acct"), ["accepted", "delivered"], "every domain")]
    one = sdk.account_webhooks.get(webhook_id=hook_id).json()
    assert one["webhook_id"] == hook_id and one["created_at"].endswith("Z")

    sent = [sdk_send(sdk, d1), sdk_send(sdk, d2)]
    other_sent = sdk_send(other_sdk, d3)
    # At most 2 deliveries in flight per endpoint host (the receiver's): a few rounds.
    wait_until(lambda: pump(hook_services) or len(receiver.got("/acct")) >= 2)
    pump(hook_services)  # and nothing more comes

    got = receiver.got("/acct")
    assert message_ids(got) == sorted(sent)  # both domains, once each, nothing of the other account
    assert all(r["valid"] for r in got)  # signed with the account's key, as domain webhooks are
    assert {r["payload"]["event-data"]["event"] for r in got} == {"accepted"}
    # The other account's event made one outbox row, for its own account webhook only.
    rows = db.execute("SELECT url FROM webhook_deliveries WHERE payload->'message'->'headers'->>'message-id' = %s",
                      (other_sent,)).fetchall()
    assert [r["url"] for r in rows] == [receiver.url("/other")]
    # The outbox rows and attempts are stored as for a domain webhook, under each event's domain.
    rows = db.execute("SELECT d.domain_id, d.status, a.status_code FROM webhook_deliveries d"
                      " JOIN webhook_attempts a ON a.delivery_id = d.id WHERE d.url = %s ORDER BY d.id",
                      (receiver.url("/acct"),)).fetchall()
    assert [(r["domain_id"], r["status"], r["status_code"]) for r in rows] == [
        (d1["id"], "delivered", 200), (d2["id"], "delivered", 200)]


def test_messages_delivered_to_the_sink_reach_the_account_webhook(hook_services, server, receiver, db):
    """Real sends through the API, delivered by the relay to the sink MX: the `delivered` events of both
    domains of the account reach its account webhook."""
    account, (d1, d2), sdk = tenant(hook_services, server, domains=2)
    receiver.signing_key = hook_services.webhooks.signing_key(account["id"])
    assert sdk.account_webhooks.create(data={"url": receiver.url("/delivered"), "event_types": "delivered"}
                                       ).status_code == 200
    with Sink() as sink, DnsServer() as dns:
        route(dns, "sink-dest.test")
        sent = [sdk_send(sdk, d, to=f"{d['name'].split('.')[0]}@sink-dest.test") for d in (d1, d2)]
        with RelayThread(hook_services, relay_settings(hook_services.settings, sink, dns)):
            arrived = sink.wait_for(2, timeout=30)
            for message_id in sent:  # the relay recorded the outcome before it stops
                wait_until(lambda m=message_id: any(e["event"] == "delivered" for e in events_of(db, m)), timeout=30)
        assert sorted(m["rcpt_tos"][0] for m in arrived) == sorted(f"{d['name'].split('.')[0]}@sink-dest.test"
                                                                    for d in (d1, d2))
    pump(hook_services, rounds=2)
    got = wait_until(lambda: receiver.got("/delivered") if len(receiver.got("/delivered")) == 2 else None)
    assert message_ids(got) == sorted(sent) and all(r["valid"] for r in got)
    assert {r["payload"]["event-data"]["event"] for r in got} == {"delivered"}


def test_update_replaces_and_delete_removes(hook_services, server, receiver, db):
    account, (d1,), sdk = tenant(hook_services, server)
    hook_id = sdk.account_webhooks.create(data={"url": receiver.url("/a"), "event_types": "accepted"}).json()["webhook_id"]

    resp = sdk.account_webhooks.put(webhook_id=hook_id, data={"url": receiver.url("/b"), "event_types": ["delivered"],
                                                             "description": "moved"})
    assert resp.status_code == 204, resp.text
    assert sdk.account_webhooks.get(webhook_id=hook_id).json() | {"created_at": None} == {
        "webhook_id": hook_id, "url": receiver.url("/b"), "event_types": ["delivered"], "description": "moved",
        "created_at": None}
    sdk_send(sdk, d1)
    pump(hook_services)
    assert receiver.got("/a") == [] and receiver.got("/b") == []  # accepted is no longer subscribed

    assert sdk.account_webhooks.delete(webhook_id=hook_id).status_code == 204
    assert sdk.account_webhooks.get(webhook_id=hook_id).status_code == 404
    assert db.execute("SELECT count(*) AS n FROM webhooks WHERE account_id = %s", (account["id"],)).fetchone()["n"] == 0

    # DELETE /v1/webhooks takes webhook_ids=a,b or all=true, and refuses to guess.
    ids = [sdk.account_webhooks.create(data={"url": receiver.url(f"/{n}"), "event_types": "opened"}).json()["webhook_id"]
           for n in ("x", "y", "z")]
    assert sdk.account_webhooks.delete().status_code == 400
    assert sdk.account_webhooks.delete(filters={"webhook_ids": ",".join(ids[:2])}).status_code == 204
    assert [w["webhook_id"] for w in sdk.account_webhooks.get().json()["webhooks"]] == ids[2:]
    assert sdk.account_webhooks.delete(filters={"all": "true"}).status_code == 204
    assert sdk.account_webhooks.get().json() == {"webhooks": []}


def test_bad_input_and_other_tenants_change_nothing(hook_services, server, receiver, db):
    account, _, sdk = tenant(hook_services, server)
    other, _, other_sdk = tenant(hook_services, server)
    hook_id = sdk.account_webhooks.create(data={"url": receiver.url("/kept"), "event_types": "clicked"}).json()["webhook_id"]

    def stored():
        return db.execute("SELECT hook_id, event_type, url, description FROM webhooks WHERE account_id = %s"
                          " ORDER BY id", (account["id"],)).fetchall()

    before = stored()
    for data, status in [({"url": receiver.url("/n"), "event_types": "bounced"}, 400),
                         ({"event_types": "accepted"}, 400),
                         ({"url": receiver.url("/n")}, 400),
                         ({"url": receiver.url("/n"), "event_types": ["accepted", "accepted"]}, 400),
                         ({"url": "http://user:pa55w0rd@127.0.0.1:9/hook", "event_types": "accepted"}, 400),
                         ({"url": "http://10.0.0.1/hook", "event_types": "accepted"}, 400),
                         ({"url": receiver.url("/kept"), "event_types": "clicked"}, 400)]:
        resp = sdk.account_webhooks.create(data=data)
        assert resp.status_code == status, (data, resp.text)
        assert "message" in resp.json()
        assert "pa55w0rd" not in resp.text
    assert stored() == before

    # At most 3 URLs per event type: the 4th is Mailgun's 409 and is not stored.
    for n in range(2):
        assert sdk.account_webhooks.create(data={"url": receiver.url(f"/c{n}"), "event_types": "clicked"}
                                           ).status_code == 200
    full = stored()
    resp = sdk.account_webhooks.create(data={"url": receiver.url("/c9"), "event_types": ["opened", "clicked"]})
    assert resp.status_code == 409 and "3 urls" in resp.json()["message"]
    assert stored() == full

    # Another account cannot see, change or delete this one's webhook: 404, as for one that does not exist.
    assert other_sdk.account_webhooks.get(webhook_id=hook_id).status_code == 404
    assert other_sdk.account_webhooks.put(webhook_id=hook_id, data={"url": receiver.url("/stolen"),
                                                                    "event_types": "clicked"}).status_code == 404
    assert other_sdk.account_webhooks.delete(webhook_id=hook_id).status_code == 404
    assert other_sdk.account_webhooks.get().json() == {"webhooks": []}
    assert stored() == full


@pytest.fixture
def sub_receiver():
    with Receiver() as r:
        yield r


def test_a_parents_account_webhook_gets_its_subaccounts_events_signed_with_its_key(hook_services, server, receiver,
                                                                                   sub_receiver, db):
    """Mailgun's: a parent's account-level webhooks fire for its subaccounts' events too. A real send from
    a subaccount (the parent's key with X-Mailgun-On-Behalf-Of, and the subaccount's own key) reaches the
    parent's account webhook, signed with the parent's key; the subaccount's own webhook gets it signed
    with its key; another account's subaccount reaches neither, and the subaccount never sees the parent's
    deliveries."""
    parent, (parent_domain,), sdk = tenant(hook_services, server)
    other, _, other_sdk = tenant(hook_services, server)
    resp = sdk.accounts_subaccounts.create(filters={"name": "shop"})
    assert resp.status_code == 200, resp.text
    sub_id = resp.json()["subaccount"]["id"]
    sub_domain = hook_services.accounts.add_domain(int(sub_id), f"{uuid.uuid4().hex[:8]}.example.test",
                                                   dkim_key_size=1024, verified=True)
    _, sub_secret = hook_services.accounts.create_key(int(sub_id), "admin")
    sub_sdk = Client(auth=("api", sub_secret), api_url=server.url)
    other_sub_id = other_sdk.accounts_subaccounts.create(filters={"name": "x"}).json()["subaccount"]["id"]
    other_sub_domain = hook_services.accounts.add_domain(int(other_sub_id), f"{uuid.uuid4().hex[:8]}.example.test",
                                                         dkim_key_size=1024, verified=True)
    behalf = {"headers": {"X-Mailgun-On-Behalf-Of": sub_id}}
    parent_key = hook_services.webhooks.signing_key(parent["id"])
    sub_key = hook_services.webhooks.signing_key(int(sub_id))
    assert parent_key != sub_key
    receiver.signing_key = parent_key  # each receiver checks the signature with the key of its account
    sub_receiver.signing_key = sub_key

    assert sdk.account_webhooks.create(data={"url": receiver.url("/parent"), "event_types": "accepted"}
                                       ).status_code == 200
    # The subaccount's own account webhook, set by its parent acting for it.
    assert sdk.account_webhooks.create(data={"url": sub_receiver.url("/sub"), "event_types": "accepted"},
                                       **behalf).status_code == 200
    assert [w["url"] for w in sdk.account_webhooks.get().json()["webhooks"]] == [receiver.url("/parent")]

    resp = sdk.messages.create(domain=sub_domain["name"], data={"from": f"s@{sub_domain['name']}",
                                                                "to": "rcpt@acct-hooks.test", "subject": "hi",
                                                                "text": "body"}, **behalf)
    assert resp.status_code == 200, resp.text
    sent = [resp.json()["id"].strip("<>"), sdk_send(sub_sdk, sub_domain)]
    own = sdk_send(sdk, parent_domain)
    other_sent = other_sdk.messages.create(
        domain=other_sub_domain["name"], data={"from": f"s@{other_sub_domain['name']}", "to": "rcpt@acct-hooks.test",
                                               "subject": "hi", "text": "body"},
        headers={"X-Mailgun-On-Behalf-Of": other_sub_id})
    assert other_sent.status_code == 200, other_sent.text

    wait_until(lambda: pump(hook_services) or (len(receiver.got("/parent")) >= 3 and len(sub_receiver.got("/sub")) >= 2))
    pump(hook_services)  # and nothing more comes

    got = receiver.got("/parent")
    assert message_ids(got) == sorted([*sent, own])  # the subaccount's two and its own; not the other's
    assert all(r["valid"] for r in got)  # signed with the parent's key
    assert {r["payload"]["event-data"]["event"] for r in got} == {"accepted"}
    sub_got = sub_receiver.got("/sub")
    assert message_ids(sub_got) == sorted(sent) and all(r["valid"] for r in sub_got)

    # The parent's outbox rows are the parent's (its key, its backlog), under the subaccount's domain.
    rows = db.execute("SELECT account_id, domain_id, status FROM webhook_deliveries WHERE url = %s ORDER BY id",
                      (receiver.url("/parent"),)).fetchall()
    assert sorted((r["account_id"], r["domain_id"], r["status"]) for r in rows) == sorted(
        [(parent["id"], sub_domain["id"], "delivered")] * 2 + [(parent["id"], parent_domain["id"], "delivered")])
    # The subaccount's attempts list shows its own URL only, never its parent's.
    attempts = sub_sdk.domains_webhooks_attempts.get(domain=sub_domain["name"])
    assert attempts.status_code == 200, attempts.text
    assert {a["url"] for a in attempts.json()["items"]} == {sub_receiver.url("/sub")}

    # Erasing the recipient in the subaccount removes its parent's copies too (they are under its domain).
    erased = hook_services.privacy.erase(int(sub_id), "rcpt@acct-hooks.test")
    assert erased["erased"]["webhook_deliveries"] == 4  # 2 events x (its own URL + its parent's)
    rows = db.execute("SELECT domain_id FROM webhook_deliveries WHERE url = %s", (receiver.url("/parent"),)).fetchall()
    assert [r["domain_id"] for r in rows] == [parent_domain["id"]]  # the parent's own event stays
