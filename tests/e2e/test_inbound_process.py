"""`envoi inbound` as a real process: mail for a receiving domain in over SMTP, the route's forward(url)
POST out (its poster thread runs in the served loop), and a clean stop on SIGTERM."""

from __future__ import annotations

import smtplib
import socket
from email.message import EmailMessage

import pytest

from envoi.mta.routes.service import Routes
from envoi.webhooks.service import Webhooks
from tests.support.form_receiver import FormReceiver
from tests.support.processes import Proc, envoi, free_port, process_env

pytestmark = pytest.mark.e2e


def test_envoi_inbound_routes_mail_to_a_url(tmp_path, settings, services, account, domain):
    allowing = Webhooks(settings.replace(webhook_allow=("127.0.0.0/8",)), services.db, services.sealer)
    with FormReceiver() as web:
        Routes(services.db, services.sealer, allowing, settings.public_url).create(
            account["id"], priority="0", description="", expression="catch_all()",
            actions=[f'forward("{web.url("/in")}")'])
        port = free_port()
        proc = Proc("inbound", envoi("inbound", "--port", str(port)),
                    process_env(settings, ENVOI_WEBHOOK_ALLOW="127.0.0.0/8"), tmp_path)
        try:
            proc.wait_ready(lambda: socket.create_connection(("127.0.0.1", port), 1).close() is None)
            msg = EmailMessage()
            msg["From"], msg["To"], msg["Subject"] = "a@outside.test", f"hello@{domain['name']}", "Via the process"
            msg.set_content("hi")
            with smtplib.SMTP("127.0.0.1", port, timeout=10) as smtp:
                smtp.sendmail("a@outside.test", [f"hello@{domain['name']}"],
                              msg.as_bytes(policy=msg.policy.clone(linesep="\r\n")))
            [post] = web.wait("/in")
            assert post["fields"]["subject"] == "Via the process"
        finally:
            proc.stop()
        assert proc.popen.returncode == 0, proc.output()
