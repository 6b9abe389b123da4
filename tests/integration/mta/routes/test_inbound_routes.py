"""Inbound mail over loopback: SMTP into the inbound MX (`envoi inbound`'s listener), the account's
routes, and what their actions did: a form POST at a real HTTP receiver (signed with the account's
key), a forward through the real relay to the sink, a stored message read back through the API."""

from __future__ import annotations

import json
import smtplib
import uuid
from datetime import UTC, datetime, timedelta
from email.message import EmailMessage

import pytest

from envoi import runtime
from envoi.billing.usage import accepted_in_period
from envoi.dev.sink import Sink
from envoi.mta.routes import store as rstore
from envoi.mta.routes.service import Receiving, Routes
from envoi.webhooks.service import Webhooks
from tests.conftest import basic
from tests.support.api import post_form
from tests.support.dns_server import DnsServer
from tests.support.form_receiver import FormReceiver
from tests.support.relay import RelayThread, relay_settings, wait_until
from tests.support.webhook_receiver import mailgun_verify

MAX_BYTES = 200_000
FORWARD_DOMAIN = "forwarded.test"


@pytest.fixture(scope="module")
def allowing(services):
    """Webhooks as with ENVOI_WEBHOOK_ALLOW=127.0.0.0/8: route URLs may be the loopback receiver."""
    return Webhooks(services.settings.replace(webhook_allow=("127.0.0.0/8",)), services.db, services.sealer)


@pytest.fixture(scope="module")
def routes(services, allowing):
    return Routes(services.db, services.sealer, allowing, services.settings.public_url)


@pytest.fixture(scope="module")
def receiving(services, allowing):
    return Receiving(services.db, services.sealer, services.events, services.accounts, services.intake, allowing,
                     public_url=services.settings.public_url, timeout=5, retry_schedule=(0.3,))


@pytest.fixture(scope="module")
def mx(services, receiving):
    with runtime.build_inbound(services, host="127.0.0.1", port=0, receiving=receiving, max_bytes=MAX_BYTES) as s:
        yield s


@pytest.fixture(scope="module")
def web():
    with FormReceiver() as r:
        yield r


def route(routes, account, expression, *actions, priority=0):
    return routes.create(account["id"], priority=str(priority), description="t", expression=expression,
                         actions=list(actions))["route"]


def message(domain_name, to, *, subject="Hello", text="Reply here.\n\nOn Mon, Bob wrote:\n> earlier\n",
            html="<p>Reply here.</p>", attachment=b"PDFDATA", sender="alice@outside.test") -> EmailMessage:
    msg = EmailMessage()
    msg["From"] = f"Alice <{sender}>"
    msg["To"] = to
    msg["Subject"] = subject
    msg["Message-ID"] = f"<{uuid.uuid4().hex}@outside.test>"
    msg.set_content(text)
    msg.add_alternative(html, subtype="html")
    if attachment is not None:
        msg.add_attachment(attachment, maintype="application", subtype="pdf", filename="invoice.pdf")
    return msg


def crlf(msg: EmailMessage) -> bytes:
    return msg.as_bytes(policy=msg.policy.clone(linesep="\r\n"))


def smtp_send(mx, sender, rcpts, msg) -> None:
    with smtplib.SMTP("127.0.0.1", mx.port, timeout=10) as smtp:
        smtp.sendmail(sender, rcpts, crlf(msg))


