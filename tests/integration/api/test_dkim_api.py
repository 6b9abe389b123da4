"""DKIM keys through the official Mailgun SDK: /v1/dkim/keys (list, create RSA 1024/2048 and ed25519,
import a PEM, delete), activation once the record is found in DNS, deactivation, rotation settings and
rotate-now (/v1/dkim_management), dkim_selector and dkim_authority; bad input changes nothing."""

from __future__ import annotations

import base64
import dataclasses
import uuid

import pytest
import requests
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ed25519, rsa
from mailgun.client import Client

from envoi.accounts.dkim import DkimKeys
from envoi.api.app import create_app
from envoi.infra import dkim_keys
from tests.support.dns_server import DnsServer
from tests.support.events import AppServer


@pytest.fixture
def dns():
    with DnsServer() as server:
        yield server


@pytest.fixture
def dkim_services(services, dns):
    """The session's services, with activation looking records up on the test DNS server."""
    return dataclasses.replace(services, dkim=DkimKeys(services.db, services.sealer, services.accounts,
                                                       ("127.0.0.1", dns.port)))


@pytest.fixture
def sdk(settings, dkim_services, api_key):
    with AppServer(create_app(settings, dkim_services)) as srv:
        yield Client(auth=("api", api_key), api_url=srv.url), srv.url, api_key


def publish(dns, record: dict) -> None:
    dns.add(record["name"], "TXT", record["value"])


def key_rows(db, domain_id):
    return db.execute("SELECT selector, state, algorithm, bits, private_key FROM dkim_keys WHERE domain_id = %s"
                      " ORDER BY id", (domain_id,)).fetchall()


def public_bits(record_value: str) -> int:
    p = record_value.split("p=", 1)[1]
    return serialization.load_der_public_key(base64.b64decode(p)).key_size


def test_sdk_lists_creates_imports_and_deletes_keys(sdk, services, domain, db):
    client, *_ = sdk
    name = domain["name"]
    made = {}
    for selector, bits in (("k1024", "1024"), ("k2048", "2048")):
        resp = client.dkim_keys.create(data={"signing_domain": name, "selector": selector, "bits": bits})
        assert resp.status_code == 200, resp.text
        body = resp.json()
        assert body["signing_domain"] == name and body["selector"] == selector
        record = body["dns_record"]
        assert record["record_type"] == "TXT" and record["name"] == f"{selector}._domainkey.{name}"
        assert record["value"].startswith("v=DKIM1; k=rsa; p=") and public_bits(record["value"]) == int(bits)
        made[selector] = record
    # a PEM imported as an uploaded file (PKCS#1 RSA, as Mailgun's example makes with openssl genrsa)
    imported = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    pem = imported.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.TraditionalOpenSSL,
                                 serialization.NoEncryption())
    resp = client.dkim_keys.create(data={"signing_domain": name, "selector": "imported", "bits": "2048"},
                                   files=[("pem", ("server.key", pem))])
    assert resp.status_code == 200, resp.text
    der = imported.public_key().public_bytes(serialization.Encoding.DER,
                                             serialization.PublicFormat.SubjectPublicKeyInfo)
    assert resp.json()["dns_record"]["value"] == f"v=DKIM1; k=rsa; p={base64.b64encode(der).decode()}"
    # at most 3 keys wait to be activated per signing domain
    resp = client.dkim_keys.create(data={"signing_domain": name, "selector": "ed1", "algorithm": "ed25519"})
    assert resp.status_code == 400 and "already has 3 keys" in resp.json()["message"]
    assert client.dkim_keys.delete(filters={"signing_domain": name, "selector": "k1024"}).json() == {
        "message": "success"}
    assert "k1024" not in {r["selector"] for r in key_rows(db, domain["id"])}
    # ed25519: Envoi's `algorithm` parameter
    resp = client.dkim_keys.create(data={"signing_domain": name, "selector": "ed1", "algorithm": "ed25519"})
    assert resp.status_code == 200, resp.text
    assert resp.json()["dns_record"]["value"].startswith("v=DKIM1; k=ed25519; p=")

    listed = client.dkim_keys.get(filters={"signing_domain": name, "limit": 100}).json()
    by_selector = {k["selector"]: k for k in listed["items"]}
    assert by_selector[domain["dkim_selector"]]["active"] is True  # the domain's signing key
    assert {s: by_selector[s]["state"] for s in ("k2048", "ed1", "imported")} == dict.fromkeys(
        ("k2048", "ed1", "imported"), "inactive")
    assert by_selector["k2048"]["dns_record"] == {**made["k2048"], "is_active": False}
    assert "paging" in listed and by_selector["imported"]["bits"] == 2048
    everything = client.dkim_keys.get(filters={"limit": 2}).json()  # every domain of the account, paged
    assert len(everything["items"]) == 2 and everything["paging"]["next"].endswith("limit=2&page=2")
    second = client.dkim_keys.get(filters={"limit": 2, "page": 2}).json()["items"]
    assert {(k["signing_domain"], k["selector"]) for k in everything["items"]}.isdisjoint(
        {(k["signing_domain"], k["selector"]) for k in second})
    one = client.dkim_keys.get(filters={"signing_domain": name, "selector": "k2048"}).json()["items"]
    assert [k["selector"] for k in one] == ["k2048"]

    # private keys are sealed at rest, under the signing domain
    rows = {r["selector"]: r for r in key_rows(db, domain["id"])}
    for row in rows.values():
        sealed = bytes(row["private_key"])
        assert b"PRIVATE KEY" not in sealed
        opened = services.sealer.open(sealed, dkim_keys.context(row["algorithm"], name))
        assert opened.startswith(b"-----BEGIN PRIVATE KEY-----")
    assert services.sealer.open(bytes(rows["imported"]["private_key"]), dkim_keys.context("rsa", name)) == \
        imported.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                               serialization.NoEncryption())

    # an Ed25519 PEM, as a form string
    assert client.dkim_keys.delete(filters={"signing_domain": name, "selector": "k2048"}).status_code == 200
    ed_pem = ed25519.Ed25519PrivateKey.generate().private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()).decode()
    resp = client.dkim_keys.create(data={"signing_domain": name, "selector": "edpem", "pem": ed_pem})
    assert resp.status_code == 200 and resp.json()["dns_record"]["value"].startswith("v=DKIM1; k=ed25519; p=")
    # the signing key cannot be deleted
    resp = client.dkim_keys.delete(filters={"signing_domain": name, "selector": domain["dkim_selector"]})
    assert resp.status_code == 400 and "activate another key first" in resp.json()["message"]
    assert client.dkim_keys.delete(filters={"signing_domain": name, "selector": "nope"}).status_code == 404


