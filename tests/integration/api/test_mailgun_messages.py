"""Issue 17 items 5 and 7 through the official `mailgun` SDK (and django-anymail) against the real API,
relay and sink: a caller's h:Message-Id, message.scheduled-for, sending queues, attachment types, resend,
and the 400s for what Mailgun refuses (nothing stored, nothing sent)."""

from __future__ import annotations

import email
import email.policy
import json
import time
import uuid
from datetime import UTC, datetime, timedelta
from email.utils import format_datetime
from urllib.parse import urlparse

import pytest
from mailgun.client import Client

from envoi.api.app import create_app
from envoi.mta import intake
from tests.conftest import basic
from tests.support.api import accepted, multipart, send_form
from tests.support.delivery import events_of
from tests.support.events import AppServer
from tests.support.relay import wait_until


@pytest.fixture
def app_server(settings, services):
    with AppServer(create_app(settings, services)) as srv:
        yield srv


@pytest.fixture
def sdk(app_server, api_key):
    return Client(auth=("api", api_key), api_url=app_server.url)


def rcpt(tag: str = "r") -> str:
    return f"{tag}-{uuid.uuid4().hex[:8]}@dest.test"


def rows(db, domain) -> list[dict]:
    return db.execute("SELECT message_id, message_id_given, attachments FROM messages WHERE domain_id = %s ORDER BY id",
                      (domain["id"],)).fetchall()


def parsed(sink_message: dict) -> email.message.EmailMessage:
    return email.message_from_bytes(sink_message["data"].encode(), policy=email.policy.default)


def events(client, key, domain, **params):
    return client.simulate_get(f"/v3/{domain['name']}/events", params=params, headers=basic(key))


# h:Message-Id -----------------------------------------------------------------------------------------
def test_sdk_h_message_id_is_the_messages_id_and_events_find_it(sdk, client, api_key, domain, db, sink, relay):
    given = f"order-{uuid.uuid4().hex}@shop.example"
    to = rcpt()
    resp = sdk.messages.create(domain=domain["name"], data={
        "from": f"s@{domain['name']}", "to": to, "subject": "Order", "text": "thanks", "h:Message-Id": f"<{given}>"})
    assert resp.status_code == 200, resp.text
    assert resp.json() == {"id": f"<{given}>", "message": "Queued. Thank you."}
    [arrived] = wait_until(lambda: sink.messages(to=to))
    assert parsed(arrived)["Message-ID"] == f"<{given}>"
    assert arrived["data"].count("Message-ID:") == 1
    assert [(r["message_id"], r["message_id_given"]) for r in rows(db, domain)] == [(given, True)]
    for value in (given, f"<{given}>"):  # the events API takes it with or without brackets
        found = wait_until(lambda value=value: [e["event"] for e in events(
            client, api_key, domain, **{"message-id": value, "ascending": "yes"}).json["items"]] == [
            "accepted", "delivered"])
        assert found
    assert events(client, api_key, domain, **{"message-id": "other@shop.example"}).json["items"] == []


def test_h_message_id_without_brackets_and_in_any_header_case(client, api_key, domain, db):
    given = f"{uuid.uuid4().hex}@client.example"
    sent = accepted(send_form(client, api_key, domain, **{"h:message-id": given}))
    assert sent.json["id"] == f"<{given}>"
    assert [r["message_id"] for r in rows(db, domain)] == [given]


def test_h_message_id_is_unique_per_domain_and_another_domain_may_reuse_it(client, services, account, api_key,
                                                                            domain, db, sink, relay):
    given = f"<dup-{uuid.uuid4().hex}@client.example>"
    first = accepted(send_form(client, api_key, domain, to=rcpt(), **{"h:Message-Id": given}))
    again_to = rcpt("again")
    resp = send_form(client, api_key, domain, to=again_to, **{"h:Message-Id": given.strip("<>")})
    assert resp.status_code == 400
    assert resp.json == {"message": f"Message-Id {given} is already used by another message of domain"
                                    f" {domain['name']}; a Message-Id must be unique per domain"}
    assert [r["message_id"] for r in rows(db, domain)] == [first.message_id]
    assert [e["data"]["recipient"] for e in events_of(db, first.message_id)][:1] != [again_to]
    other = services.accounts.add_domain(account["id"], f"{uuid.uuid4().hex[:8]}.example.test",
                                         dkim_key_size=1024, verified=True)
    reused = accepted(send_form(client, api_key, other, to=rcpt(), **{"h:Message-Id": given}))
    assert reused.json["id"] == given and [r["message_id"] for r in rows(db, other)] == [given.strip("<>")]
    time.sleep(1.0)  # the relay polls every second: had the refused one been stored, it would have left
    assert sink.messages(to=again_to) == []
    assert not [e for e in events_of(db, first.message_id) if e["data"].get("recipient") == again_to]


