"""Data-subject export and erasure, on real Postgres, through the HTTP API."""

from __future__ import annotations

from urllib.parse import urlencode

from envoi import runtime
from tests.conftest import basic


def test_export_lists_messages_events_and_suppressions(client, send, services, api_key, domain):
    message_id = send(to="person@example.test").message_id
    client.simulate_post(f"/v3/{domain['name']}/unsubscribes",
                         body=urlencode({"address": "person@example.test", "tag": "*"}),
                         headers={"Content-Type": "application/x-www-form-urlencoded", **basic(api_key)})
    resp = client.simulate_get("/v3/privacy/addresses/Person@Example.test", headers=basic(api_key))
    assert resp.status_code == 200
    data = resp.json
    assert data["address"] == "person@example.test"
    assert [m["message_id"] for m in data["messages"]] == [message_id]
    assert {e["event"] for e in data["events"]} == {"accepted"}
    assert [s["list"] for s in data["suppressions"]] == ["unsubscribes"]


def test_erase_removes_the_address_everywhere_but_keeps_opt_outs(client, send, services, api_key, domain, db):
    alone = send(to="gone@example.test", text="private words").message_id
    shared = send(to="gone@example.test, stays@example.test").message_id
    services.suppressions.add(domain, "unsubscribes", {"address": "gone@example.test"})

    resp = client.simulate_delete("/v3/privacy/addresses/gone@example.test", headers=basic(api_key))
    assert resp.status_code == 200 and resp.json["erased"]["recipients"] == 2

    assert db.execute("SELECT count(*) AS n FROM recipients WHERE address = 'gone@example.test'").fetchone()["n"] == 0
    assert db.execute("SELECT count(*) AS n FROM events WHERE recipient = 'gone@example.test'").fetchone()["n"] == 0
    # the message sent to the address alone is gone with its body; the shared one stays for the other
    assert db.execute("SELECT count(*) AS n FROM messages WHERE message_id = %s", (alone,)).fetchone()["n"] == 0
    left = db.execute("SELECT r.address FROM recipients r JOIN messages m ON m.id = r.message_pk"
                      " WHERE m.message_id = %s", (shared,)).fetchall()
    assert [r["address"] for r in left] == ["stays@example.test"]
    # the opt-out survives, so the address is never mailed again
    assert services.suppressions.get(domain, "unsubscribes", "gone@example.test")["address"] == "gone@example.test"
    export = client.simulate_get("/v3/privacy/addresses/gone@example.test", headers=basic(api_key)).json
    assert export["messages"] == [] and export["events"] == []


def test_erasure_is_scoped_to_the_callers_account(client, send, services, api_key, domain, db):
    send(to="both@example.test")
    other = services.accounts.create_account("other-tenant")
    _, other_key = services.accounts.create_key(other["id"], "admin")
    resp = client.simulate_delete("/v3/privacy/addresses/both@example.test", headers=basic(other_key))
    assert resp.status_code == 200 and resp.json["erased"]["recipients"] == 0
    assert db.execute("SELECT count(*) AS n FROM recipients WHERE address = 'both@example.test'").fetchone()["n"] == 1


def test_bad_address_is_a_400(client, api_key):
    resp = client.simulate_get("/v3/privacy/addresses/not-an-address", headers=basic(api_key))
    assert resp.status_code == 400 and "not a valid address" in resp.json["message"]


def test_inbound_mail_for_or_from_the_address_is_exported_and_erased(client, services, api_key, account, domain, db):
    services.routes.create(account["id"], priority="0", description="", expression="catch_all()", actions=["store()"])
    receiving = runtime.build_receiving(services)
    raw = b"From: Writer <Writer@outside.test>\r\nSubject: about me\r\n\r\nhello\r\n"
    receiving.receive("writer@outside.test", [f"desk@{domain['name']}"], raw)
    receiving.receive("someone@else.test", [f"desk@{domain['name']}"], raw.replace(b"Writer@", b"someone@"))
    export = client.simulate_get("/v3/privacy/addresses/writer@outside.test", headers=basic(api_key)).json
    assert [(m["sender"], m["recipient"], m["stored"]) for m in export["received"]] == [
        ("writer@outside.test", f"desk@{domain['name']}", True)]
    resp = client.simulate_delete("/v3/privacy/addresses/Writer@outside.test", headers=basic(api_key))
    assert resp.json["erased"]["received"] == 1
    left = db.execute("SELECT sender FROM inbound_messages WHERE domain_id = %s", (domain["id"],)).fetchall()
    assert [r["sender"] for r in left] == ["someone@else.test"]  # another sender's message stays
