"""django-anymail's Mailgun backend, unchanged, sends with a stored template and per-recipient merge_data
to a live Envoi API; the relay delivers each recipient its own rendering to the sink."""

from __future__ import annotations

import email
import email.policy

from envoi.api.app import create_app
from tests.support.anymail import mailgun_settings
from tests.support.api import post_form
from tests.support.events import AppServer


def test_anymail_message_with_template_id_and_merge_data(settings, services, api_key, domain, client, sink, relay):
    resp = post_form(client, f"/v3/{domain['name']}/templates", api_key,
                     {"name": "receipt", "template": "<p>Thanks {{name}}, order {{order}} ({{shop}})</p>"})
    assert resp.status_code == 200, resp.json
    with AppServer(create_app(settings, services)) as srv, mailgun_settings(srv.url, api_key):
        from anymail.message import AnymailMessage

        message = AnymailMessage(subject="Your receipt", from_email=f"Shop <shop@{domain['name']}>",
                                 to=["ann@dest.test", "bob@dest.test"])
        message.template_id = "receipt"
        message.merge_data = {"ann@dest.test": {"name": "Ann", "order": "A-1"},
                              "bob@dest.test": {"name": "Bob", "order": "B-2"}}
        message.merge_global_data = {"shop": "Envoi Shop"}
        assert message.send() == 1
        statuses = {r: s.status for r, s in message.anymail_status.recipients.items()}
        assert statuses == {"ann@dest.test": "queued", "bob@dest.test": "queued"}
    received = {m["rcpt_tos"][0]: m for m in sink.wait_for(2)}
    assert set(received) == {"ann@dest.test", "bob@dest.test"}
    for rcpt, (name, order) in {"ann@dest.test": ("Ann", "A-1"), "bob@dest.test": ("Bob", "B-2")}.items():
        msg = email.message_from_string(received[rcpt]["data"], policy=email.policy.default)
        assert msg["To"] == rcpt and msg["Subject"] == "Your receipt"
        assert f"<p>Thanks {name}, order {order} (Envoi Shop)</p>" in msg.get_body(("html",)).get_content()
