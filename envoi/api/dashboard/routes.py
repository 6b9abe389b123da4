"""The dashboard's part of the route table (envoi/api/app.py lists it after the API's)."""

from __future__ import annotations

from envoi.api.client_address import ClientAddress
from envoi.api.dashboard.gate import PREFIX
from envoi.api.dashboard.pages.auth import Home, Join, Login, Logout
from envoi.api.dashboard.pages.logs import LiveTail, Logs, Message, MessageAttachment, MessageHtml
from envoi.api.dashboard.pages.overview import Overview
from envoi.api.dashboard.static import StaticFiles


def routes(settings, services) -> list[tuple[str, object, str | None]]:
    accounts, users = services.accounts, services.users
    client_address = ClientAddress(settings.trusted_proxies)
    message = (accounts, services.events, services.storage)
    return [
        (PREFIX, Home(), None),
        (f"{PREFIX}/static/{{name}}", StaticFiles(), None),
        # signing in and out
        (f"{PREFIX}/login", Login(users, client_address), None),
        (f"{PREFIX}/logout", Logout(users, client_address), None),
        (f"{PREFIX}/join", Join(users, client_address), None),
        # customer pages
        (f"{PREFIX}/overview", Overview(accounts, services.stats), None),
        # delivery logs: the search, its live tail, one message
        (f"{PREFIX}/logs", Logs(accounts, services.events), None),
        (f"{PREFIX}/logs/live", LiveTail(accounts, services.stream), None),
        (f"{PREFIX}/domains/{{domain}}/messages/{{message_id}}", Message(*message), None),
        (f"{PREFIX}/domains/{{domain}}/messages/{{message_id}}/html", MessageHtml(*message), None),
        (f"{PREFIX}/domains/{{domain}}/messages/{{message_id}}/attachments/{{index}}", MessageAttachment(*message),
         None),
    ]