@pytest.mark.parametrize("fields, status, message", [
    ({"bits": "512"}, 400, "bits must be 1024 or 2048"),
    ({"selector": "a.b"}, 400, "selector must be one DNS label"),
    ({"selector": "a b"}, 400, "selector must be one DNS label"),
    ({"selector": "a\r\nb"}, 400, "selector must be one DNS label"),
    ({"selector": ""}, 400, "selector must be one DNS label"),
    ({"algorithm": "dsa"}, 400, "algorithm must be rsa or ed25519"),
    ({"algorithm": "ed25519", "bits": "2048"}, 400, "bits is for RSA keys"),
    ({"pem": "-----BEGIN PRIVATE KEY-----\nnot a key\n-----END PRIVATE KEY-----\n"}, 400, "pem is not"),
    ({"signing_domain": "unknown-domain.example.test"}, 404, "Domain not found"),
])
def test_bad_input_is_refused_and_changes_nothing(sdk, domain, db, fields, status, message):
    client, *_ = sdk
    data = {"signing_domain": domain["name"], "selector": "good", "bits": "1024", **fields}
    resp = client.dkim_keys.create(data=data)
    assert resp.status_code == status and message in resp.json()["message"], resp.text
    assert key_rows(db, domain["id"]) == []


def test_another_tenants_domain_is_not_found(sdk, services, domain, db):
    client, *_ = sdk
    other_account = services.accounts.create_account("other tenant")
    theirs = services.accounts.add_domain(other_account["id"], f"{uuid.uuid4().hex[:8]}.theirs.test",
                                          dkim_key_size=1024, verified=True)
    resp = client.dkim_keys.create(data={"signing_domain": theirs["name"], "selector": "mine", "bits": "1024"})
    assert resp.status_code == 404 and resp.json() == {"message": f"Domain not found: {theirs['name']}"}
    assert client.dkim_keys.get(filters={"signing_domain": theirs["name"]}).status_code == 404
    assert client.dkim_keys.delete(filters={"signing_domain": theirs["name"],
                                            "selector": theirs["dkim_selector"]}).status_code == 404
    assert client.domains_dkimselector.put(domain=theirs["name"], data={"dkim_selector": "x"}).status_code == 404
    assert client.domains_dkimauthority.put(domain=theirs["name"], data={"self": "false"}).status_code == 404
    assert client.dkim_management_rotate.create(domain=theirs["name"]).status_code == 404
    _, url, key = sdk
    resp = requests.put(f"{url}/v4/domains/{theirs['name']}/keys/{theirs['dkim_selector']}/activate",
                        auth=("api", key), timeout=10)
    assert resp.status_code == 404 and resp.json() == {"message": f"Domain not found: {theirs['name']}"}
    assert key_rows(db, theirs["id"]) == []
    assert services.accounts.get_domain_by_id(theirs["id"])["dkim_selector"] == theirs["dkim_selector"]
    assert services.accounts.get_domain_by_id(theirs["id"])["dkim_pending_selector"] is None


