"""Suppression lists: Mailgun-shaped API, enforcement at delivery time, automatic entries."""

from __future__ import annotations

import json
from urllib.parse import urlencode

import pytest

from envoi.events.service import NewEvent, item
from envoi.suppression.errors import InvalidInput
from envoi.suppression.service import MAX_CSV_BYTES
from tests.conftest import basic
from tests.support.delivery import events_of, send
from tests.support.relay import wait_until

FORM = {"Content-Type": "application/x-www-form-urlencoded"}


def post(client, path, key, **params):
    return client.simulate_post(path, body=urlencode(params, doseq=True), headers={**FORM, **basic(key)})


def count(db, table, domain):
    return db.execute(f"SELECT count(*) AS n FROM {table} WHERE domain_id = %s", (domain["id"],)).fetchone()["n"]


def test_bounces_api_add_get_page_delete(client, domain, api_key, db):
    base = f"/v3/{domain['name']}/bounces"
    resp = post(client, base, api_key, address="Zed@Example.com", code="550", error="No such user")
    assert resp.status_code == 200
    assert resp.json == {"message": "Address has been added to the bounces table", "address": "zed@example.com"}
    got = client.simulate_get(f"{base}/zed@example.com", headers=basic(api_key)).json
    assert got["address"] == "zed@example.com" and got["code"] == "550" and got["error"] == "No such user"
    assert got["created_at"].endswith("UTC")
    miss = client.simulate_get(f"{base}/nobody@example.com", headers=basic(api_key))
    assert miss.status_code == 404 and miss.json == {"message": "Address not found in bounces table"}

    batch = [{"address": f"a{n}@example.com", "code": "551", "error": "gone"} for n in range(4)]
    resp = client.simulate_post(base, body=json.dumps(batch),
                                headers={"Content-Type": "application/json", **basic(api_key)})
    assert resp.json == {"message": "4 addresses have been added to the bounces table"}
    assert count(db, "suppress_bounces", domain) == 5

    # Paging with first / next / previous / last, in the stable order of the addresses' keyed hashes
    # (the addresses are sealed); the pivots in the URLs are opaque.
    everyone = {"zed@example.com", *(f"a{n}@example.com" for n in range(4))}
    page1 = client.simulate_get(base, params={"limit": 2}, headers=basic(api_key)).json
    assert set(page1["paging"]) == {"first", "next", "previous", "last"}
    assert not any("example.com" in url.split("?", 1)[1] for url in page1["paging"].values())
    path2 = page1["paging"]["next"].split("8025", 1)[1]
    page2 = client.simulate_get(path2, headers=basic(api_key)).json
    page3 = client.simulate_get(page2["paging"]["next"].split("8025", 1)[1], headers=basic(api_key)).json
    order = [i["address"] for p in (page1, page2, page3) for i in p["items"]]
    assert len(order) == 5 and set(order) == everyone  # every entry once
    assert client.simulate_get(path2, headers=basic(api_key)).json == page2  # stable
    back = client.simulate_get(page2["paging"]["previous"].split("8025", 1)[1], headers=basic(api_key)).json
    assert [i["address"] for i in back["items"]] == order[:2]
    last = client.simulate_get(page1["paging"]["last"].split("8025", 1)[1], headers=basic(api_key)).json
    assert [i["address"] for i in last["items"]] == order[-2:]
    end = client.simulate_get(last["paging"]["next"].split("8025", 1)[1], headers=basic(api_key)).json
    assert end["items"] == []
    # An address as the pivot (Mailgun's older URLs, the dashboard's links) pages from its entry.
    after = client.simulate_get(base, params={"page": "next", "address": order[1], "limit": 2}, headers=basic(api_key)).json
    assert [i["address"] for i in after["items"]] == order[2:4]

    resp = client.simulate_delete(f"{base}/a0@example.com", headers=basic(api_key))
    assert resp.json == {"message": "Bounced address has been removed", "address": "a0@example.com"}
    assert client.simulate_delete(f"{base}/a0@example.com", headers=basic(api_key)).status_code == 404
    resp = client.simulate_delete(base, headers=basic(api_key))
    assert resp.json == {"message": "Bounced addresses for this domain have been removed"}
    assert count(db, "suppress_bounces", domain) == 0


