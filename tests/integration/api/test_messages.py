"""The send API over falcon's in-process client against real Postgres: shapes, errors, storage."""

from __future__ import annotations

import pytest

from tests.conftest import basic
from tests.support.api import multipart, post_form, stored_mime


def count(db, table, domain) -> int:
    return db.execute(f"SELECT count(*) AS n FROM {table} WHERE domain_id = %s", (domain["id"],)).fetchone()["n"]


def test_send_stores_message_recipients_and_accepted_events(client, api_key, domain, db, services):
    resp = post_form(client, f"/v3/{domain['name']}/messages", api_key, {"from": f"Sender <sender@{domain['name']}>", "to": ["a@one.test, b@two.test"],
                "cc": "c@three.test", "subject": "Hello", "text": "Body text", "o:tag": ["t1", "t2"],
                "v:order": "42", "h:Reply-To": "reply@x.test"})
    assert resp.status_code == 200, resp.text
    assert set(resp.json) == {"id", "message"} and resp.json["message"] == "Queued. Thank you."
    message_id = resp.json["id"].strip("<>")
    rcpts = db.execute("SELECT address, status FROM recipients r JOIN messages m ON m.id = r.message_pk"
                       " WHERE m.message_id = %s ORDER BY address", (message_id,)).fetchall()
    assert [r["address"] for r in rcpts] == ["a@one.test", "b@two.test", "c@three.test"]
    assert all(r["status"] == "queued" for r in rcpts)
    events = db.execute("SELECT event, recipient, data FROM events WHERE message_id = %s", (message_id,)).fetchall()
    assert sorted(e["recipient"] for e in events) == ["a@one.test", "b@two.test", "c@three.test"]
    assert {e["event"] for e in events} == {"accepted"}
    assert events[0]["data"]["tags"] == ["t1", "t2"] and events[0]["data"]["user-variables"] == {"order": "42"}
    msg = stored_mime(services, db, message_id)
    assert msg["Subject"] == "Hello" and msg["Reply-To"] == "reply@x.test"
    assert msg["Message-ID"] == f"<{message_id}>"
    assert msg.get_body(("plain",)).get_content().strip() == "Body text"
    # body at rest is sealed: the plaintext does not appear in the row
    raw = db.execute("SELECT body FROM messages WHERE message_id = %s", (message_id,)).fetchone()["body"]
    assert b"Body text" not in bytes(raw)


def test_multipart_with_attachment_and_inline(client, api_key, domain, db, services):
    body, content_type = multipart(
        [("from", f"s@{domain['name']}"), ("to", "x@y.test"), ("subject", "files"),
         ("html", '<p>hi <img src="cid:logo.png"></p>'), ("text", "hi")],
        [("attachment", "report.pdf", "application/pdf", b"%PDF-1.4 data"),
         ("inline", "logo.png", "image/png", b"\x89PNG fake"),
         ("attachment", None, "text/plain", b"no name is dropped")],
    )
    headers = {"Content-Type": content_type, **basic(api_key)}
    resp = client.simulate_post(f"/v3/{domain['name']}/messages", body=body, headers=headers)
    assert resp.status_code == 200, resp.text
    msg = stored_mime(services, db, resp.json["id"].strip("<>"))
    attachments = [(p.get_filename(), p.get_content()) for p in msg.iter_attachments()]
    assert ("report.pdf", b"%PDF-1.4 data") in attachments
    assert all(name is not None for name, _ in attachments)
    inline = [p for p in msg.walk() if p.get("Content-ID") == "<logo.png>"]
    assert inline and inline[0].get_content() == b"\x89PNG fake"


@pytest.mark.parametrize(
    ("params", "status", "message"),
    [
        ({"to": "a@b.test", "text": "x"}, 400, "from parameter is missing"),
        ({"from": "s@{d}", "text": "x"}, 400, "to parameter is missing"),
        ({"from": "s@{d}", "to": "not an address", "text": "x"}, 400,
         "to parameter is not a valid address. please check documentation"),
        ({"from": "s@{d}", "to": "a@b.test"}, 400, "Need at least one of 'text' or 'html' parameters specified"),
        ({"from": "s@{d}", "to": "a@b.test", "text": "x", "subject": "hi\r\nBcc: victim@evil.test"}, 400,
         "subject contains a control character (CR, LF or NUL are not allowed)"),
        ({"from": "s@{d}", "to": "a@b.test", "text": "x", "h:X-Custom": "v\nBcc: v@evil.test"}, 400,
         "h:X-Custom contains a control character (CR, LF or NUL are not allowed)"),
        ({"from": "s@{d}", "to": "a@b.test", "text": "x", "recipient-variables": "{nope"}, 400,
         "'recipient-variables' parameter is not a valid JSON"),
    ],
)
def test_bad_input_is_refused_and_nothing_is_stored(client, api_key, domain, db, params, status, message):
    params = {k: v.replace("{d}", domain["name"]) for k, v in params.items()}
    resp = post_form(client, f"/v3/{domain['name']}/messages", api_key, params)
    assert resp.status_code == status
    assert resp.json == {"message": message}
    assert count(db, "messages", domain) == 0
    assert count(db, "events", domain) == 0