def test_activation_needs_the_record_in_dns_and_keeps_the_old_key_retiring(sdk, services, domain, dns, db):
    client, url, key = sdk
    name = domain["name"]
    record = client.dkim_keys.create(data={"signing_domain": name, "selector": "next", "bits": "2048"}).json()
    record = record["dns_record"]
    def put(action, selector):
        # The SDK (mailgun 1.10) builds this URL as /v4/{domain}/%7Bauthority_name%7D/keys/%7Bselector%7D/...
        # (its placeholders are never filled in): the documented path, over plain HTTP.
        return requests.put(f"{url}/v4/domains/{name}/keys/{selector}/{action}", auth=("api", key), timeout=10)

    resp = put("activate", "next")  # not published yet: refused, the old key still signs
    assert resp.status_code == 400 and "was not found" in resp.json()["message"]
    assert services.accounts.get_domain_by_id(domain["id"])["dkim_selector"] == domain["dkim_selector"]
    publish(dns, record)
    resp = put("activate", "next")
    assert resp.status_code == 200, resp.text
    assert resp.json() == {"message": "domain key activated", "authority": name, "selector": "next", "active": True}
    row = services.accounts.get_domain_by_id(domain["id"])
    assert row["dkim_selector"] == "next" and row["dkim_key_size"] == 2048
    # the old key is retiring: listed so, and its record still asked for in the domain's records
    states = {k["selector"]: k["state"] for k in client.dkim_keys.get(filters={"signing_domain": name}).json()["items"]}
    assert states == {"next": "active", domain["dkim_selector"]: "retiring"}
    records = client.domains.get(domain_name=name).json()["sending_dns_records"]
    old = [r for r in records if r["name"] == f"{domain['dkim_selector']}._domainkey.{name}"]
    assert old and old[0]["retiring"] is True
    assert put("deactivate", "next").status_code == 400  # the RSA key is replaced, never just dropped
    # ed25519: activated beside the RSA key, deactivated again (kept inactive)
    ed = client.dkim_keys.create(data={"signing_domain": name, "selector": "ed", "algorithm": "ed25519"}).json()
    publish(dns, ed["dns_record"])
    assert put("activate", "ed").status_code == 200
    assert services.accounts.get_domain_by_id(domain["id"])["dkim_ed25519_selector"] == "ed"
    resp = put("deactivate", "ed")
    assert resp.status_code == 200 and resp.json()["active"] is False
    assert services.accounts.get_domain_by_id(domain["id"])["dkim_ed25519_selector"] is None
    assert ("ed", "inactive") in {(r["selector"], r["state"]) for r in key_rows(db, domain["id"])}


def test_rotation_settings_and_rotate_now(sdk, services, domain, db):
    client, *_ = sdk
    name = domain["name"]
    resp = client.dkim_management_rotation.put(domain=name, data={"rotation_enabled": "true",
                                                                  "rotation_interval": "10d"})
    assert resp.status_code == 200, resp.text
    managed = resp.json()["domain"]
    assert (managed["name"], managed["rotation_enabled"], managed["rotation_interval"]) == (name, "true", "10d")
    assert managed["active_selector"] == domain["dkim_selector"] and managed["state"] == "enabled"
    assert client.dkim_management_rotation.get(domain=name).json()["domain"]["rotation_interval"] == "10d"
    for bad in ({"rotation_enabled": "true", "rotation_interval": "2d"},
                {"rotation_enabled": "maybe"}, {"rotation_enabled": "true", "rotation_interval": "soon"}):
        resp = client.dkim_management_rotation.put(domain=name, data=bad)
        assert resp.status_code == 400, bad
    row = db.execute("SELECT dkim_rotation_enabled, extract(epoch from dkim_rotation_interval) AS s FROM domains"
                     " WHERE id = %s", (domain["id"],)).fetchone()
    assert row["dkim_rotation_enabled"] and row["s"] == 10 * 86400  # unchanged by the refused ones

    resp = client.dkim_management_rotate.create(domain=name)
    assert resp.status_code == 200 and resp.json() == {"message": "ok"}
    row = services.accounts.get_domain_by_id(domain["id"])
    assert row["dkim_pending_selector"] and row["dkim_selector"] == domain["dkim_selector"]  # pending, not signing
    pending = [k for k in client.dkim_keys.get(filters={"signing_domain": name}).json()["items"]
               if k["state"] == "pending"]
    assert [k["selector"] for k in pending] == [row["dkim_pending_selector"]]
    # deleting the pending key calls the rotation off (and leaves no lookup for the scheduler to make)
    resp = client.dkim_keys.delete(filters={"signing_domain": name, "selector": row["dkim_pending_selector"]})
    assert resp.status_code == 200
    assert services.accounts.get_domain_by_id(domain["id"])["dkim_pending_selector"] is None