def test_forward_to_url_posts_mailguns_parsed_form_signed_with_the_accounts_key(services, routes, mx, web, client,
                                                                                   api_key, account, domain):
    route(routes, account, rf'match_recipient("support-(?P<team>[a-z]+)@{domain["name"]}")',
          rf'forward("{web.url("/in/")}\g<team>")')
    to = f"support-billing@{domain['name']}"
    smtp_send(mx, "bounces@outside.test", [to], message(domain["name"], to))

    [post] = web.wait("/in/billing")  # the capture chose the path
    f = post["fields"]
    assert post["content_type"].startswith("multipart/form-data")  # attachments: multipart, as Mailgun
    assert f["recipient"] == to and f["sender"] == "bounces@outside.test"
    assert f["from"] == "Alice <alice@outside.test>" and f["subject"] == "Hello"
    assert f["body-plain"].startswith("Reply here.") and "> earlier" in f["body-plain"]
    assert f["stripped-text"] == "Reply here."  # the quote and its attribution line are gone
    assert f["body-html"].strip() == "<p>Reply here.</p>"
    headers = dict((k.lower(), v) for k, v in json.loads(f["message-headers"]))
    assert headers["subject"] == "Hello" and headers["to"] == to
    assert f["attachment-count"] == "1"
    assert post["files"]["attachment-1"] == ("invoice.pdf", "application/pdf", b"PDFDATA")
    key = services.webhooks.signing_key(account["id"])
    assert mailgun_verify(key, f["timestamp"], f["token"], f["signature"])
    assert len(f["token"]) == 50
    # The log: an accepted event marked routed, for this recipient, in this account only.
    with services.db.transaction() as conn:
        rows = conn.execute("SELECT account_id, data FROM events WHERE recipient = %s", (to,)).fetchall()
    assert [(r["account_id"], r["data"]["event"], r["data"]["flags"]["is-routed"]) for r in rows] == [
        (account["id"], "accepted", True)]
    # Stats count it as Mailgun's accepted.incoming; billing does not count it as the account's sending.
    services.stats.fold()
    stats = client.simulate_get(f"/v3/{domain['name']}/stats/total", params={"event": "accepted"},
                                headers=basic(api_key)).json
    assert sum(s["accepted"]["incoming"] for s in stats["stats"]) == 1
    assert sum(s["accepted"]["outgoing"] for s in stats["stats"]) == 0
    with services.db.transaction() as conn:
        now = datetime.now(UTC)
        assert accepted_in_period(conn, account["id"], now - timedelta(days=1), now + timedelta(days=1)) == 0


def test_a_url_ending_in_mime_gets_body_mime(routes, mx, web, account, domain):
    route(routes, account, f'match_recipient("raw@{domain["name"]}")', f'forward("{web.url("/raw/mime")}")')
    to = f"raw@{domain['name']}"
    msg = message(domain["name"], to, subject="Raw please")
    smtp_send(mx, "a@outside.test", [to], msg)
    [post] = web.wait("/raw/mime")
    f = post["fields"]
    assert post["content_type"] == "application/x-www-form-urlencoded"
    assert "body-plain" not in f and "attachment-count" not in f
    assert "Subject: Raw please" in f["body-mime"] and msg["Message-ID"] in f["body-mime"]
    assert f["recipient"] == to


def test_priority_catch_all_and_stop(routes, mx, web, account, domain):
    d = domain["name"]
    route(routes, account, "catch_all()", f'forward("{web.url("/all")}")', priority=5)
    route(routes, account, f'match_recipient("vip@{d}")', f'forward("{web.url("/vip")}")', "stop()", priority=2)
    route(routes, account, 'match_header("subject", ".*urgent")', f'forward("{web.url("/urgent")}")', priority=1)
    smtp_send(mx, "a@outside.test", [f"vip@{d}"], message(d, f"vip@{d}", subject="so urgent", attachment=None))
    smtp_send(mx, "a@outside.test", [f"anyone@{d}"], message(d, f"anyone@{d}", subject="hi", attachment=None))
    web.wait("/urgent")
    web.wait("/vip")
    [everyone] = web.wait("/all")
    assert everyone["fields"]["recipient"] == f"anyone@{d}"  # vip's stop() kept it from the catch-all
    assert [p["fields"]["recipient"] for p in web.got("/urgent")] == [f"vip@{d}"]  # before vip: it ran too


def test_store_keeps_the_message_retrievable_and_notifies(services, routes, mx, web, client, account, domain,
                                                          api_key):
    d = domain["name"]
    route(routes, account, f'match_recipient("keep@{d}")', f'store(notify="{web.url("/stored")}")')
    smtp_send(mx, "a@outside.test", [f"keep@{d}"], message(d, f"keep@{d}", subject="Keep me"))
    [note] = web.wait("/stored")
    url = note["fields"]["message-url"]
    assert url.startswith(f"{services.settings.public_url}/v3/domains/{d}/messages/")
    assert json.loads(note["fields"]["attachments"])[0]["name"] == "invoice.pdf"

    path = url[len(services.settings.public_url):]
    got = client.simulate_get(path, headers=basic(api_key))
    assert got.status_code == 200, got.text
    assert got.json["subject"] == "Keep me" and got.json["recipients"] == f"keep@{d}"
    assert got.json["stripped-text"] == "Reply here."
    assert got.json["attachments"][0]["size"] == len(b"PDFDATA")
    file = client.simulate_get(got.json["attachments"][0]["url"][len(services.settings.public_url):],
                               headers=basic(api_key))
    assert file.status_code == 200 and file.content == b"PDFDATA"
    assert file.headers["content-disposition"] == 'attachment; filename="invoice.pdf"'
    mime = client.simulate_get(path, headers={**basic(api_key), "Accept": "message/rfc2822"})
    assert "Subject: Keep me" in mime.json["body-mime"]
    # Another account's key sees nothing of it.
    other = services.accounts.create_account(f"other-{uuid.uuid4().hex[:6]}")
    _, other_key = services.accounts.create_key(other["id"], "admin")
    assert client.simulate_get(path, headers=basic(other_key)).status_code == 404
    with services.db.transaction() as conn:
        stored = conn.execute("SELECT data FROM events WHERE recipient = %s AND event = 'stored'",
                              (f"keep@{d}",)).fetchone()
    assert stored["data"]["storage"]["url"] == url
    logged = client.simulate_get(f"/v3/{d}/events", params={"event": "stored"}, headers=basic(api_key)).json
    assert [(e["recipient"], e["storage"]["url"]) for e in logged["items"]] == [(f"keep@{d}", url)]


