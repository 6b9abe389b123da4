"""Helpers and fixtures for tests that queue mail and watch the relay deliver it to a sink on loopback.

The fixtures are registered as a plugin in tests/conftest.py; a module defining its own `relay` or `sink`
(tests/integration/mta/delivery/test_relay.py) overrides them.
"""

from __future__ import annotations

import pytest

from envoi.dev.sink import Sink
from envoi.mta.compose import compose
from tests.support.dns_server import DnsServer
from tests.support.relay import RelayThread, relay_settings


def send(services, account_id, domain, to: str | list[str], **fields) -> str:
    """Queue a message through intake (no HTTP) as the account's admin; returns its message id."""
    from envoi.accounts.service import Principal

    principal = Principal(None, account_id, "admin")
    values = {"from": [f"Sender <s@{domain['name']}>"], "to": [to] if isinstance(to, str) else list(to),
              "subject": ["Hi"], "text": ["body"]}
    values.update({k.replace("_", ":", 1) if k.startswith(("o_", "h_", "v_")) else k: [v]
                   for k, v in fields.items()})
    draft = compose(domain["name"], values, [], [])
    return services.intake.accept(principal, domain, draft).strip("<>")


def events_of(db, message_id):
    return db.execute("SELECT event, severity, data FROM events WHERE message_id = %s ORDER BY id",
                      (message_id,)).fetchall()


def route(dns, rcpt_domain):
    dns.add(rcpt_domain, "MX", f"10 mx.{rcpt_domain}.")
    dns.add(f"mx.{rcpt_domain}", "A", "127.0.0.1")


@pytest.fixture
def sink():
    with Sink() as s:
        yield s


@pytest.fixture
def relay(services, settings, sink, domain):
    """The relay with suppressions on, routing dest.test to the sink."""
    with DnsServer() as dns:
        route(dns, "dest.test")
        relay_cfg = relay_settings(settings, sink, dns)
        with RelayThread(services, relay_cfg, suppressions=services.suppressions) as thread:
            yield thread
