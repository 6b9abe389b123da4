"""Hostile values on every dashboard page: a clear HTML error page or the page itself, never a 5xx, and
always the strict security headers. The sweep walks the dashboard's own route table, so a new page is
covered without editing this file; customer pages run as an account admin, operator pages as an operator."""

from __future__ import annotations

import re
from urllib.parse import quote

import pytest

from envoi.api.dashboard import routes as dashboard_routes
from envoi.api.dashboard import security
from envoi.api.dashboard.gate import OPERATOR
from tests.integration.api.test_hostile_input import HOSTILE
from tests.support.dashboard import operator_of, signed_in

NAMES = ["domain", "kind", "event", "recipient", "subject", "begin", "end", "limit", "page", "q", "address",
         "resolution", "role", "email", "description", "url", "name", "ip", "pool_id", "token", "next",
         "images", "account_id", "action", "actor", "since", "until", "format", "password", "code"]
SKIP = ("/live", "/static/", "/logout")  # a stream never ends; assets are files; logout ends the session


def templates(settings, services) -> list[tuple[str, object]]:
    return [(t, r) for t, r, _ in dashboard_routes.routes(settings, services) if not any(s in t for s in SKIP)]


def fill(template: str, domain: str, value: str | None = None) -> str:
    def one(match):
        if value is not None:
            return quote(value, safe="", errors="surrogatepass")
        return domain if match.group(1) == "domain" else "1"
    return re.sub(r"{(\w+)(?::\w+)?}", one, template)


def check(resp, what: str, failures: list) -> None:
    if resp.status_code >= 500:
        failures.append(f"{what}: {resp.status_code} {resp.text[:200]}")
    elif resp.status_code < 300 or resp.status_code >= 400:
        policy = resp.headers.get("content-security-policy")
        if policy not in (security.PAGE_POLICY, security.MAIL_HTML_POLICY, security.MAIL_HTML_POLICY_IMAGES) \
                and not resp.headers.get("content-disposition", "").startswith("attachment"):
            failures.append(f"{what}: {resp.status_code} without the page policy")


@pytest.mark.parametrize("kind", ["path", "query", "form"])
def test_no_page_answers_a_hostile_value_with_a_5xx(client, api_settings, services, account, domain, page_as, kind):
    customer = page_as("admin")
    operator = signed_in(client, services, *operator_of(services))
    failures: list[str] = []
    for template, resource in templates(api_settings, services):
        page = operator if getattr(resource, "audience", None) == OPERATOR else customer
        if kind == "path":
            if "{" not in template:
                continue
            for value in HOSTILE:
                check(page.get(fill(template, domain["name"], value)), f"GET {template} <- {value[:20]!r}", failures)
        elif kind == "query":
            path = fill(template, domain["name"])
            for value in HOSTILE:
                params = dict.fromkeys(NAMES, value)
                check(page.get(path, **params), f"GET {template}?all={value[:20]!r}", failures)
        else:
            path = fill(template, domain["name"])
            for value in HOSTILE:
                fields = dict.fromkeys(NAMES, value)
                check(page.post(path, fields), f"POST {template} all={value[:20]!r}", failures)
    assert not failures, "\n".join(failures[:40])