def test_retries_until_2xx_and_406_stops(services, routes, mx, web, account, domain):
    d = domain["name"]
    web.script["/flaky"] = [500, 200]
    web.script["/no"] = [406]
    route(routes, account, f'match_recipient("flaky@{d}")', f'forward("{web.url("/flaky")}")')
    route(routes, account, f'match_recipient("no@{d}")', f'forward("{web.url("/no")}")')
    smtp_send(mx, "a@outside.test", [f"flaky@{d}", f"no@{d}"], message(d, f"flaky@{d}", attachment=None))
    assert [p["status"] for p in web.wait("/flaky", 2)] == [500, 200]
    web.wait("/no")

    def posts():
        with services.db.transaction() as conn:
            rows = conn.execute("SELECT p.target, p.status, p.attempts FROM inbound_posts p JOIN inbound_messages m"
                                " ON m.id = p.message_id WHERE m.domain_id = %s ORDER BY p.target",
                                (domain["id"],)).fetchall()
        return [(r["target"].rsplit("/", 1)[1], r["status"], r["attempts"]) for r in rows]

    wait_until(lambda: posts() == [("flaky", "delivered", 2), ("no", "rejected", 1)], 10)
    assert len(web.got("/no")) == 1  # 406: never again


def test_refusals_unknown_domain_unrouted_address_and_oversize(routes, mx, account, domain):
    d = domain["name"]
    route(routes, account, f'match_recipient("only@{d}")', 'forward("http://127.0.0.1:9/x")')
    with smtplib.SMTP("127.0.0.1", mx.port, timeout=10) as smtp:
        smtp.ehlo()
        smtp.mail("a@outside.test")
        code, text = smtp.rcpt("victim@gmail.example")  # not one of ours: no open relay
        assert (code, text[:5]) == (550, b"5.7.1")
        code, text = smtp.rcpt(f"nobody@{d}")  # ours, but no route takes it
        assert (code, text[:5]) == (550, b"5.1.1")
        assert smtp.rcpt(f"only@{d}")[0] == 250
        code, _ = smtp.data(crlf(message(d, f"only@{d}", attachment=b"x" * (MAX_BYTES + 1000))))
        assert code == 552
    with routes.db.transaction() as conn:
        assert conn.execute("SELECT count(*) AS n FROM inbound_messages WHERE domain_id = %s",
                            (domain["id"],)).fetchone()["n"] == 0


def test_a_forward_url_to_a_private_address_is_refused(services, client, api_key, routes, web, account, domain):
    # At save: the API (no ENVOI_WEBHOOK_ALLOW) refuses a loopback URL, and saves nothing.
    r = post_form(client, "/v3/routes", api_key, {"expression": "catch_all()",
                                                  "action": f'forward("{web.url("/ssrf")}")'})
    assert r.status_code == 400 and "private or reserved" in r.json["message"]
    assert services.routes.list(account["id"], None, None)["total_count"] == 0
    # At post: a URL that passed once but now points inside (DNS changed) is refused at the dial too.
    strict = Receiving(services.db, services.sealer, services.events, services.accounts, services.intake,
                       services.webhooks, public_url=services.settings.public_url, retry_schedule=(3600,))
    with services.db.transaction() as conn:
        rstore.insert_route(conn, "f" * 24, account["id"], 0, "", "catch_all()", [f'forward("{web.url("/ssrf")}")'])
    to = f"x@{domain['name']}"
    received = strict.receive("a@outside.test", [to], crlf(message(domain["name"], to)))
    assert strict.post_due(only=received.message_ids) == 1
    with services.db.transaction() as conn:
        post = conn.execute("SELECT status, last_error FROM inbound_posts WHERE message_id = %s",
                            (received.message_ids[0],)).fetchone()
    assert post["status"] == "pending" and post["last_error"].startswith("refused")
    assert web.got("/ssrf") == []