def test_a_batch_send_with_a_given_id_is_one_message_and_its_id_is_then_taken(client, api_key, domain, db):
    given = f"batch-{uuid.uuid4().hex}@client.example"
    a, b = rcpt("a"), rcpt("b")
    accepted(send_form(client, api_key, domain, to=f"{a}, {b}", text="hi %recipient.n%",
                       **{"recipient-variables": f'{{"{a}": {{"n": 1}}, "{b}": {{"n": 2}}}}', "h:Message-Id": given}))
    assert [(r["message_id"], r["message_id_given"]) for r in rows(db, domain)] == [(given, True), (given, False)]
    assert send_form(client, api_key, domain, **{"h:Message-Id": given}).status_code == 400
    assert len(rows(db, domain)) == 2


def _batch(client, api_key, domain, n: int, given: str) -> list[str]:
    to = [rcpt(f"b{i}") for i in range(n)]
    accepted(send_form(client, api_key, domain, to=", ".join(to), subject="Hi %recipient.n%", text="hello %recipient.n%",
                       **{"recipient-variables": json.dumps({a: {"n": i} for i, a in enumerate(to)}),
                          "o:tag": ["t1", "t,2"], "v:order": '{"id": 7}', "h:Message-Id": given}))
    return to


def test_a_batch_send_over_the_copy_threshold_stores_what_a_small_one_stores(client, services, api_key, domain, db):
    # Over COPY_FROM copies the intake commit COPYs its rows instead of pipelining INSERTs: the same rows.
    small, big = f"small-{uuid.uuid4().hex}@client.example", f"big-{uuid.uuid4().hex}@client.example"
    n = intake.COPY_FROM + 6
    _batch(client, api_key, domain, 2, small)
    to = _batch(client, api_key, domain, n, big)

    def stored(message_id: str) -> list[dict]:
        return db.execute(
            "SELECT m.id, m.storage_key, m.headers, m.tags, m.user_variables, m.options, m.attachments, m.method,"
            " m.size, m.body, m.message_id_given, r.address, r.rcpt_domain, r.status, r.egress_pin,"
            " r.account_id = m.account_id AND r.domain_id = m.domain_id AS same_owner,"
            " e.data, e.event, e.recipient, e.sender, e.subject, e.tags AS event_tags, e.message_pk = m.id AS same_pk"
            " FROM messages m JOIN recipients r ON r.message_pk = m.id"
            " JOIN events e ON e.message_pk = m.id AND e.recipient = r.address"
            " WHERE m.domain_id = %s AND m.message_id = %s ORDER BY m.id", (domain["id"], message_id)).fetchall()

    def shape(row: dict) -> dict:  # what a copy's rows hold besides its recipient, ids and times
        data = {k: v for k, v in row["data"].items() if k not in ("id", "timestamp", "recipient", "recipient-domain",
                                                                 "envelope", "storage")}
        data["message"] = {**data["message"], "headers": {**data["message"]["headers"], "to": None, "message-id": None},
                           "size": None}
        return {**{k: row[k] for k in ("tags", "user_variables", "options", "attachments", "method", "status",
                                       "egress_pin", "same_owner", "event", "sender", "subject", "event_tags",
                                       "same_pk")},
                "headers": {**row["headers"], "to": None, "message-id": None}, "data": data}

    small_rows, big_rows = stored(small), stored(big)
    assert len(small_rows) == 2 and len(big_rows) == n
    assert [r["address"] for r in big_rows] == to and [r["recipient"] for r in big_rows] == to
    assert {r["rcpt_domain"] for r in big_rows} == {"dest.test"}
    assert [r["message_id_given"] for r in big_rows] == [True] + [False] * (n - 1)
    assert all(shape(r) == shape(small_rows[0]) for r in big_rows)
    assert big_rows[0]["tags"] == ["t1", "t,2"] and big_rows[0]["event_tags"] == ["t1", "t,2"]
    for i, row in enumerate(big_rows):
        mime = services.sealer.open(row["body"], row["storage_key"].encode())
        assert row["size"] == len(mime) and f"hello {i}".encode() in mime and f"To: {to[i]}".encode() in mime
        assert row["headers"]["to"] == to[i] and row["data"]["envelope"]["targets"] == to[i]
        assert row["data"]["storage"]["key"] == row["storage_key"]
    # The given Message-ID is taken: the COPY's unique violation is the same 400.
    assert send_form(client, api_key, domain, **{"h:Message-Id": big}).status_code == 400
    assert len(stored(big)) == n


