"""Mailing lists and members through the official Mailgun Python SDK and the HTTP API: CRUD, paging,
bulk JSON and CSV uploads, errors in Mailgun's shape that change nothing, and tenant isolation."""

from __future__ import annotations

import json

import pytest
from mailgun.client import Client

from envoi.api.app import create_app
from tests.conftest import basic
from tests.support.api import multipart, post_form
from tests.support.events import AppServer


@pytest.fixture
def sdk(settings, services, api_key):
    with AppServer(create_app(settings, services)) as srv:
        yield Client(auth=("api", api_key), api_url=srv.url)


def test_sdk_creates_reads_updates_and_deletes_a_list(sdk, domain, db):
    address = f"devs@{domain['name']}"
    created = sdk.lists.create(data={"address": address, "name": "Developers", "description": "the devs",
                                     "access_level": "members", "reply_preference": "sender"})
    assert created.status_code == 200, created.text
    assert created.json()["message"] == "Mailing list has been created"
    assert created.json()["list"] | {"created_at": None} == {
        "address": address, "name": "Developers", "description": "the devs", "access_level": "members",
        "reply_preference": "sender", "created_at": None, "members_count": 0}
    got = sdk.lists.get(address=address).json()["list"]
    assert got["address"] == address and got["created_at"].endswith("-0000")
    updated = sdk.lists.put(address=address, data={"description": "renamed", "access_level": "everyone"}).json()
    assert updated["list"]["description"] == "renamed" and updated["list"]["access_level"] == "everyone"
    assert updated["message"] == "Mailing list has been updated"
    listed = sdk.lists.get().json()
    assert listed["total_count"] == 1 and [i["address"] for i in listed["items"]] == [address]
    assert sdk.lists.delete(address=address).json() == {"address": address, "message": "Mailing list has been removed"}
    assert sdk.lists.get(address=address).status_code == 404
    assert db.execute("SELECT count(*) AS n FROM mailing_lists WHERE address = %s", (address,)).fetchone()["n"] == 0


def test_sdk_manages_members_and_bulk_json(sdk, domain):
    address = f"team@{domain['name']}"
    assert sdk.lists.create(data={"address": address}).status_code == 200
    added = sdk.lists_members.create(address=address, data={"subscribed": True, "address": "bar@example.com",
                                                            "name": "Bob Bar", "vars": '{"age": 26}'})
    assert added.status_code == 200, added.text
    assert added.json() == {"member": {"address": "bar@example.com", "name": "Bob Bar", "vars": {"age": 26},
                                       "subscribed": True}, "message": "Mailing list member has been created"}
    dup = sdk.lists_members.create(address=address, data={"address": "bar@example.com"})
    assert dup.status_code == 400 and dup.json() == {"message": "Address already exists 'bar@example.com'"}
    bulk = sdk.lists_members.create(address=address, multiple=True, data={
        "upsert": True,
        "members": '[{"address": "Alice <alice@example.com>", "vars": {"age": 26}},'
                   '{"name": "Bob1", "address": "bob2@example.com", "vars": {"age": 34}}, "carol@example.com"]'})
    assert bulk.status_code == 200, bulk.text
    assert bulk.json()["list"]["members_count"] == 4 and bulk.json()["message"] == "Mailing list has been updated"
    alice = sdk.lists_members.get(address=address, member_address="alice@example.com").json()["member"]
    assert alice == {"address": "alice@example.com", "name": "Alice", "vars": {"age": 26}, "subscribed": True}
    put = sdk.lists_members.put(address=address, member_address="alice@example.com",
                                data={"subscribed": "no", "name": "Alice B", "vars": '{"age": 27}'}).json()
    assert put["member"] == {"address": "alice@example.com", "name": "Alice B", "vars": {"age": 27},
                             "subscribed": False}
    members = sdk.lists_members.get(address=address).json()
    assert members["total_count"] == 4
    assert [m["address"] for m in members["items"]] == ["alice@example.com", "bar@example.com", "bob2@example.com",
                                                       "carol@example.com"]
    only_subscribed = sdk.lists_members.get(address=address, filters={"subscribed": "yes"}).json()
    assert only_subscribed["total_count"] == 3
    paged = sdk.lists_members_pages.get(address=address, filters={"limit": 2})
    assert paged.status_code == 200, paged.text
    assert [m["address"] for m in paged.json()["items"]] == ["alice@example.com", "bar@example.com"]
    lists_page = sdk.lists_pages.get()
    assert lists_page.status_code == 200 and [i["address"] for i in lists_page.json()["items"]] == [address]
    deleted = sdk.lists_members.delete(address=address, member_address="carol@example.com").json()
    assert deleted == {"member": {"address": "carol@example.com"}, "message": "Mailing list member has been deleted"}
    assert sdk.lists_members.get(address=address, member_address="carol@example.com").status_code == 404


