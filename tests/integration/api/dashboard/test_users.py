"""Users page: invitations (link shown once, accepted through /dashboard/join), role changes that apply
on the next page, removal, ending sessions, the last admin kept, audit rows, tenant isolation."""

from __future__ import annotations

import re
from urllib.parse import urlencode

import pytest

from envoi.accounts.errors import InvalidInput, InvitationInvalid, NotFound
from tests.support.dashboard import ORIGIN, PASSWORD, Page, signed_in, user_of


def me(services, page: Page) -> dict:
    return services.sessions.resolve(page.token)


def invite_link(html: str) -> str:
    return re.search(r'<code id="invite-url">([^<]+)</code>', html).group(1)


def test_an_invitation_link_is_shown_once_and_joining_creates_the_user_with_the_role(
        client, services, account, page_as, db):
    admin = page_as("admin")
    resp = admin.post("/dashboard/users", {"email": "new.person@people.test", "role": "support"})
    assert resp.status_code == 200 and "does not send email" in resp.text
    link = invite_link(resp.text)
    assert link.startswith(f"{services.settings.public_url}/dashboard/join?token=")
    forged = admin.post("/dashboard/users", {"email": "other@people.test", "role": "support"},
                        headers={"Host": "evil.test"}, origin="http://evil.test")
    assert "evil.test" not in invite_link(forged.text)  # the link's host is configured, not the request's
    token = link.split("token=", 1)[1]
    listing = admin.get("/dashboard/users").text
    assert token not in listing and "new.person@people.test" in listing  # pending, link not repeated
    join = client.simulate_get("/dashboard/join", params={"token": token})
    assert join.status_code == 200
    accepted = client.simulate_post("/dashboard/join", body=urlencode({"token": token, "password": PASSWORD}),
                                    headers={"Content-Type": "application/x-www-form-urlencoded", "Origin": ORIGIN})
    assert accepted.status_code == 200 and "sign in with your new password" in accepted.text
    row = db.execute("SELECT role FROM users WHERE account_id = %s AND email = %s",
                     (account["id"], "new.person@people.test")).fetchone()
    assert row == {"role": "support"}
    assert "new.person@people.test" not in _pending(admin.get("/dashboard/users").text)


def _pending(html: str) -> str:
    return html.split("Pending invitations", 1)[1]


def test_bad_invitations_are_refused_and_store_nothing(client, services, account, page_as, db):
    admin = page_as("admin")
    for fields in ({"email": "not-an-address", "role": "support"}, {"email": "x@people.test", "role": "operator"},
                   {"email": "y@people.test", "role": "root"}):
        resp = admin.post("/dashboard/users", fields)
        assert resp.status_code == 400 and 'class="error"' in resp.text and "invite-url" not in resp.text
    assert db.execute("SELECT count(*) AS n FROM user_invitations WHERE account_id = %s AND invited_by <> 'test'",
                      (account["id"],)).fetchone()["n"] == 0


def test_withdrawing_an_invitation_kills_its_link(client, services, account, page_as, db):
    admin = page_as("admin")
    invitation, token = services.users.invite(account["id"], "later@people.test", "analyst", actor="test")
    resp = admin.post(f"/dashboard/users/invitations/{invitation['id']}/revoke")
    assert resp.status_code == 303
    with pytest.raises(InvitationInvalid):
        services.users.accept_invitation(token, PASSWORD)
    assert "later@people.test" not in admin.get("/dashboard/users").text


def test_a_role_change_applies_on_the_next_page(client, services, account, page_as, db):
    admin = page_as("admin")
    email, password = user_of(services, account, "admin")
    other = signed_in(client, services, email, password)
    assert other.get("/dashboard/audit").status_code == 200
    resp = admin.post(f"/dashboard/users/{me(services, other)['user_id']}/role", {"role": "analyst"})
    assert resp.status_code == 303 and resp.headers["location"] == "/dashboard/users?done=role"
    assert other.get("/dashboard/audit").status_code == 403  # the same session, the new role
    assert other.get("/dashboard/overview").status_code == 200
    assert db.execute("SELECT role FROM users WHERE email = %s", (email,)).fetchone() == {"role": "analyst"}


def test_removing_a_user_ends_their_session(client, services, account, page_as, db):
    admin = page_as("admin")
    victim = page_as("developer")
    victim_id = me(services, victim)["user_id"]
    assert victim.get("/dashboard/keys").status_code == 200
    assert admin.post(f"/dashboard/users/{victim_id}/remove").status_code == 303
    assert victim.get("/dashboard/keys").status_code == 303  # back to the login page
    assert db.execute("SELECT 1 FROM users WHERE id = %s", (victim_id,)).fetchone() is None


