"""The dashboard's part of the route table (envoi/api/app.py lists it after the API's)."""

from __future__ import annotations

from envoi.accounts.service import dns_targets
from envoi.api.client_address import ClientAddress
from envoi.api.dashboard.gate import PREFIX
from envoi.api.dashboard.pages.auth import Home, Join, Login, Logout
from envoi.api.dashboard.pages.domains import DomainList, DomainPage
from envoi.api.dashboard.pages.overview import Overview
from envoi.api.dashboard.pages.suppressions import SuppressionsPage
from envoi.api.dashboard.pages.webhooks import WebhooksPage
from envoi.api.dashboard.static import StaticFiles


def routes(settings, services) -> list[tuple[str, object, str | None]]:
    accounts, users = services.accounts, services.users
    client_address = ClientAddress(settings.trusted_proxies)
    webhooks = WebhooksPage(accounts, services.webhooks)
    suppressions = SuppressionsPage(accounts, services.suppressions)
    domain_page = DomainPage(accounts, services.tracking, dns_targets(settings.region), settings.dns_resolver)
    return [
        (PREFIX, Home(), None),
        (f"{PREFIX}/static/{{name}}", StaticFiles(), None),
        # signing in and out
        (f"{PREFIX}/login", Login(users, client_address), None),
        (f"{PREFIX}/logout", Logout(users, client_address), None),
        (f"{PREFIX}/join", Join(users, client_address), None),
        # customer pages
        (f"{PREFIX}/overview", Overview(accounts, services.stats), None),
        # domains: records, verification, SMTP credentials, tracking
        (f"{PREFIX}/domains", DomainList(accounts), None),
        (f"{PREFIX}/domains/{{domain}}", domain_page, None),
        *((f"{PREFIX}/domains/{{domain}}/{path}", domain_page, suffix) for path, suffix in (
            ("verify", "verify"), ("delete", "delete"), ("credentials", "credentials"),
            ("credentials/password", "password"), ("credentials/delete", "credential_delete"),
            ("tracking", "tracking"), ("dkim/rotate", "rotate"))),
        # suppression lists: browse, search, add, remove, CSV import and export
        (f"{PREFIX}/suppressions", suppressions, None),
        *((f"{PREFIX}/suppressions/{action}", suppressions, action) for action in ("add", "delete", "import",
                                                                                   "export")),
        # webhooks: URLs per event type, test sends, attempts, the signing key
        (f"{PREFIX}/webhooks", webhooks, None),
        *((f"{PREFIX}/webhooks/{path}", webhooks, path.replace("-", "_"))
          for path in ("set", "delete", "test", "signing-key")),
    ]