def test_paging_over_lists_and_members(client, api_key, domain, services, account):
    for i in range(5):
        services.lists.create(account["id"], {"address": f"l{i}@{domain['name']}"})
    first = client.simulate_get("/v3/lists/pages", params={"limit": 2}, headers=basic(api_key)).json
    assert [i["address"] for i in first["items"]] == [f"l0@{domain['name']}", f"l1@{domain['name']}"]
    assert "page=next" in first["paging"]["next"] and f"address=l1%40{domain['name']}" in first["paging"]["next"]
    nxt = client.simulate_get("/v3/lists/pages", headers=basic(api_key),
                              params={"limit": 2, "page": "next", "address": f"l1@{domain['name']}"}).json
    assert [i["address"] for i in nxt["items"]] == [f"l2@{domain['name']}", f"l3@{domain['name']}"]
    last = client.simulate_get("/v3/lists/pages", params={"limit": 2, "page": "last"}, headers=basic(api_key)).json
    assert [i["address"] for i in last["items"]] == [f"l3@{domain['name']}", f"l4@{domain['name']}"]
    prev = client.simulate_get("/v3/lists/pages", headers=basic(api_key),
                               params={"limit": 2, "page": "prev", "address": f"l3@{domain['name']}"}).json
    assert [i["address"] for i in prev["items"]] == [f"l1@{domain['name']}", f"l2@{domain['name']}"]
    skipped = client.simulate_get("/v3/lists", params={"limit": 2, "skip": 4}, headers=basic(api_key)).json
    assert skipped["total_count"] == 5 and [i["address"] for i in skipped["items"]] == [f"l4@{domain['name']}"]
    # members
    services.lists.add_members_json(account["id"], f"l0@{domain['name']}",
                                    [f"m{i:02d}@example.com" for i in range(7)], None)
    page = client.simulate_get(f"/v3/lists/l0@{domain['name']}/members/pages", headers=basic(api_key),
                               params={"limit": 3, "page": "next", "address": "m02@example.com"}).json
    assert [m["address"] for m in page["items"]] == ["m03@example.com", "m04@example.com", "m05@example.com"]
    assert "/members/pages?" in page["paging"]["first"]


def test_csv_upload_adds_members_with_names_and_vars(client, api_key, domain, services, account):
    address = f"csv@{domain['name']}"
    services.lists.create(account["id"], {"address": address})
    csv_text = (b'address,name,vars\r\nann@example.com,Ann,"{""city"": ""Oslo""}"\r\n'
                b"ben@example.com,Ben,\r\n")
    body, ctype = multipart([("upsert", "yes"), ("subscribed", "yes")],
                            [("members", "members.csv", "text/csv", csv_text)])
    resp = client.simulate_post(f"/v3/lists/{address}/members.csv", body=body,
                                headers={"Content-Type": ctype, **basic(api_key)})
    assert resp.status_code == 200, resp.text
    assert resp.json["list"]["members_count"] == 2
    ann = services.lists.member(account["id"], address, "ann@example.com")["member"]
    assert ann == {"address": "ann@example.com", "name": "Ann", "vars": {"city": "Oslo"}, "subscribed": True}


