"""django-anymail against a live Envoi API, in-process: a minimal Django configured once per test process
(`django.conf.settings.configure`), then `mailgun_settings()` points anymail's Mailgun backend (and its
webhooks' signing key) at a test server for the duration of a `with` block.

Reusable by any test that drives Envoi through anymail (sending with stored templates; inbound through
anymail's Mailgun inbound view, which wants MAILGUN_WEBHOOK_SIGNING_KEY)."""

from __future__ import annotations

import contextlib
from collections.abc import Iterator

MAILGUN_BACKEND = "anymail.backends.mailgun.EmailBackend"


def configure_django() -> None:
    """Configure Django once (settings.configure may be called only once per process)."""
    import django
    from django.conf import settings

    if settings.configured:
        return
    settings.configure(
        DEBUG=False,
        SECRET_KEY="envoi-tests-only",  # noqa: S106 (a throwaway key of the in-process test Django)
        INSTALLED_APPS=["django.contrib.contenttypes", "django.contrib.auth", "anymail"],
        EMAIL_BACKEND=MAILGUN_BACKEND,
        ANYMAIL={},
        ROOT_URLCONF="anymail.urls",  # anymail's tracking and inbound webhook views
        ALLOWED_HOSTS=["*"],
        USE_TZ=True,
    )
    django.setup()


@contextlib.contextmanager
def mailgun_settings(api_url: str, api_key: str, **anymail: str) -> Iterator[None]:
    """ANYMAIL's Mailgun settings pointed at an Envoi API at api_url (e.g. an AppServer's url) while the
    block runs; `anymail` adds or overrides keys (MAILGUN_SENDER_DOMAIN, MAILGUN_WEBHOOK_SIGNING_KEY...)."""
    configure_django()
    from django.test.utils import override_settings

    values = {"MAILGUN_API_KEY": api_key, "MAILGUN_API_URL": f"{api_url.rstrip('/')}/v3", **anymail}
    with override_settings(EMAIL_BACKEND=MAILGUN_BACKEND, ANYMAIL=values):
        yield
