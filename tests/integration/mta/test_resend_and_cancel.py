"""Resending a stored message (Mailgun's POST on its storage URL) and cancelling one that waits (DELETE on
it, an Envoi extension; DELETE /v3/{domain}/envelopes for the whole domain), through the API with the
real relay delivering to the sink."""

from __future__ import annotations

import time
import uuid
from datetime import UTC, datetime, timedelta
from email.utils import format_datetime
from urllib.parse import urlparse

from tests.conftest import basic
from tests.support.api import accepted, post_form, send_form
from tests.support.delivery import events_of
from tests.support.relay import wait_until


def storage_path(db, message_id) -> str:
    row = db.execute("SELECT data FROM events WHERE message_id = %s AND event = 'accepted'", (message_id,)).fetchone()
    return urlparse(row["data"]["storage"]["url"]).path


def body_of(sink_message: dict) -> str:
    return sink_message["data"].split("\r\n\r\n", 1)[1]


def header(sink_message: dict, name: str) -> str:
    head = sink_message["data"].split("\r\n\r\n", 1)[0]
    return next(line.split(":", 1)[1].strip() for line in head.split("\r\n") if line.lower().startswith(name.lower() + ":"))


def in_an_hour() -> str:
    return format_datetime(datetime.now(UTC) + timedelta(hours=1))


def statuses(db, message_id) -> list[tuple]:
    return [(r["address"], r["status"], r["last_message"]) for r in db.execute(
        "SELECT r.address, r.status, r.last_message FROM recipients r JOIN messages m ON m.id = r.message_pk"
        " WHERE m.message_id = %s ORDER BY r.id", (message_id,)).fetchall()]


def _other_tenant(services):
    other = services.accounts.create_account("other")
    other_domain = services.accounts.add_domain(other["id"], f"{uuid.uuid4().hex[:8]}.example.test",
                                                dkim_key_size=1024, verified=True)
    _, other_key = services.accounts.create_key(other["id"], "admin")
    return other_domain, other_key


# resend ----------------------------------------------------------------------------------------------
def test_resend_delivers_the_stored_message_again_with_the_same_body(client, api_key, domain, db, sink, relay):
    first = accepted(send_form(client, api_key, domain, to="first@dest.test", subject="Resend me",
                               text="the body, once more \u2713", **{"o:tag": "invoice", "v:order": "42"}))
    [original] = wait_until(lambda: sink.messages(to="first@dest.test"))  # its own (others' may be in the sink)
    resp = post_form(client, storage_path(db, first.message_id), api_key, {"to": "Second <second@dest.test>"})
    assert resp.status_code == 200, resp.text
    assert resp.json["message"] == "Queued. Thank you." and resp.json["id"].strip("<>") != first.message_id
    again = wait_until(lambda: sink.messages(to="second@dest.test"))[0]
    assert body_of(again) == body_of(original)
    assert header(again, "Subject") == "Resend me"
    assert header(again, "Message-ID") == resp.json["id"]
    stored = db.execute("SELECT tags, user_variables, method FROM messages WHERE message_id = %s",
                        (resp.json["id"].strip("<>"),)).fetchone()
    assert (stored["tags"], stored["user_variables"], stored["method"]) == (["invoice"], {"order": "42"}, "http")
    new_id = resp.json["id"].strip("<>")
    wait_until(lambda: [e["event"] for e in events_of(db, new_id)] == ["accepted", "delivered"])


def test_resend_of_another_tenants_message_is_a_404_and_stores_nothing(client, services, api_key, domain, db):
    sent = accepted(send_form(client, api_key, domain, to="first@dest.test"))
    key = storage_path(db, sent.message_id).rsplit("/", 1)[1]
    other_domain, other_key = _other_tenant(services)
    resp = post_form(client, f"/v3/domains/{other_domain['name']}/messages/{key}", other_key, {"to": "x@dest.test"})
    assert resp.status_code == 404 and resp.json == {"message": "Message not found"}
    resp = post_form(client, f"/v3/domains/{domain['name']}/messages/{key}", other_key, {"to": "x@dest.test"})
    assert resp.status_code == 404 and resp.json == {"message": f"Domain not found: {domain['name']}"}
    resp = post_form(client, f"/v3/domains/{domain['name']}/messages/{key}", api_key, {})
    assert resp.status_code == 400 and resp.json == {"message": "to parameter is missing"}
    assert db.execute("SELECT count(*) AS n FROM messages WHERE domain_id = ANY(%s)",
                      ([domain["id"], other_domain["id"]],)).fetchone()["n"] == 1
    db.execute("UPDATE recipients SET status = 'failed' WHERE domain_id = %s AND status = 'queued'", (domain["id"],))


def test_a_suspended_account_cannot_resend(client, services, account, api_key, domain, db):
    sent = accepted(send_form(client, api_key, domain, to="first@dest.test"))
    db.execute("UPDATE recipients SET status = 'failed' WHERE domain_id = %s AND status = 'queued'", (domain["id"],))
    services.accounts.suspend(account["id"], "review")
    resp = post_form(client, storage_path(db, sent.message_id), api_key, {"to": "x@dest.test"})
    assert resp.status_code == 403
    assert db.execute("SELECT count(*) AS n FROM messages WHERE domain_id = %s", (domain["id"],)).fetchone()["n"] == 1