def test_bad_input_changes_nothing(client, domain, api_key, db, services):
    base = f"/v3/{domain['name']}/bounces"
    too_many = [{"address": f"x{n}@example.com"} for n in range(1001)]
    resp = client.simulate_post(base, body=json.dumps(too_many),
                                headers={"Content-Type": "application/json", **basic(api_key)})
    assert resp.status_code == 400 and "1000" in resp.json["message"]
    bad = [{"address": "good@example.com"}, {"address": "not-an-address"}]
    resp = client.simulate_post(base, body=json.dumps(bad),
                                headers={"Content-Type": "application/json", **basic(api_key)})
    assert resp.status_code == 400 and "entry 2" in resp.json["message"]
    assert post(client, base, api_key, address="x@example.com", code="abc").status_code == 400
    assert post(client, base, api_key).json == {"message": "address parameter is missing"}
    csv = b"address,code,error,created_at\nok@example.com,550,gone,\nbroken,550,,\n"
    resp = client.simulate_post(f"{base}/import", body=_multipart(csv),
                                headers={"Content-Type": "multipart/form-data; boundary=XyZ", **basic(api_key)})
    assert resp.status_code == 400
    with pytest.raises(InvalidInput, match="25 MB"):
        services.suppressions.import_csv(domain, "bounces", b"address\n" + b"x" * MAX_CSV_BYTES)
    assert count(db, "suppress_bounces", domain) == 0

    # Another tenant cannot see or change this domain's lists.
    other = services.accounts.create_account("other")
    _, other_key = services.accounts.create_key(other["id"], "admin")
    assert post(client, base, other_key, address="x@example.com").status_code == 404
    assert client.simulate_get(base, headers=basic(other_key)).status_code == 404
    assert count(db, "suppress_bounces", domain) == 0


def _multipart(data: bytes) -> bytes:
    return (b"--XyZ\r\nContent-Disposition: form-data; name=\"file\"; filename=\"list.csv\"\r\n"
            b"Content-Type: text/csv\r\n\r\n" + data + b"\r\n--XyZ--\r\n")


def test_csv_import_unsubscribes_tags_whitelists_complaints(client, domain, api_key, db, services):
    csv = b'address,tags,created_at\nu1@example.com,,\nu2@example.com,news;promo,"Thu, 13 Oct 2011 18:02:00 +0000"\n'
    resp = client.simulate_post(f"/v3/{domain['name']}/unsubscribes/import", body=_multipart(csv),
                                headers={"Content-Type": "multipart/form-data; boundary=XyZ", **basic(api_key)})
    assert resp.status_code == 200, resp.text
    items = client.simulate_get(f"/v3/{domain['name']}/unsubscribes", headers=basic(api_key)).json["items"]
    by_address = {i["address"]: i for i in items}
    assert {a: i["tags"] for a, i in by_address.items()} == {"u1@example.com": ["*"], "u2@example.com": ["news", "promo"]}
    assert by_address["u2@example.com"]["created_at"] == "Thu, 13 Oct 2011 18:02:00 UTC"
    post(client, f"/v3/{domain['name']}/unsubscribes", api_key, address="u2@example.com", tag="weekly")
    got = client.simulate_get(f"/v3/{domain['name']}/unsubscribes/u2@example.com", headers=basic(api_key)).json
    assert got["tags"] == ["news", "promo", "weekly"]
    resp = client.simulate_delete(f"/v3/{domain['name']}/unsubscribes/u2@example.com", params={"tag": "news"},
                                  headers=basic(api_key))
    assert resp.status_code == 200
    assert db.execute("SELECT tags FROM suppress_unsubscribes WHERE domain_id = %s AND address_hash = %s",
                      (domain["id"], services.suppressions.vault.lookup("u2@example.com"))).fetchone()["tags"] == [
        "promo", "weekly"]

    resp = post(client, f"/v3/{domain['name']}/whitelists", api_key, domain="partner.example", reason="vip")
    assert resp.json == {"message": "Address/Domain has been added to the whitelists table", "type": "domain",
                         "value": "partner.example"}
    [w] = client.simulate_get(f"/v3/{domain['name']}/whitelists", headers=basic(api_key)).json["items"]
    assert set(w) == {"value", "reason", "type", "createdAt"} and w["reason"] == "vip"

    assert post(client, f"/v3/{domain['name']}/complaints", api_key, address="c@example.com").status_code == 200
    assert count(db, "suppress_complaints", domain) == 1


def test_suppressed_recipients_fail_with_reason_and_nothing_is_sent(services, account, domain, db, sink, relay):
    supp = services.suppressions
    supp.add(domain, "bounces", {"address": ["bounced@dest.test"]})
    supp.add(domain, "bounces", {"address": ["allowed@dest.test"]})
    supp.add(domain, "whitelists", {"address": ["allowed@dest.test"]})  # the allowlist beats bounces
    supp.add(domain, "unsubscribes", {"address": ["unsub@dest.test"], "tags": ["news"]})
    supp.add(domain, "unsubscribes", {"address": ["other-tag@dest.test"], "tags": ["promo"]})
    supp.add(domain, "complaints", {"address": ["complained@dest.test"]})
    to = ["bounced", "allowed", "unsub", "other-tag", "complained", "ok"]
    message_id = send(services, account["id"], domain, ", ".join(f"{n}@dest.test" for n in to), o_tag="news")
    events = wait_until(lambda: (e := events_of(db, message_id)) and len(e) == 12 and e)
    final = {e["data"]["recipient"]: e for e in events if e["event"] != "accepted"}
    assert {a: (e["event"], e["data"].get("reason")) for a, e in final.items()} == {
        "bounced@dest.test": ("failed", "suppress-bounce"),
        "unsub@dest.test": ("failed", "suppress-unsubscribe"),
        "complained@dest.test": ("failed", "suppress-complaint"),
        "allowed@dest.test": ("delivered", None),
        "other-tag@dest.test": ("delivered", None),
        "ok@dest.test": ("delivered", None),
    }
    assert final["bounced@dest.test"]["severity"] == "permanent"
    assert final["bounced@dest.test"]["data"]["delivery-status"]["code"] == 605
    received = {r for m in sink.messages() if message_id in m["data"] for r in m["rcpt_tos"]}
    assert received == {"allowed@dest.test", "other-tag@dest.test", "ok@dest.test"}


