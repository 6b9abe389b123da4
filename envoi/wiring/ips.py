"""Wiring for the ips feature: services.ips, the accept-time IP check and the relay's egress hook."""

from __future__ import annotations

import atexit
import logging

from prometheus_client import Counter

from envoi.ips.egress import NoEgressAvailable
from envoi.ips.service import Ips
from envoi.mta.delivery.session import Egress

log = logging.getLogger("envoi.ips")


def wire(services) -> None:
    """Attach this feature's services to `services` (called once by runtime.build)."""
    settings = services.settings
    services.ips = Ips(services.db, default_plan=settings.warmup_plan, relay_host=settings.relay_host)
    services.ips.egress_counter = Counter(
        "envoi_egress_deliveries_total", "Deliveries per egress IP and why that IP was chosen (sending-ip,"
        " sending-ip-pool, domain-ip, domain-pool, shared, overflow = past a warm-up cap, default = OS address)",
        ["ip", "via"], registry=services.metrics.registry)
    services.ips.egress_waits = Counter(
        "envoi_egress_unavailable_total", "Deliveries for which no egress IP could send now", [],
        registry=services.metrics.registry)
    services.intake.renderers.append(sending_ip_check(services.ips))


def sending_ip_check(ips: Ips):
    """An intake renderer: o:sending-ip(-pool) must name the account's own IP or pool (Mailgun's 403)."""

    def check(domain: dict, draft):
        options = draft.options or {}
        if options.get("sending_ip") or options.get("sending_ip_pool"):
            ips.check_sending(domain["account_id"], options)  # IpNotAllowed: 403 / 550 5.7.1
        return draft

    return check


def egress_hook(view, counter=None, waits=None):
    """Adapt an EgressView to the relay's egress(message_row, domain_row, recipients) -> (Egress, how many
    of the recipients it carries) contract.

    Raises NoEgressAvailable(retry_after) when no IP may send now (see the ips report for the
    engine change that honours it)."""

    def egress(message: dict, domain: dict, recipients: int = 1) -> tuple[Egress, int]:
        try:
            choice = view.choose(message, domain, recipients)
        except NoEgressAvailable:
            if waits is not None:
                waits.inc()
            raise
        if counter is not None:
            counter.labels(choice.address or "", choice.via).inc()
        return Egress(choice.address, choice.helo), choice.recipients

    egress.view = view
    return egress


def make_egress(services, **overrides):
    """Start an egress view for this relay host (loads the inventory now) and return the hook."""
    settings = services.settings
    options = {"host": settings.relay_host, "policy": settings.warmup_policy, "refresh": settings.ips_refresh,
               "default_helo": settings.helo_name}
    options.update(overrides)
    view = services.ips.egress_view(**options).start()
    atexit.register(view.stop)  # record usage and hand back unspent warm-up quota when the relay exits
    return egress_hook(view, services.ips.egress_counter, services.ips.egress_waits)


def relay_options(services) -> dict:
    """Extra keyword arguments for the relay engine (hooks this feature plugs in)."""
    if services.ips is None:
        return {}
    return {"egress": make_egress(services)}