def test_ending_a_users_sessions_signs_them_out_but_keeps_them(client, services, account, page_as, db):
    admin = page_as("admin")
    other = page_as("analyst")
    other_id = me(services, other)["user_id"]
    assert admin.post(f"/dashboard/users/{other_id}/sessions").status_code == 303
    assert other.get("/dashboard/overview").status_code == 303
    assert services.sessions.resolve(admin.token) is not None
    assert db.execute("SELECT 1 FROM users WHERE id = %s", (other_id,)).fetchone() is not None


def test_the_last_admin_can_neither_be_demoted_nor_removed(client, services, page_as, db):
    lonely = services.accounts.create_account("lonely")
    admin = page_as("admin", of=lonely)
    my_id = me(services, admin)["user_id"]
    resp = admin.post(f"/dashboard/users/{my_id}/role", {"role": "developer"})
    assert resp.status_code == 400 and "last admin" in resp.text
    resp = admin.post(f"/dashboard/users/{my_id}/remove")
    assert resp.status_code == 400 and "last admin" in resp.text
    assert db.execute("SELECT role FROM users WHERE id = %s", (my_id,)).fetchone() == {"role": "admin"}
    second = page_as("admin", of=lonely)
    resp = admin.post(f"/dashboard/users/{my_id}/role", {"role": "developer"})  # another admin now exists
    assert resp.status_code == 303 and resp.headers["location"] == "/dashboard"  # users page is no longer mine
    assert admin.get("/dashboard/users").status_code == 403
    with pytest.raises(InvalidInput, match="last admin"):
        services.users.remove(lonely["id"], me(services, second)["user_id"], actor="test")


def test_each_action_is_audited_in_the_account(client, services, account, page_as, db):
    admin = page_as("admin")
    actor = f"user:{me(services, admin)['user_id']}"
    admin.post("/dashboard/users", {"email": "audited@people.test", "role": "billing"})
    invitation = services.users.list_invitations(account["id"])[0]
    admin.post(f"/dashboard/users/invitations/{invitation['id']}/revoke")
    target = page_as("support")
    target_id = me(services, target)["user_id"]
    admin.post(f"/dashboard/users/{target_id}/role", {"role": "analyst"})
    admin.post(f"/dashboard/users/{target_id}/sessions")
    admin.post(f"/dashboard/users/{target_id}/remove")
    rows = db.execute("SELECT action, details FROM audit_log WHERE account_id = %s AND actor = %s"
                      " AND action NOT IN ('user.created', 'session.created') ORDER BY id",
                      (account["id"], actor)).fetchall()
    assert [r["action"] for r in rows] == ["user.invited", "user.invitation_revoked", "user.role_changed",
                                           "session.all_ended", "user.removed"]
    assert rows[2]["details"] == {"from": "support", "to": "analyst"}


@pytest.mark.parametrize("role", ["developer", "support", "analyst", "billing"])
def test_only_admins_manage_users(client, services, account, page_as, db, role):
    target = page_as("analyst")
    target_id = me(services, target)["user_id"]
    page = page_as(role)
    assert page.get("/dashboard/users").status_code == 403
    assert page.post("/dashboard/users", {"email": "sneak@people.test", "role": "admin"}).status_code == 403
    assert page.post(f"/dashboard/users/{target_id}/role", {"role": "admin"}).status_code == 403
    assert page.post(f"/dashboard/users/{target_id}/remove").status_code == 403
    assert page.post(f"/dashboard/users/{target_id}/sessions").status_code == 403
    assert db.execute("SELECT role FROM users WHERE id = %s", (target_id,)).fetchone() == {"role": "analyst"}
    assert services.sessions.resolve(target.token) is not None
    assert not [i for i in services.users.list_invitations(account["id"]) if i["email"] == "sneak@people.test"]


def test_another_accounts_people_are_404_and_unchanged(client, services, account, page_as, db):
    target = page_as("admin")  # a user of account A
    target_id = me(services, target)["user_id"]
    invitation, token = services.users.invite(account["id"], "a-guest@people.test", "analyst", actor="test")
    stranger = page_as("admin", of=services.accounts.create_account("stranger"))
    listing = stranger.get("/dashboard/users").text
    assert target.token and "a-guest@people.test" not in listing
    assert me(services, target)["email"] not in listing
    for path, fields in ((f"/dashboard/users/{target_id}/role", {"role": "billing"}),
                         (f"/dashboard/users/{target_id}/remove", {}),
                         (f"/dashboard/users/{target_id}/sessions", {}),
                         (f"/dashboard/users/invitations/{invitation['id']}/revoke", {})):
        assert stranger.post(path, fields).status_code == 404, path
    assert db.execute("SELECT role FROM users WHERE id = %s", (target_id,)).fetchone() == {"role": "admin"}
    assert services.sessions.resolve(target.token) is not None
    assert services.users.accept_invitation(token, PASSWORD)["role"] == "analyst"  # the link still works
    with pytest.raises(NotFound):
        services.users.change_role(account["id"] + 10_000, target_id, "billing", actor="test")
