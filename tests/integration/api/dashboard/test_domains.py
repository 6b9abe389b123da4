"""Domains pages: list, add, delete; DNS records with their status from real lookups on the test DNS
server; SMTP credentials; tracking settings. Same services as /v4/domains; roles; tenant isolation."""

from __future__ import annotations

import base64
import re
import uuid

import pytest
from cryptography.hazmat.primitives import serialization

from envoi.accounts.service import dns_records, dns_targets
from envoi.infra import dkim_keys
from tests.conftest import basic
from tests.support.dns_server import DnsServer


@pytest.fixture(scope="module")
def dns():
    with DnsServer() as server:
        yield server


@pytest.fixture
def api_settings(settings, dns):
    """The dashboard's verification looks records up on this module's DNS server."""
    return settings.replace(dns_resolver=("127.0.0.1", dns.port), tracking_host="track.eu.envoi.test")


def new_name() -> str:
    return f"{uuid.uuid4().hex[:8]}.example.test"


def domain_rows(db, account_id) -> list[str]:
    return [r["name"] for r in db.execute("SELECT name FROM domains WHERE account_id = %s ORDER BY id",
                                          (account_id,)).fetchall()]


def valid_of(html: str, rtype: str, name: str) -> str:
    row = re.search(rf'<tr data-record="{rtype} {re.escape(name)}">(.*?)</tr>', html, re.S).group(1)
    return re.search(r'data-valid="(\w+)"', row).group(1)


def test_the_list_shows_each_domain_with_its_state(page_as, domain, services, account):
    pending = services.accounts.add_domain(account["id"], new_name(), dkim_key_size=1024)
    html = page_as("developer").get("/dashboard/domains").text
    assert f'<tr data-domain="{domain["name"]}">' in html and f'<tr data-domain="{pending["name"]}">' in html
    assert '<span class="badge active">active</span>' in html and '<span class="badge unverified">unverified</span>' in html


def test_adding_a_domain_creates_it_unverified_and_shows_its_records(page_as, account, db, settings):
    page, name = page_as("admin"), new_name()
    resp = page.post("/dashboard/domains", {"name": name.upper(), "dkim_key_size": "1024"})
    assert resp.status_code == 303 and resp.headers["Location"] == f"/dashboard/domains/{name}?done=added"
    row = db.execute("SELECT * FROM domains WHERE name = %s AND account_id = %s", (name, account["id"])).fetchone()
    assert row["state"] == "unverified" and row["dkim_key_size"] == 1024
    html = page.get(f"/dashboard/domains/{name}", done="added").text
    expected = dns_records(row, **dns_targets(settings))  # exactly what the API's GET returns
    for record in expected["sending_dns_records"] + expected["receiving_dns_records"]:
        assert record["value"] in html.replace("&#34;", '"')
    assert "Publish its DNS records" in html


def test_a_bad_name_is_shown_in_the_form_and_changes_nothing(page_as, account, db):
    before = domain_rows(db, account["id"])
    resp = page_as("admin").post("/dashboard/domains", {"name": "not a domain", "dkim_key_size": "1024"})
    assert resp.status_code == 400 and "is not a valid domain name" in resp.text
    assert 'value="not a domain"' in resp.text  # the form keeps what was typed
    assert domain_rows(db, account["id"]) == before


def test_deleting_a_domain_removes_it(page_as, account, services, db):
    row = services.accounts.add_domain(account["id"], new_name(), dkim_key_size=1024)
    page = page_as("admin")
    assert 'data-confirm="Delete ' in page.get("/dashboard/domains").text
    resp = page.post(f"/dashboard/domains/{row['name']}/delete")
    assert resp.status_code == 303 and resp.headers["Location"] == "/dashboard/domains?done=deleted"
    assert row["name"] not in domain_rows(db, account["id"])


def test_verify_now_shows_each_record_as_the_dns_server_has_it_and_activates(page_as, account, services, dns,
                                                                             db):
    row = services.accounts.add_domain(account["id"], new_name(), dkim_key_size=1024)
    name, dkim_name = row["name"], f"envoi._domainkey.{row['name']}"
    page = page_as("admin")
    html = page.get(f"/dashboard/domains/{name}").text
    assert valid_of(html, "TXT", dkim_name) == "unknown"  # not looked up on a plain GET
    dns.add(name, "TXT", "v=spf1 include:spf.eu.envoi.test ~all")  # SPF published, DKIM not yet
    html = page.post(f"/dashboard/domains/{name}/verify").text
    assert valid_of(html, "TXT", name) == "valid" and valid_of(html, "TXT", dkim_name) == "invalid"
    assert valid_of(html, "TXT", f"_dmarc.{name}") == "invalid"  # the suggested DMARC record
    assert db.execute("SELECT state FROM domains WHERE id = %s", (row["id"],)).fetchone()["state"] == "unverified"
    dns.servfail(f"email.{name}")  # the tracking CNAME cannot be looked up now
    dns.add(dkim_name, "TXT", f"v=DKIM1; k=rsa; p={row['dkim_public_key']}")
    html = page.post(f"/dashboard/domains/{name}/verify").text
    assert valid_of(html, "TXT", dkim_name) == "valid" and valid_of(html, "CNAME", f"email.{name}") == "unknown"
    assert "The domain is verified." in html
    assert db.execute("SELECT state FROM domains WHERE id = %s", (row["id"],)).fetchone()["state"] == "active"


