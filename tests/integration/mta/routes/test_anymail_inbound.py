"""django-anymail receives what the inbound MX forwards: Django serves anymail's Mailgun inbound view
on a loopback WSGI server, a route forwards to it, and anymail's `inbound` signal must fire with the
message parsed (from, subject, text, attachments) after checking the signature with the account's
signing key. Both of Mailgun's forms: fully parsed, and raw MIME (`body-mime`, the URL ends in mime)."""

from __future__ import annotations

import smtplib
import threading
import uuid
from email.message import EmailMessage

import django
import pytest
from django.conf import settings as django_settings
from django.urls import clear_url_caches, path

from envoi import runtime
from envoi.mta.routes.service import Receiving, Routes
from envoi.webhooks.service import Webhooks
from tests.support.events import AppServer


def _view(request, *args, **kwargs):
    from anymail.webhooks.mailgun import MailgunInboundWebhookView
    return MailgunInboundWebhookView.as_view()(request, *args, **kwargs)


urlpatterns = [path("mailgun/inbound/", _view), path("mailgun/inbound_mime/", _view)]


@pytest.fixture(scope="module")
def anymail_server():
    if not django_settings.configured:
        django_settings.configure(DEBUG=False, SECRET_KEY="test-" + uuid.uuid4().hex, ALLOWED_HOSTS=["127.0.0.1"],
                                  INSTALLED_APPS=["anymail"], MIDDLEWARE=[], USE_TZ=True, ROOT_URLCONF=__name__)
        django.setup()
    django_settings.ROOT_URLCONF = __name__  # this module's views, even if another test configured Django
    clear_url_caches()
    from django.core.wsgi import get_wsgi_application
    with AppServer(get_wsgi_application()) as srv:
        yield srv


@pytest.fixture
def received():
    from anymail.signals import inbound
    got, arrived = [], threading.Event()

    def handler(sender, event, esp_name, **kwargs):
        got.append((esp_name, event))
        arrived.set()

    inbound.connect(handler, weak=False)
    yield got, arrived
    inbound.disconnect(handler)


@pytest.fixture(scope="module")
def mx(services):
    allowing = Webhooks(services.settings.replace(webhook_allow=("127.0.0.0/8",)), services.db, services.sealer)
    receiving = Receiving(services.db, services.sealer, services.events, services.accounts, services.intake, allowing,
                          public_url=services.settings.public_url, timeout=10, retry_schedule=(0.5,))
    with runtime.build_inbound(services, host="127.0.0.1", port=0, receiving=receiving) as server:
        server.routes = Routes(services.db, services.sealer, allowing, services.settings.public_url)
        yield server


@pytest.mark.parametrize("url_path", ["/mailgun/inbound/", "/mailgun/inbound_mime/"])
def test_anymail_inbound_view_parses_what_envoi_forwards(services, mx, anymail_server, received, account, domain,
                                                         url_path):
    django_settings.ANYMAIL = {"MAILGUN_WEBHOOK_SIGNING_KEY": services.webhooks.signing_key(account["id"])}
    # anymail's URL ends in "/": a trailing slash after "mime" is how Mailgun users write it too.
    mx.routes.create(account["id"], priority="0", description="", expression="catch_all()",
                     actions=[f'forward("{anymail_server.url}{url_path}")'])
    to = f"inbox@{domain['name']}"
    msg = EmailMessage()
    msg["From"] = "Grace Hopper <grace@outside.test>"
    msg["To"] = to
    msg["Subject"] = "Bug report"
    msg.set_content("There is a moth in relay 70.\n")
    msg.add_attachment(b"moth photo", maintype="image", subtype="jpeg", filename="moth.jpg")
    with smtplib.SMTP("127.0.0.1", mx.port, timeout=10) as smtp:
        smtp.sendmail("grace@outside.test", [to], msg.as_bytes(policy=msg.policy.clone(linesep="\r\n")))

    got, arrived = received
    assert arrived.wait(15), "anymail's inbound signal never fired"
    [(esp_name, event)] = got
    message = event.message
    assert esp_name == "Mailgun" and event.event_type == "inbound"
    assert message.from_email.addr_spec == "grace@outside.test"
    assert message.subject == "Bug report"
    assert message.text.strip() == "There is a moth in relay 70."
    assert message.envelope_recipient == to and message.envelope_sender == "grace@outside.test"
    [attachment] = message.attachments
    assert attachment.get_filename() == "moth.jpg" and attachment.get_content_bytes() == b"moth photo"
    assert attachment.get_content_type() == "image/jpeg"
