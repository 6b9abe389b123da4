"""Sending needs proof of control of the domain (issue 11, defect 4).

Real parts: the HTTP API in process, SMTP submission on TLS listeners, the test DNS server that the
verification looks records up on, the relay delivering to the dev sink.
"""

from __future__ import annotations

import smtplib
import uuid
from urllib.parse import quote, urlencode

import pytest

from envoi.mta.submission.server import Submission, SubmissionServer
from tests.conftest import basic
from tests.support.api import send_form, send_mime
from tests.support.dns_server import DnsServer
from tests.support.relay import RelayThread, relay_settings, wait_until
from tests.support.tls import loopback_contexts

PASSWORD = "test-pass-123"
REFUSED = ("is not allowed to send: Unverified domains are for test purposes only. Please verify the domain"
           " or add the address to authorized recipients in Account Settings.")


@pytest.fixture
def dns():
    with DnsServer() as server:
        for rcpt_domain in ("inbox.test", "dest.test"):
            server.add(rcpt_domain, "MX", f"10 mx.{rcpt_domain}.")
            server.add(f"mx.{rcpt_domain}", "A", "127.0.0.1")
        yield server


@pytest.fixture
def api_settings(settings, dns):
    """The shared `client` resolves DKIM/SPF records against this module's DNS server."""
    return settings.replace(dns_resolver=("127.0.0.1", dns.port))


@pytest.fixture
def relay(services, settings, sink, dns):
    with RelayThread(services, relay_settings(settings, sink, dns)) as thread:
        yield thread


@pytest.fixture(scope="module")
def smtp(services, settings):
    ctx, client_ctx = loopback_contexts()
    submission = Submission.from_settings(settings, services.intake, services.accounts, services.redis,
                                          auth_failure_delay=0, workers=2)
    with SubmissionServer(submission, ctx, smtps_port=None) as srv:
        yield srv, client_ctx
    submission.close()


def new_account(services) -> tuple[dict, str]:
    account = services.accounts.create_account(f"acct-{uuid.uuid4().hex[:6]}")
    _, key = services.accounts.create_key(account["id"], "admin")
    return account, key


def form(client, method, url, key, params=None):
    headers = {"Content-Type": "application/x-www-form-urlencoded", **basic(key)}
    return client.simulate_request(method, url, body=urlencode(params or {}, doseq=True), headers=headers)


def stored(db, name) -> int:
    return db.execute("SELECT count(*) AS n FROM messages m JOIN domains d ON d.id = m.domain_id WHERE d.name = %s",
                      (name,)).fetchone()["n"]


def smtp_send(smtp, login, to, sender) -> tuple[int, bytes]:
    srv, client_ctx = smtp
    with smtplib.SMTP("127.0.0.1", srv.port, timeout=10) as c:
        c.starttls(context=client_ctx)
        c.login(login, PASSWORD)
        c.mail(login)
        c.rcpt(to)
        return c.data(f"From: {sender}\r\nTo: {to}\r\nSubject: smtp\r\n\r\nbody\r\n".encode())


def publish(dns, row: dict, spf: str = "v=spf1 include:spf.eu.envoi.test ~all") -> None:
    dns.add(row["name"], "TXT", spf)
    dns.add(f"{row['dkim_selector']}._domainkey.{row['name']}", "TXT", f"v=DKIM1; k=rsa; p={row['dkim_public_key']}")


def valid_of(resp) -> dict:
    return {(r["record_type"], r["name"]): r["valid"] for r in resp.json["sending_dns_records"]}


