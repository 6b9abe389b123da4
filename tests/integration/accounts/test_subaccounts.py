"""Subaccounts, X-Mailgun-On-Behalf-Of and custom monthly sending limits, through the official `mailgun`
SDK against the API on a real HTTP server: a parent's key acts as its own subaccounts only; each side's
data stays its own; a disabled subaccount cannot send; a custom limit is enforced at accept."""

from __future__ import annotations

import uuid

import pytest
from mailgun.client import Client

from envoi.api.app import create_app
from tests.support.events import AppServer

BEHALF = "X-Mailgun-On-Behalf-Of"


@pytest.fixture(scope="module")
def server(services):
    with AppServer(create_app(services.settings, services)) as srv:
        yield srv


def new_domain(services, account_id: int) -> dict:
    return services.accounts.add_domain(account_id, f"{uuid.uuid4().hex[:8]}.example.test", dkim_key_size=1024,
                                        verified=True)


def tenant(services, server):
    """A new account with one verified domain and an SDK client on its admin key."""
    account = services.accounts.create_account(f"acct-{uuid.uuid4().hex[:6]}")
    domain = new_domain(services, account["id"])
    _, secret = services.accounts.create_key(account["id"], "admin")
    return account, domain, Client(auth=("api", secret), api_url=server.url)


def sub_endpoint(sdk, sub_id: str, suffix: str = ""):
    """The SDK's endpoint for /v5/accounts/subaccounts/{id}[/suffix] (it builds paths from attribute names)."""
    return getattr(sdk, f"accounts_subaccounts_{sub_id}{'_' + suffix if suffix else ''}")


def send(sdk, domain_name: str, to: str = "rcpt@subaccounts.test", **kwargs):
    return sdk.messages.create(domain=domain_name, data={"from": f"s@{domain_name}", "to": to, "subject": "hi",
                                                         "text": "body"}, **kwargs)


def messages_of(db, domain_id: int) -> list[dict]:
    return db.execute("SELECT account_id, message_id FROM messages WHERE domain_id = %s ORDER BY id",
                      (domain_id,)).fetchall()


def create_sub(sdk, name: str = "shop") -> str:
    resp = sdk.accounts_subaccounts.create(filters={"name": name})
    assert resp.status_code == 200, resp.text
    body = resp.json()["subaccount"]
    assert body["name"] == name and body["status"] == "open"
    return body["id"]


def test_create_list_get_and_on_behalf_of_acts_on_the_subaccount_only(services, server, db):
    parent, parent_domain, sdk = tenant(services, server)
    sub_id = create_sub(sdk, "shop-eu")
    assert db.execute("SELECT parent_id, region, plan FROM accounts WHERE id = %s", (int(sub_id),)).fetchone() == {
        "parent_id": parent["id"], "region": "eu", "plan": parent["plan"]}
    create_sub(sdk, "blog")
    listed = sdk.accounts_subaccounts.get(filters={"sort": "asc"}).json()
    assert listed["total"] == 2 and [s["name"] for s in listed["subaccounts"]] == ["blog", "shop-eu"]
    assert sdk.accounts_subaccounts.get(filters={"filter": "shop", "limit": 1}).json()["total"] == 1
    assert sub_endpoint(sdk, sub_id).get().json()["subaccount"] == {**listed["subaccounts"][1]}

    sub_domain = new_domain(services, int(sub_id))
    behalf = {"headers": {BEHALF: sub_id}}
    # Reads: the subaccount's domains with the header, the parent's own without.
    sub_view = [d["name"] for d in sdk.domainlist.get(**behalf).json()["items"]]
    parent_view = [d["name"] for d in sdk.domainlist.get().json()["items"]]
    assert sub_view == [sub_domain["name"]] and parent_view == [parent_domain["name"]]
    assert sdk.domains.get(domain=sub_domain["name"], **behalf).status_code == 200
    assert sdk.domains.get(domain=sub_domain["name"]).status_code == 404

    # Sends: on the subaccount's domain, stored under the subaccount; the parent itself has no such domain.
    resp = send(sdk, sub_domain["name"], **behalf)
    assert resp.status_code == 200, resp.text
    assert [m["account_id"] for m in messages_of(db, sub_domain["id"])] == [int(sub_id)]
    assert send(sdk, sub_domain["name"]).status_code == 404
    assert send(sdk, parent_domain["name"], **behalf).status_code == 404  # the header acts as the sub only
    assert messages_of(db, parent_domain["id"]) == [] and len(messages_of(db, sub_domain["id"])) == 1

    # Events and suppressions of the subaccount, through the header.
    events = sdk.events.get(domain=sub_domain["name"], filters={"event": "accepted"}, **behalf)
    assert events.status_code == 200 and len(events.json()["items"]) == 1
    assert sdk.events.get(domain=sub_domain["name"]).status_code == 404
    assert sdk.bounces.create(domain=sub_domain["name"], data={"address": "gone@subaccounts.test"},
                              **behalf).status_code == 200
    assert db.execute("SELECT count(*) AS n FROM suppress_bounces WHERE domain_id = %s",
                      (sub_domain["id"],)).fetchone()["n"] == 1


