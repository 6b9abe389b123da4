"""ENVOI_BILLING follows ENVOI_STRIPE_SECRET_KEY unless set; the Stripe key is never in a repr; plans give
event retention with billing on, the settings override, and billing off keeps the built-in table."""

import base64

from envoi import runtime
from envoi.billing.plans import load
from envoi.events.service import PLAN_RETENTION
from envoi.infra.settings import Settings

KEY = {"ENVOI_SECRET_KEY": base64.b64encode(b"k" * 32).decode(), "ENVOI_LOOKUP_KEY": base64.b64encode(b"l" * 32).decode()}
DAY = 86400.0


def test_billing_is_on_exactly_when_stripe_is_configured_unless_said():
    assert Settings.from_env(KEY).billing is False
    with_stripe = Settings.from_env({**KEY, "ENVOI_STRIPE_SECRET_KEY": "sk_test_secret123"})
    assert with_stripe.billing is True and "sk_test_secret123" not in repr(with_stripe)
    assert Settings.from_env({**KEY, "ENVOI_STRIPE_SECRET_KEY": "sk_test_x", "ENVOI_BILLING": "off"}).billing is False
    assert Settings.from_env({**KEY, "ENVOI_BILLING": "on"}).billing is True
    assert Settings.from_env({**KEY, "ENVOI_BILLING_PLANS": "/etc/envoi/plans.toml"}).billing_plans == "/etc/envoi/plans.toml"


def test_event_retention_per_plan():
    plans = load()
    on = Settings.from_env({**KEY, "ENVOI_BILLING": "on", "ENVOI_EVENT_RETENTION_PLANS": "basic=7d"})
    retention = runtime.plan_retention(on, plans)
    assert retention["free"] == 1 * DAY and retention["scale"] == 30 * DAY and retention["basic"] == 7 * DAY
    assert retention["enterprise"] == PLAN_RETENTION["enterprise"]  # not in the file: the built-in value
    assert runtime.plan_retention(Settings.from_env(KEY), plans) == PLAN_RETENTION  # billing off
