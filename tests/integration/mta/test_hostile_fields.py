"""Hostile or odd send fields over the API and SMTP against real Postgres: refused with a clear 400 or
5xx and nothing stored, never a 500 or a temporary failure; recipient-variables cannot add a header."""

from __future__ import annotations

import email
import email.policy
import json

import pytest

from tests.support.api import send_form, stored_mime
from tests.support.submission import messages_of, mime, starttls_client, stored

# The TLS submission server and its login come from tests/support/submission.py (one server per module).
pytestmark = pytest.mark.usefixtures("clean_throttle")

INJECTIONS = ["x\r\nBcc: spy@evil.test", "x\r\nFrom: ceo@bank.test", "x\r\n\r\nA replaced body", "x\nBcc: spy@evil.test"]


def nothing_stored(db, domain) -> bool:
    return not db.execute("SELECT 1 FROM messages WHERE domain_id = %s UNION ALL "
                          "SELECT 1 FROM events WHERE domain_id = %s", (domain["id"], domain["id"])).fetchall()


@pytest.mark.parametrize("value", INJECTIONS)
@pytest.mark.parametrize("field", ["subject", "h:X-Foo"])
def test_recipient_variable_with_crlf_in_a_header_is_refused_and_nothing_stored(client, api_key, domain, db,
                                                                               field, value):
    variables = json.dumps({"r@x.test": {"v": value}, "ok@x.test": {"v": "fine"}})
    resp = send_form(client, api_key, domain, to=["r@x.test", "ok@x.test"], **{field: "Hi %recipient.v%",
                "recipient-variables": variables})
    assert resp.status_code == 400, resp.text
    assert "contains a control character" in resp.json["message"] and set(resp.json) == {"message"}
    assert nothing_stored(db, domain)


def test_body_substitution_keeps_newlines(client, api_key, domain, db, services):
    variables = json.dumps({"r@x.test": {"addr": "1 Main St\nSpringfield\r\nUSA", "name": "Ann"}})
    resp = send_form(client, api_key, domain, to="r@x.test", subject="For %recipient.name%",
                     text="Ship to:\n%recipient.addr%\n",
                     html="<p>%recipient.addr%</p>", **{"recipient-variables": variables})
    assert resp.status_code == 200, resp.text
    msg = stored_mime(services, db, resp.json["id"].strip("<>"))
    assert msg["Subject"] == "For Ann" and msg["Bcc"] is None
    assert msg.get_body(("plain",)).get_content().splitlines() == ["Ship to:", "1 Main St", "Springfield", "USA"]


@pytest.mark.parametrize(("fields", "message"), [
    ({"v:x": "a\x00b"}, "'v:x' contains a NUL character"),
    ({"v:x": '{"a": "\\u0000"}'}, "v:x contains a NUL character"),
    ({"v:x": '{"a": "\\ud800"}'}, "invalid Unicode"),
    ({"v:x": "[" * 100_000}, "nested too deeply"),
    ({"v:x": "[" * 50 + "]" * 50}, "nested too deeply"),
    ({"text": "a\x00b"}, "'text' contains a NUL character"),
    ({"html": "<p>a\x00b</p>"}, "'html' contains a NUL character"),
    ({"subject": "a\x00b"}, "'subject' contains a NUL character"),
    ({"from": "Ann\x00 <s@{d}>"}, "'from' contains a NUL character"),
    ({"o:tag": "t\x00"}, "'o:tag' contains a NUL character"),
    ({"recipient-variables": '{"r@x.test": {"n": "\\ud800"}}', "subject": "%recipient.n%"}, "invalid Unicode"),
    ({"recipient-variables": '{"r@x.test": {"n": "\\u0000"}}', "text": "%recipient.n%"}, "NUL character"),
    ({"recipient-variables": '{"r@x.test": ' + "[" * 100_000 + "}"}, "nested too deeply"),
    ({"recipient-variables": '{"r@x.test": 5}'}, "the value for 'r@x.test' must be an object"),
    ({"recipient-variables": '{"r@x.test": ["a"]}'}, "the value for 'r@x.test' must be an object"),
    ({"recipient-variables": '{"r@x.test": {"n": NaN}}'}, "is not a valid JSON"),
    ({"o:deliverytime": "nan"}, "is not a valid RFC 2822 date"),
    ({"subject": "a" * 100_000}, "subject is too long (100000 characters; at most 998)"),
    ({"recipient-variables": '{"r@x.test": {"s": "' + "a" * 1000 + '"}}', "subject": "%recipient.s%"},
     "subject is too long"),
    ({"h:X-Big": "word " * 8000}, "the X-Big header is too long"),
    ({"h:" + "X" * 2000: "v"}, "is not valid"),
])
def test_fuzzed_fields_get_a_clear_400_and_store_nothing(client, api_key, domain, db, fields, message):
    fields = {k: v.replace("{d}", domain["name"]) for k, v in fields.items()}
    resp = send_form(client, api_key, domain, to="r@x.test", **fields)
    assert resp.status_code == 400, resp.text
    assert message in resp.json["message"]
    assert nothing_stored(db, domain)