def test_other_accounts_and_the_subaccount_itself_cannot_use_the_link(services, server, db):
    parent, parent_domain, sdk = tenant(services, server)
    sub_id = create_sub(sdk)
    sub_domain = new_domain(services, int(sub_id))
    other, _, other_sdk = tenant(services, server)
    other_sub = create_sub(other_sdk)

    # Another account's key naming this subaccount, or a parent naming another's: 403, the same words as
    # for an id that does not exist.
    refused = [other_sdk.domainlist.get(headers={BEHALF: sub_id}), sdk.domainlist.get(headers={BEHALF: other_sub}),
               sdk.domainlist.get(headers={BEHALF: "999999999"}), sdk.domainlist.get(headers={BEHALF: "x'1"}),
               send(other_sdk, sub_domain["name"], headers={BEHALF: sub_id})]
    assert [(r.status_code, r.json()) for r in refused] == [(403, {"message": "Forbidden"})] * 5
    assert messages_of(db, sub_domain["id"]) == []
    assert other_sdk.accounts_subaccounts.get().json()["total"] == 1  # its own only
    assert sub_endpoint(other_sdk, sub_id).get().status_code == 404
    assert sub_endpoint(other_sdk, sub_id, "disable").create().status_code == 404

    # The subaccount's own key: its own data, never the parent's; no subaccounts of its own.
    _, sub_secret = services.accounts.create_key(int(sub_id), "admin")
    sub_sdk = Client(auth=("api", sub_secret), api_url=server.url)
    assert [d["name"] for d in sub_sdk.domainlist.get().json()["items"]] == [sub_domain["name"]]
    assert sub_sdk.domainlist.get(headers={BEHALF: str(parent["id"])}).status_code == 403
    assert send(sub_sdk, parent_domain["name"]).status_code == 404
    assert sub_sdk.accounts_subaccounts.create(filters={"name": "nested"}).status_code == 403
    assert sdk.accounts_subaccounts.create(filters={"name": "nested"}, headers={BEHALF: sub_id}).status_code == 403
    assert db.execute("SELECT count(*) AS n FROM accounts WHERE parent_id = %s", (int(sub_id),)).fetchone()["n"] == 0

    # Bad input: 400, nothing made.
    count = db.execute("SELECT count(*) AS n FROM accounts WHERE parent_id = %s", (parent["id"],)).fetchone()["n"]
    assert sdk.accounts_subaccounts.create().status_code == 400
    assert sdk.accounts_subaccounts.create(filters={"name": "x" * 101}).status_code == 400
    assert sdk.accounts_subaccounts.get(filters={"limit": 0}).status_code == 400
    assert db.execute("SELECT count(*) AS n FROM accounts WHERE parent_id = %s",
                      (parent["id"],)).fetchone()["n"] == count


