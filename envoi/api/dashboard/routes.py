"""The dashboard's part of the route table (envoi/api/app.py lists it after the API's)."""

from __future__ import annotations

from envoi.accounts.service import dns_targets
from envoi.api.client_address import ClientAddress
from envoi.api.dashboard.gate import PREFIX
from envoi.api.dashboard.pages.account import (
    AccountDelete,
    AccountExport,
    AccountPage,
    SignOutEverywhere,
    TotpConfirm,
    TotpDisable,
    TotpStart,
)
from envoi.api.dashboard.pages.audit import AuditExport, AuditPage
from envoi.api.dashboard.pages.auth import Home, Join, Login, Logout, Regions
from envoi.api.dashboard.pages.billing import BillingPage
from envoi.api.dashboard.pages.domains import DomainList, DomainPage
from envoi.api.dashboard.pages.keys import ApiKey, ApiKeys
from envoi.api.dashboard.pages.logs import LiveTail, Logs, Message, MessageAttachment, MessageHtml
from envoi.api.dashboard.pages.operator import AccountState, OperatorAccounts
from envoi.api.dashboard.pages.operator_ips import OperatorIp, OperatorIps
from envoi.api.dashboard.pages.operator_queues import OperatorQueues
from envoi.api.dashboard.pages.overview import Overview
from envoi.api.dashboard.pages.suppressions import SuppressionsPage
from envoi.api.dashboard.pages.users import Invitation, UserActions, UserList
from envoi.api.dashboard.pages.webhooks import WebhooksPage
from envoi.api.dashboard.static import StaticFiles


def routes(settings, services) -> list[tuple[str, object, str | None]]:
    accounts, users = services.accounts, services.users
    client_address = ClientAddress(settings.trusted_proxies)
    webhooks = WebhooksPage(accounts, services.webhooks)
    suppressions = SuppressionsPage(accounts, services.suppressions)
    domain_page = DomainPage(accounts, services.tracking, dns_targets(settings), settings.dns_resolver)
    message = (accounts, services.events, services.storage, services.intake)  # the message page and its parts
    message_page = Message(*message)
    return [
        (PREFIX, Home(), None),
        (f"{PREFIX}/static/{{name}}", StaticFiles(), None),
        # signing in and out
        (f"{PREFIX}/login", Login(users, client_address,
                                  Regions(settings.region, dict(settings.region_urls), services.router)), None),
        (f"{PREFIX}/logout", Logout(users, client_address), None),
        (f"{PREFIX}/join", Join(users, client_address), None),
        # customer pages
        (f"{PREFIX}/overview", Overview(accounts, services.stats), None),
        # delivery logs: the search, its live tail, one message
        (f"{PREFIX}/logs", Logs(accounts, services.events), None),
        (f"{PREFIX}/logs/live", LiveTail(accounts, services.stream), None),
        (f"{PREFIX}/domains/{{domain}}/messages/{{message_id}}", message_page, None),
        (f"{PREFIX}/domains/{{domain}}/messages/{{message_id}}/resend", message_page, "resend"),
        (f"{PREFIX}/domains/{{domain}}/messages/{{message_id}}/cancel", message_page, "cancel"),
        (f"{PREFIX}/domains/{{domain}}/messages/{{message_id}}/html", MessageHtml(*message), None),
        (f"{PREFIX}/domains/{{domain}}/messages/{{message_id}}/attachments/{{index}}", MessageAttachment(*message),
         None),
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
        # people and access
        # billing: plan, usage, invoices (Stripe), change of plan, card entry (Stripe.js)
        (f"{PREFIX}/billing", billing_page := BillingPage(services.billing), None),
        (f"{PREFIX}/billing/plan", billing_page, "plan"),
        (f"{PREFIX}/billing/card", billing_page, "card"),
        (f"{PREFIX}/billing/card/confirm", billing_page, "card_confirm"),
        (f"{PREFIX}/keys", ApiKeys(accounts, client_address), None),
        (f"{PREFIX}/keys/{{key_id}}/delete", ApiKey(accounts, client_address), None),
        (f"{PREFIX}/users", UserList(users, client_address, settings.public_url), None),
        (f"{PREFIX}/users/{{user_id:int}}/role", user_actions := UserActions(users, client_address), "role"),
        (f"{PREFIX}/users/{{user_id:int}}/remove", user_actions, "remove"),
        (f"{PREFIX}/users/{{user_id:int}}/sessions", user_actions, "sessions"),
        (f"{PREFIX}/users/invitations/{{invitation_id:int}}/revoke", Invitation(users, client_address), None),
        (f"{PREFIX}/audit", AuditPage(services.audit), None),
        (f"{PREFIX}/audit/export", AuditExport(services.audit), None),
        # my account (customers and operators)
        *((f"{PREFIX}/account{path}", page(users, accounts, services.privacy, services.audit, client_address,
                                           services.subaccounts), None)
          for path, page in (("", AccountPage), ("/totp/start", TotpStart), ("/totp/confirm", TotpConfirm),
                             ("/totp/disable", TotpDisable), ("/sessions", SignOutEverywhere),
                             ("/export", AccountExport), ("/delete", AccountDelete))),
        # operator pages
        *operator_routes(services, client_address),
    ]


def operator_routes(services, client_address) -> list[tuple[str, object, str | None]]:
    accounts, ips = services.accounts, services.ips
    op = f"{PREFIX}/operator"
    state, inventory, one_ip = AccountState(accounts, client_address), OperatorIps(ips, accounts), OperatorIp(ips, accounts)
    return [
        (op, OperatorAccounts(accounts), None),
        (f"{op}/accounts/{{account_id:int}}/suspend", state, "suspend"),
        (f"{op}/accounts/{{account_id:int}}/reinstate", state, "reinstate"),
        (f"{op}/accounts/{{account_id:int}}/restrict", state, "restrict"),
        (f"{op}/accounts/{{account_id:int}}/lift", state, "lift"),
        (f"{op}/ips", inventory, None),
        (f"{op}/ips/assign", inventory, "assign"),
        (f"{op}/ips/assign-domain", inventory, "assign_domain"),
        (f"{op}/pools", inventory, "pools"),
        (f"{op}/pools/{{pool_id}}/add", inventory, "pool_add"),
        (f"{op}/pools/{{pool_id}}/remove", inventory, "pool_remove"),
        (f"{op}/pools/{{pool_id}}/link", inventory, "pool_link"),
        (f"{op}/pools/{{pool_id}}/unlink", inventory, "pool_unlink"),
        (f"{op}/ips/{{ip}}", one_ip, None),
        (f"{op}/ips/{{ip}}/unassign", one_ip, "unassign"),
        (f"{op}/ips/{{ip}}/domains/remove", one_ip, "remove_domain"),
        (f"{op}/ips/{{ip}}/warmup", one_ip, "warmup"),
        (f"{op}/ips/{{ip}}/warmup/stop", one_ip, "warmup_stop"),
        (f"{op}/queues", OperatorQueues(services.queue, services.webhooks), None),
    ]