def test_dkim_selector_changes_with_validation(sdk, services, account, db):
    client, *_ = sdk
    unverified = services.accounts.add_domain(account["id"], f"{uuid.uuid4().hex[:8]}.fresh.test",
                                              dkim_key_size=1024)
    name = unverified["name"]
    resp = client.domains_dkimselector.put(domain=name, data={"dkim_selector": "s2026"})
    assert resp.status_code == 200 and resp.json() == {"message": "Domain DKIM selector updated"}
    row = services.accounts.get_domain_by_id(unverified["id"])
    assert row["dkim_selector"] == "s2026" and row["dkim_public_key"] == unverified["dkim_public_key"]
    for bad in ("a.b", "two words", "x\r\ny", "-lead"):
        resp = client.domains_dkimselector.put(domain=name, data={"dkim_selector": bad})
        assert resp.status_code == 400, bad
    assert services.accounts.get_domain_by_id(unverified["id"])["dkim_selector"] == "s2026"
    assert client.domains_dkimselector.put(domain="missing.example.test",
                                           data={"dkim_selector": "a"}).status_code == 404


def test_dkim_selector_of_a_verified_domain_waits_for_its_record(sdk, services, domain):
    client, *_ = sdk
    resp = client.domains_dkimselector.put(domain=domain["name"], data={"dkim_selector": "renamed"})
    assert resp.status_code == 200
    row = services.accounts.get_domain_by_id(domain["id"])
    # the same key under the new name, pending: the old selector signs until the record is found
    assert (row["dkim_selector"], row["dkim_pending_selector"]) == (domain["dkim_selector"], "renamed")
    assert row["dkim_pending_public_key"] == domain["dkim_public_key"]
    assert client.dkim_keys.delete(filters={"signing_domain": domain["name"], "selector": "renamed"}).status_code == 200


def test_dkim_authority_signs_as_the_parent(sdk, services, account):
    client, *_ = sdk
    parent = services.accounts.add_domain(account["id"], f"{uuid.uuid4().hex[:8]}.parent.test",
                                          dkim_key_size=1024, verified=True)
    sub = services.accounts.add_domain(account["id"], f"mail.{parent['name']}", dkim_key_size=1024, verified=True)
    resp = client.domains_dkimauthority.put(domain=sub["name"], data={"self": "false"})
    assert resp.status_code == 200, resp.text
    body = resp.json()
    assert body["changed"] is True and body["message"] == "Domain DKIM authority has been changed"
    dkim_records = [r for r in body["sending_dns_records"] if "._domainkey." in r["name"]]
    assert [(r["name"], r["value"]) for r in dkim_records] == [
        (f"{parent['dkim_selector']}._domainkey.{parent['name']}", f"v=DKIM1; k=rsa; p={parent['dkim_public_key']}")]
    assert services.accounts.get_domain_by_id(sub["id"])["dkim_authority_id"] == parent["id"]
    again = client.domains_dkimauthority.put(domain=sub["name"], data={"self": "false"}).json()
    assert again["changed"] is False
    resp = client.dkim_management_rotate.create(domain=sub["name"])  # the parent's rotation applies
    assert resp.status_code == 400 and "rotate that domain's key" in resp.json()["message"]
    assert services.accounts.get_domain_by_id(sub["id"])["dkim_pending_selector"] is None
    # a domain with no parent in the account cannot delegate; a bad value is refused
    resp = client.domains_dkimauthority.put(domain=parent["name"], data={"self": "false"})
    assert resp.status_code == 400 and "No parent domain" in resp.json()["message"]
    assert client.domains_dkimauthority.put(domain=sub["name"], data={"self": "perhaps"}).status_code == 400
    assert services.accounts.get_domain_by_id(parent["id"])["dkim_authority_id"] is None
    resp = client.domains_dkimauthority.put(domain=sub["name"], data={"self": "true"})
    assert resp.json()["changed"] is True
    assert services.accounts.get_domain_by_id(sub["id"])["dkim_authority_id"] is None
