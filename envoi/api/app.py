"""The falcon application: create_app(settings, services) serves the routes of routes(), the one table
of every URL the API answers (envoi/api/openapi.py describes each; a test keeps the two equal)."""

from __future__ import annotations

import json

import falcon

from envoi.accounts.service import dns_targets
from envoi.api import errors, forms, params
from envoi.api.auth import AuthMiddleware
from envoi.api.client_address import ClientAddress
from envoi.api.dashboard import routes as dashboard
from envoi.api.dashboard.gate import PageGate
from envoi.api.openapi import OpenApiDocument
from envoi.api.resources.account_export import AccountExport
from envoi.api.resources.analytics import AccountTags, Aggregates, Metrics, StatsFilter
from envoi.api.resources.analytics import Logs as AnalyticsLogs
from envoi.api.resources.audit import AuditLog
from envoi.api.resources.billing import StripeWebhook
from envoi.api.resources.dkim import DkimKeyActivation, DkimKeyCollection, DkimManagement, DomainDkimSettings
from envoi.api.resources.domains import AuthorizedRecipients, Credentials, DomainCollection, DomainItem
from envoi.api.resources.events import EventList, LiveEvents, MessageTrace
from envoi.api.resources.ips import DomainIps, IpCollection, IpItem, Pools, Warmups
from envoi.api.resources.keys import Keys
from envoi.api.resources.lists import ListMembers, MailingLists
from envoi.api.resources.messages import Envelopes, Messages, SendingQueues, StoredMessage
from envoi.api.resources.privacy import AddressData
from envoi.api.resources.regions import RegionLookup
from envoi.api.resources.routes import RouteCollection
from envoi.api.resources.stats import AccountStatsTotal, StatsTotal, Tags
from envoi.api.resources.subaccounts import MonthlyLimit, SubaccountCollection
from envoi.api.resources.suppressions import SuppressionList
from envoi.api.resources.system import Health, Ready
from envoi.api.resources.templates import TemplateResource
from envoi.api.resources.tls import TlsReports
from envoi.api.resources.tracking import Click, Guard, Open, TrackingSettings, Unsubscribe
from envoi.api.resources.validation import AddressValidate, BulkValidation, ListValidation, ValidationDownload
from envoi.api.resources.webhooks import AccountWebhooks, SigningKey, WebhooksV3, WebhooksV4
from envoi.infra import health

# PERF: falcon's default JSON handler calls json.dumps(media, ensure_ascii=False), which builds a JSONEncoder
# for every response; one shared encoder (it keeps no state between calls) writes the same bytes, ~1 us sooner.
_JSON_RESPONSES = falcon.media.JSONHandler(dumps=json.JSONEncoder(ensure_ascii=False).encode)

#: (URI template, resource, suffix): the suffix picks the resource's on_<method>_<suffix> responders.
Route = tuple[str, object, str | None]


#: What `envoi tracking` serves on the domains' tracking hosts: the public links, and its health check.
TRACKING_ROUTES = ("/o/{token}", "/c/{token}", "/u/{token}", "/l/{token}", "/healthz", "/readyz")


def create_app(settings, services, tracking_only: bool = False) -> falcon.App:
    """The API; tracking_only: just the tracking links (`envoi tracking`, on the tracking hosts)."""
    # PageGate first: a dashboard request refused by any later middleware still gets an HTML page.
    app = falcon.App(middleware=[PageGate(services.sessions), params.InputGuard(), forms.ReleaseMemory(),
                                 AuthMiddleware(services.accounts, settings.region, dict(settings.region_urls))])
    app.req_options.strip_url_path_trailing_slash = True
    app.resp_options.media_handlers[falcon.MEDIA_JSON] = _JSON_RESPONSES
    forms.configure(app)
    errors.install(app)
    for template, resource, suffix in routes(settings, services):
        if tracking_only and template not in TRACKING_ROUTES:
            continue
        app.add_route(template, resource, suffix=suffix)
    return app


