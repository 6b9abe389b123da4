"""Dashboard users end to end on real Postgres and Redis: invitations, login, throttling, TOTP and
recovery codes, sessions and their expiry, logout everywhere, the audit log and tenant isolation."""

from __future__ import annotations

import csv
import io
import time
import uuid

import pytest
from falcon import testing

from envoi.accounts import totp
from envoi.accounts.errors import (
    AlreadyExists,
    Forbidden,
    InvalidLogin,
    InvitationInvalid,
    LoginThrottled,
    SecondFactorRequired,
)
from envoi.api.app import create_app
from tests.conftest import basic

PASSWORD = "correct horse battery"


def _email() -> str:
    return f"u-{uuid.uuid4().hex[:8]}@people.example.test"


def _ip() -> str:
    return f"198.51.100.{uuid.uuid4().int % 250 + 1}"


def _user(services, account, role="developer", email=None):
    email = email or _email()
    _, token = services.users.invite(account["id"], email, role, actor="cli")
    return services.users.accept_invitation(token, PASSWORD, ip="192.0.2.7")


def test_invitation_creates_the_user_who_logs_in_with_a_session(services, account, db):
    email = _email()
    invitation, token = services.users.invite(account["id"], email, "support", actor="cli", ip="192.0.2.1")
    assert db.execute("SELECT token_hash FROM user_invitations WHERE id = %s",
                      (invitation["id"],)).fetchone()["token_hash"] != token.encode()  # stored hashed
    user = services.users.accept_invitation(token, PASSWORD, ip="192.0.2.2")
    assert (user["account_id"], user["email"], user["role"]) == (account["id"], email, "support")

    logged_in, session = services.users.login(email.upper(), PASSWORD, ip="192.0.2.3", user_agent="pytest")
    assert logged_in["id"] == user["id"]
    live = services.sessions.resolve(session)
    assert (live["user_id"], live["account_id"], live["role"], live["ip"]) == (user["id"], account["id"], "support",
                                                                               "192.0.2.3")
    stored = db.execute("SELECT token_hash FROM user_sessions WHERE user_id = %s", (user["id"],)).fetchone()
    assert stored["token_hash"] != session.encode() and len(stored["token_hash"]) == 32

    entries = {e["action"]: e for e in services.audit.list(account["id"])}
    assert entries["user.invited"]["ip"] == "192.0.2.1" and entries["user.invited"]["details"] == {"role": "support"}
    assert entries["user.created"]["actor"] == f"user:{user['id']}" and entries["user.created"]["ip"] == "192.0.2.2"
    assert entries["session.created"]["ip"] == "192.0.2.3"


def test_an_invitation_is_single_use_and_expires(services, account, db):
    _, token = services.users.invite(account["id"], _email(), "analyst", actor="cli")
    services.users.accept_invitation(token, PASSWORD)
    with pytest.raises(InvitationInvalid):
        services.users.accept_invitation(token, PASSWORD)

    invitation, token = services.users.invite(account["id"], _email(), "analyst", actor="cli")
    db.execute("UPDATE user_invitations SET expires_at = now() - interval '1 second' WHERE id = %s",
               (invitation["id"],))
    with pytest.raises(InvitationInvalid):
        services.users.accept_invitation(token, PASSWORD)


def test_emails_are_unique_per_account_case_insensitively(services, account):
    user = _user(services, account)
    with pytest.raises(AlreadyExists):
        services.users.invite(account["id"], user["email"].upper(), "admin", actor="cli")


def test_only_roles_that_manage_users_may_invite(services, account):
    with pytest.raises(Forbidden):
        services.users.invite(account["id"], _email(), "admin", actor="user:1", actor_role="developer")
    services.users.invite(account["id"], _email(), "billing", actor="user:1", actor_role="admin")


def test_wrong_passwords_are_throttled_and_unknown_emails_look_the_same(services, account):
    user, ip = _user(services, account), _ip()
    for _ in range(5):
        with pytest.raises(InvalidLogin):
            services.users.login(user["email"], "wrong password!", ip=ip)
    with pytest.raises(LoginThrottled) as caught:
        services.users.login(user["email"], PASSWORD, ip=_ip())  # even the right one, from elsewhere
    assert caught.value.http_status == 429

    unknown = _email()
    for _ in range(5):
        with pytest.raises(InvalidLogin) as wrong:
            services.users.login(unknown, "wrong password!", ip=_ip())
        assert wrong.value.message == InvalidLogin.message
    with pytest.raises(LoginThrottled):
        services.users.login(unknown, "wrong password!", ip=_ip())


