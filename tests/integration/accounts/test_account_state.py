"""Account state on real Postgres, Redis and SMTP: a suspended account cannot send (API 403, SMTP 550
5.7.1) and stores nothing, at once in every process; reinstated, it sends again; a closed account's
keys, logins and users stop working; each change is in the audit log."""

from __future__ import annotations

import dataclasses
import smtplib
import uuid

import pytest
from falcon import testing

from envoi.accounts.errors import AccountClosed, InvalidInput, NotFound
from envoi.accounts.service import Accounts
from envoi.api.app import create_app
from envoi.infra import redis as redis_infra
from tests.conftest import basic
from tests.support.api import accepted, send_form
from tests.support.submission import messages_of, mime, starttls_client

pytestmark = pytest.mark.usefixtures("clean_throttle")
PASSWORD = "correct horse battery"


def _other_process(services) -> Accounts:
    """Another process's Accounts: its own caches, the same Postgres and Redis generation."""
    generation = redis_infra.Generation(services.redis, f"envoi:{services.settings.region}:keys:revoked")
    return Accounts(services.db, services.sealer, services.settings.region, key_revocations=generation,
                    audit=services.audit)


@pytest.fixture
def queued_cleanup(db, domain):
    yield
    db.execute("UPDATE recipients SET status = 'failed' WHERE domain_id = %s AND status = 'queued'", (domain["id"],))


def test_suspended_account_cannot_send_over_the_api_and_nothing_is_stored(client, services, account, domain,
                                                                           api_key, db, queued_cleanup):
    services.accounts.suspend(account["id"], "unpaid invoice 2026-11", actor="operator:1", ip="192.0.2.5")
    resp = send_form(client, api_key, domain)
    assert resp.status_code == 403
    assert resp.json == {"message": f"Domain {domain['name']} is not allowed to send: the account is suspended;"
                                    " its users can see why in the dashboard"}
    resp = client.simulate_post(f"/v3/{domain['name']}/messages.mime", headers=basic(api_key),
                                params={"to": "rcpt@dest.test", "message": mime(domain).decode()})
    assert resp.status_code == 403
    assert messages_of(db, domain) == []
    # the key still reads (its users and tools can see what is going on)
    assert client.simulate_get("/v4/domains", headers=basic(api_key)).status_code == 200

    services.accounts.reinstate(account["id"], actor="operator:1")
    sent = accepted(send_form(client, api_key, domain))
    assert [m["message_id"] for m in messages_of(db, domain)] == [sent.message_id]

    rows = db.execute("SELECT actor, action, ip, details FROM audit_log WHERE account_id = %s"
                      " AND action LIKE 'account.%%' ORDER BY id", (account["id"],)).fetchall()
    assert [(r["actor"], r["action"]) for r in rows] == [("operator:1", "account.suspended"),
                                                          ("operator:1", "account.reinstated")]
    assert rows[0]["details"] == {"from": "active", "to": "suspended", "reason": "unpaid invoice 2026-11"}
    assert str(rows[0]["ip"]) == "192.0.2.5"


def test_suspension_reaches_another_process_with_a_warm_cache_at_once(services, account, domain, api_key, db,
                                                                    queued_cleanup):
    other = _other_process(services)
    other_api = testing.TestClient(create_app(services.settings, dataclasses.replace(services, accounts=other)))
    accepted(send_form(other_api, api_key, domain))  # warms the other process's key cache
    assert other.authenticate_key(api_key).account_state == "active"

    services.accounts.suspend(account["id"], "abuse report", actor="cli")  # in "this" process
    resp = send_form(other_api, api_key, domain)
    assert resp.status_code == 403, resp.text
    assert len(messages_of(db, domain)) == 1
    assert other.account_state(account["id"]) == "suspended"

    services.accounts.reinstate(account["id"])
    accepted(send_form(other_api, api_key, domain))
    assert len(messages_of(db, domain)) == 2


def test_suspended_account_is_refused_even_in_a_session_opened_before(server, client_ctx, login, services,
                                                                      account, domain, db):
    with starttls_client(server, client_ctx, login) as c:  # authenticated while active
        services.accounts.suspend(account["id"], "dunning: card declined")
        # The session learns it when its message is committed (no I/O per MAIL): refused, nothing stored.
        with pytest.raises(smtplib.SMTPDataError) as refused:
            c.sendmail(f"app@{domain['name']}", ["rcpt@dest.test"], mime(domain))
        assert (refused.value.smtp_code, refused.value.smtp_error[:5]) == (550, b"5.7.1")
        assert b"suspended" in refused.value.smtp_error
        code, reply = c.mail(f"app@{domain['name']}")  # the session knows now: refused at MAIL
        assert (code, reply[:5]) == (550, b"5.7.1"), reply
    with starttls_client(server, client_ctx, login) as c:  # a new session: AUTH works, MAIL does not
        with pytest.raises(smtplib.SMTPSenderRefused) as refused:
            c.sendmail(f"app@{domain['name']}", ["rcpt@dest.test"], mime(domain))
        assert refused.value.smtp_code == 550
    assert messages_of(db, domain) == []

    services.accounts.reinstate(account["id"])
    with starttls_client(server, client_ctx, login) as c:
        c.sendmail(f"app@{domain['name']}", ["rcpt@dest.test"], mime(domain))
    assert len(messages_of(db, domain)) == 1