def test_too_many_recipients(client, api_key, domain, db):
    to = ",".join(f"r{i}@x.test" for i in range(1001))
    resp = post_form(client, f"/v3/{domain['name']}/messages", api_key, {"from": f"s@{domain['name']}", "to": to, "text": "x"})
    assert resp.status_code == 400 and resp.json == {"message": "Too many recipients, max is 1000"}
    assert count(db, "messages", domain) == 0


def test_auth_failures_and_tenant_isolation(client, services, api_key, domain, db):
    params = {"from": f"s@{domain['name']}", "to": "a@b.test", "text": "x"}
    url = f"/v3/{domain['name']}/messages"
    assert post_form(client, url, None, params).json == {"message": "Forbidden"}
    resp = client.simulate_post(url, params=params, headers=basic("key-eu-" + "x" * 32))
    assert resp.status_code == 401 and resp.json == {"message": "Forbidden"}
    # a key from the other region gets a 401 naming that region's base URL
    resp = client.simulate_post(url, params=params, headers=basic("key-us-" + "x" * 32))
    assert resp.status_code == 401 and "https://api.us.envoi.test" in resp.json["message"]
    # another account's key on this domain: 404, as if the domain did not exist
    other = services.accounts.create_account("other")
    _, other_key = services.accounts.create_key(other["id"], "admin")
    resp = post_form(client, url, other_key, params)
    assert resp.status_code == 404 and resp.json == {"message": f"Domain not found: {domain['name']}"}
    assert client.simulate_get(f"/v3/{domain['name']}/events", headers=basic(other_key)).status_code == 404
    assert count(db, "messages", domain) == 0


def test_sending_key_can_only_send(client, services, account, domain, db):
    _, sending = services.accounts.create_key(account["id"], "sending", domain=domain["name"])
    params = {"from": f"s@{domain['name']}", "to": "a@b.test", "text": "x"}
    resp = post_form(client, f"/v3/{domain['name']}/messages", sending, params)
    assert resp.status_code == 200
    stored = db.execute("SELECT count(*) AS n FROM messages WHERE message_id = %s",
                        (resp.json["id"].strip("<>"),)).fetchone()["n"]
    assert stored == 1
    for path in (f"/v3/{domain['name']}/events", "/v4/domains"):
        resp = client.simulate_get(path, headers=basic(sending))
        assert resp.status_code == 401 and resp.json == {"message": "Forbidden"}  # nothing read back


def test_messages_mime(client, api_key, domain, db, services):
    mime = (f"From: s@{domain['name']}\nTo: a@b.test\nSubject: raw\n\nraw body line\n").encode()
    body, content_type = multipart([("to", "a@b.test"), ("to", "c@d.test")],
                                   [("message", "m.eml", "message/rfc822", mime)])
    headers = {"Content-Type": content_type, **basic(api_key)}
    resp = client.simulate_post(f"/v3/{domain['name']}/messages.mime", body=body, headers=headers)
    assert resp.status_code == 200, resp.text
    message_id = resp.json["id"].strip("<>")
    msg = stored_mime(services, db, message_id)
    assert msg["Subject"] == "raw" and msg["Message-ID"] == f"<{message_id}>" and msg["Date"]
    row = db.execute("SELECT body, storage_key FROM messages WHERE message_id = %s", (message_id,)).fetchone()
    raw = services.sealer.open(row["body"], row["storage_key"].encode())
    assert b"\r\n" in raw and b"\n" not in raw.replace(b"\r\n", b"")  # no bare LF is stored
    assert count(db, "recipients", domain) == 2


