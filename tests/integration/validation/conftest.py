"""Validation tests run on services whose resolver is the DNS test server (tests/support/dns_server.py)."""

from __future__ import annotations

import dataclasses

import pytest

from envoi import runtime
from tests.support.dns_server import DnsServer

DNS_TIMEOUT = 1.0


@pytest.fixture(scope="module")
def dns():
    with DnsServer() as server:
        server.add("good.test", "MX", "10 mx.good.test.")
        server.add("mx.good.test", "A", "127.0.0.1")
        server.add("nullmx.test", "MX", "0 .")
        server.add("aonly.test", "A", "127.0.0.2")
        for name in ("slow.test", "slow1.test", "slow2.test", "slow3.test", "slow4.test"):
            server.drop(name)  # never answers
        yield server


@pytest.fixture(scope="module")
def validation_services(settings, dns):
    svc = runtime.build(dataclasses.replace(settings, dns_resolver=("127.0.0.1", dns.port),
                                            validation_dns_timeout=DNS_TIMEOUT, validation_batch=3),
                        pool_size=4)
    yield svc
    svc.validation.domains.close()
    svc.close()


@pytest.fixture
def api_services(validation_services):
    return validation_services
