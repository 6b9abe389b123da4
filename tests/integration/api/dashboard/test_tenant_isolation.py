"""Tenants never see each other on any page: a user of account B, given every object of account A (in the
path, in ?domain=, in every form field), gets a 404 or B's own page, never A's data, and nothing of A's
changes. The sweep walks the dashboard's route table, so a new page is covered without editing this file."""

from __future__ import annotations

import re
from datetime import UTC, datetime, timedelta
from email.utils import format_datetime
from urllib.parse import quote

from envoi.api.dashboard import routes as dashboard_routes
from envoi.api.dashboard.gate import ANYONE, OPERATOR
from tests.support.api import accepted, send_form

SKIP = ("/live", "/static/", "/logout", "/login", "/join")  # a stream; files; no tenant objects
ACCOUNT_TABLES = ("domains", "api_keys", "users", "user_invitations", "audit_log", "messages", "recipients")
DOMAIN_TABLES = ("smtp_credentials", "webhooks", "suppress_bounces", "suppress_unsubscribes", "suppress_complaints",
                 "suppress_whitelists", "tracking_settings", "domain_ips")


def fingerprint(db, account_id: int) -> dict:
    """Everything of account A that a page could change, as comparable text."""
    out = {}
    for table in ACCOUNT_TABLES:
        out[table] = db.execute(f"SELECT md5(coalesce(string_agg(t::text, '|' ORDER BY t::text), '')) AS h,"
                                f" count(*) AS n FROM {table} t WHERE account_id = %s", (account_id,)).fetchone()
    for table in DOMAIN_TABLES:
        out[table] = db.execute(
            f"SELECT md5(coalesce(string_agg(t::text, '|' ORDER BY t::text), '')) AS h, count(*) AS n FROM {table} t"
            " WHERE domain_id IN (SELECT id FROM domains WHERE account_id = %s)", (account_id,)).fetchone()
    out["account"] = db.execute("SELECT state, name FROM accounts WHERE id = %s", (account_id,)).fetchone()
    return out


def test_a_user_of_another_account_never_reaches_account_a(client, services, api_settings, account, domain,
                                                           api_key, db, page_as):
    # Account A: a domain with a message, a key, a user, an invitation, a webhook, a suppression, a credential.
    a_admin = page_as("admin")
    later = format_datetime(datetime.now(UTC) + timedelta(days=1))
    sent = accepted(send_form(client, api_key, domain, subject="A-secret-subject", **{"o:deliverytime": later}))
    key_id = services.accounts.list_keys(account["id"])[0]["id"]
    user_id = services.users.list_users(account["id"])[0]["id"]
    invitation, _ = services.users.invite(account["id"], "invitee-a@people.test", "analyst", actor="test")
    services.accounts.create_credential(account["id"], domain["name"], f"login-a@{domain['name']}", "pw-of-a-123")
    services.suppressions.add(domain, "bounces", {"address": ["a-bounced@dest.test"]})
    assert a_admin.get("/dashboard/logs", domain=domain["name"]).status_code == 200
    values = {"domain": domain["name"], "message_id": sent.message_id, "index": "0", "key_id": key_id,
              "user_id": str(user_id), "invitation_id": str(invitation["id"]), "name": "delivered",
              "account_id": str(account["id"]), "address": "a-bounced@dest.test", "kind": "bounces",
              "login": f"login-a@{domain['name']}", "storage_key": "x"}
    before = fingerprint(db, account["id"])

    b = page_as("admin", of=services.accounts.create_account("tenant-b"))
    leaks: list[str] = []
    checked = 0
    for template, resource, suffix in dashboard_routes.routes(api_settings, services):
        if any(s in template for s in SKIP) or getattr(resource, "audience", None) in (OPERATOR, ANYONE):
            continue
        path = re.sub(r"{(\w+)(?::\w+)?}", lambda m: quote(values.get(m.group(1), "1"), safe="@"), template)
        methods = [m for m in ("GET", "POST") if hasattr(resource, f"on_{m.lower()}" + (f"_{suffix}" if suffix else ""))]
        for method in methods:
            resp = b.get(path, domain=domain["name"]) if method == "GET" else b.post(path, values)
            checked += 1
            if resp.status_code in (404, 403):
                continue
            shown = resp.text
            for secret in ("A-secret-subject", "a-bounced@dest.test", "invitee-a@people.test", f"login-a@{domain['name']}"):
                if secret in shown:
                    leaks.append(f"{method} {template}: {resp.status_code} shows {secret}")
            if method == "GET" and f">{domain['name']}<" in shown:
                leaks.append(f"GET {template}: {resp.status_code} lists A's domain")
    assert checked > 40
    assert not leaks, "\n".join(leaks)
    assert fingerprint(db, account["id"]) == before, "a page of account B changed account A"