def test_hard_bounces_join_the_list_unless_whitelisted(services, account, domain, db, sink, relay):
    sink.set_script({"rcpt": {"gone@dest.test": "550 5.1.1 No such user",
                              "vip@dest.test": "550 5.1.1 No such user",
                              "full@dest.test": "552 5.2.2 Mailbox full"}})
    services.suppressions.add(domain, "whitelists", {"domain": ["dest.test"]})
    services.suppressions.delete(domain, "whitelists", "dest.test")
    services.suppressions.add(domain, "whitelists", {"address": ["vip@dest.test"]})
    for rcpt in ("gone@dest.test", "vip@dest.test", "full@dest.test"):
        send(services, account["id"], domain, rcpt)
    wait_until(lambda: db.execute("SELECT count(*) AS n FROM events WHERE domain_id = %s AND event = 'failed'",
                                  (domain["id"],)).fetchone()["n"] == 3)
    rows = list(services.suppressions.export(domain, "bounces"))
    assert [(r["address"], r["code"]) for r in rows] == [("gone@dest.test", "550")]  # not vip, not a full box
    # The next message to the bounced address is not sent at all.
    sink.reset_script()
    message_id = send(services, account["id"], domain, "gone@dest.test")
    events = wait_until(lambda: (e := events_of(db, message_id)) and len(e) == 2 and e)
    assert events[1]["data"]["reason"] == "suppress-bounce"
    assert sink.messages(to="gone@dest.test") == []


def test_complained_event_adds_a_complaint(services, account, domain, db):
    message_id = send(services, account["id"], domain, "angry@dest.test", o_testmode="yes")
    message = db.execute("SELECT * FROM messages WHERE message_id = %s", (message_id,)).fetchone()
    with services.db.transaction() as conn:
        services.events.record(conn, [NewEvent(account["id"], domain["id"], message["id"],
                                               item("complained", message=message, recipient="Angry@dest.test"))])
    assert [i["address"] for i in services.suppressions.export(domain, "complaints")] == ["angry@dest.test"]
    with services.db.transaction() as conn:
        assert services.suppressions.blocked(conn, [(account["id"], domain["id"], "ANGRY@dest.test", [])]) == [
            "suppress-complaint"]


def test_term_lists_only_values_starting_with_it_and_pages_within_them(client, services, domain, api_key):
    services.suppressions.add_batch(domain, "complaints", [{"address": a} for a in
                                                           ("ann@x.test", "anna@x.test", "annie@x.test", "bob@x.test")])
    base = f"/v3/{domain['name']}/complaints"
    first = client.simulate_get(base, params={"term": "ANN", "limit": "2"}, headers=basic(api_key)).json
    assert len(first["items"]) == 2
    assert "term=ann" in first["paging"]["next"]  # the paging URLs keep the search
    query = first["paging"]["next"].split("?", 1)[1]
    second = client.simulate_get(base, query_string=query, headers=basic(api_key)).json
    assert len(second["items"]) == 1
    assert sorted(i["address"] for i in first["items"] + second["items"]) == ["ann@x.test", "anna@x.test",
                                                                             "annie@x.test"]
    none = client.simulate_get(base, params={"term": "%"}, headers=basic(api_key)).json
    assert none["items"] == []  # a literal prefix, not a pattern


def test_export_reads_the_whole_list_in_pages(services, domain):
    services.suppressions.add_batch(domain, "whitelists", [{"address": f"w{n}@x.test"} for n in range(7)]
                                    + [{"domain": "partner.test"}])
    items = list(services.suppressions.export(domain, "whitelists", chunk=3))  # 3 + 3 + 2
    assert sorted(i["value"] for i in items) == ["partner.test", *(f"w{n}@x.test" for n in range(7))]
    pages = [i["value"] for i in services.suppressions.page(domain, "whitelists", {"limit": "8"})["items"]]
    assert [i["value"] for i in items] == pages  # the API's order
    [partner] = [i for i in items if i["value"] == "partner.test"]
    assert partner == services.suppressions.get(domain, "whitelists", "partner.test")  # the API's item shape
