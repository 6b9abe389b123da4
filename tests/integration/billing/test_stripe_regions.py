"""One Stripe account, two regions: what Envoi asks Stripe to do exactly once (create an account's customer,
bill an overage) is keyed by region, because account ids are per region. Without the region in the key,
the US account N would be handed the EU account N's customer (Stripe answers a repeated idempotency key
with the first response), and regions would mix at Stripe."""

from __future__ import annotations

import http.client
import secrets
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from urllib.parse import urlsplit

import pytest
import redis

from envoi import runtime
from envoi.infra.settings import Settings
from tests.support.databases import drop_database, migrated_database
from tests.support.localstripe import LocalStripe, card_payment_method, make_billing
from tests.support.region_routing import free_redis_url
from tests.support.servers import serve_in_background, shutdown

HOP_HEADERS = {"connection", "transfer-encoding", "content-length", "keep-alive"}


class IdempotentStripe:
    """localstripe behind a proxy that keeps Stripe's documented idempotency promise, which localstripe
    does not: a POST repeating an Idempotency-Key gets the first response again, whatever its body."""

    def __init__(self, upstream: str):
        self.upstream = urlsplit(upstream)
        self.keys: list[str] = []
        self.responses: dict[str, tuple[int, list[tuple[str, str]], bytes]] = {}
        self.lock = threading.Lock()
        proxy = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, *args):
                pass

            def _forward(self):
                body = self.rfile.read(int(self.headers.get("Content-Length") or 0))
                key = self.headers.get("Idempotency-Key") if self.command == "POST" else None
                with proxy.lock:
                    if key:
                        proxy.keys.append(key)
                    replay = proxy.responses.get(key) if key else None
                if replay is None:
                    conn = http.client.HTTPConnection(proxy.upstream.hostname, proxy.upstream.port, timeout=10)
                    headers = {k: v for k, v in self.headers.items() if k.lower() not in HOP_HEADERS}
                    conn.request(self.command, self.path, body=body or None, headers=headers)
                    resp = conn.getresponse()
                    replay = (resp.status, [(k, v) for k, v in resp.getheaders() if k.lower() not in HOP_HEADERS],
                              resp.read())
                    conn.close()
                    if key:
                        with proxy.lock:
                            proxy.responses.setdefault(key, replay)
                status, headers, data = replay
                self.send_response(status)
                for name, value in headers:
                    self.send_header(name, value)
                self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                self.wfile.write(data)

            do_GET = do_POST = do_DELETE = _forward

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.server.daemon_threads = True
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}"
        serve_in_background(self.server)

    def close(self) -> None:
        shutdown(self.server)
        self.server.server_close()


@pytest.fixture
def stripe_account(localstripe):
    proxy = IdempotentStripe(localstripe.api_base)
    yield LocalStripe(proxy.url, localstripe.webhooks), proxy
    proxy.close()


@pytest.fixture
def us_services(settings):
    """A US region on its own database (the session's Redis db is not written to by billing)."""
    dsn = migrated_database("envoi_test_us")
    redis_url = free_redis_url()  # a region's Redis is stamped with its region: the US needs its own
    services = runtime.build(Settings(region="us", database_url=dsn, redis_url=redis_url,
                                      secret_key=secrets.token_bytes(32),
                                      lookup_key=secrets.token_bytes(32)), pool_size=2)
    yield services
    services.close()
    redis.Redis.from_url(redis_url).flushdb()
    drop_database(dsn)


def test_the_same_account_id_in_two_regions_gets_two_customers(services, us_services, stripe_account, test_plans):
    stripe, proxy = stripe_account
    eu_account = services.accounts.create_account(f"eu-{secrets.token_hex(3)}")
    with us_services.db.transaction() as conn:  # the US region's account with the very same id
        conn.execute("SELECT setval('accounts_id_seq', %s, false)", (eu_account["id"],))
    us_account = us_services.accounts.create_account(f"us-{secrets.token_hex(3)}")
    assert us_account["id"] == eu_account["id"]

    eu_billing = make_billing(services, stripe, test_plans)
    eu_billing.sync_plans()
    us_billing = make_billing(us_services, stripe, test_plans)
    eu_row = eu_billing.start_subscription(eu_account["id"], "basic", card_payment_method(eu_billing))
    us_row = us_billing.start_subscription(us_account["id"], "basic", card_payment_method(us_billing))

    assert eu_row["stripe_customer_id"] != us_row["stripe_customer_id"]
    customers = us_billing.gateway._client.v1.customers
    assert customers.retrieve(us_row["stripe_customer_id"]).metadata["envoi_region"] == "us"
    assert customers.retrieve(eu_row["stripe_customer_id"]).metadata["envoi_region"] == "eu"
    assert {k for k in proxy.keys if "customer" in k} == {f"envoi-eu-customer-{eu_account['id']}",
                                                         f"envoi-us-customer-{us_account['id']}"}
