"""The falcon application: create_app(settings, services) wires resources to services."""

from __future__ import annotations

import falcon

from envoi.api import errors, forms, params
from envoi.api.auth import AuthMiddleware
from envoi.api.openapi import OpenApiDocument
from envoi.api.resources.domains import Credentials, DomainCollection, DomainItem
from envoi.api.resources.events import EventList
from envoi.api.resources.messages import Messages
from envoi.api.resources.privacy import AddressData
from envoi.api.resources.sandbox import AuthorizedRecipients
from envoi.api.resources.stored import StoredMessage
from envoi.api.resources.system import Health, MetricsEndpoint
from envoi.api.routes import delivery as routes_delivery
from envoi.api.routes import events_out as routes_events_out
from envoi.api.routes import ips as routes_ips
from envoi.api.routes import logs as routes_logs


def create_app(settings, services) -> falcon.App:
    app = falcon.App(middleware=[params.InputGuard(), forms.ReleaseMemory(),
                                 AuthMiddleware(services.accounts, settings.region, dict(settings.region_urls))])
    app.req_options.strip_url_path_trailing_slash = True
    forms.configure(app)
    errors.install(app)
    dns = {"spf_include": f"{settings.region}.envoi.local", "mx_hosts": (f"mx.{settings.region}.envoi.local",),
           "tracking_target": f"track.{settings.region}.envoi.local"}

    messages = Messages(services.intake)
    app.add_route("/v3/{domain}/messages", messages)
    app.add_route("/v3/{domain}/messages.mime", messages, suffix="mime")

    events = EventList(services.accounts, services.events)
    app.add_route("/v3/{domain}/events", events)
    app.add_route("/v3/{domain}/events/{token}", events, suffix="page")

    app.add_route("/v4/domains", DomainCollection(services.accounts, dns))
    domain_item = DomainItem(services.accounts, dns, settings.dns_resolver)
    app.add_route("/v4/domains/{domain}", domain_item)
    app.add_route("/v3/domains/{domain}", domain_item)
    app.add_route("/v4/domains/{domain}/verify", domain_item, suffix="verify")
    app.add_route("/v3/domains/{domain}/verify", domain_item, suffix="verify")
    recipients = AuthorizedRecipients(services.accounts)
    app.add_route("/v5/sandbox/auth_recipients", recipients)
    app.add_route("/v5/sandbox/auth_recipients/{email}", recipients, suffix="item")
    app.add_route("/v3/domains/{domain}/messages/{storage_key}", StoredMessage(services.accounts, services.storage))
    app.add_route("/v3/privacy/addresses/{address}", AddressData(services.privacy))
    credentials = Credentials(services.accounts)
    app.add_route("/v3/domains/{domain}/credentials", credentials)
    app.add_route("/v3/domains/{domain}/credentials/{login}", credentials, suffix="item")

    # Feature routes: one module per feature adds its own.
    for feature in (routes_logs, routes_events_out, routes_ips, routes_delivery):
        feature.add_routes(app, settings, services)

    app.add_route("/healthz", Health())
    app.add_route("/metrics", MetricsEndpoint(services.metrics))
    app.add_route("/openapi.json", OpenApiDocument())
    return app