@pytest.mark.parametrize("value", [
    "no-at-sign", "<a@b> <c@d>", "a@b\r\nBcc: victim@dest.test", "a@b\nX: y", "<a b@c>", "a@b@c", "@b", "a@",
    "<>", "a@" + "b" * 260, "a@[1.2.3.4", "<a@b", "a@b\x00",
])
def test_a_bad_h_message_id_is_a_400_and_nothing_is_stored(client, api_key, domain, db, value):
    resp = send_form(client, api_key, domain, **{"h:Message-Id": value})
    assert resp.status_code == 400, (value, resp.text)
    assert "\n" not in resp.json["message"] and "victim" not in resp.json["message"]
    assert rows(db, domain) == []


# scheduled mail ---------------------------------------------------------------------------------------
def test_accepted_events_of_scheduled_mail_carry_scheduled_for_and_it_leaves_then(sdk, api_key, domain, db, sink,
                                                                                   relay):
    when = datetime.now(UTC).replace(microsecond=0) + timedelta(seconds=3)
    to = rcpt("later")
    resp = sdk.messages.create(domain=domain["name"], data={
        "from": f"s@{domain['name']}", "to": to, "subject": "Later", "text": "x", "o:deliverytime": format_datetime(when)})
    assert resp.status_code == 200, resp.text
    message_id = resp.json()["id"].strip("<>")
    [accepted_event] = [e for e in events_of(db, message_id) if e["event"] == "accepted"]
    assert accepted_event["data"]["message"]["scheduled-for"] == int(when.timestamp())
    listed = sdk.events.get(domain=domain["name"], filters={"message-id": message_id}).json()["items"]
    assert [e["message"].get("scheduled-for") for e in listed] == [int(when.timestamp())]
    [arrived] = wait_until(lambda: sink.messages(to=to), timeout=20)
    delivered = wait_until(lambda: [e for e in events_of(db, message_id) if e["event"] == "delivered"])
    assert delivered[0]["data"]["timestamp"] >= when.timestamp()
    assert "scheduled-for" not in delivered[0]["data"]["message"]


def test_mail_sent_now_has_no_scheduled_for(client, api_key, domain, db):
    sent = accepted(send_form(client, api_key, domain))
    [event] = events_of(db, sent.message_id)
    assert "scheduled-for" not in event["data"]["message"]


# sending queues ---------------------------------------------------------------------------------------
def test_sdk_sending_queues_reflect_the_domains_state(sdk, services, account, domain, db):
    resp = sdk.domains_sendingqueues.get(domain=domain["name"])
    assert resp.status_code == 200, resp.text
    open_queue = {"is_disabled": False, "disabled": {"until": "", "reason": ""}}
    assert resp.json() == {"regular": open_queue, "scheduled": open_queue}

    db.execute("UPDATE domains SET state = 'disabled' WHERE id = %s", (domain["id"],))
    body = sdk.domains_sendingqueues.get(domain=domain["name"]).json()
    reason = f"Domain {domain['name']} is not allowed to send: domain is disabled"
    assert body["regular"] == body["scheduled"] == {"is_disabled": True, "disabled": {"until": "", "reason": reason}}
    db.execute("UPDATE domains SET state = 'active' WHERE id = %s", (domain["id"],))

    services.accounts.suspend(account["id"], "review")
    body = wait_until(lambda: (b := sdk.domains_sendingqueues.get(domain=domain["name"]).json())["regular"]["is_disabled"]
                      and b)
    assert body["scheduled"]["is_disabled"] and "suspended" in body["regular"]["disabled"]["reason"]


def test_sending_queues_of_another_tenants_domain_is_a_404(client, services, domain):
    other = services.accounts.create_account("other")
    _, other_key = services.accounts.create_key(other["id"], "admin")
    resp = client.simulate_get(f"/v3/domains/{domain['name']}/sending_queues", headers=basic(other_key))
    assert resp.status_code == 404