def test_an_unverified_domain_sends_only_to_authorized_recipients(client, services, db, dns, sink, relay, smtp):
    account, key = new_account(services)
    resp = form(client, "POST", "/v4/domains", key, {"name": "gmail.com", "dkim_key_size": "1024"})
    assert resp.status_code == 200, resp.text
    assert resp.json["domain"]["state"] == "unverified"

    resp = send_form(client, key, "gmail.com", to="stranger@dest.test", **{"from": "Security <security@gmail.com>"})
    assert resp.status_code == 403
    assert resp.json == {"message": f"Domain gmail.com {REFUSED}"}
    assert stored(db, "gmail.com") == 0

    # Mailgun's account-level list of test recipients
    resp = form(client, "POST", "/v5/sandbox/auth_recipients?email=Me%40Inbox.test", key)
    assert resp.status_code == 200, resp.text
    assert resp.json == {"recipient": {"email": "me@inbox.test", "activated": True}}
    resp = client.simulate_get("/v5/sandbox/auth_recipients", headers=basic(key))
    assert resp.json == {"recipients": [{"email": "me@inbox.test", "activated": True}]}

    # one stranger among the recipients refuses the whole message
    assert send_form(client, key, "gmail.com", to=["me@inbox.test", "stranger@dest.test"]).status_code == 403
    assert stored(db, "gmail.com") == 0
    resp = send_form(client, key, "gmail.com", to="Me <me@inbox.test>")
    assert resp.status_code == 200, resp.text

    # the same rule over SMTP
    services.accounts.create_credential(account["id"], "gmail.com", "app", PASSWORD)
    code, reply = smtp_send(smtp, "app@gmail.com", "stranger@dest.test", "app@gmail.com")
    assert code == 550 and reply.decode() == f"5.7.1 Domain gmail.com {REFUSED}"
    code, _ = smtp_send(smtp, "app@gmail.com", "me@inbox.test", "app@gmail.com")
    assert code == 250
    assert stored(db, "gmail.com") == 2

    wait_until(lambda: len(sink.messages(to="me@inbox.test")) == 2)
    from_gmail = [m for m in sink.messages() if m["mail_from"].endswith("@gmail.com")]
    assert len(from_gmail) == 2 and all(m["rcpt_tos"] == ["me@inbox.test"] for m in from_gmail)

    # at most 5, like Mailgun; removing one takes effect at once
    for n in range(4):
        assert form(client, "POST", "/v5/sandbox/auth_recipients", key, {"email": f"t{n}@inbox.test"}).status_code == 200
    resp = form(client, "POST", "/v5/sandbox/auth_recipients", key, {"email": "sixth@inbox.test"})
    assert resp.status_code == 400 and "at most 5" in resp.json["message"]
    assert client.simulate_delete(f"/v5/sandbox/auth_recipients/{quote('me@inbox.test')}",
                                  headers=basic(key)).status_code == 200
    assert send_form(client, key, "gmail.com", to="me@inbox.test").status_code == 403


def test_verification_finds_the_records_in_dns_and_the_domain_then_sends(client, services, db, dns, sink, relay):
    _, key = new_account(services)
    name = f"{uuid.uuid4().hex[:8]}.verify.test"
    assert form(client, "POST", "/v4/domains", key, {"name": name, "dkim_key_size": "1024"}).status_code == 200
    row = services.accounts.get_domain(name)

    # nothing published: invalid, still unverified, still refused
    resp = form(client, "PUT", f"/v4/domains/{name}/verify", key)
    assert resp.status_code == 200, resp.text
    assert resp.json["domain"]["state"] == "unverified"
    assert valid_of(resp)[("TXT", name)] == "invalid"
    assert valid_of(resp)[("TXT", f"envoi._domainkey.{name}")] == "invalid"
    assert send_form(client, key, name, to="someone@dest.test").status_code == 403

    # a DNS server that fails: unknown, not invalid, and nothing changes
    dns.servfail(name)
    dns.servfail(f"envoi._domainkey.{name}")
    resp = form(client, "PUT", f"/v3/domains/{name}/verify", key)
    assert valid_of(resp)[("TXT", name)] == "unknown" and resp.json["domain"]["state"] == "unverified"
    dns.clear()
    for rcpt_domain in ("dest.test",):
        dns.add(rcpt_domain, "MX", f"10 mx.{rcpt_domain}.")
        dns.add(f"mx.{rcpt_domain}", "A", "127.0.0.1")

    # another key in the zone is not this row's proof
    other = services.accounts.add_domain(services.accounts.create_account("x")["id"], f"o{name}", dkim_key_size=1024)
    dns.add(f"envoi._domainkey.{name}", "TXT", f"v=DKIM1; k=rsa; p={other['dkim_public_key']}")
    dns.add(name, "TXT", "v=spf1 include:spf.eu.envoi.test ~all")
    resp = form(client, "PUT", f"/v4/domains/{name}/verify", key)
    assert valid_of(resp)[("TXT", f"envoi._domainkey.{name}")] == "invalid"
    assert resp.json["domain"]["state"] == "unverified"

    dns.clear()
    for rcpt_domain in ("dest.test",):
        dns.add(rcpt_domain, "MX", f"10 mx.{rcpt_domain}.")
        dns.add(f"mx.{rcpt_domain}", "A", "127.0.0.1")
    publish(dns, row, spf="v=spf1 ip4:192.0.2.1 include:spf.eu.envoi.test ~all")  # the customer's own SPF, ours in it
    resp = form(client, "PUT", f"/v3/domains/{name}/verify", key)
    assert resp.status_code == 200, resp.text
    assert resp.json["message"] == "Domain DNS records have been updated"
    assert resp.json["domain"]["state"] == "active" and not resp.json["domain"]["is_disabled"]
    assert valid_of(resp)[("TXT", name)] == "valid"
    assert valid_of(resp)[("TXT", f"envoi._domainkey.{name}")] == "valid"
    assert client.simulate_get("/v4/domains", params={"state": "active"},
                               headers=basic(key)).json["items"][0]["name"] == name

    stranger = f"someone-{uuid.uuid4().hex[:6]}@dest.test"
    resp = send_form(client, key, name, to=stranger)
    assert resp.status_code == 200, resp.text
    [received] = wait_until(lambda: sink.messages(to=stranger))
    assert f"d={name}" in received["data"]