@pytest.fixture(scope="module")
def relay(services, settings):
    with Sink() as sink, DnsServer() as dns:
        dns.add(FORWARD_DOMAIN, "MX", f"10 mx.{FORWARD_DOMAIN}.")
        dns.add(f"mx.{FORWARD_DOMAIN}", "A", "127.0.0.1")
        with RelayThread(services, relay_settings(settings, sink, dns)):
            yield sink


def test_forward_to_an_address_is_sent_as_the_accounts_mail(services, routes, mx, relay, account, domain):
    d = domain["name"]
    target = f"desk-{uuid.uuid4().hex[:6]}@{FORWARD_DOMAIN}"
    route(routes, account, f'match_recipient("help@{d}")', f'forward("{target}")')
    smtp_send(mx, "a@outside.test", [f"help@{d}"], message(d, f"help@{d}", subject="Forward me"))
    [got] = wait_until(lambda: relay.messages(to=target), 20)
    assert "Subject: Forward me" in got["data"] and f"X-Envoi-Forwarded: help@{d}" in got["data"]
    assert "From: Alice <alice@outside.test>" in got["data"]  # the original author, as Mailgun keeps it
    assert got["mail_from"].endswith(f"@{d}")  # the envelope is the receiving domain's, never the outsider's
    with services.db.transaction() as conn:  # counted as the account's own sending
        sent = conn.execute("SELECT count(*) AS n FROM messages WHERE account_id = %s", (account["id"],)).fetchone()
    assert sent["n"] == 1


def test_kept_messages_expire_and_a_forwarding_loop_is_cut(services, routes, client, api_key, account, domain):
    d = domain["name"]
    route(routes, account, "catch_all()", "store()")
    brief = Receiving(services.db, services.sealer, services.events, services.accounts, services.intake,
                      services.webhooks, public_url=services.settings.public_url, keep_seconds=0)
    [pk] = brief.receive("a@outside.test", [f"kept@{d}"], crlf(message(d, f"kept@{d}"))).message_ids
    with services.db.transaction() as conn:
        key = conn.execute("SELECT storage_key FROM inbound_messages WHERE id = %s", (pk,)).fetchone()["storage_key"]
    assert services.routes.purge_expired() >= 1
    assert client.simulate_get(f"/v3/domains/{d}/messages/{key}", headers=basic(api_key)).status_code == 404
    with services.db.transaction() as conn:
        assert conn.execute("SELECT count(*) AS n FROM inbound_messages WHERE id = %s", (pk,)).fetchone()["n"] == 0
    # A message that has been forwarded five times already is not routed again.
    looped = b"".join(f"X-Envoi-Forwarded: hop{n}@{d}\r\n".encode() for n in range(5)) + crlf(message(d, f"l@{d}"))
    received = brief.receive("a@outside.test", [f"l@{d}"], looped)
    assert received.routed == [] and received.dropped == [f"l@{d}"]


def test_a_refused_forward_to_an_address_is_final_and_recorded(services, routes, account):
    # An unverified domain sends only to the account's authorised recipients: the forward is refused.
    sandbox = services.accounts.add_domain(account["id"], f"{uuid.uuid4().hex[:8]}.example.test", dkim_key_size=1024)
    route(routes, account, "catch_all()", 'forward("stranger@elsewhere.test")')
    receiving = Receiving(services.db, services.sealer, services.events, services.accounts, services.intake,
                          services.webhooks, public_url=services.settings.public_url)
    to = f"in@{sandbox['name']}"
    [pk] = receiving.receive("a@outside.test", [to], crlf(message(sandbox["name"], to))).message_ids
    with services.db.transaction() as conn:
        [row] = conn.execute("SELECT kind, target, status FROM inbound_posts WHERE message_id = %s", (pk,)).fetchall()
    assert (row["kind"], row["target"], row["status"]) == ("mail", "stranger@elsewhere.test", "pending")
    # Posted here, or already by the poster of an inbound listener another test left running on this
    # database: either way exactly one attempt, refused, and final.
    assert receiving.post_due(only=[pk]) in (0, 1)
    with services.db.transaction() as conn:
        row = conn.execute("SELECT status, attempts, last_error FROM inbound_posts WHERE message_id = %s",
                           (pk,)).fetchone()
        sent = conn.execute("SELECT count(*) AS n FROM messages WHERE domain_id = %s", (sandbox["id"],)).fetchone()
    assert (row["status"], row["attempts"]) == ("failed", 1) and row["last_error"]
    assert sent["n"] == 0