# attachments ------------------------------------------------------------------------------------------
def test_sdk_attachments_are_reported_with_the_types_of_their_parts(sdk, client, api_key, domain, db, sink, relay):
    to = rcpt("files")
    pdf, png, csv = b"%PDF-1.4 fake", b"\x89PNG\r\n\x1a\n" + bytes(range(200)), b"a,b\n1,2\n"
    resp = sdk.messages.create(domain=domain["name"], data={
        "from": f"s@{domain['name']}", "to": to, "subject": "Files", "text": "see attached"},
        files=[("attachment", ("report.pdf", pdf)),  # no type given: typed by its name, as Mailgun does
               ("attachment", ("chart.bin", png, "image/png")),
               ("attachment", ("data.csv", csv, "text/csv; charset=utf-8"))])
    assert resp.status_code == 200, resp.text
    message_id = resp.json()["id"].strip("<>")
    expected = [{"filename": "report.pdf", "content-type": "application/pdf", "size": len(pdf)},
                {"filename": "chart.bin", "content-type": "image/png", "size": len(png)},
                {"filename": "data.csv", "content-type": "text/csv", "size": len(csv)}]
    [event] = events(client, api_key, domain, **{"message-id": message_id}).json["items"]
    assert event["message"]["attachments"] == expected
    [arrived] = wait_until(lambda: sink.messages(to=to))
    parts = [(p.get_filename(), p.get_content_type(), len(p.get_payload(decode=True)))
             for p in parsed(arrived).iter_attachments()]
    assert parts == [(a["filename"], a["content-type"], a["size"]) for a in expected]
    found = events(client, api_key, domain, attachment="chart.bin").json["items"]
    assert [e["message"]["headers"]["message-id"] for e in found] == [message_id] * len(found) and found
    assert events(client, api_key, domain, attachment="nope.bin").json["items"] == []


def test_an_undeclared_attachment_type_with_an_unknown_extension_is_octet_stream(client, api_key, domain, db):
    body, ctype = multipart([("from", f"s@{domain['name']}"), ("to", rcpt()), ("text", "x")],
                            [("attachment", "blob.zzz-unknown", None, b"\x00\x01")])
    body = body.replace(b"Content-Type: None\r\n", b"")  # a part with no Content-Type at all
    resp = client.simulate_post(f"/v3/{domain['name']}/messages", body=body,
                                headers={"Content-Type": ctype, **basic(api_key)})
    assert resp.status_code == 200, resp.text
    assert rows(db, domain)[0]["attachments"] == [
        {"filename": "blob.zzz-unknown", "content-type": "application/octet-stream", "size": 2}]


# resend ----------------------------------------------------------------------------------------------
def test_sdk_resends_a_stored_message_at_its_storage_url(sdk, app_server, domain, db, sink, relay):
    first_to, again_to = rcpt("first"), rcpt("again")
    resp = sdk.messages.create(domain=domain["name"], data={
        "from": f"s@{domain['name']}", "to": first_to, "subject": "Resend", "text": "once more"})
    message_id = resp.json()["id"].strip("<>")
    [item] = sdk.events.get(domain=domain["name"], filters={"message-id": message_id}).json()["items"]
    # The event's storage URL, on this test server's address (ENVOI_PUBLIC_URL names the real one).
    storage_url = app_server.url + urlparse(item["storage"]["url"]).path
    again = sdk.resend_message.create(data={"to": [again_to]}, domain=domain["name"], storage_url=storage_url)
    assert again.status_code == 200, again.text
    assert again.json()["message"] == "Queued. Thank you." and again.json()["id"] != resp.json()["id"]
    [arrived] = wait_until(lambda: sink.messages(to=again_to))
    assert parsed(arrived)["Subject"] == "Resend" and parsed(arrived)["Message-ID"] == again.json()["id"]


# errors -----------------------------------------------------------------------------------------------
DOCUMENTED_FILTERS = {"event": "accepted", "list": "list@x.test", "attachment": "a.pdf", "from": "s@x.test",
                      "message-id": "a@b", "subject": "hello", "to": "rcpt@dest.test", "size": ">10",
                      "recipient": "rcpt@dest.test", "recipients": "rcpt@dest.test", "tags": "t",
                      "severity": "permanent"}