# cancel ----------------------------------------------------------------------------------------------
def test_a_scheduled_message_is_cancelled_and_never_delivered(client, api_key, domain, db, sink, relay):
    later = accepted(send_form(client, api_key, domain, to="later@dest.test, also@dest.test",
                               **{"o:deliverytime": in_an_hour()}))
    path = storage_path(db, later.message_id)
    resp = client.simulate_delete(path, headers=basic(api_key))
    assert resp.status_code == 200, resp.text
    assert resp.json == {"message": "Message cancelled", "cancelled_recipients": 2}
    assert statuses(db, later.message_id) == [("later@dest.test", "failed", "cancelled"),
                                              ("also@dest.test", "failed", "cancelled")]
    failed = [e for e in events_of(db, later.message_id) if e["event"] == "failed"]
    assert [(e["severity"], e["data"]["reason"], e["data"]["recipient"]) for e in failed] == [
        ("permanent", "cancelled", "later@dest.test"), ("permanent", "cancelled", "also@dest.test")]

    # Even made due, the cancelled rows are never claimed: a message sent after them arrives, they do not.
    db.execute("UPDATE recipients SET next_attempt_at = now() WHERE domain_id = %s", (domain["id"],))
    accepted(send_form(client, api_key, domain, to="now@dest.test"))
    wait_until(lambda: sink.messages(to="now@dest.test"))
    time.sleep(0.5)
    assert sink.messages(to="later@dest.test") == [] and sink.messages(to="also@dest.test") == []
    # and a second cancel finds nothing left
    resp = client.simulate_delete(path, headers=basic(api_key))
    assert resp.status_code == 409


def test_a_delivered_or_in_flight_message_is_not_cancelled(client, api_key, domain, db, sink, relay):
    sent = accepted(send_form(client, api_key, domain, to="done@dest.test"))
    wait_until(lambda: statuses(db, sent.message_id)[0][1] == "delivered")
    resp = client.simulate_delete(storage_path(db, sent.message_id), headers=basic(api_key))
    assert resp.status_code == 409
    assert resp.json == {"message": "The message was already delivered or failed; nothing to cancel"}
    assert statuses(db, sent.message_id)[0][1] == "delivered"
    assert [e["event"] for e in events_of(db, sent.message_id)] == ["accepted", "delivered"]

    leased = accepted(send_form(client, api_key, domain, to="busy@dest.test", **{"o:deliverytime": in_an_hour()}))
    db.execute("UPDATE recipients SET leased_until = now() + interval '2 minutes' WHERE message_pk ="
               " (SELECT id FROM messages WHERE message_id = %s)", (leased.message_id,))  # a relay holds it
    resp = client.simulate_delete(storage_path(db, leased.message_id), headers=basic(api_key))
    assert resp.status_code == 409
    assert resp.json == {"message": "The message is being delivered right now and cannot be cancelled"}
    assert statuses(db, leased.message_id) == [("busy@dest.test", "queued", None)]
    db.execute("UPDATE recipients SET status = 'failed' WHERE domain_id = %s AND status = 'queued'", (domain["id"],))


def test_cancel_of_another_tenants_message_is_a_404_and_changes_nothing(client, services, api_key, domain, db):
    later = accepted(send_form(client, api_key, domain, to="later@dest.test", **{"o:deliverytime": in_an_hour()}))
    key = storage_path(db, later.message_id).rsplit("/", 1)[1]
    other_domain, other_key = _other_tenant(services)
    resp = client.simulate_delete(f"/v3/domains/{other_domain['name']}/messages/{key}", headers=basic(other_key))
    assert resp.status_code == 404 and resp.json == {"message": "Message not found"}
    resp = client.simulate_delete(f"/v3/domains/{domain['name']}/messages/{key}", headers=basic(other_key))
    assert resp.status_code == 404
    resp = client.simulate_delete(f"/v3/{other_domain['name']}/envelopes", headers=basic(other_key))
    assert resp.json == {"message": "done", "cancelled_recipients": 0}
    assert statuses(db, later.message_id) == [("later@dest.test", "queued", None)]
    db.execute("UPDATE recipients SET status = 'failed' WHERE domain_id = %s AND status = 'queued'", (domain["id"],))


def test_envelopes_delete_clears_the_domains_waiting_mail(client, api_key, domain, db):
    ids = [accepted(send_form(client, api_key, domain, to=f"r{i}@dest.test", **{"o:deliverytime": in_an_hour()}))
           .message_id for i in range(3)]
    db.execute("UPDATE recipients SET leased_until = now() + interval '2 minutes' WHERE message_pk ="
               " (SELECT id FROM messages WHERE message_id = %s)", (ids[2],))  # in flight: goes on
    resp = client.simulate_delete(f"/v3/{domain['name']}/envelopes", headers=basic(api_key))
    assert resp.status_code == 200 and resp.json == {"message": "done", "cancelled_recipients": 2}
    assert [statuses(db, m)[0][1:] for m in ids] == [("failed", "cancelled"), ("failed", "cancelled"), ("queued", None)]
    assert all(any(e["data"].get("reason") == "cancelled" for e in events_of(db, m)) for m in ids[:2])
    db.execute("UPDATE recipients SET status = 'failed' WHERE domain_id = %s AND status = 'queued'", (domain["id"],))


def test_a_tracked_message_is_resent_as_stored_not_tracked_twice(client, api_key, domain, db, sink, relay):
    html = '<p>Hello <a href="https://shop.example/order/42">your order</a></p>'
    first = accepted(send_form(client, api_key, domain, to="first@dest.test", html=html,
                               **{"o:tracking-clicks": "yes", "o:tracking-opens": "yes"}))
    [original] = sink.wait_for(1)
    assert "shop.example/order/42" not in original["data"]  # the link was rewritten once, at the first accept
    resp = post_form(client, storage_path(db, first.message_id), api_key, {"to": "second@dest.test"})
    assert resp.status_code == 200, resp.text
    again = wait_until(lambda: sink.messages(to="second@dest.test"))[0]
    assert body_of(again) == body_of(original)