def test_closed_account_keys_logins_and_users_stop_working(client, server, client_ctx, login, services, account,
                                                           domain, api_key, db):
    email = f"u-{uuid.uuid4().hex[:8]}@people.example.test"
    _, token = services.users.invite(account["id"], email, "admin", actor="cli")
    services.users.accept_invitation(token, PASSWORD)
    _, session = services.users.login(email, PASSWORD)
    with starttls_client(server, client_ctx, login) as open_session:
        closed = services.accounts.close(account["id"], actor="user:7", ip="192.0.2.8")
        assert closed["state"] == "closed" and closed["closed_at"] is not None
        with pytest.raises(smtplib.SMTPDataError) as refused:  # a session opened before the closing
            open_session.sendmail(f"app@{domain['name']}", ["rcpt@dest.test"], mime(domain))
        assert (refused.value.smtp_code, refused.value.smtp_error) == (550, b"5.7.1 This account is closed")

    assert client.simulate_get("/v4/domains", headers=basic(api_key)).status_code == 401
    assert send_form(client, api_key, domain).status_code == 401
    assert services.accounts.authenticate_key(api_key) is None
    with pytest.raises(smtplib.SMTPAuthenticationError) as refused:
        starttls_client(server, client_ctx, login)
    assert refused.value.smtp_code == 535
    with pytest.raises(AccountClosed):
        services.users.login(email, PASSWORD)
    assert services.sessions.resolve(session) is None  # signed out everywhere
    user_id = db.execute("SELECT id FROM users WHERE email = %s", (email,)).fetchone()["id"]
    assert services.sessions.resolve(services.sessions.start(user_id, ip=None)) is None  # a login racing the close
    assert messages_of(db, domain) == []
    with pytest.raises(InvalidInput):  # final: neither reinstated nor suspended
        services.accounts.reinstate(account["id"])
    with pytest.raises(InvalidInput):
        services.accounts.suspend(account["id"], "too late")
    entry = services.audit.list(account["id"])
    assert [(e["action"], e["actor"]) for e in entry if e["action"].startswith("account.")] == [
        ("account.closed", "user:7")]


def test_suspended_users_still_sign_in_and_see_why(services, account):
    email = f"u-{uuid.uuid4().hex[:8]}@people.example.test"
    _, token = services.users.invite(account["id"], email, "analyst", actor="cli")
    services.users.accept_invitation(token, PASSWORD)
    services.accounts.suspend(account["id"], "  payment   overdue ")
    user, session = services.users.login(email, PASSWORD)
    assert (user["account_state"], user["account_state_reason"]) == ("suspended", "payment overdue")
    assert services.sessions.resolve(session)["user_id"] == user["id"]


def test_list_accounts_shows_state_and_counts(client, services, account, domain, api_key, queued_cleanup):
    accepted(send_form(client, api_key, domain, to="a@dest.test, b@dest.test"))
    services.accounts.suspend(account["id"], "review")
    row = next(r for r in services.accounts.list_accounts("suspended") if r["id"] == account["id"])
    assert (row["state"], row["state_reason"], row["domains"], row["users"], row["accepted_30d"]) == (
        "suspended", "review", 1, 0, 2)
    assert account["id"] not in [r["id"] for r in services.accounts.list_accounts("active")]


def test_bad_state_changes_change_nothing(services, account, db):
    with pytest.raises(InvalidInput):
        services.accounts.suspend(account["id"], "   ")
    with pytest.raises(InvalidInput):
        services.accounts.reinstate(account["id"])  # not suspended
    with pytest.raises(NotFound):
        services.accounts.suspend(2**62, "nobody")
    with pytest.raises(InvalidInput):
        services.accounts.list_accounts("deleted")
    assert services.accounts.get_account(account["id"])["state"] == "active"
    assert db.execute("SELECT count(*) AS n FROM audit_log WHERE account_id = %s AND action LIKE 'account.%%'",
                      (account["id"],)).fetchone()["n"] == 0


def test_cli_suspends_lists_reinstates_and_closes(cli_env, client, services, account, domain, api_key, db):
    from click.testing import CliRunner

    from envoi.cli import main

    assert services.accounts.authenticate_key(api_key).account_state == "active"  # cached in this process
    result = CliRunner().invoke(main, ["accounts", "suspend", str(account["id"]), "--reason", "chargeback"])
    assert result.exit_code == 0, result.output
    assert services.accounts.authenticate_key(api_key).account_state == "suspended"  # the CLI's change reached us
    assert send_form(client, api_key, domain).status_code == 403
    listed = CliRunner().invoke(main, ["accounts", "list", "--state", "suspended"]).output
    assert f"{account['id']}\t{account['name']}\teu\tfree\tsuspended\t1\t0\t0\tchargeback" in listed.splitlines()
    assert CliRunner().invoke(main, ["accounts", "reinstate", str(account["id"])]).exit_code == 0
    later = accepted(send_form(client, api_key, domain))
    db.execute("UPDATE recipients SET next_attempt_at = now() + interval '1 hour' WHERE domain_id = %s",
               (domain["id"],))  # waiting, as if scheduled

    result = CliRunner().invoke(main, ["accounts", "close", str(account["id"])])
    assert result.exit_code == 2 and services.accounts.get_account(account["id"])["state"] == "active"
    result = CliRunner().invoke(main, ["accounts", "close", str(account["id"]), "--yes"])
    assert result.exit_code == 0, result.output
    assert '"cancelled_recipients": 1' in result.output
    assert services.accounts.authenticate_key(api_key) is None
    assert db.execute("SELECT r.status, r.last_message FROM recipients r JOIN messages m ON m.id = r.message_pk"
                      " WHERE m.message_id = %s", (later.message_id,)).fetchone() == {
        "status": "failed", "last_message": "cancelled"}
    result = CliRunner().invoke(main, ["accounts", "reinstate", str(account["id"])])
    assert result.exit_code == 1 and f"Error: Account {account['id']} is closed" in result.output
    actions = [e["action"] for e in services.audit.list(account["id"]) if e["action"].startswith("account.")]
    assert actions == ["account.closed", "account.reinstated", "account.suspended"]  # newest first