@pytest.mark.parametrize("name", ["recipent", "tag", "message_id", "foo", "Event", "messageid", "begin_time"])
def test_an_unknown_events_filter_is_a_400_naming_it(sdk, domain, name):
    resp = sdk.events.get(domain=domain["name"], filters={name: "x"})
    assert resp.status_code == 400, resp.text
    assert resp.json()["message"].startswith(f"'{name}' is not a valid filter or query option")


def test_every_documented_filter_and_option_is_accepted(sdk, client, api_key, domain):
    sent = accepted(send_form(client, api_key, domain, to="Bob <rcpt@dest.test>", subject="hello world",
                              **{"o:tag": "t"}))
    for name, value in DOCUMENTED_FILTERS.items():
        resp = sdk.events.get(domain=domain["name"], filters={name: value})
        assert resp.status_code == 200, (name, resp.text)
    resp = sdk.events.get(domain=domain["name"], filters={"begin": str(time.time() - 60), "end": str(time.time()),
                                                          "ascending": "yes", "limit": "5", "pretty": "yes"})
    assert resp.status_code == 200, resp.text
    for name, value in (("to", "rcpt@dest.test"), ("to", "Bob"), ("list", "rcpt@dest.test"), ("subject", "hello"),
                        ("tags", "t"), ("event", "accepted"), ("size", ">10")):
        items = sdk.events.get(domain=domain["name"], filters={name: value}).json()["items"]
        assert [e["message"]["headers"]["message-id"] for e in items] == [sent.message_id], (name, value)
    assert sdk.events.get(domain=domain["name"], filters={"to": "someone@else.test"}).json()["items"] == []


@pytest.mark.parametrize(("fields", "says"), [
    ({"o:trackin": "yes"}, "'o:trackin' is not a valid option"),
    ({"o:unknown-option": "1"}, "'o:unknown-option' is not a valid option"),
    ({"o:Tracking": "yes"}, "'o:Tracking' is not a valid option"),
    ({"t:versoin": "v1"}, "'t:versoin' is not a valid option"),
    ({"o:tracking": "maybe"}, "o:tracking must be yes or no"),
    ({"o:tracking-opens": "htmlonly"}, "o:tracking-opens must be yes or no"),
    ({"o:deliverytime": "next tuesday"}, "o:deliverytime 'next tuesday' is not a valid RFC 2822 date"),
    ({"o:deliverytime": format_datetime(datetime.now(UTC) + timedelta(days=4))}, "more than 3 days"),
    ({"template": "no-such-template", "t:version": "v9"}, "template 'no-such-template' version 'v9' not found"),
])
def test_invalid_send_input_is_a_clear_400_and_nothing_is_accepted(sdk, domain, db, sink, relay, fields, says):
    to = rcpt("refused")
    resp = sdk.messages.create(domain=domain["name"], data={
        "from": f"s@{domain['name']}", "to": to, "subject": "x", "text": "x", **fields})
    assert resp.status_code == 400, resp.text
    assert says in resp.json()["message"]
    assert rows(db, domain) == []
    assert db.execute("SELECT count(*) AS n FROM events WHERE domain_id = %s", (domain["id"],)).fetchone()["n"] == 0
    time.sleep(0.3)
    assert sink.messages(to=to) == []


def test_a_fourth_tag_is_dropped_as_mailgun_documents(client, api_key, domain, db):
    sent = accepted(send_form(client, api_key, domain, **{"o:tag": ["a", "b", "c", "d"]}))
    assert db.execute("SELECT tags FROM messages WHERE message_id = %s", (sent.message_id,)).fetchone()["tags"] == [
        "a", "b", "c"]


def test_documented_options_envoi_does_not_apply_are_accepted(client, api_key, domain):
    accepted(send_form(client, api_key, domain, **{"o:tracking-pixel-location-top": "yes", "o:archive-to": "",
                                                   "o:suppress-headers": "all", "o:deliver-within": "1h"}))


