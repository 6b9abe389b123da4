"""API keys (/v1/keys): the secret shown once, revocation at once in every process, roles, domain scope
and tenant isolation."""

from __future__ import annotations

import pytest
from falcon import testing

from envoi import runtime
from envoi.accounts.service import ROLES
from envoi.api import roles
from envoi.api.app import create_app
from tests.conftest import basic
from tests.support.api import post_form, send_form


def create(client, admin_key, **fields):
    resp = post_form(client, "/v1/keys", admin_key, fields)
    assert resp.status_code == 200, resp.text
    return resp.json["key"]


@pytest.fixture
def other_process(settings):
    """A second API process on the same region: its own key cache, the same Postgres and Redis."""
    services = runtime.build(settings)
    yield testing.TestClient(create_app(settings, services))
    services.close()


def test_create_list_delete_and_revocation_takes_effect_at_once(client, other_process, api_key, domain, db):
    key = create(client, api_key, role="developer", description="ci deploys")
    secret = key["secret"]
    assert secret.startswith("key-eu-") and key["role"] == "developer" and key["kind"] == "user"
    stored = db.execute("SELECT secret_hash, hint FROM api_keys WHERE id = %s", (key["id"],)).fetchone()
    assert secret.encode() not in bytes(stored["secret_hash"]) and stored["hint"] == secret[-4:]
    # it works, in both processes (the other one now holds it in its cache)
    for app in (client, other_process):
        assert app.simulate_get("/v4/domains", headers=basic(secret)).status_code == 200
    # listed, without its secret
    listed = client.simulate_get("/v1/keys", headers=basic(api_key)).json
    mine = [k for k in listed["items"] if k["id"] == key["id"]]
    assert mine and mine[0]["description"] == "ci deploys" and "secret" not in mine[0]
    assert secret not in str(listed)
    # deleted in one process: the very next request gets 401 in the other one too
    resp = client.simulate_delete(f"/v1/keys/{key['id']}", headers=basic(api_key))
    assert resp.status_code == 200 and resp.json == {"message": "key deleted"}
    for app in (other_process, client):
        resp = app.simulate_get("/v4/domains", headers=basic(secret))
        assert resp.status_code == 401 and resp.json == {"message": "Forbidden"}
    assert key["id"] not in str(client.simulate_get("/v1/keys", headers=basic(api_key)).json)
    assert client.simulate_delete(f"/v1/keys/{key['id']}", headers=basic(api_key)).status_code == 404


def test_list_filters_and_domain_keys(client, api_key, domain):
    scoped = create(client, api_key, role="sending", kind="domain", domain_name=domain["name"])
    assert scoped["kind"] == "domain" and scoped["domain_name"] == domain["name"]
    by_domain = client.simulate_get("/v1/keys", params={"domain_name": domain["name"]}, headers=basic(api_key)).json
    assert [k["id"] for k in by_domain["items"]] == [scoped["id"]] and by_domain["total_count"] == 1
    users = client.simulate_get("/v1/keys", params={"kind": "user"}, headers=basic(api_key)).json["items"]
    assert users and all(k["kind"] == "user" for k in users)


@pytest.mark.parametrize("fields, message", [
    ({"role": "operator"}, "role must be one of admin, developer, sending, basic"),
    ({"role": "admin", "kind": "web"}, "kind must be domain or user (Envoi has no web keys)"),
    ({"role": "admin", "kind": "domain"}, "a domain key needs domain_name, and only a domain key takes one"),
    ({"role": "sending"}, "a sending key needs a domain"),
    ({"role": "admin", "expiration": "soon"}, "expiration must be a number of seconds"),
])
def test_create_refuses_bad_input(client, api_key, db, fields, message):
    before = db.execute("SELECT count(*) AS n FROM api_keys").fetchone()["n"]
    resp = post_form(client, "/v1/keys", api_key, fields)
    assert resp.status_code == 400 and resp.json == {"message": message}
    assert db.execute("SELECT count(*) AS n FROM api_keys").fetchone()["n"] == before


def test_expiration_is_kept(client, api_key, db):
    key = create(client, api_key, role="basic", expiration="3600")
    row = db.execute("SELECT expires_at - created_at AS life FROM api_keys WHERE id = %s", (key["id"],)).fetchone()
    assert 3590 <= row["life"].total_seconds() <= 3610 and key["expires_at"]


def test_roles_table_covers_every_customer_role():
    assert set(roles.ROLES) | {"operator"} == set(ROLES)


#: role -> (send a message, read events, delete a suppression, list keys, create a key)
EXPECTED = {
    "admin": (200, 200, 200, 200, 200),
    "developer": (200, 200, 200, 401, 401),
    "basic": (401, 200, 401, 401, 401),
    "sending": (200, 401, 401, 401, 401),
}


@pytest.mark.parametrize("role", sorted(EXPECTED))
def test_role_enforcement(client, services, account, domain, role):
    name = domain["name"]
    _, secret = services.accounts.create_key(account["id"], role, domain=name if role == "sending" else None)
    got = (
        send_form(client, secret, domain).status_code,
        client.simulate_get(f"/v3/{name}/events", headers=basic(secret)).status_code,
        client.simulate_delete(f"/v3/{name}/bounces", headers=basic(secret)).status_code,
        client.simulate_get("/v1/keys", headers=basic(secret)).status_code,
        post_form(client, "/v1/keys", secret, {"role": "basic"}).status_code,
    )
    assert got == EXPECTED[role]


