"""My account: every signed-in person (customers and operators); two-factor set-up with a real code,
recovery codes once, turning it off, signing out everywhere; for account admins the data export (no
secrets) and the deletion form (closing stops keys, sessions and waiting mail at once)."""

from __future__ import annotations

import html
import json
import re
import time
from urllib.parse import urlencode

import pytest

from envoi.accounts import totp
from envoi.accounts.errors import InvalidLogin, SecondFactorRequired
from envoi.api.dashboard.gate import SIGNED_IN
from envoi.api.dashboard.pages.account import AccountPage
from envoi.api.dashboard.qr import qr_svg
from tests.support.dashboard import ORIGIN, PASSWORD, operator_of, signed_in, user_of


def secret_on(html: str) -> str:
    return re.search(r'<code id="totp-secret">([A-Z2-7]+)</code>', html).group(1)


def recovery_codes(html: str) -> list[str]:
    block = re.search(r'<ol class="codes" id="recovery-codes">(.*?)</ol>', html, re.S).group(1)
    return re.findall(r"<li>([a-z0-9-]+)</li>", block)


def enable_totp(page) -> tuple[str, list[str]]:
    setup = page.post("/dashboard/account/totp/start")
    assert setup.status_code == 200
    secret = secret_on(setup.text)
    uri = html.unescape(re.search(r'<a href="(otpauth://totp/[^"]+)" id="otpauth-uri">', setup.text).group(1))
    assert f"secret={secret}" in uri
    assert qr_svg(uri, title="QR code for your authenticator app") in setup.text  # the QR holds that link
    done = page.post("/dashboard/account/totp/confirm", {"secret": secret, "code": totp.code(secret)})
    assert done.status_code == 200, done.text
    return secret, recovery_codes(done.text)


def test_the_account_page_is_for_every_signed_in_person_customer_or_operator(client, services, account):
    assert AccountPage.audience == SIGNED_IN
    for role in ("admin", "billing", "analyst"):
        email, password = user_of(services, account, role)
        resp = signed_in(client, services, email, password).get("/dashboard/account")
        assert resp.status_code == 200 and email in resp.text and f"<dd>{role}</dd>" in resp.text
        assert ("Export account data" in resp.text) == (role == "admin")
    operator_email, password = operator_of(services)
    resp = signed_in(client, services, operator_email, password).get("/dashboard/account")
    assert resp.status_code == 200 and operator_email in resp.text and "Export account data" not in resp.text
    assert client.simulate_get("/dashboard/account").status_code == 303  # strangers sign in first


def test_two_factor_with_a_real_code_then_every_login_needs_one_and_recovery_codes_work_once(
        client, services, account, db):
    email, password = user_of(services, account, "analyst")
    page = signed_in(client, services, email, password)
    secret, codes = enable_totp(page)
    assert len(codes) == 10 and len(set(codes)) == 10
    assert secret not in page.get("/dashboard/account").text and codes[0] not in page.get("/dashboard/account").text
    assert "Turn two-factor off" in page.get("/dashboard/account").text
    with pytest.raises(SecondFactorRequired):
        services.users.login(email, password, ip="127.0.0.1")
    services.users.login(email, password, code=codes[0], ip="127.0.0.1")
    with pytest.raises(InvalidLogin):
        services.users.login(email, password, code=codes[0], ip="127.0.0.1")  # used up
    form = urlencode({"email": email, "password": password})
    resp = client.simulate_post("/dashboard/login", body=form, headers={
        "Content-Type": "application/x-www-form-urlencoded", "Origin": ORIGIN})
    assert resp.status_code == 401 and "set-cookie" not in resp.headers and 'name="code"' in resp.text
    assert db.execute("SELECT totp_secret IS NOT NULL AS on FROM users WHERE email = %s", (email,)).fetchone()["on"]
    stored = db.execute("SELECT totp_secret FROM users WHERE email = %s", (email,)).fetchone()["totp_secret"]
    assert secret.encode() not in bytes(stored)  # sealed


def test_a_wrong_code_turns_nothing_on(client, services, account, db):
    email, password = user_of(services, account, "analyst")
    page = signed_in(client, services, email, password)
    secret = secret_on(page.post("/dashboard/account/totp/start").text)
    resp = page.post("/dashboard/account/totp/confirm", {"secret": secret, "code": "000000"
                     if totp.code(secret) != "000000" else "111111"})
    assert resp.status_code == 400 and "does not match" in resp.text and secret_on(resp.text) == secret
    assert "recovery-codes" not in resp.text
    services.users.login(email, password, ip="127.0.0.1")  # still no second factor