def test_bulk_limits_and_bad_input_change_nothing(client, api_key, domain, services, account, db):
    address = f"limits@{domain['name']}"
    services.lists.create(account["id"], {"address": address})
    too_many = json.dumps([f"u{i}@example.com" for i in range(1001)])
    resp = post_form(client, f"/v3/lists/{address}/members.json", api_key, {"members": too_many})
    assert resp.status_code == 400 and "at most 1000" in resp.json["message"]
    one_bad = json.dumps(["ok@example.com", "not-an-address"])
    resp = post_form(client, f"/v3/lists/{address}/members.json", api_key, {"members": one_bad})
    assert resp.status_code == 400 and "not-an-address" in resp.json["message"]
    for fields, needle in (({"address": "evil@example.com", "name": "Eve\r\nBcc: victim@example.com"}, "control"),
                           ({"address": "v@example.com", "vars": "[1, 2]"}, "JSON object"),
                           ({"address": "v@example.com", "vars": "{not json"}, "JSON"),
                           ({"address": "v@example.com", "vars": '{"a": "\\u0000"}'}, "NUL"),
                           ({"address": "v@example.com", "vars": '{"a": "\\ud800"}'}, "surrogate")):
        resp = post_form(client, f"/v3/lists/{address}/members", api_key, fields)
        assert resp.status_code == 400 and needle in resp.json["message"], resp.text
    assert db.execute("SELECT count(*) AS n FROM mailing_list_members m JOIN mailing_lists l ON l.id = m.list_id"
                      " WHERE l.address = %s", (address,)).fetchone()["n"] == 0
    resp = post_form(client, "/v3/lists", api_key, {"address": address})
    assert resp.status_code == 400 and "already exists" in resp.json["message"]
    resp = post_form(client, "/v3/lists", api_key, {"address": "list@not-our-domain.test"})
    assert resp.status_code == 400 and "Domain not found" in resp.json["message"]
    resp = post_form(client, "/v3/lists", api_key, {"address": f"x@{domain['name']}", "access_level": "admins"})
    assert resp.status_code == 400 and "access_level" in resp.json["message"]
    missing = client.simulate_get(f"/v3/lists/nope@{domain['name']}", headers=basic(api_key))
    assert missing.status_code == 404 and missing.json == {"message": f"Mailing list nope@{domain['name']} not found"}


def test_another_account_never_sees_or_changes_a_list(client, api_key, domain, services, account, db):
    address = f"private@{domain['name']}"
    services.lists.create(account["id"], {"address": address})
    services.lists.add_member(account["id"], address, {"address": "secret@example.com"})
    other = services.accounts.create_account("intruder")
    services.accounts.add_domain(other["id"], f"intruder-{account['id']}.example.test", dkim_key_size=1024,
                                 verified=True)
    _, intruder = services.accounts.create_key(other["id"], "admin")
    h = basic(intruder)
    assert client.simulate_get("/v3/lists", headers=h).json["items"] == []
    for resp in (client.simulate_get(f"/v3/lists/{address}", headers=h),
                 client.simulate_get(f"/v3/lists/{address}/members", headers=h),
                 client.simulate_get(f"/v3/lists/{address}/members/secret@example.com", headers=h),
                 client.simulate_delete(f"/v3/lists/{address}", headers=h),
                 client.simulate_delete(f"/v3/lists/{address}/members/secret@example.com", headers=h),
                 post_form(client, f"/v3/lists/{address}/members", intruder, {"address": "spy@example.com"})):
        assert resp.status_code == 404, resp.text
        assert "secret@example.com" not in resp.text
    # nor can it create a list on the other account's domain
    resp = post_form(client, "/v3/lists", intruder, {"address": f"mine@{domain['name']}"})
    assert resp.status_code == 400
    assert db.execute("SELECT array_agg(m.address ORDER BY m.address) AS a FROM mailing_list_members m"
                      " JOIN mailing_lists l ON l.id = m.list_id WHERE l.address = %s",
                      (address,)).fetchone()["a"] == ["secret@example.com"]


def test_access_level_decides_who_may_post_from_outside(services, account, domain):
    lists = services.lists
    for level in ("readonly", "members", "everyone"):
        lists.create(account["id"], {"address": f"{level}@{domain['name']}", "access_level": level})
        lists.add_member(account["id"], f"{level}@{domain['name']}", {"address": "member@example.com"})
    assert not lists.may_post(account["id"], f"readonly@{domain['name']}", "member@example.com")
    assert lists.may_post(account["id"], f"members@{domain['name']}", "Member@example.com")
    assert not lists.may_post(account["id"], f"members@{domain['name']}", "stranger@example.com")
    assert lists.may_post(account["id"], f"everyone@{domain['name']}", "stranger@example.com")
    assert lists.member_addresses(account["id"], f"members@{domain['name']}") == ["member@example.com"]
