"""Domains through the official Mailgun SDK: the API behind a real HTTP server, records checked on the
test DNS server."""

from __future__ import annotations

import uuid

import pytest
from mailgun.client import Client

from envoi.api.app import create_app
from tests.support.dns_server import DnsServer
from tests.support.events import AppServer

SPF_INCLUDE = "spf.eu.envoi.test"
TRACKING_HOST = "track.eu.envoi.test"
MX_HOSTS = ("mxa.eu.envoi.test", "mxb.eu.envoi.test")
DMARC_RUA = "mailto:dmarc-reports@envoi.test"


@pytest.fixture
def dns():
    with DnsServer() as server:
        yield server


@pytest.fixture
def domain_settings(settings, dns):
    """The operator's DNS settings (what customers' records point at) and the test DNS server."""
    return settings.replace(spf_include=SPF_INCLUDE, tracking_host=TRACKING_HOST, inbound_mx_hosts=MX_HOSTS,
                            dmarc_rua=DMARC_RUA, dns_resolver=("127.0.0.1", dns.port))


@pytest.fixture
def server(domain_settings, services):
    with AppServer(create_app(domain_settings, services)) as srv:
        yield srv


def new_tenant(services) -> tuple[dict, str]:
    account = services.accounts.create_account(f"dom-{uuid.uuid4().hex[:6]}")
    _, key = services.accounts.create_key(account["id"], "admin")
    return account, key


@pytest.fixture
def tenant(services, server):
    """(account, its admin key, the SDK client for it)."""
    account, key = new_tenant(services)
    return account, key, Client(auth=("api", key), api_url=server.url)


def new_name(label: str = "dom") -> str:
    return f"{label}-{uuid.uuid4().hex[:8]}.example.test"