def test_turning_two_factor_off_needs_the_password_or_a_code(client, services, account, db):
    email, password = user_of(services, account, "support")
    page = signed_in(client, services, email, password)
    secret, _ = enable_totp(page)
    resp = page.post("/dashboard/account/totp/disable", {"password": "not it at all"})
    assert resp.status_code == 401 and "stays on" in resp.text
    with pytest.raises(SecondFactorRequired):
        services.users.login(email, password, ip="127.0.0.1")
    resp = page.post("/dashboard/account/totp/disable", {"code": totp.code(secret, time.time() + 30)})
    assert resp.status_code == 303 and resp.headers["location"] == "/dashboard/account?done=totp_off"
    services.users.login(email, password, ip="127.0.0.1")  # password alone again
    again = signed_in(client, services, email, password)
    enable_totp(again)
    assert again.post("/dashboard/account/totp/disable", {"password": password}).status_code == 303
    actions = [r["action"] for r in db.execute(
        "SELECT action FROM audit_log WHERE account_id = %s AND target = %s AND action LIKE 'totp.%%' ORDER BY id",
        (account["id"], email)).fetchall()]
    assert actions == ["totp.enabled", "totp.disabled", "totp.enabled", "totp.disabled"]


def test_signing_out_everywhere_ends_this_session_and_the_others(client, services, account, db):
    email, password = user_of(services, account, "billing")
    here, there = signed_in(client, services, email, password), signed_in(client, services, email, password)
    resp = here.post("/dashboard/account/sessions")
    assert resp.status_code == 303 and resp.headers["location"] == "/dashboard/login"
    assert "Max-Age=0" in resp.headers["set-cookie"]
    assert services.sessions.resolve(here.token) is None and services.sessions.resolve(there.token) is None
    row = db.execute("SELECT details FROM audit_log WHERE account_id = %s AND action = 'session.all_ended'"
                     " AND target = %s", (account["id"], email)).fetchone()
    assert row["details"] == {"sessions": 2}


def test_an_operator_signs_out_everywhere_too(client, services):
    email, password = operator_of(services)
    page = signed_in(client, services, email, password)
    assert page.post("/dashboard/account/sessions").status_code == 303
    assert services.sessions.resolve(page.token) is None


def test_the_export_holds_the_accounts_data_and_no_secret(client, services, account, domain, page_as, db):
    key, key_secret = services.accounts.create_key(account["id"], "sending", domain["name"], "export me")
    services.suppressions.add(domain, "bounces", {"address": "gone@example.org", "code": "550", "error": "no"})
    services.suppressions.add(domain, "unsubscribes", {"address": "bye@example.org"})
    services.webhooks.create(domain, "delivered", ["https://hook:hunter2hunter2@1.1.1.1/in"])
    totp_user, totp_password = user_of(services, account, "analyst")
    totp_page = signed_in(client, services, totp_user, totp_password)
    totp_secret, codes = enable_totp(totp_page)
    stranger = services.accounts.create_account("stranger-export")
    services.accounts.add_domain(stranger["id"], f"theirs-{domain['name']}", dkim_key_size=1024)
    admin = page_as("admin")
    resp = admin.get("/dashboard/account/export")
    assert resp.status_code == 200 and resp.headers["content-type"] == "application/x-ndjson"
    assert "attachment" in resp.headers["content-disposition"]
    lines = [json.loads(line) for line in resp.text.splitlines()]
    by_type: dict[str, list] = {}
    for line in lines:
        by_type.setdefault(line["type"], []).append(line["data"])
    [exported] = by_type["account"]  # the whole archive (envoi.privacy.archive, tests/integration/privacy)
    assert {k: exported[k] for k in ("id", "name", "region", "plan", "state", "created_at")} == {
        "id": account["id"], "name": account["name"], "region": "eu", "plan": "free", "state": "active",
        "created_at": account["created_at"].isoformat()}
    assert [d["name"] for d in by_type["domain"]] == [domain["name"]]  # not the stranger's
    assert {u["email"] for u in by_type["user"]} >= {totp_user}
    assert [(k["id"], k["domain_id"], k["description"]) for k in by_type["api_key"]] == [
        (key["id"], domain["id"], "export me")]
    assert any(a["action"] == "totp.enabled" for a in by_type["audit"])
    assert [(b["domain_id"], b["address"]) for b in by_type["bounce"]] == [(domain["id"], "gone@example.org")]
    assert [u["address"] for u in by_type["unsubscribe"]] == ["bye@example.org"]
    assert [(w["event_type"], w["url"]) for w in by_type["webhook"]] == [
        ("delivered", "https://hook:***@1.1.1.1/in")]
    hashes = db.execute("SELECT password_hash, totp_secret FROM users WHERE account_id = %s", (account["id"],)).fetchall()
    for forbidden in [key_secret, totp_secret, *codes, *(h["password_hash"] for h in hashes), "password_hash",
                      "totp_secret", "secret_hash", "dkim_private_key", "BEGIN", PASSWORD, "hunter2"]:
        assert forbidden not in resp.text, forbidden
    exported = db.execute("SELECT actor FROM audit_log WHERE account_id = %s AND action = 'account.exported'",
                          (account["id"],)).fetchone()
    assert exported is not None
    assert list(services.privacy.export_account(10**12)) == []  # no such account: nothing, not an error


