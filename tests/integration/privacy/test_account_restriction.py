"""Restriction of processing (GDPR Art. 18): an account frozen on request sends, accepts and tracks nothing,
keeps its data (exportable), and only an operator lifts it."""

from __future__ import annotations

import json
import smtplib

import pytest
from click.testing import CliRunner

from envoi import cli
from envoi.accounts.errors import InvalidInput
from tests.conftest import basic
from tests.support.submission import mime, starttls_client

pytestmark = pytest.mark.usefixtures("clean_throttle")
FORM = {"Content-Type": "application/x-www-form-urlencoded"}


def send_api(client, key, domain):
    return client.simulate_post(f"/v3/{domain['name']}/messages", headers={**basic(key), **FORM},
                                body=f"from=a@{domain['name']}&to=rcpt@dest.test&subject=hi&text=body")


def test_restricted_account_processes_nothing_and_keeps_its_data(client, services, account, domain, api_key, db,
                                                                  cli_env, server, client_ctx, login):
    sent = send_api(client, api_key, domain)
    assert sent.status_code == 200
    message_id = sent.json["id"].strip("<>")
    token = services.tracking.sign("o", account["id"], domain["id"], message_id, "rcpt@dest.test")
    session = starttls_client(server, client_ctx, login)  # opened before the restriction

    result = CliRunner().invoke(cli.main, ["accounts", "restrict", str(account["id"]),
                                           "--reason", "customer request 42"])
    assert result.exit_code == 0, result.output
    assert json.loads(result.output)["state"] == "restricted"

    # nothing accepted: API 403 in Mailgun's words, SMTP 550 5.7.1 (a session opened before, and a new one)
    refused = send_api(client, api_key, domain)
    assert refused.status_code == 403
    assert refused.json == {"message": f"Domain {domain['name']} is not allowed to send: processing of the"
                                       " account's data is restricted at its owner's request"}
    with pytest.raises(smtplib.SMTPDataError) as caught:
        session.sendmail(login, ["rcpt@dest.test"], mime(domain))
    assert caught.value.smtp_code == 550 and b"5.7.1" in caught.value.smtp_error
    session.quit()
    with starttls_client(server, client_ctx, login) as fresh:
        code, reply = fresh.mail(login)
        assert code == 550 and b"5.7.1" in reply and b"restricted" in reply
    assert db.execute("SELECT count(*) AS n FROM messages WHERE account_id = %s", (account["id"],)).fetchone()["n"] == 1
    # no tracking recorded
    assert client.simulate_get(f"/o/{token}").status_code == 404
    assert db.execute("SELECT count(*) AS n FROM events WHERE account_id = %s AND event = 'opened'",
                      (account["id"],)).fetchone()["n"] == 0
    # data kept and exportable by the account
    export = client.simulate_get("/v1/account/export", headers=basic(api_key))
    assert export.status_code == 200 and message_id in export.text
    # neither reinstating nor suspending ends a restriction: only lifting it
    with pytest.raises(InvalidInput):
        services.accounts.reinstate(account["id"])
    with pytest.raises(InvalidInput):
        services.accounts.suspend(account["id"], "billing")
    assert services.accounts.get_account(account["id"])["state"] == "restricted"

    result = CliRunner().invoke(cli.main, ["accounts", "lift-restriction", str(account["id"])])
    assert result.exit_code == 0, result.output
    assert send_api(client, api_key, domain).status_code == 200
    actions = [r["action"] for r in db.execute("SELECT action FROM audit_log WHERE account_id = %s ORDER BY id",
                                               (account["id"],))]
    assert [a for a in actions if a.startswith("account.restrict")] == ["account.restricted", "account.restriction_lifted"]
    assert client.simulate_get(f"/o/{token}").status_code == 200  # tracking again