def test_domain_scoped_key_acts_on_its_domain_only(client, services, account, domain, db):
    other = services.accounts.add_domain(account["id"], f"other-{domain['name']}", dkim_key_size=1024,
                                         verified=True)
    _, scoped = services.accounts.create_key(account["id"], "developer", domain=domain["name"])
    assert client.simulate_get(f"/v3/{domain['name']}/events", headers=basic(scoped)).status_code == 200
    assert send_form(client, scoped, domain).status_code == 200
    resp = send_form(client, scoped, other)
    assert resp.status_code == 404 and resp.json == {"message": f"Domain not found: {other['name']}"}
    assert db.execute("SELECT count(*) AS n FROM messages WHERE domain_id = %s", (other["id"],)).fetchone()["n"] == 0
    assert client.simulate_get(f"/v3/{other['name']}/events", headers=basic(scoped)).status_code == 404
    assert client.simulate_get("/v4/domains", headers=basic(scoped)).status_code == 401


def test_tenant_isolation(client, services, api_key, domain, db):
    key = create(client, api_key, role="basic")
    intruder = services.accounts.create_account("intruder")
    _, intruder_key = services.accounts.create_key(intruder["id"], "admin")
    resp = client.simulate_delete(f"/v1/keys/{key['id']}", headers=basic(intruder_key))
    assert resp.status_code == 404 and resp.json == {"message": "Key not found"}
    assert db.execute("SELECT count(*) AS n FROM api_keys WHERE id = %s", (key["id"],)).fetchone()["n"] == 1
    listed = client.simulate_get("/v1/keys", headers=basic(intruder_key)).json["items"]
    assert key["id"] not in [k["id"] for k in listed]
    # nor can a key be scoped to another tenant's domain
    resp = post_form(client, "/v1/keys", intruder_key, {"role": "sending", "domain_name": domain["name"]})
    assert resp.status_code == 404 and resp.json == {"message": f"Domain not found: {domain['name']}"}


def test_official_mailgun_sdk_manages_keys(settings, services, api_key, domain):
    from mailgun.client import Client

    from tests.support.events import AppServer

    with AppServer(create_app(settings, services)) as srv:
        sdk = Client(auth=("api", api_key), api_url=srv.url)
        created = sdk.keys.create(data={"role": "sending", "kind": "domain", "domain_name": domain["name"],
                                        "description": "from the sdk"})
        assert created.status_code == 200, created.text
        key = created.json()["key"]
        listed = sdk.keys.get(filters={"domain_name": domain["name"], "kind": "domain"}).json()
        assert [k["id"] for k in listed["items"]] == [key["id"]] and "secret" not in listed["items"][0]
        assert sdk.keys.delete(key_id=key["id"]).json() == {"message": "key deleted"}
    assert services.accounts.authenticate_key(key["secret"]) is None


def test_without_redis_keys_are_read_from_postgres_every_time(services, account):
    """When Redis cannot tell about revocations, no cached key is trusted: a revocation still holds."""
    from envoi.accounts.service import Accounts
    from envoi.infra import redis as redis_infra

    down = redis_infra.Generation(redis_infra.client("redis://127.0.0.1:1/0"), "envoi:eu:keys:revoked")
    blind = Accounts(services.db, services.sealer, services.settings.region, key_revocations=down,
                     audit=services.audit)
    key, secret = services.accounts.create_key(account["id"], "basic")
    assert blind.authenticate_key(secret).key_id == key["id"]
    services.accounts.delete_key(account["id"], key["id"])
    assert blind.authenticate_key(secret) is None


def test_key_creation_and_revocation_are_in_the_audit_log(client, services, account, api_key, db):
    admin = services.accounts.authenticate_key(api_key)
    key = create(client, api_key, role="basic", description="audited")
    resp = client.simulate_delete(f"/v1/keys/{key['id']}", headers=basic(api_key), remote_addr="198.51.100.9")
    assert resp.status_code == 200
    rows = db.execute("SELECT account_id, actor, action, target, ip, details FROM audit_log"
                      " WHERE target = %s ORDER BY id", (key["id"],)).fetchall()
    assert [(r["account_id"], r["actor"], r["action"]) for r in rows] == [
        (account["id"], f"key:{admin.key_id}", "key.create"), (account["id"], f"key:{admin.key_id}", "key.revoke")]
    assert rows[0]["details"]["role"] == "basic" and str(rows[1]["ip"]) == "198.51.100.9"
    listed = client.simulate_get("/v3/audit-log", params={"action": "key."}, headers=basic(api_key)).json
    assert {(e["action"], e["target"]) for e in listed["items"]} >= {("key.create", key["id"]),
                                                                    ("key.revoke", key["id"])}


@pytest.mark.parametrize("role", ["developer", "basic"])
def test_only_admin_keys_read_the_audit_log(client, services, account, api_key, role):
    _, secret = services.accounts.create_key(account["id"], role)
    resp = client.simulate_get("/v3/audit-log", headers=basic(secret))
    assert resp.status_code == 403 and "audit log" in resp.json["message"] and "items" not in resp.json
    exported = client.simulate_get("/v3/audit-log", params={"format": "csv"}, headers=basic(secret))
    assert exported.status_code == 403 and "key.create" not in exported.text
    assert client.simulate_get("/v3/audit-log", headers=basic(api_key)).status_code == 200
