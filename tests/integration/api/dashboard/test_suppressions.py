"""Suppressions page: browse with the service's paging, prefix search, add, remove, CSV import (plain
form and the JSON answer the script reads) and a streamed CSV export safe to open in a spreadsheet.
Same service as /v3/{d}/{kind}; roles; tenant isolation."""

from __future__ import annotations

import csv
import io
import re
import uuid

import pytest

from tests.conftest import basic
from tests.support.dashboard import ORIGIN


def multipart(fields: dict, files: dict) -> tuple[bytes, str]:
    boundary = uuid.uuid4().hex
    parts = []
    for name, value in fields.items():
        parts.append(f'--{boundary}\r\nContent-Disposition: form-data; name="{name}"\r\n\r\n{value}\r\n'.encode())
    for name, (filename, data) in files.items():
        parts.append(f'--{boundary}\r\nContent-Disposition: form-data; name="{name}"; filename="{filename}"\r\n'
                     f"Content-Type: text/csv\r\n\r\n".encode() + data + b"\r\n")
    return b"".join(parts) + f"--{boundary}--\r\n".encode(), f"multipart/form-data; boundary={boundary}"


def upload(page, domain: str, kind: str, data: bytes, *, json: bool = False):
    body, content_type = multipart({"csrf_token": page.csrf, "domain": domain, "kind": kind},
                                   {"file": ("list.csv", data)})
    headers = {"Content-Type": content_type, "Origin": ORIGIN}
    if json:
        headers["Accept"] = "application/json"
    return page.client.simulate_post("/dashboard/suppressions/import", body=body, headers=headers,
                                     cookies=page.cookies)


def entries(html: str) -> list[str]:
    return re.findall(r'<tr data-entry="([^"]+)">', html)


def listed(services, table: str, domain_id: int) -> list[str]:
    """The list's values, opened (they are sealed in the table)."""
    kind = table.removeprefix("suppress_")
    key = "value" if kind == "whitelists" else "address"
    return sorted(i[key] for i in services.suppressions.export({"id": domain_id}, kind))


def add_bounces(services, domain, addresses):
    for start in range(0, len(addresses), 1000):  # the service's batch limit
        services.suppressions.add_batch(domain, "bounces", [{"address": a, "error": "mailbox full"}
                                                            for a in addresses[start:start + 1000]])


def test_the_list_pages_as_the_service_does_and_searches_by_prefix(page_as, services, domain):
    addresses = [f"user{n:03}@dest.test" for n in range(60)] + ["zed@dest.test"]
    add_bounces(services, domain, addresses)
    page = page_as("support")
    first = entries(page.get("/dashboard/suppressions", domain=domain["name"], kind="bounces").text)
    assert len(first) == 50  # the page size, in the service's order (the addresses' keyed hashes)
    second = entries(page.get("/dashboard/suppressions", domain=domain["name"], kind="bounces", page="next",
                              address=first[-1]).text)
    assert len(second) == 11 and sorted(first + second) == sorted(addresses)
    found = page.get("/dashboard/suppressions", domain=domain["name"], kind="bounces", term="ZED").text
    assert 'data-entry="zed@dest.test"' in found and "user0" not in found
    api = page.client.simulate_get(f"/v3/{domain['name']}/bounces", params={"term": "user05"},
                                   headers=basic(services.accounts.create_key(domain["account_id"], "admin")[1])).json
    assert sorted(i["address"] for i in api["items"]) == [f"user05{n}@dest.test" for n in range(10)]  # the API too


def test_adding_and_removing_entries(page_as, domain, db, services):
    page, name = page_as("support"), domain["name"]
    resp = page.post("/dashboard/suppressions/add", {"domain": name, "kind": "unsubscribes",
                                                      "address": "Bob@Dest.test", "tags": "news, promo"})
    assert resp.status_code == 303
    row = services.suppressions.get(domain, "unsubscribes", "bob@dest.test")
    assert sorted(row["tags"]) == ["news", "promo"]
    resp = page.post("/dashboard/suppressions/add", {"domain": name, "kind": "whitelists", "address": "",
                                                      "domain_value": "partner.test", "reason": "ours"})
    assert resp.status_code == 303 and listed(services, "suppress_whitelists", domain["id"]) == ["partner.test"]
    bad = page.post("/dashboard/suppressions/add", {"domain": name, "kind": "bounces", "address": "nobody"})
    assert bad.status_code == 400 and "is not a valid address" in bad.text
    assert listed(services, "suppress_bounces", domain["id"]) == []
    resp = page.post("/dashboard/suppressions/delete", {"domain": name, "kind": "unsubscribes",
                                                         "value": "bob@dest.test"})
    assert resp.status_code == 303 and listed(services, "suppress_unsubscribes", domain["id"]) == []


def test_a_plain_form_import_adds_the_rows_and_says_how_many(page_as, domain, db, services):
    page = page_as("support")
    resp = upload(page, domain["name"], "bounces", b"address,code,error\na@dest.test,550,gone\nb@dest.test,,\n")
    assert resp.status_code == 200 and "Imported 2 entries into bounces." in resp.text
    assert listed(services, "suppress_bounces", domain["id"]) == ["a@dest.test", "b@dest.test"]
    assert 'data-entry="a@dest.test"' in resp.text


