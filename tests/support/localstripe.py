"""localstripe (a local fake of Stripe's API, PyPI `localstripe`) as a process on a free loopback port, and
a real HTTP receiver for the webhooks it signs and sends.

Registered as a plugin in tests/conftest.py. `localstripe` is session-scoped; each test makes its own
customers, so tests do not see each other's objects. Captured webhooks are replayed by the tests to
Envoi's endpoint, byte for byte with localstripe's Stripe-Signature, so a test decides their order and
how often each arrives (Stripe retries, and does not promise order).

localstripe writes its state to /tmp/localstripe.pickle on every change (hard-coded); `--from-scratch`
keeps it from reading that file back, so parallel runs do not share state.
"""

from __future__ import annotations

import json
import sys
import tempfile
import threading
import time
import urllib.request
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest

from tests.support.processes import Proc, free_port
from tests.support.servers import serve_in_background, shutdown

WEBHOOK_SECRET = "whsec_envoi_tests"
SECRET_KEY = "sk_test_envoi"
PUBLISHABLE_KEY = "pk_test_envoi"


@dataclass
class Captured:
    type: str
    body: bytes
    signature: str
    event: dict


@dataclass
class WebhookCapture:
    """The webhooks localstripe sent, in arrival order."""

    url: str = ""
    received: list[Captured] = field(default_factory=list)
    lock: threading.Lock = field(default_factory=threading.Lock)

    def wait_for(self, type_: str, match=lambda event: True, timeout: float = 10.0) -> Captured:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            with self.lock:
                for hook in self.received:
                    if hook.type == type_ and match(hook.event):
                        return hook
            time.sleep(0.02)  # the capture server appends as hooks arrive
        raise AssertionError(f"localstripe sent no {type_} webhook within {timeout}s")


@dataclass
class LocalStripe:
    api_base: str
    webhooks: WebhookCapture
    secret_key: str = SECRET_KEY
    webhook_secret: str = WEBHOOK_SECRET
    publishable_key: str = PUBLISHABLE_KEY

    @property
    def js_url(self) -> str:
        """localstripe's fake Stripe.js (Elements, confirmCardSetup against its SetupIntents)."""
        return f"{self.api_base}/js.stripe.com/v3/"


def past_the_second_of(hook: Captured) -> None:
    """Return once the clock is past the second of HOOK's event: Stripe's `created` counts whole seconds,
    so an event localstripe makes after this is strictly newer (what a 1.1 s sleep waited for, without
    sleeping out the rest of a second already passed; localstripe runs on this machine's clock)."""
    while time.time() < hook.event["created"] + 1:
        time.sleep(0.02)


def _serve_capture() -> tuple[ThreadingHTTPServer, WebhookCapture]:
    capture = WebhookCapture()

    class Handler(BaseHTTPRequestHandler):
        def log_message(self, *args):
            pass

        def do_POST(self):
            body = self.rfile.read(int(self.headers.get("Content-Length") or 0))
            event = json.loads(body)
            with capture.lock:
                capture.received.append(Captured(event["type"], body, self.headers.get("Stripe-Signature", ""), event))
            self.send_response(200)
            self.send_header("Content-Length", "0")
            self.end_headers()

    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    serve_in_background(server)
    capture.url = f"http://127.0.0.1:{server.server_address[1]}/stripe"
    return server, capture


def _ready(api_base: str) -> bool:
    req = urllib.request.Request(f"{api_base}/v1/customers", headers={"Authorization": f"Bearer {SECRET_KEY}"})
    with urllib.request.urlopen(req, timeout=1) as resp:
        return resp.status == 200


@pytest.fixture(scope="session")
def localstripe():
    server, capture = _serve_capture()
    port = free_port()
    log_dir = Path(tempfile.mkdtemp(prefix="localstripe-"))
    proc = Proc("localstripe", [sys.executable, "-m", "localstripe", "--port", str(port), "--from-scratch"],
                env={"PATH": "/usr/bin:/bin", "PYTHONUNBUFFERED": "1"}, log_dir=log_dir)
    api_base = f"http://127.0.0.1:{port}"
    try:
        proc.wait_ready(lambda: _ready(api_base), timeout=30)
        body = f"url={capture.url}&secret={WEBHOOK_SECRET}".encode()
        urllib.request.urlopen(urllib.request.Request(f"{api_base}/_config/webhooks/envoi", data=body), timeout=5)
        yield LocalStripe(api_base, capture)
    finally:
        proc.stop()
        shutdown(server)


#: The packaged plans, but Basic includes 3 messages a month so that a test reaches its overage.
TEST_INCLUDED = 3


@pytest.fixture(scope="session")
def test_plans():
    from dataclasses import replace

    from envoi.billing import plans

    packaged = plans.load()
    table = dict(packaged.plans)
    table["basic"] = replace(table["basic"], included_per_month=TEST_INCLUDED)
    return plans.Plans(plans=table, default=packaged.default, currency=packaged.currency)


def make_billing(services, localstripe, plans, gateway_class=None, grace_seconds: float = 7 * 86400):
    from envoi.billing.service import Billing
    from envoi.billing.stripe_gateway import StripeGateway

    gateway = (gateway_class or StripeGateway)(localstripe.secret_key, api_base=localstripe.api_base,
                                               webhook_secret=localstripe.webhook_secret,
                                               publishable_key=localstripe.publishable_key,
                                               js_url=localstripe.js_url)
    return Billing(services.db, services.accounts, plans, gateway, grace_seconds=grace_seconds)


@pytest.fixture(scope="session")
def billing(services, localstripe, test_plans):
    """Billing on the session's services, against localstripe, with its plans synced."""
    billing = make_billing(services, localstripe, test_plans)
    billing.sync_plans()
    return billing


def card_payment_method(billing, number: str = "4242424242424242") -> str:
    """A PaymentMethod id for a test card, as Stripe.js would make in the browser (Envoi never sees it)."""
    return billing.gateway._client.v1.payment_methods.create(
        {"type": "card", "card": {"number": number, "exp_month": 12, "exp_year": 2034, "cvc": "123"}}).id