def test_django_anymail_sends_with_its_options(settings, services, api_key, domain, db, sink, relay):
    from django.core.mail import EmailMessage

    from tests.support.anymail import mailgun_settings

    to = rcpt("anymail")
    with AppServer(create_app(settings, services)) as srv, mailgun_settings(srv.url, api_key):
        msg = EmailMessage("Via anymail", "body", f"s@{domain['name']}", [to])
        msg.tags = ["one", "two"]
        msg.metadata = {"order": "7"}
        msg.track_clicks, msg.track_opens = False, True
        msg.send_at = datetime.now(UTC) + timedelta(seconds=1)
        msg.extra_headers = {"Message-ID": f"<anymail-{uuid.uuid4().hex}@client.example>"}
        msg.attach("notes.txt", "hello", "text/plain")
        assert msg.send() == 1
        status = msg.anymail_status
    message_id = status.message_id.strip("<>")
    assert message_id.startswith("anymail-")
    [arrived] = wait_until(lambda: sink.messages(to=to), timeout=20)
    assert parsed(arrived)["Message-ID"] == f"<{message_id}>"
    row = db.execute("SELECT tags, user_variables, attachments FROM messages WHERE message_id = %s",
                     (message_id,)).fetchone()
    assert row["tags"] == ["one", "two"] and row["user_variables"] == {"order": "7"}
    assert row["attachments"] == [{"filename": "notes.txt", "content-type": "text/plain", "size": 5}]


def test_mime_sends_report_their_attachments_as_their_parts_say(client, api_key, domain, db):
    from email.message import EmailMessage

    msg = EmailMessage()
    msg["From"], msg["To"], msg["Subject"] = f"s@{domain['name']}", "rcpt@dest.test", "mime files"
    msg.set_content("plain")
    msg.add_alternative("<p>html</p>", subtype="html")
    blob = bytes(range(256)) * 40 + b"xy"  # base64, with padding
    msg.add_attachment(blob, maintype="application", subtype="x-custom", filename="blob.dat")
    msg.add_attachment("caf\u00e9 \u2713 line\n" * 50, subtype="plain", filename="notes.txt", cte="quoted-printable")
    msg.add_attachment(b"7bit text\r\n", maintype="text", subtype="csv", filename="t.csv", cte="7bit")
    inline = EmailMessage()
    inline.set_content(b"\x89PNG", maintype="image", subtype="png", disposition="inline", filename="logo.png")
    msg.attach(inline)  # inline parts are not attachments, as with the send API
    raw = msg.as_bytes(policy=email.policy.SMTP).decode()
    body, ctype = multipart([("to", "rcpt@dest.test")], [("message", "message.mime", "message/rfc822", raw.encode())])
    resp = client.simulate_post(f"/v3/{domain['name']}/messages.mime", body=body,
                                headers={"Content-Type": ctype, **basic(api_key)})
    assert resp.status_code == 200, resp.text
    sent = email.message_from_string(raw, policy=email.policy.default)
    expected = [{"filename": p.get_filename(), "content-type": p.get_content_type(),
                 "size": len(p.get_payload(decode=True))} for p in sent.iter_attachments()
                if p.get_content_disposition() == "attachment"]
    assert [a["filename"] for a in expected] == ["blob.dat", "notes.txt", "t.csv"]
    assert expected[0]["size"] == len(blob)
    [row] = rows(db, domain)
    assert row["attachments"] == expected
    [event] = events(client, api_key, domain).json["items"]
    assert event["message"]["attachments"] == expected



def test_smtp_submissions_report_their_attachments(server, client_ctx, login, domain, db, clean_throttle):
    from email.message import EmailMessage

    from tests.support.submission import starttls_client

    msg = EmailMessage()
    msg["From"], msg["To"], msg["Subject"] = login, "rcpt@dest.test", "smtp files"
    msg.set_content("see attached")
    msg.add_attachment(b"%PDF-1.7 " + bytes(300), maintype="application", subtype="pdf", filename="invoice.pdf")
    with starttls_client(server, client_ctx, login) as c:
        c.sendmail(login, ["rcpt@dest.test"], msg.as_bytes(policy=email.policy.SMTP))
    [row] = rows(db, domain)
    assert row["attachments"] == [{"filename": "invoice.pdf", "content-type": "application/pdf", "size": 309}]
    [event] = events_of(db, row["message_id"])
    assert event["data"]["message"]["attachments"] == row["attachments"]


def test_the_live_stream_refuses_an_unknown_filter_too(client, api_key, domain):
    resp = client.simulate_get(f"/v3/{domain['name']}/events/live", params={"recipent": "x@dest.test"},
                               headers=basic(api_key))
    assert resp.status_code == 400 and resp.json["message"].startswith("'recipent' is not a valid filter")
    resp = client.simulate_get(f"/v3/{domain['name']}/events/live", params={"recipient": "x@dest.test",
                                                                          "timeout": "0.2"}, headers=basic(api_key))
    assert resp.status_code == 200 and resp.headers["content-type"].startswith("text/event-stream")