@pytest.mark.parametrize("role", ["developer", "support", "analyst", "billing"])
def test_only_account_admins_export_or_delete(client, services, account, domain, page_as, role):
    page = page_as(role)
    resp = page.get("/dashboard/account/export")
    assert resp.status_code == 403 and domain["name"] not in resp.text
    resp = page.post("/dashboard/account/delete", {"confirm_name": account["name"]})
    assert resp.status_code == 403
    assert services.accounts.get_account(account["id"])["name"] == account["name"]


def test_an_operator_has_no_account_to_export_or_delete(client, services, account):
    page = signed_in(client, services, *operator_of(services))
    assert page.get("/dashboard/account/export").status_code == 403
    assert page.post("/dashboard/account/delete", {"confirm_name": account["name"]}).status_code == 403


def test_deleting_the_account_needs_its_typed_name_then_stops_everything_at_once(
        client, services, account, api_key, domain, page_as, db):
    from tests.conftest import basic
    from tests.support.api import send_form

    page = page_as("admin")
    colleague = page_as("developer")
    from datetime import UTC, datetime, timedelta
    from email.utils import format_datetime

    later = format_datetime(datetime.now(UTC) + timedelta(days=1))
    scheduled = send_form(client, api_key, domain, **{"o:deliverytime": later})
    assert scheduled.status_code == 200
    assert 'action="/dashboard/account/delete"' in page.get("/dashboard/account").text
    resp = page.post("/dashboard/account/delete", {"confirm_name": account["name"] + "x"})
    assert resp.status_code == 400 and "nothing was deleted" in resp.text
    assert db.execute("SELECT state FROM accounts WHERE id = %s", (account["id"],)).fetchone()["state"] == "active"

    resp = page.post("/dashboard/account/delete", {"confirm_name": account["name"]})
    assert resp.status_code == 303 and resp.headers["location"] == "/dashboard/login"
    assert "Max-Age=0" in resp.headers["set-cookie"]
    row = db.execute("SELECT state, closed_at FROM accounts WHERE id = %s", (account["id"],)).fetchone()
    assert row["state"] == "closed" and row["closed_at"] is not None
    # At once: sessions of every user end, the API key stops, the waiting mail is cancelled.
    assert services.sessions.resolve(page.token) is None and services.sessions.resolve(colleague.token) is None
    assert client.simulate_get(f"/v3/{domain['name']}/events", headers=basic(api_key)).status_code == 401
    statuses = db.execute("SELECT status FROM recipients WHERE account_id = %s", (account["id"],)).fetchall()
    assert [r["status"] for r in statuses] == ["failed"]  # the scheduled message was cancelled
    audit = db.execute("SELECT actor FROM audit_log WHERE account_id = %s AND action = 'account.closed'",
                       (account["id"],)).fetchone()
    assert audit["actor"].startswith("user:")


def test_the_people_pages_carry_the_strict_policy_and_no_inline_code(client, services, account, domain, page_as):
    from envoi.api.dashboard import security

    page = page_as("admin")
    responses = [page.get(path) for path in ("/dashboard/keys", "/dashboard/users", "/dashboard/audit",
                                             "/dashboard/account")]
    responses += [page.post("/dashboard/keys", {"role": "basic"}), page.post("/dashboard/account/totp/start"),
                  page.post("/dashboard/users", {"email": "csp@people.test", "role": "analyst"})]
    for resp in responses:
        assert resp.status_code == 200
        assert resp.headers["content-security-policy"] == security.PAGE_POLICY
        assert resp.headers["cache-control"] == "no-store"  # a secret shown once is not kept by the browser
        assert not re.search(r"<script(?![^>]*\bsrc=)", resp.text) and " style=" not in resp.text
        assert not re.search(r"\son[a-z]+=", resp.text)


def test_the_account_page_lists_the_accounts_own_subaccounts_only(client, services, account):
    mine = services.subaccounts.create(account["id"], "shop <eu>")["subaccount"]
    services.subaccounts.set_enabled(account["id"], mine["id"], False)
    other = services.accounts.create_account("someone else")
    theirs = services.subaccounts.create(other["id"], "not-mine-at-all")["subaccount"]
    page = signed_in(client, services, *user_of(services, account, "analyst"))
    text = page.get("/dashboard/account").text
    assert "shop &lt;eu&gt;" in text and "shop <eu>" not in text  # escaped
    assert f"<code>{mine['id']}</code>" in text and "disabled" in text
    assert "not-mine-at-all" not in text and f"<code>{theirs['id']}</code>" not in text
    # A subaccount's own page says whose it is and lists none.
    sub_page = signed_in(client, services, *user_of(services, services.accounts.get_account(int(mine["id"])), "admin"))
    text = sub_page.get("/dashboard/account").text
    assert f"subaccount of account {account['id']}" in text and "<h2>Subaccounts</h2>" not in text