def test_totp_is_required_once_enabled_and_recovery_codes_work_once(services, account):
    user, ip = _user(services, account), _ip()
    secret = totp.new_secret()
    codes = services.users.enable_totp(user, secret, totp.code(secret), ip=ip)
    assert len(codes) == 10

    with pytest.raises(SecondFactorRequired):
        services.users.login(user["email"], PASSWORD, ip=ip)
    with pytest.raises(InvalidLogin):
        services.users.login(user["email"], PASSWORD, code="000000" if totp.code(secret) != "000000" else "111111",
                             ip=ip)
    now = int(time.time())
    _, session = services.users.login(user["email"], PASSWORD, code=totp.code(secret, now + 30), ip=ip)
    assert services.sessions.resolve(session)["user_id"] == user["id"]
    for replayed in (totp.code(secret, now + 30), totp.code(secret, now)):  # used, or older than the used one
        with pytest.raises(InvalidLogin):
            services.users.login(user["email"], PASSWORD, code=replayed, ip=ip)

    services.users.login(user["email"], PASSWORD, code=codes[3].upper(), ip=ip)
    with pytest.raises(InvalidLogin):
        services.users.login(user["email"], PASSWORD, code=codes[3], ip=ip)
    actions = [e["action"] for e in services.audit.list(account["id"], limit=20)]
    assert "totp.enabled" in actions and "login.failed" in actions


def test_logout_everywhere_ends_every_session(services, account):
    user, ip = _user(services, account), _ip()
    tokens = [services.users.login(user["email"], PASSWORD, ip=ip)[1] for _ in range(3)]
    other = _user(services, account)
    kept = services.users.login(other["email"], PASSWORD, ip=ip)[1]

    assert services.users.logout_everywhere(user, actor=f"user:{user['id']}", ip=ip) == 3
    assert all(services.sessions.resolve(t) is None for t in tokens)
    assert services.sessions.resolve(kept)["user_id"] == other["id"]
    services.users.logout(kept, ip=ip)
    assert services.sessions.resolve(kept) is None


def test_sessions_expire_when_idle_and_at_their_absolute_limit(services, account, db):
    user, ip = _user(services, account), _ip()
    idle = services.users.login(user["email"], PASSWORD, ip=ip)[1]
    old = services.users.login(user["email"], PASSWORD, ip=ip)[1]
    db.execute("UPDATE user_sessions SET last_seen_at = now() - interval '31 minutes'"
               " WHERE user_id = %s AND expires_at = (SELECT min(expires_at) FROM user_sessions WHERE user_id = %s)",
               (user["id"], user["id"]))
    db.execute("UPDATE user_sessions SET expires_at = now() - interval '1 second'"
               " WHERE user_id = %s AND last_seen_at > now() - interval '1 minute'", (user["id"],))
    assert services.sessions.resolve(idle) is None
    assert services.sessions.resolve(old) is None
    fresh = services.users.login(user["email"], PASSWORD, ip=ip)[1]
    assert services.sessions.resolve(fresh) is not None


def test_tenants_never_see_each_others_users_or_audit_entries(settings, services, account):
    other = services.accounts.create_account(f"acct-{uuid.uuid4().hex[:6]}")
    mine, theirs = _user(services, account), _user(services, other)
    assert [u["id"] for u in services.users.list_users(other["id"])] == [theirs["id"]]
    assert all(e["target"] != mine["email"] for e in services.audit.list(other["id"], limit=1000))
    assert mine["email"] not in services.audit.export(other["id"])
    client = testing.TestClient(create_app(settings, services))
    _, key = services.accounts.create_key(other["id"], "admin")
    body = client.simulate_get("/v3/audit-log", headers=basic(key)).json
    assert {e["target"] for e in body["items"] if e["action"].startswith("user.")} == {theirs["email"]}
    assert mine["email"] not in client.simulate_get("/v3/audit-log", params={"format": "jsonl"},
                                                    headers=basic(key)).text

    # one email in two accounts: login with the account picks the right user
    twin = _user(services, other, email=mine["email"])
    assert services.users.login(mine["email"], PASSWORD, account_id=other["id"], ip=_ip())[0]["id"] == twin["id"]


def test_audit_log_api_pages_and_exports(settings, services, account):
    users = [_user(services, account) for _ in range(3)]
    client = testing.TestClient(create_app(settings, services))
    _, key = services.accounts.create_key(account["id"], "admin")

    seen, url = [], "/v3/audit-log?limit=2&action=user."
    while url:
        path, _, query = url.partition("?")
        page = client.simulate_get(path, query_string=query, headers=basic(key))
        assert page.status_code == 200 and len(page.json["items"]) <= 2
        seen += [e["id"] for e in page.json["items"]]
        url = page.json["paging"].get("next")
    assert len(seen) == len(set(seen)) == 6 and seen == sorted(seen, reverse=True)

    exported = client.simulate_get("/v3/audit-log", params={"format": "csv"}, headers=basic(key))
    assert exported.status_code == 200 and exported.headers["content-type"].startswith("text/csv")
    rows = list(csv.DictReader(io.StringIO(exported.text)))
    assert {u["email"] for u in users} <= {r["target"] for r in rows if r["action"] == "user.created"}
    assert all(r["ip"] == "192.0.2.7" for r in rows if r["action"] == "user.created")

    bad = client.simulate_get("/v3/audit-log", params={"format": "xml"}, headers=basic(key))
    assert bad.status_code == 400


