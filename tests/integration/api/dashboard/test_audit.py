"""Audit log page: the account's entries with the API's filters, paging, CSV and JSON-lines downloads."""

from __future__ import annotations

import csv
import io
import json
import re
from datetime import UTC, datetime, timedelta

import pytest

from envoi.api.dashboard.pages import audit as audit_page


def actions(html: str) -> list[str]:
    return re.findall(r'<tr data-action="([^"]+)">', html)


def test_entries_are_listed_newest_first_and_filtered(client, services, account, page_as):
    for n in range(3):
        services.audit.record(account["id"], "key:abc", "key.create", f"k{n}")
    services.audit.record(account["id"], "user:77", "user.invited", "x@people.test", ip="192.0.2.7")
    page = page_as("admin")
    html = page.get("/dashboard/audit").text
    # newest first: the admin's own sign-in, joining and invitation (page_as), then what was recorded above
    assert actions(html) == ["session.created", "user.created", "user.invited", "user.invited"] + ["key.create"] * 3
    assert "192.0.2.7" in html
    only_keys = page.get("/dashboard/audit", action="key.").text
    assert actions(only_keys) == ["key.create"] * 3
    by_actor = page.get("/dashboard/audit", actor="user:77").text
    assert actions(by_actor) == ["user.invited"]
    tomorrow = (datetime.now(UTC) + timedelta(days=1)).strftime("%Y-%m-%dT%H:%M")
    assert actions(page.get("/dashboard/audit", since=tomorrow).text) == []
    assert len(actions(page.get("/dashboard/audit", until=tomorrow, action="key.create").text)) == 3
    bad = page.get("/dashboard/audit", since="yesterday")
    assert bad.status_code == 400 and "since must be a date" in bad.text


def test_pages_go_back_by_entry_id(client, services, account, page_as, monkeypatch):
    monkeypatch.setattr(audit_page, "PAGE", 2)
    for n in range(5):
        services.audit.record(account["id"], "cli", "domain.note", f"t{n}")
    page = page_as("admin")
    first = page.get("/dashboard/audit", action="domain.note").text
    assert "t4" in first and "t3" in first and "t2" not in first
    older = re.search(r'<a href="\?([^"]+)">Older</a>', first).group(1).replace("&amp;", "&")
    assert "action=domain.note" in older
    second = client.simulate_get("/dashboard/audit", query_string=older, cookies=page.cookies).text
    assert "t2" in second and "t1" in second and "t4" not in second and "Newest" in second


def test_exports_are_downloads_of_the_filtered_entries(client, services, account, page_as):
    services.audit.record(account["id"], "key:abc", "key.create", "k1", details={"role": "basic"})
    services.audit.record(account["id"], "cli", "user.invited", "x@people.test")
    page = page_as("admin")
    html = page.get("/dashboard/audit", action="key.create").text
    assert 'href="/dashboard/audit/export?action=key.create&amp;format=csv" download' in html
    resp = page.get("/dashboard/audit/export", action="key.create", format="csv")
    assert resp.status_code == 200 and resp.headers["content-type"].startswith("text/csv")
    assert "attachment" in resp.headers["content-disposition"] and "audit-log.csv" in resp.headers["content-disposition"]
    rows = list(csv.DictReader(io.StringIO(resp.text)))
    assert [(r["action"], r["target"], json.loads(r["details"])) for r in rows] == [("key.create", "k1", {"role": "basic"})]
    lines = page.get("/dashboard/audit/export", format="jsonl").text.splitlines()
    assert {json.loads(line)["action"] for line in lines} >= {"key.create", "user.invited", "session.created"}
    assert page.get("/dashboard/audit/export", format="xml").status_code == 400


@pytest.mark.parametrize("role", ["developer", "support", "analyst", "billing"])
def test_only_admins_read_the_audit_log(client, services, account, page_as, role):
    services.audit.record(account["id"], "cli", "secret.business", "hidden-target")
    page = page_as(role)
    for path, params in (("/dashboard/audit", {}), ("/dashboard/audit/export", {"format": "jsonl"})):
        resp = page.get(path, **params)
        assert resp.status_code == 403 and "hidden-target" not in resp.text


def test_another_accounts_entries_never_show(client, services, account, page_as):
    services.audit.record(account["id"], "cli", "key.create", "a-only-target")
    stranger = page_as("admin", of=services.accounts.create_account("stranger"))
    assert "a-only-target" not in stranger.get("/dashboard/audit").text
    assert "a-only-target" not in stranger.get("/dashboard/audit", actor="cli").text
    assert "a-only-target" not in stranger.get("/dashboard/audit/export", format="csv").text
