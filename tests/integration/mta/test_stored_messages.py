"""Stored messages (the events' storage.url) and body retention."""

from __future__ import annotations

from urllib.parse import urlparse

from tests.conftest import basic

STORED = {"to": "a@b.test", "subject": "Stored", "text": "plain part", "html": "<b>html part</b>"}


def storage_path(db, message_id) -> str:
    row = db.execute("SELECT data FROM events WHERE message_id = %s AND event = 'accepted'", (message_id,)).fetchone()
    return urlparse(row["data"]["storage"]["url"]).path


def test_storage_url_returns_the_message(client, send, api_key, domain, db):
    message_id = send(**STORED).message_id
    path = storage_path(db, message_id)
    resp = client.simulate_get(path, headers=basic(api_key))
    assert resp.status_code == 200
    assert resp.json["subject"] == "Stored" and resp.json["recipients"] == "a@b.test"
    assert resp.json["body-plain"].strip() == "plain part" and "<b>html part</b>" in resp.json["body-html"]
    mime = client.simulate_get(path, headers={"Accept": "message/rfc2822", **basic(api_key)}).json["body-mime"]
    assert f"Message-ID: <{message_id}>" in mime


def test_other_tenant_cannot_read_a_stored_message(client, send, services, api_key, domain, db):
    path = storage_path(db, send(**STORED).message_id)
    other = services.accounts.create_account("nosy")
    _, other_key = services.accounts.create_key(other["id"], "admin")
    resp = client.simulate_get(path, headers=basic(other_key))
    assert resp.status_code == 404 and resp.json == {"message": f"Domain not found: {domain['name']}"}
    assert "plain part" not in resp.text and "Stored" not in resp.text


def test_expired_bodies_are_purged_but_queued_ones_kept(client, send, services, api_key, domain, db):
    delivered = send(**STORED).message_id
    queued = send(**STORED).message_id
    db.execute("UPDATE messages SET body_expires_at = now() - interval '1 second' WHERE message_id = ANY(%s)",
               ([delivered, queued],))
    db.execute("UPDATE recipients SET status = 'delivered' WHERE message_pk ="
               " (SELECT id FROM messages WHERE message_id = %s)", (delivered,))
    assert services.storage.purge_expired() >= 1
    bodies = {r["message_id"]: r["body"] for r in db.execute(
        "SELECT message_id, body FROM messages WHERE message_id = ANY(%s)", ([delivered, queued],))}
    assert bodies[delivered] is None  # personal data gone once retention is over
    assert bodies[queued] is not None  # still needed for delivery
    resp = client.simulate_get(storage_path(db, delivered), headers=basic(api_key))
    assert resp.status_code == 404 and resp.json == {"message": "Message not found"}


def test_every_scheduler_task_runs(services):
    from envoi import runtime

    tasks = runtime.periodic_tasks(services)
    names = {t.name for t in tasks}
    assert {"purge expired message bodies", "events: partitions and retention"} <= names
    for task in tasks:
        task.run()  # each must work against a real database without raising
