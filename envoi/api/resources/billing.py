"""Stripe's webhooks (POST /v1/billing/stripe/webhook): public, authenticated by Stripe's signature."""

from __future__ import annotations

from envoi.api.auth import PUBLIC
from envoi.api.errors import ApiError

MAX_EVENT_BYTES = 512 * 1024  # Stripe's events are a few KB; more is not Stripe


class StripeWebhook:
    auth = PUBLIC

    def __init__(self, billing):
        self.billing = billing

    def on_post(self, req, resp) -> None:
        if (req.content_length or 0) > MAX_EVENT_BYTES:
            raise ApiError(413, "Stripe event too large")
        payload = req.bounded_stream.read(MAX_EVENT_BYTES + 1)
        if len(payload) > MAX_EVENT_BYTES:
            raise ApiError(413, "Stripe event too large")
        # A bad signature raises BadSignature (400) before anything is read or written.
        resp.media = {"received": True, "result": self.billing.handle_webhook(payload, req.get_header("Stripe-Signature"))}