def test_the_script_gets_json_and_a_bad_file_imports_nothing(page_as, domain, db, services):
    page = page_as("support")
    resp = upload(page, domain["name"], "complaints", b"address\nc@dest.test\n", json=True)
    assert resp.status_code == 200 and resp.json == {"count": 1, "message": "Imported 1 entries into complaints."}
    resp = upload(page, domain["name"], "complaints", b"address\nd@dest.test\nnot-an-address\n", json=True)
    assert resp.status_code == 400 and "entry 2" in resp.json["error"]
    assert listed(services, "suppress_complaints", domain["id"]) == ["c@dest.test"]  # d was not written either


def test_the_export_is_the_whole_list_streamed_with_formulas_defused(page_as, services, domain):
    addresses = [f"u{n:04}@dest.test" for n in range(1203)]  # more than one page of the service
    add_bounces(services, domain, addresses)
    services.suppressions.add(domain, "bounces", {"address": ["=cmd@dest.test"], "error": ["+SUM(A1)"]})
    resp = page_as("support").get("/dashboard/suppressions/export", domain=domain["name"], kind="bounces")
    assert resp.status_code == 200 and resp.headers["Content-Type"].startswith("text/csv")
    assert resp.headers["Content-Disposition"] == f'attachment; filename="{domain["name"]}-bounces.csv"'
    rows = list(csv.DictReader(io.StringIO(resp.text)))
    listed_items = list(services.suppressions.export(domain, "bounces"))
    assert len(rows) == len(listed_items) == 1204
    assert [r["address"].lstrip("'") for r in rows] == [i["address"] for i in listed_items]  # the service's order
    [cmd] = [r for r in rows if r["address"] == "'=cmd@dest.test"]
    assert cmd == {"address": "'=cmd@dest.test", "code": "550", "error": "'+SUM(A1)",
                   "created_at": next(i["created_at"] for i in listed_items if i["address"] == "=cmd@dest.test")}
    others = [r for r in rows if r is not cmd]
    assert sorted(r["address"] for r in others) == addresses
    assert all(r["error"] == "mailbox full" for r in others)


def test_an_exported_list_imports_back_into_another_domain(page_as, services, domain, account, db):
    services.suppressions.add_batch(domain, "unsubscribes", [{"address": "x@dest.test", "tags": ["a", "b"]},
                                                              {"address": "y@dest.test"}])
    page = page_as("support")
    exported = page.get("/dashboard/suppressions/export", domain=domain["name"], kind="unsubscribes").content
    twin = services.accounts.add_domain(account["id"], f"twin-{domain['name']}", dkim_key_size=1024)
    assert upload(page, twin["name"], "unsubscribes", exported, json=True).json["count"] == 2
    # the same entries, tags and dates included
    assert (services.suppressions.page(twin, "unsubscribes", {})["items"]
            == services.suppressions.page(domain, "unsubscribes", {})["items"])


def test_analysts_get_403_and_change_nothing(page_as, domain, db, services):
    page = page_as("analyst")
    assert page.get("/dashboard/suppressions").status_code == 403
    assert page.get("/dashboard/suppressions/export", domain=domain["name"]).status_code == 403
    assert page.post("/dashboard/suppressions/add", {"domain": domain["name"], "kind": "bounces",
                                                      "address": "a@dest.test"}).status_code == 403
    assert upload(page, domain["name"], "bounces", b"address\na@dest.test\n").status_code == 403
    assert listed(services, "suppress_bounces", domain["id"]) == []


def test_another_accounts_user_gets_404_everywhere_and_changes_nothing(page_as, services, domain, db):
    add_bounces(services, domain, ["kept@dest.test"])
    other = page_as("admin", of=services.accounts.create_account("other"))
    name = domain["name"]
    assert other.get("/dashboard/suppressions", domain=name).status_code == 404
    export = other.get("/dashboard/suppressions/export", domain=name, kind="bounces")
    assert export.status_code == 404 and "kept@dest.test" not in export.text
    assert other.post("/dashboard/suppressions/add", {"domain": name, "kind": "bounces",
                                                       "address": "new@dest.test"}).status_code == 404
    assert other.post("/dashboard/suppressions/delete", {"domain": name, "kind": "bounces",
                                                          "value": "kept@dest.test"}).status_code == 404
    assert upload(other, name, "bounces", b"address\nnew@dest.test\n").status_code == 404
    assert upload(other, name, "bounces", b"address\nnew@dest.test\n", json=True).status_code == 404
    assert listed(services, "suppress_bounces", domain["id"]) == ["kept@dest.test"]


@pytest.mark.parametrize("kind", ["bounces", "unsubscribes", "complaints", "whitelists"])
def test_every_list_renders_its_columns(page_as, domain, kind, services):
    html = page_as("support").get("/dashboard/suppressions", domain=domain["name"], kind=kind).text
    assert f"<h2>{kind.capitalize()} of {domain['name']}</h2>" in html and 'id="import-form"' in html