def test_the_scheduler_purges_expired_sessions(services, account, db):
    from envoi import runtime

    user = _user(services, account)
    token = services.users.login(user["email"], PASSWORD, ip=_ip())[1]
    db.execute("UPDATE user_sessions SET expires_at = now() - interval '1 second' WHERE user_id = %s", (user["id"],))
    purge = next(t for t in runtime.periodic_tasks(services) if t.name == "purge expired dashboard sessions")
    purge.run()
    assert db.execute("SELECT count(*) AS n FROM user_sessions WHERE user_id = %s", (user["id"],)).fetchone()["n"] == 0
    assert services.sessions.resolve(token) is None


def test_session_lengths_and_login_limits_come_from_settings(settings):
    import dataclasses
    from datetime import timedelta

    from envoi import runtime

    built = runtime.build(dataclasses.replace(settings, session_idle=60, session_max=600, login_max_failures=2,
                                              login_max_failures_ip=7, login_window=30), pool_size=1)
    try:
        assert (built.sessions.idle, built.sessions.absolute) == (timedelta(seconds=60), timedelta(seconds=600))
        throttle = built.users.throttle
        assert (throttle.max_per_email, throttle.max_per_ip, throttle.window) == (2, 7, 30)
    finally:
        built.close()


def test_an_admin_changes_roles_and_removes_users_but_the_last_admin_stays(services, account, db):
    from envoi.accounts.errors import InvalidInput, NotFound

    first, second = _user(services, account, "admin"), _user(services, account, "developer")
    _, token = services.users.login(second["email"], PASSWORD, ip=_ip())
    changed = services.users.change_role(account["id"], second["id"], "admin", actor=f"user:{first['id']}")
    assert changed["role"] == "admin" and services.sessions.resolve(token)["role"] == "admin"  # live
    with pytest.raises(InvalidInput, match="role must be"):
        services.users.change_role(account["id"], second["id"], "operator", actor="cli")
    services.users.change_role(account["id"], first["id"], "analyst", actor="cli")  # another admin is left
    with pytest.raises(InvalidInput, match="last admin"):
        services.users.change_role(account["id"], second["id"], "billing", actor="cli")
    with pytest.raises(InvalidInput, match="last admin"):
        services.users.remove(account["id"], second["id"], actor="cli")
    services.users.remove(account["id"], first["id"], actor="cli")
    assert [u["id"] for u in services.users.list_users(account["id"])] == [second["id"]]
    stranger = services.accounts.create_account("stranger")
    for call in (lambda: services.users.remove(stranger["id"], second["id"], actor="cli"),
                 lambda: services.users.change_role(stranger["id"], second["id"], "billing", actor="cli")):
        with pytest.raises(NotFound):
            call()
    assert services.sessions.resolve(token) is not None
    actions = [e["action"] for e in services.audit.list(account["id"], limit=4)]
    assert actions == ["user.removed", "user.role_changed", "user.role_changed", "session.created"]


def test_pending_invitations_are_listed_and_can_be_withdrawn(services, account):
    from envoi.accounts.errors import NotFound

    invitation, token = services.users.invite(account["id"], _email(), "support", actor="cli")
    accepted, used = services.users.invite(account["id"], _email(), "support", actor="cli")
    services.users.accept_invitation(used, PASSWORD)
    assert [i["id"] for i in services.users.list_invitations(account["id"])] == [invitation["id"]]
    stranger = services.accounts.create_account("stranger")
    with pytest.raises(NotFound):
        services.users.revoke_invitation(stranger["id"], invitation["id"], actor="cli")
    with pytest.raises(NotFound):
        services.users.revoke_invitation(account["id"], accepted["id"], actor="cli")  # already a user
    services.users.revoke_invitation(account["id"], invitation["id"], actor="cli")
    assert services.users.list_invitations(account["id"]) == []
    with pytest.raises(InvitationInvalid):
        services.users.accept_invitation(token, PASSWORD)
    assert services.audit.list(account["id"], limit=1)[0]["action"] == "user.invitation_revoked"


def test_reauthenticate_takes_the_password_or_a_fresh_code(services, account):
    user = _user(services, account)
    services.users.reauthenticate(user["id"], password=PASSWORD)
    for wrong in ({"password": "nope nope nope"}, {"code": "123456"}, {}):
        with pytest.raises(InvalidLogin):
            services.users.reauthenticate(user["id"], **wrong)
    secret = totp.new_secret()
    services.users.enable_totp(user, secret, totp.code(secret))
    code = totp.code(secret, time.time() + 30)
    services.users.reauthenticate(user["id"], code=code)
    with pytest.raises(InvalidLogin):
        services.users.reauthenticate(user["id"], code=code)  # a code proves it once