def test_a_disabled_subaccount_cannot_send_until_enabled(services, server, db):
    _, _, sdk = tenant(services, server)
    sub_id = create_sub(sdk)
    sub_domain = new_domain(services, int(sub_id))
    _, sub_secret = services.accounts.create_key(int(sub_id), "sending", domain=sub_domain["name"])
    sub_sdk = Client(auth=("api", sub_secret), api_url=server.url)
    assert send(sub_sdk, sub_domain["name"]).status_code == 200  # its key is cached as enabled

    resp = sub_endpoint(sdk, sub_id, "disable").create()
    assert resp.status_code == 200 and resp.json()["subaccount"]["status"] == "disabled"
    assert sub_endpoint(sdk, sub_id, "disable").create().status_code == 400  # already disabled
    for refused in (send(sub_sdk, sub_domain["name"]), send(sdk, sub_domain["name"], headers={BEHALF: sub_id})):
        assert refused.status_code == 403
        assert refused.json() == {"message": f"Domain {sub_domain['name']} is not allowed to send: the subaccount"
                                             " is disabled"}
    assert len(messages_of(db, sub_domain["id"])) == 1
    # Still readable while disabled.
    assert sdk.domainlist.get(headers={BEHALF: sub_id}).status_code == 200

    assert sub_endpoint(sdk, sub_id, "enable").create().json()["subaccount"]["status"] == "open"
    assert send(sub_sdk, sub_domain["name"]).status_code == 200
    assert len(messages_of(db, sub_domain["id"])) == 2


def test_custom_monthly_limit_of_a_subaccount_is_enforced_at_accept(services, server, db):
    _, _, sdk = tenant(services, server)
    sub_id = create_sub(sdk)
    sub_domain = new_domain(services, int(sub_id))
    limit = sub_endpoint(sdk, sub_id, "limit_custom_monthly")
    assert limit.get().status_code == 404 and limit.get().json() == {"message": "No threshold for account"}
    for bad in ("abc", "0", "-5", ""):
        assert limit.put(filters={"limit": bad}).status_code == 400, bad
    assert limit.get().status_code == 404

    assert limit.put(filters={"limit": 3}).json() == {"success": True}
    assert limit.get().json() == {"limit": 3, "current": 0, "period": "1m"}
    behalf = {"headers": {BEHALF: sub_id}}
    assert send(sdk, sub_domain["name"], to="a@limit.test, b@limit.test", **behalf).status_code == 200
    assert limit.get().json()["current"] == 2
    over = send(sdk, sub_domain["name"], to="c@limit.test, d@limit.test", **behalf)  # 2 more: over 3
    assert over.status_code == 420, over.text
    assert "custom monthly sending limit of 3" in over.json()["message"]
    assert send(sdk, sub_domain["name"], to="c@limit.test", **behalf).status_code == 200  # the last one
    assert len(messages_of(db, sub_domain["id"])) == 2
    assert limit.get().json()["current"] == 3

    # The subaccount cannot lift its parent's cap; another account cannot touch it; the parent can.
    own = sdk.accounts_limit_custom_monthly
    assert own.delete(**behalf).status_code == 403 and own.put(filters={"limit": 5000}, **behalf).status_code == 403
    _, _, other_sdk = tenant(services, server)
    assert sub_endpoint(other_sdk, sub_id, "limit_custom_monthly").delete().status_code == 404
    assert limit.get().json()["limit"] == 3
    assert limit.delete().json() == {"success": True}
    assert limit.get().status_code == 404
    assert send(sdk, sub_domain["name"], to="e@limit.test", **behalf).status_code == 200


def test_the_accounts_own_custom_limit(services, server, db):
    account, domain, sdk = tenant(services, server)
    own = sdk.accounts_limit_custom_monthly
    assert own.get().status_code == 404
    resp = own.put(filters={"limit": 999})
    assert resp.status_code == 400 and "minimum is 1000" in resp.json()["message"]
    assert own.put(filters={"limit": 1000}).json() == {"success": True}
    assert own.get().json() == {"limit": 1000, "current": 0, "period": "1m"}
    assert db.execute("SELECT monthly_limit FROM accounts WHERE id = %s", (account["id"],)).fetchone() == {
        "monthly_limit": 1000}
    assert send(sdk, domain["name"]).status_code == 200
    assert own.get().json()["current"] == 1
    assert own.delete().json() == {"success": True}
    assert db.execute("SELECT monthly_limit FROM accounts WHERE id = %s", (account["id"],)).fetchone() == {
        "monthly_limit": None}