def routes(settings, services) -> list[Route]:
    """Every route of the API, grouped by what it serves."""
    accounts = services.accounts
    dns = dns_targets(settings)
    messages = Messages(services.intake, services.list_expander, services.template_sending)
    stored = StoredMessage(accounts, services.storage, services.intake, services.routes)
    templates = TemplateResource(accounts, services.templates)
    suppressions = {kind: SuppressionList(accounts, services.suppressions, kind)
                    for kind in ("bounces", "unsubscribes", "complaints", "whitelists")}
    events = EventList(accounts, services.events)
    live = LiveEvents(accounts, services.stream)
    tags = Tags(accounts, services.stats, settings.public_url)
    metrics, account_tags = Metrics(services.analytics), AccountTags(services.analytics)
    aggregates = Aggregates(accounts, services.analytics, services.stats)
    domain_item = DomainItem(accounts, dns, settings.dns_resolver)
    recipients = AuthorizedRecipients(accounts)
    credentials = Credentials(accounts)
    webhooks_v3 = WebhooksV3(accounts, services.webhooks)
    account_webhooks = AccountWebhooks(services.webhooks)
    tracking_settings = TrackingSettings(accounts, services.tracking)
    guard, client_address = Guard(services.redis, settings.region), ClientAddress(settings.trusted_proxies)
    ips = IpCollection(services.ips, accounts)
    domain_ips = DomainIps(services.ips, accounts)
    tls_reports = TlsReports(services.db, settings.region)
    pools = Pools(services.ips, accounts)
    warmups = Warmups(services.ips, accounts)
    keys = Keys(accounts, client_address)
    subaccounts = SubaccountCollection(services.subaccounts, client_address)
    monthly_limit = MonthlyLimit(services.subaccounts, services.quota, client_address)
    mailing_lists, list_members = MailingLists(services.lists), ListMembers(services.lists)
    bulk_validation = BulkValidation(services.validation)
    return [
        # sending and stored messages
        ("/v3/{domain}/messages", messages, None),
        ("/v3/{domain}/messages.mime", messages, "mime"),
        # GET (sent, or received and kept by a route's store()), POST (resend), DELETE (cancel)
        ("/v3/domains/{domain}/messages/{storage_key}", stored, None),
        ("/v3/domains/{domain}/messages/{storage_key}/attachments/{index}", stored, "attachment"),
        ("/v3/{domain}/envelopes", Envelopes(accounts, services.storage), None),  # DELETE: clear the queue
        ("/v3/domains/{domain}/sending_queues", SendingQueues(accounts), None),
        # stored templates: the domain's (v3) and the account's (v4), with their versions
        *((f"{base}{path}", templates, suffix)
          for base in ("/v3/{domain}/templates", "/v4/templates")
          for path, suffix in (("", None), ("/{name}", "item"), ("/{name}/versions", "versions"),
                               ("/{name}/versions/{tag}", "version"),
                               ("/{name}/versions/{tag}/copy/{new_tag}", "copy"))),
        # events: the log and its paging URLs, the live stream, message trace
        ("/v3/{domain}/events", events, None),
        ("/v3/{domain}/events/{token}", events, "page"),
        ("/v3/{domain}/events/live", live, None),
        ("/v3/events/live", live, None),  # every domain of the caller's account
        ("/v3/{domain}/messages/{message_id}/trace", MessageTrace(accounts, services.events), None),
        # inbound routes (the inbound MX applies them to mail for the receiving domains)
        ("/v3/routes", RouteCollection(services.routes), None),
        ("/v3/routes/{route_id}", RouteCollection(services.routes), "item"),
        # stats and tags
        ("/v3/{domain}/stats/total", StatsTotal(accounts, services.stats), None),
        ("/v3/stats/total", AccountStatsTotal(services.stats), None),
        ("/v3/{domain}/tags", tags, None),
        ("/v3/{domain}/tags/{tag}", tags, "item"),
        ("/v3/{domain}/tags/{tag}/stats", tags, "stats"),
        # analytics: Mailgun's metrics, usage, logs and account tags APIs; account stats filtered and
        # grouped; provider/device/country aggregates of a domain or a tag (envoi/events/analytics.py)
        ("/v1/analytics/metrics", metrics, None),
        ("/v1/analytics/usage/metrics", metrics, "usage"),
        ("/v1/analytics/logs", AnalyticsLogs(services.logs), None),
        ("/v1/analytics/tags", account_tags, None),
        ("/v1/analytics/tags/limits", account_tags, "limits"),
        ("/v3/stats/filter", StatsFilter(services.analytics), None),
        ("/v3/{domain}/aggregates/{kind}", aggregates, None),
        ("/v3/{domain}/tags/{tag}/stats/aggregates/{kind}", aggregates, "tag"),
        # domains, their SMTP credentials, the sandbox's authorised recipients
        *((f"/{v}/domains", DomainCollection(accounts, dns, v, services.dkim), None) for v in ("v3", "v4")),
        *((f"/{v}/domains/{{domain}}{path}", domain_item, suffix) for v in ("v3", "v4")
          for path, suffix in (("", None), ("/verify", "verify"))),
        ("/v3/domains/{domain}/connection", domain_item, "connection"),
        ("/v3/domains/{domain}/web_prefix", domain_item, "web_prefix"),
        ("/v3/domains/{domain}/credentials", credentials, None),
        ("/v3/domains/{domain}/credentials/{login}", credentials, "item"),
        # DKIM: keys, their activation, rotation, a domain's selector and authority (envoi.api.resources.dkim)
        ("/v1/dkim/keys", DkimKeyCollection(services.dkim), None),
        ("/v4/domains/{domain}/keys/{selector}/activate", DkimKeyActivation(services.dkim), "activate"),
        ("/v4/domains/{domain}/keys/{selector}/deactivate", DkimKeyActivation(services.dkim), "deactivate"),
        ("/v1/dkim_management/domains/{domain}/rotation", DkimManagement(services.dkim, accounts), "rotation"),
        ("/v1/dkim_management/domains/{domain}/rotate", DkimManagement(services.dkim, accounts), "rotate"),
        ("/v3/domains/{domain}/dkim_selector", DomainDkimSettings(services.dkim, dns), "selector"),
        ("/v3/domains/{domain}/dkim_authority", DomainDkimSettings(services.dkim, dns), "authority"),
        ("/v5/sandbox/auth_recipients", recipients, None),
        ("/v5/sandbox/auth_recipients/{email}", recipients, "item"),
        # suppression lists
        *((f"/v3/{{domain}}/{kind}{path}", resource, suffix)
          for kind, resource in suppressions.items()
          for path, suffix in (("", None), ("/import", "import"), ("/{address}", "item"))),
        # mailing lists (account-wide) and their members
        ("/v3/lists", mailing_lists, None),
        ("/v3/lists/pages", mailing_lists, "pages"),
        ("/v3/lists/{address}", mailing_lists, "item"),
        ("/v3/lists/{address}/members", list_members, None),
        ("/v3/lists/{address}/members/pages", list_members, "pages"),
        ("/v3/lists/{address}/members.json", list_members, "json"),
        ("/v3/lists/{address}/members.csv", list_members, "csv"),
        ("/v3/lists/{address}/members/{member}", list_members, "item"),
        ("/v3/lists/{address}/validate", ListValidation(services.lists, services.validation), None),
        # webhooks
        ("/v3/domains/{domain}/webhooks", webhooks_v3, None),
        ("/v3/domains/{domain}/webhooks/attempts", webhooks_v3, "attempts"),
        ("/v3/domains/{domain}/webhooks/{name}", webhooks_v3, "item"),
        ("/v3/domains/{domain}/webhooks/{name}/attempts", webhooks_v3, "attempts"),
        ("/v4/domains/{domain}/webhooks", WebhooksV4(accounts, services.webhooks), None),
        ("/v5/accounts/http_signing_key", SigningKey(services.webhooks), None),
        ("/v1/webhooks", account_webhooks, None),  # account-level: every domain of the account
        ("/v1/webhooks/{webhook_id}", account_webhooks, "item"),
        # tracking: per-domain settings and the public open/click/unsubscribe links
        ("/v3/domains/{domain}/tracking", tracking_settings, None),
        ("/v3/domains/{domain}/tracking/{kind}", tracking_settings, "item"),
        ("/o/{token}", Open(services.tracking, guard, client_address), None),
        ("/c/{token}", Click(services.tracking, guard, client_address), None),
        ("/u/{token}", Unsubscribe(services.tracking, guard, client_address), None),
        ("/l/{token}", Unsubscribe(services.tracking, guard, client_address, kind="l"), None),  # a list's
        # IPs, domain IPs, IP pools (Mailgun documents /v1/ip_pools; its Python SDK maps v3), warm-ups
        ("/v3/ips", ips, None),
        ("/v3/ips/export", ips, "export"),  # CSV of dedicated assignments
        ("/v3/ips/audit", ips, "audit"),
        ("/v3/ips/{ip}", IpItem(services.ips, accounts), None),
        ("/v3/domains/{domain}/ips", domain_ips, None),
        ("/v3/domains/{domain}/ips/{ip}", domain_ips, "item"),
        # outbound TLS results, RFC 8460 reports (operator)
        ("/v3/tls/reports", tls_reports, None),
        ("/v3/tls/reports/{policy_domain}", tls_reports, "item"),
        ("/v1/ip_pools", pools, None),
        ("/v1/ip_pools/{pool_id}", pools, "item"),
        ("/v3/ip_pools", pools, None),
        ("/v3/ip_pools/{pool_id}", pools, "item"),
        ("/v3/ip_warmups", warmups, None),
        ("/v3/ip_warmups/{ip}", warmups, "item"),
        # address validation: single addresses, bulk jobs, their results by signed link
        ("/v4/address/validate", AddressValidate(services.validation), None),
        ("/v4/address/validate/bulk", bulk_validation, None),
        ("/v4/address/validate/bulk/{list_id}", bulk_validation, "item"),
        ("/v4/address/validate/download/{token}", ValidationDownload(services.validation), None),
        # privacy: a data subject's export and erasure
        ("/v3/privacy/addresses/{address}", AddressData(services.privacy), None),
        # the account's audit log
        ("/v3/audit-log", AuditLog(services.audit), None),
        # the account's whole data, as a JSON-lines archive (admin keys)
        ("/v1/account/export", AccountExport(services.privacy, services.audit, client_address), None),
        # billing: Stripe's webhooks (public; Stripe's signature is the credential)
        ("/v1/billing/stripe/webhook", StripeWebhook(services.billing), None),
        # regions: a peer region asks whether a login is ours (signed; routing, never transfer)
        ("/v1/regions/lookup", RegionLookup(services.router), None),
        # the process itself
        ("/healthz", Health(), None),
        ("/readyz", Ready(health.for_settings(settings, started=True)), None),
        # (no /metrics: the public listener never serves it; `envoi api --metrics-bind` does)
        ("/openapi.json", OpenApiDocument(), None),
        # subaccounts (X-Mailgun-On-Behalf-Of: a parent's key acts for one) and custom sending limits
        ("/v5/accounts/subaccounts", subaccounts, None),
        ("/v5/accounts/subaccounts/{subaccount_id}", subaccounts, "item"),
        ("/v5/accounts/subaccounts/{subaccount_id}/disable", subaccounts, "disable"),
        ("/v5/accounts/subaccounts/{subaccount_id}/enable", subaccounts, "enable"),
        ("/v5/accounts/subaccounts/{subaccount_id}/limit/custom/monthly", monthly_limit, None),
        ("/v5/accounts/limit/custom/monthly", monthly_limit, None),
        # API keys (Mailgun's /v1/keys)
        ("/v1/keys", keys, None),
        ("/v1/keys/{key_id}", keys, "item"),
        # the web dashboard (envoi/api/dashboard)
        *dashboard.routes(settings, services),
    ]

