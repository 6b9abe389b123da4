"""Domain create's DKIM options and the list's include_subaccounts, through the official `mailgun` SDK:
dkim_selector and dkim_key_size make the domain's key, force_dkim_authority=false signs as the account's
root domain, and a parent lists its subaccounts' domains only when it asks."""

from __future__ import annotations

import base64

from cryptography.hazmat.primitives.serialization import load_der_public_key
from mailgun.client import Client

from tests.integration.domains.conftest import new_name, new_tenant


def dkim_records(body: dict) -> list[tuple[str, str]]:
    return [(r["name"], r["value"]) for r in body["sending_dns_records"] if "._domainkey." in r["name"]]


def test_create_with_dkim_selector_key_size_and_authority(tenant, services, server, db):
    account, _, sdk = tenant
    root = new_name("root")
    # A selector is one DNS label (as for /v1/dkim/keys and PUT …/dkim_selector): a dot is a 400, nothing made.
    resp = sdk.domains.create(data={"name": root, "dkim_selector": "mg.2024", "dkim_key_size": "1024"})
    assert resp.status_code == 400 and "selector" in resp.json()["message"]
    assert db.execute("SELECT count(*) AS n FROM domains WHERE name = %s", (root,)).fetchone()["n"] == 0
    resp = sdk.domains.create(data={"name": root, "dkim_selector": "MG2024", "dkim_key_size": "1024"})
    assert resp.status_code == 200, resp.text
    row = services.accounts.get_domain(root, account["id"])
    assert (row["dkim_selector"], row["dkim_key_size"]) == ("mg2024", 1024)
    key = load_der_public_key(base64.b64decode(row["dkim_public_key"]))
    assert key.key_size == 1024  # the key itself, not only the column
    assert dkim_records(resp.json()) == [(f"mg2024._domainkey.{root}", f"v=DKIM1; k=rsa; p={row['dkim_public_key']}")]

    # force_dkim_authority=false: the subdomain signs as the account's root domain, whose record it lists.
    resp = sdk.domains.create(data={"name": f"mail.{root}", "force_dkim_authority": "false", "dkim_key_size": "1024"})
    assert resp.status_code == 200, resp.text
    assert dkim_records(resp.json()) == [(f"mg2024._domainkey.{root}", f"v=DKIM1; k=rsa; p={row['dkim_public_key']}")]
    assert services.accounts.get_domain(f"mail.{root}", account["id"])["dkim_authority_id"] == row["id"]
    # true (and the default): its own authority, its own record.
    for extra in ({"force_dkim_authority": "true"}, {}):
        name = f"{extra and 'own' or 'dflt'}.{root}"
        resp = sdk.domains.create(data={"name": name, "dkim_key_size": "1024", **extra})
        assert resp.status_code == 200, resp.text
        own = services.accounts.get_domain(name, account["id"])
        assert own["dkim_authority_id"] is None
        assert dkim_records(resp.json()) == [(f"{own['dkim_selector']}._domainkey.{name}",
                                              f"v=DKIM1; k=rsa; p={own['dkim_public_key']}")]
    # No root domain in the account: false leaves the domain its own authority.
    lone = new_name("lone")
    resp = sdk.domains.create(data={"name": f"mail.{lone}", "force_dkim_authority": "false", "dkim_key_size": "1024"})
    assert resp.status_code == 200, resp.text
    assert services.accounts.get_domain(f"mail.{lone}", account["id"])["dkim_authority_id"] is None
    # Another account's root is never the authority: its own subdomain of our root stays its own.
    other, other_key = new_tenant(services)
    other_sdk = Client(auth=("api", other_key), api_url=server.url)
    resp = other_sdk.domains.create(data={"name": f"x.{root}", "force_dkim_authority": "false",
                                          "dkim_key_size": "1024"})
    assert resp.status_code == 200, resp.text
    assert services.accounts.get_domain(f"x.{root}", other["id"])["dkim_authority_id"] is None
    assert f"._domainkey.x.{root}" in dkim_records(resp.json())[0][0]
    # A bad value is Mailgun's 400 and creates nothing.
    bad = new_name("bad")
    resp = sdk.domains.create(data={"name": bad, "force_dkim_authority": "maybe"})
    assert resp.status_code == 400 and "force_dkim_authority" in resp.json()["message"]
    assert db.execute("SELECT count(*) AS n FROM domains WHERE name = %s", (bad,)).fetchone()["n"] == 0


def test_list_include_subaccounts(tenant, services, server):
    account, _, sdk = tenant
    own = new_name("own")
    assert sdk.domains.create(data={"name": own, "dkim_key_size": "1024"}).status_code == 200
    sub_id = sdk.accounts_subaccounts.create(filters={"name": "shop"}).json()["subaccount"]["id"]
    behalf = {"X-Mailgun-On-Behalf-Of": sub_id}
    sub_domain = new_name("sub")
    assert sdk.domains.create(data={"name": sub_domain, "dkim_key_size": "1024"}, headers=behalf).status_code == 200
    other, other_key = new_tenant(services)
    other_sdk = Client(auth=("api", other_key), api_url=server.url)
    other_sub = other_sdk.accounts_subaccounts.create(filters={"name": "x"}).json()["subaccount"]["id"]
    foreign = new_name("foreign")
    assert other_sdk.domains.create(data={"name": foreign, "dkim_key_size": "1024"},
                                    headers={"X-Mailgun-On-Behalf-Of": other_sub}).status_code == 200

    def names(**kwargs):
        resp = sdk.domainlist.get(**kwargs)
        assert resp.status_code == 200, resp.text
        body = resp.json()
        assert body["total_count"] == len(body["items"])
        return {i["name"]: i.get("subaccount_id") for i in body["items"]}

    assert names() == {own: None}
    assert names(filters={"include_subaccounts": "false"}) == {own: None}
    assert names(filters={"include_subaccounts": "true"}) == {own: None, sub_domain: sub_id}
    assert names(filters={"include_subaccounts": "true", "search": "sub-"}) == {sub_domain: sub_id}
    # The subaccount itself (the parent acting for it) has no subaccounts: its own domain only.
    assert names(filters={"include_subaccounts": "true"}, headers=behalf) == {sub_domain: None}
    resp = sdk.domainlist.get(filters={"include_subaccounts": "maybe"})
    assert resp.status_code == 400 and "include_subaccounts" in resp.json()["message"]