def test_domains_api(client, api_key, domain):
    resp = client.simulate_get("/v4/domains", headers=basic(api_key))
    assert resp.status_code == 200 and resp.json["total_count"] == 1
    assert resp.json["items"][0]["name"] == domain["name"]
    resp = client.simulate_get(f"/v4/domains/{domain['name']}", headers=basic(api_key))
    records = resp.json["sending_dns_records"]
    dkim = [r for r in records if "_domainkey" in r["name"]][0]
    assert dkim["value"] == f"v=DKIM1; k=rsa; p={domain['dkim_public_key']}"
    assert resp.json["receiving_dns_records"] == []  # no inbound MX configured, no routes
    resp = post_form(client, "/v4/domains", api_key, {"name": "new-domain.test"})
    assert resp.status_code == 200 and resp.json["domain"]["name"] == "new-domain.test"
    assert client.simulate_get("/v4/domains", headers=basic(api_key)).json["total_count"] == 2
    resp = post_form(client, "/v4/domains", api_key, {"name": "bad_domain!"})
    assert resp.status_code == 400 and "not a valid domain" in resp.json["message"]


def test_oversized_request_is_413_and_stores_nothing(client, api_key, domain, db):
    big = b"x" * (53 * 1024 * 1024)
    headers = {"Content-Type": "application/x-www-form-urlencoded", **basic(api_key)}
    resp = client.simulate_post(f"/v3/{domain['name']}/messages", body=b"text=" + big, headers=headers)
    assert resp.status_code == 413 and resp.json == {"message": "request size exceeds 52.4MiB limit"}
    assert count(db, "messages", domain) == 0


def test_message_over_size_limit_is_413(client, settings, services, api_key, domain, db, monkeypatch):
    monkeypatch.setattr(services.intake, "settings", settings.replace(max_message_bytes=10_000))
    resp = post_form(client, f"/v3/{domain['name']}/messages", api_key,
                     {"from": f"s@{domain['name']}", "to": "a@b.test", "text": "y" * 20_000})
    assert resp.status_code == 413 and "exceeds the limit of 10000 bytes" in resp.json["message"]
    assert count(db, "messages", domain) == 0


def test_concurrent_sends_share_commits_and_each_is_stored(client, services, api_key, domain, db):
    """Group commit: 40 sends from 10 threads land in fewer transactions, and each 200 is durable."""
    import threading

    intake = services.intake
    batches0, items0 = intake._commits.batches, intake._commits.items
    ids, lock = [], threading.Lock()

    def send(n):
        for i in range(4):
            resp = post_form(client, f"/v3/{domain['name']}/messages", api_key, {
                "from": f"s@{domain['name']}", "to": f"r{n}-{i}@group.test", "subject": f"g{n}-{i}", "text": "x"})
            assert resp.status_code == 200, resp.text
            with lock:
                ids.append(resp.json["id"].strip("<>"))

    threads = [threading.Thread(target=send, args=(n,)) for n in range(10)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(30)
    assert len(ids) == 40
    rows = db.execute("SELECT m.message_id, r.address, (SELECT count(*) FROM events e WHERE e.message_id ="
                      " m.message_id AND e.event = 'accepted') AS accepted FROM messages m JOIN recipients r"
                      " ON r.message_pk = m.id WHERE m.message_id = ANY(%s)", (ids,)).fetchall()
    assert sorted(r["message_id"] for r in rows) == sorted(ids)
    assert all(r["accepted"] == 1 for r in rows)
    assert intake._commits.items - items0 == 40
    assert intake._commits.batches - batches0 < 40  # some sends shared a transaction


def test_api_keys_are_cached_briefly_and_forgotten_on_delete(services, account, db):
    accounts = services.accounts
    key, secret = accounts.create_key(account["id"], "admin")
    assert accounts.authenticate_key(secret).account_id == account["id"]
    # Disabled behind this process's back (another process): still honoured within the TTL...
    db.execute("UPDATE api_keys SET is_disabled = true WHERE id = %s", (key["id"],))
    assert accounts.authenticate_key(secret) is not None
    accounts._keys.forget()  # ...and refused once it runs out (forget() stands in for the 3 s)
    assert accounts.authenticate_key(secret) is None
    # A refusal is never cached: the key works again as soon as it is enabled.
    db.execute("UPDATE api_keys SET is_disabled = false WHERE id = %s", (key["id"],))
    assert accounts.authenticate_key(secret) is not None
    accounts.delete_key(account["id"], key["id"])
    assert accounts.authenticate_key(secret) is None  # deleting in this process forgets at once