def test_smtp_credentials_are_created_with_a_password_shown_once_changed_and_deleted(page_as, domain, services,
                                                                                   db):
    page, name = page_as("admin"), domain["name"]
    resp = page.post(f"/dashboard/domains/{name}/credentials", {"login": "robot", "password": ""})
    assert resp.status_code == 200
    generated = re.search(r'<code id="new-password">([^<]+)</code>', resp.text).group(1)
    assert len(generated) >= 20
    assert services.accounts.authenticate_smtp(f"robot@{name}", generated) is not None
    assert generated not in page.get(f"/dashboard/domains/{name}").text  # shown once only
    resp = page.post(f"/dashboard/domains/{name}/credentials/password", {"login": f"robot@{name}",
                                                                         "password": "typed-secret"})
    assert resp.status_code == 200 and "typed-secret" in resp.text
    assert services.accounts.authenticate_smtp(f"robot@{name}", "typed-secret") is not None
    assert services.accounts.authenticate_smtp(f"robot@{name}", generated) is None
    short = page.post(f"/dashboard/domains/{name}/credentials/password", {"login": f"robot@{name}", "password": "abc"})
    assert short.status_code == 400 and "between 5 and 32" in short.text
    assert services.accounts.authenticate_smtp(f"robot@{name}", "typed-secret") is not None
    resp = page.post(f"/dashboard/domains/{name}/credentials/delete", {"login": f"robot@{name}"})
    assert resp.status_code == 303
    assert db.execute("SELECT count(*) AS n FROM smtp_credentials WHERE login = %s",
                      (f"robot@{name}",)).fetchone()["n"] == 0


def test_tracking_switches_are_saved_as_the_api_reads_them(page_as, domain, services):
    page, name = page_as("developer"), domain["name"]
    resp = page.post(f"/dashboard/domains/{name}/tracking", {"open": "yes", "click": "htmlonly"})
    assert resp.status_code == 303
    tracking = services.tracking.settings_json(domain)["tracking"]
    assert (tracking["open"]["active"], tracking["click"]["active"], tracking["unsubscribe"]["active"]) == (
        True, "htmlonly", False)
    bad = page.post(f"/dashboard/domains/{name}/tracking", {"open": "no", "click": "sometimes"})
    assert bad.status_code == 400
    assert services.tracking.settings_json(domain)["tracking"]["open"]["active"] is True  # nothing changed
    html = page.get(f"/dashboard/domains/{name}").text
    assert 'name="open" value="yes" checked' in html


def test_dkim_selector_and_record_are_shown(page_as, domain):
    html = page_as("admin").get(f"/dashboard/domains/{domain['name']}").text
    assert '<dd class="mono" id="dkim-selector">envoi</dd>' in html
    assert f"p={domain['dkim_public_key']}" in html


@pytest.mark.parametrize("role", ["support", "analyst"])
def test_roles_without_manage_domains_get_403_and_change_nothing(page_as, role, domain, account, db):
    page, before = page_as(role), domain_rows(db, account["id"])
    assert page.get("/dashboard/domains").status_code == 403
    assert page.get(f"/dashboard/domains/{domain['name']}").status_code == 403
    assert page.post("/dashboard/domains", {"name": new_name()}).status_code == 403
    assert page.post(f"/dashboard/domains/{domain['name']}/delete").status_code == 403
    assert domain_rows(db, account["id"]) == before


