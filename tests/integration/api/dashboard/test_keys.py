"""API keys page: the secret once, revocation at once, roles, audit, tenant isolation."""

from __future__ import annotations

import re

from tests.conftest import basic


def new_secret(html: str) -> str:
    return re.search(r'<code id="new-key-secret" data-secret>([^<]+)</code>', html).group(1)


def api_call(client, secret: str):
    return client.simulate_get("/v4/domains", headers=basic(secret))


def test_a_created_key_is_shown_once_and_authenticates_the_api(client, services, account, domain, page_as, db):
    page = page_as("admin")
    resp = page.post("/dashboard/keys", {"role": "developer", "description": "ci deploys"})
    assert resp.status_code == 200
    secret = new_secret(resp.text)
    assert secret.startswith("key-eu-") and "only time it is shown" in resp.text
    listing = page.get("/dashboard/keys").text
    assert secret not in listing and "ci deploys" in listing and secret[-4:] in listing
    assert api_call(client, secret).status_code == 200
    row = db.execute("SELECT role, description, domain_id FROM api_keys WHERE account_id = %s AND description = %s",
                     (account["id"], "ci deploys")).fetchone()
    assert row == {"role": "developer", "description": "ci deploys", "domain_id": None}


def test_a_domain_scoped_sending_key_is_scoped(client, services, account, domain, page_as, db):
    page = page_as("admin")
    resp = page.post("/dashboard/keys", {"role": "sending", "domain": domain["name"]})
    assert resp.status_code == 200
    secret = new_secret(resp.text)
    principal = services.accounts.authenticate_key(secret)
    assert (principal.role, principal.domain, principal.account_id) == ("sending", domain["name"], account["id"])


def test_deleting_a_key_revokes_it_at_once(client, services, account, domain, page_as, db):
    page = page_as("admin")
    key, secret = services.accounts.create_key(account["id"], "admin", description="to go")
    assert api_call(client, secret).status_code == 200  # and now it is in the key cache
    resp = page.post(f"/dashboard/keys/{key['id']}/delete")
    assert resp.status_code == 303 and resp.headers["location"] == "/dashboard/keys?done=deleted"
    assert api_call(client, secret).status_code == 401
    assert db.execute("SELECT 1 FROM api_keys WHERE id = %s", (key["id"],)).fetchone() is None
    assert "no longer authenticates" in page.get("/dashboard/keys", done="deleted").text


def test_key_actions_are_in_the_audit_log_as_the_apis(client, services, account, domain, page_as, db):
    page = page_as("admin")
    user_id = services.sessions.resolve(page.token)["user_id"]
    page.post("/dashboard/keys", {"role": "basic", "description": "audited"})
    key_id = db.execute("SELECT id FROM api_keys WHERE description = 'audited'").fetchone()["id"]
    page.post(f"/dashboard/keys/{key_id}/delete")
    rows = db.execute("SELECT actor, action, target, details FROM audit_log WHERE account_id = %s AND target = %s"
                      " ORDER BY id", (account["id"], key_id)).fetchall()
    assert [(r["actor"], r["action"]) for r in rows] == [(f"user:{user_id}", "key.create"),
                                                          (f"user:{user_id}", "key.revoke")]
    assert rows[0]["details"] == {"role": "basic", "domain": None}


def test_bad_input_is_refused_and_creates_nothing(client, services, account, domain, page_as, db):
    page = page_as("admin")
    other = services.accounts.create_account("elsewhere")
    theirs = services.accounts.add_domain(other["id"], f"theirs-{domain['name']}", dkim_key_size=1024)
    for fields in ({"role": "operator"}, {"role": "root"}, {"role": "sending"},
                   {"role": "admin", "domain": theirs["name"]}, {"role": "admin", "description": "x" * 201}):
        resp = page.post("/dashboard/keys", fields)
        assert resp.status_code in (400, 404), fields
        assert 'class="error"' in resp.text and "data-secret" not in resp.text
    assert db.execute("SELECT count(*) AS n FROM api_keys WHERE account_id = %s", (account["id"],)).fetchone()["n"] == 0


def test_roles_without_manage_keys_get_403_and_change_nothing(client, services, account, domain, page_as, db):
    key, secret = services.accounts.create_key(account["id"], "admin")
    for role in ("support", "analyst", "billing"):
        page = page_as(role)
        resp = page.get("/dashboard/keys")
        assert resp.status_code == 403 and key["id"] not in resp.text, role
        assert page.post("/dashboard/keys", {"role": "admin"}).status_code == 403
        assert page.post(f"/dashboard/keys/{key['id']}/delete").status_code == 403
    assert api_call(client, secret).status_code == 200
    assert db.execute("SELECT count(*) AS n FROM api_keys WHERE account_id = %s", (account["id"],)).fetchone()["n"] == 1


def test_another_accounts_key_is_a_404_and_stays(client, services, account, domain, page_as, db):
    key, secret = services.accounts.create_key(account["id"], "admin", description="mine")
    stranger = page_as("admin", of=services.accounts.create_account("stranger"))
    assert key["id"] not in stranger.get("/dashboard/keys").text
    resp = stranger.post(f"/dashboard/keys/{key['id']}/delete")
    assert resp.status_code == 404
    assert api_call(client, secret).status_code == 200
    resp = stranger.post("/dashboard/keys", {"role": "sending", "domain": domain["name"]})  # A's domain
    assert resp.status_code == 400 and "data-secret" not in resp.text
    assert db.execute("SELECT count(*) AS n FROM api_keys WHERE domain_id = %s", (domain["id"],)).fetchone()["n"] == 0


def test_a_developer_manages_keys_but_cannot_mint_an_admin_key(client, services, account, domain, page_as, db):
    page = page_as("developer")
    assert page.get("/dashboard/keys").status_code == 200
    resp = page.post("/dashboard/keys", {"role": "admin"})
    assert resp.status_code == 400 and "Only an account admin" in resp.text and "data-secret" not in resp.text
    assert db.execute("SELECT count(*) AS n FROM api_keys WHERE account_id = %s", (account["id"],)).fetchone()["n"] == 0
    resp = page.post("/dashboard/keys", {"role": "basic"})
    assert resp.status_code == 200 and api_call(client, new_secret(resp.text)).status_code == 200