def test_long_header_is_folded_within_the_line_limit_and_intact(client, api_key, domain, db, services):
    long_words, long_token = "word " * 1000, "t" * 3000
    resp = send_form(client, api_key, domain, **{"h:X-Words": long_words, "h:X-Token": long_token,
                                            "subject": "é" * 998})
    assert resp.status_code == 200, resp.text
    row = db.execute("SELECT body, storage_key FROM messages WHERE message_id = %s",
                     (resp.json["id"].strip("<>"),)).fetchone()
    raw = services.sealer.open(row["body"], row["storage_key"].encode())
    assert max(len(line) for line in raw.split(b"\r\n")) <= 998
    msg = email.message_from_bytes(raw, policy=email.policy.default)
    assert msg["X-Words"] == long_words and msg["X-Token"] == long_token and msg["Subject"] == "é" * 998


# --- SMTP submission: the same substitution ---------------------------------------------------------

RV = {"r@dest.test": {"a": True, "b": None, "c": 1.5, "d": {"k": [1, "x"]}, "addr": "1 Main St\nSpringfield"}}
TEMPLATE = "%recipient.a% %recipient.b% %recipient.c% %recipient.d%"


def test_values_render_the_same_over_the_api_and_smtp(server, client_ctx, login, client, api_key, domain, db,
                                                       services):
    resp = send_form(client, api_key, domain, to="r@dest.test", subject=TEMPLATE,
                **{"recipient-variables": json.dumps(RV)})
    assert resp.status_code == 200, resp.text
    api_subject = stored_mime(services, db, resp.json["id"].strip("<>"))["Subject"]
    extra = f"X-Mailgun-Recipient-Variables: {json.dumps(RV)}\r\n"
    with starttls_client(server, client_ctx, login) as c:
        c.sendmail(login, ["r@dest.test"], mime(domain, subject=TEMPLATE, extra=extra,
                                                body="Ship to:\r\n%recipient.addr%\r\n"))
    smtp_row = [r for r in messages_of(db, domain) if r["method"] == "smtp"][0]
    smtp_msg = email.message_from_bytes(stored(services, smtp_row), policy=email.policy.default)
    assert api_subject == smtp_msg["Subject"] == 'true null 1.5 {"k":[1,"x"]}'
    assert smtp_msg.get_content().splitlines() == ["Ship to:", "1 Main St", "Springfield"]


@pytest.mark.parametrize("value", INJECTIONS)
def test_smtp_recipient_variable_with_crlf_in_a_header_is_refused(server, client_ctx, login, domain, db, value):
    extra = f"X-Mailgun-Recipient-Variables: {json.dumps({'r@dest.test': {'v': value}})}\r\n"
    with starttls_client(server, client_ctx, login) as c:
        c.mail(login)
        c.rcpt("r@dest.test")
        code, reply = c.data(mime(domain, subject="Hi %recipient.v%", extra=extra, to="r@dest.test"))
    assert code == 550 and reply.startswith(b"5.6.0") and b"control character" in reply
    assert messages_of(db, domain) == []


@pytest.mark.parametrize(("extra", "reply"), [
    ('X-Mailgun-Variables: {"a": "\\u0000"}\r\n', b"NUL character"),
    ('X-Mailgun-Variables: {"a": ' + "[" * 60 + "]" * 60 + "}\r\n", b"nested too deeply"),
    ('X-Mailgun-Recipient-Variables: {"r@dest.test": {"v": "\\ud800"}}\r\n', b"invalid Unicode"),
    ('X-Mailgun-Recipient-Variables: {"r@dest.test": 5}\r\n', b"must be an object"),
])
def test_smtp_unstorable_option_json_is_refused_not_a_temporary_failure(server, client_ctx, login, domain, db,
                                                                         extra, reply):
    with starttls_client(server, client_ctx, login) as c:
        c.mail(login)
        c.rcpt("r@dest.test")
        code, text = c.data(mime(domain, extra=extra, to="r@dest.test"))
    assert code == 550 and text.startswith(b"5.6.0") and reply in text, text
    assert messages_of(db, domain) == []


def test_smtp_subject_with_an_encoded_nul_is_accepted_and_its_metadata_kept_storable(server, client_ctx, login,
                                                                                    domain, db):
    with starttls_client(server, client_ctx, login) as c:
        c.sendmail(login, ["r@dest.test"], mime(domain, subject="=?utf-8?q?a=00b?= =?utf-7?b?KzJBQS0=?="))
    [row] = messages_of(db, domain)
    assert row["headers"]["subject"] == "a\ufffdb\ufffd"