def test_another_accounts_user_gets_404_everywhere_and_changes_nothing(page_as, services, domain, account, db):
    services.accounts.create_credential(account["id"], domain["name"], "owner", "owner-secret")
    other = page_as("admin", of=services.accounts.create_account("other"))
    name = domain["name"]
    assert other.get(f"/dashboard/domains/{name}").status_code == 404
    assert name not in other.get("/dashboard/domains").text
    for path, fields in [("verify", {}), ("delete", {}), ("credentials", {"login": "x", "password": "hijack1"}),
                         ("credentials/password", {"login": f"owner@{name}", "password": "hijack1"}),
                         ("credentials/delete", {"login": f"owner@{name}"}),
                         ("tracking", {"open": "yes", "click": "yes", "unsubscribe": "yes"})]:
        resp = other.post(f"/dashboard/domains/{name}/{path}", fields)
        assert resp.status_code == 404, path
    assert domain_rows(db, account["id"]) == [name]
    assert services.accounts.authenticate_smtp(f"owner@{name}", "owner-secret") is not None
    assert [c["login"] for c in services.accounts.list_credentials(account["id"], name)] == [f"owner@{name}"]
    assert services.tracking.settings_json(domain)["tracking"]["open"]["active"] is False


def test_a_dkim_rotation_signs_with_the_new_key_only_once_its_record_is_found(page_as, services, account, dns,
                                                                             client, settings):
    row = services.accounts.add_domain(account["id"], new_name(), dkim_key_size=1024, verified=True)
    name, old_selector, old_public = row["name"], row["dkim_selector"], row["dkim_public_key"]
    page = page_as("admin")
    resp = page.post(f"/dashboard/domains/{name}/dkim/rotate")
    assert resp.status_code == 303 and resp.headers["Location"] == f"/dashboard/domains/{name}?done=rotation"
    pending = services.accounts.get_domain(name, account["id"])
    new_selector = pending["dkim_pending_selector"]
    assert new_selector and new_selector != old_selector
    assert (pending["dkim_selector"], pending["dkim_public_key"]) == (old_selector, old_public)  # still signing old
    html = page.get(f"/dashboard/domains/{name}").text
    assert f"{new_selector}._domainkey.{name}" in html and pending["dkim_pending_public_key"] in html
    # the API lists the next key's record too, so it can be published before the switch
    _, key = services.accounts.create_key(account["id"], "admin")
    api = client.simulate_get(f"/v4/domains/{name}", headers=basic(key)).json
    assert f"{new_selector}._domainkey.{name}" in [r["name"] for r in api["sending_dns_records"]]

    html = page.post(f"/dashboard/domains/{name}/verify").text  # not published yet: nothing switches
    assert valid_of(html, "TXT", f"{new_selector}._domainkey.{name}") == "invalid"
    assert services.accounts.get_domain(name, account["id"])["dkim_selector"] == old_selector

    dns.add(f"{new_selector}._domainkey.{name}", "TXT", f"v=DKIM1; k=rsa; p={pending['dkim_pending_public_key']}")
    page.post(f"/dashboard/domains/{name}/verify")
    switched = services.accounts.get_domain(name, account["id"])
    assert (switched["dkim_selector"], switched["dkim_public_key"]) == (new_selector,
                                                                        pending["dkim_pending_public_key"])
    assert switched["dkim_pending_selector"] is None and switched["dkim_rotated_at"] is not None
    # the relay's signing key is the new private key: it matches the published public key
    private = dkim_keys.load_rsa(services.accounts.dkim_private_key(switched))
    der = private.public_key().public_bytes(serialization.Encoding.DER,
                                            serialization.PublicFormat.SubjectPublicKeyInfo)
    assert base64.b64encode(der).decode() == switched["dkim_public_key"]
    html = page.get(f"/dashboard/domains/{name}").text
    assert f'<dd class="mono" id="dkim-selector">{new_selector}</dd>' in html and 'id="pending-dkim"' not in html
    # the replaced key's record is still asked for while mail it signed may be queued (docs/dkim.md)
    assert f"{old_selector}._domainkey.{name}" in html and "retiring: keep while its mail is queued" in html


def test_another_account_cannot_rotate_the_key(page_as, services, domain, account):
    other = page_as("admin", of=services.accounts.create_account("other"))
    assert other.post(f"/dashboard/domains/{domain['name']}/dkim/rotate").status_code == 404
    assert services.accounts.get_domain(domain["name"], account["id"])["dkim_pending_selector"] is None


def test_the_pages_carry_the_strict_policy_and_no_inline_script_style_or_handlers(page_as, domain):
    from envoi.api.dashboard import security

    page = page_as("admin")
    for path in ("/dashboard/domains", f"/dashboard/domains/{domain['name']}", "/dashboard/suppressions",
                 "/dashboard/suppressions?kind=whitelists", "/dashboard/webhooks"):
        resp = page.get(path)
        assert resp.status_code == 200, path
        assert resp.headers["content-security-policy"] == security.PAGE_POLICY, path
        assert not re.search(r"<script(?![^>]*\bsrc=)", resp.text), path
        assert " style=" not in resp.text and not re.search(r"\son[a-z]+=", resp.text), path