def test_a_verified_owner_claims_a_name_held_unverified_by_another_account(client, services, db, dns):
    squatter, squatter_key = new_account(services)
    owner, owner_key = new_account(services)
    name = f"{uuid.uuid4().hex[:8]}.claim.test"
    assert form(client, "POST", "/v4/domains", squatter_key, {"name": name, "dkim_key_size": "1024"}).status_code == 200
    services.accounts.create_credential(squatter["id"], name, "postmaster", PASSWORD)
    form(client, "POST", "/v5/sandbox/auth_recipients", squatter_key, {"email": "friend@inbox.test"})
    assert send_form(client, squatter_key, name, to="friend@inbox.test").status_code == 200

    # the squatter's unverified row does not keep the owner out
    resp = form(client, "POST", "/v4/domains", owner_key, {"name": name, "dkim_key_size": "1024"})
    assert resp.status_code == 200, resp.text
    owner_row = services.accounts.get_domain(name, owner["id"])
    squatter_row = services.accounts.get_domain(name, squatter["id"])
    assert owner_row["id"] != squatter_row["id"]

    # the squatter cannot verify with the owner's zone; the owner can
    publish(dns, owner_row)
    resp = form(client, "PUT", f"/v4/domains/{name}/verify", squatter_key)
    assert resp.json["domain"]["state"] == "unverified"
    resp = form(client, "PUT", f"/v4/domains/{name}/verify", owner_key)
    assert resp.json["domain"]["state"] == "active"

    # released: the squatter's row is disabled, its login gone, its sends refused
    assert services.accounts.get_domain(name, squatter["id"])["state"] == "disabled"
    assert services.accounts.authenticate_smtp(f"postmaster@{name}", PASSWORD) is None
    resp = send_form(client, squatter_key, name, to="friend@inbox.test")
    assert resp.status_code == 403 and "disabled" in resp.json["message"]
    # the owner sends to anyone and may now take the postmaster login
    assert send_form(client, owner_key, name, to="anyone@dest.test").status_code == 200
    services.accounts.create_credential(owner["id"], name, "postmaster", PASSWORD)
    # a verified name is taken
    _, third_key = new_account(services)
    resp = form(client, "POST", "/v4/domains", third_key, {"name": name})
    assert resp.status_code == 400 and resp.json["message"] == f"Domain {name} already exists"
    db.execute("UPDATE recipients SET status = 'failed' WHERE domain_id = ANY(%s) AND status = 'queued'",
               ([owner_row["id"], squatter_row["id"]],))


def test_a_foreign_from_is_refused_alike_over_http_and_smtp(client, services, account, domain, api_key, db, smtp):
    name = domain["name"]
    expected = f"From address ceo@bank.test is not allowed for the domain {name}"
    resp = send_form(client, api_key, name, to="someone@dest.test", **{"from": "CEO <ceo@bank.test>"})
    assert resp.status_code == 403 and resp.json == {"message": expected}
    # a From listing the own domain first and a foreign one after is refused too
    resp = send_form(client, api_key, name, to="someone@dest.test", **{"from": f"me@{name}, ceo@bank.test"})
    assert resp.status_code == 403 and resp.json == {"message": expected}
    mime = "From: ceo@bank.test\r\nTo: someone@dest.test\r\nSubject: x\r\n\r\nbody\r\n"
    resp = send_mime(client, api_key, name, mime, to="someone@dest.test")
    assert resp.status_code == 403 and resp.json == {"message": expected}
    assert stored(db, name) == 0

    services.accounts.create_credential(account["id"], name, "app", PASSWORD)
    code, reply = smtp_send(smtp, f"app@{name}", "someone@dest.test", "CEO <ceo@bank.test>")
    assert code == 550 and reply.decode() == f"5.7.1 {expected}"
    assert stored(db, name) == 0

    # the domain's subdomains are its own
    assert send_form(client, api_key, name, to="someone@dest.test", **{"from": f"News <news@mail.{name}>"}).status_code == 200
    code, _ = smtp_send(smtp, f"app@{name}", "someone@dest.test", f"news@mail.{name}")
    assert code == 250
    db.execute("UPDATE recipients SET status = 'failed' WHERE domain_id = %s AND status = 'queued'", (domain["id"],))
