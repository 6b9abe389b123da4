"""A subaccount's SMTP login: refused with 550 5.7.1 while its parent has it disabled, nothing stored;
sending again once enabled."""

from __future__ import annotations

import smtplib
import uuid

import pytest

from tests.support.submission import PASSWORD, mime, starttls_client


def test_a_disabled_subaccount_cannot_send_over_smtp(services, server, client_ctx, db):
    parent = services.accounts.create_account(f"acct-{uuid.uuid4().hex[:6]}")
    sub_id = services.subaccounts.create(parent["id"], "smtp shop")["subaccount"]["id"]
    domain = services.accounts.add_domain(int(sub_id), f"{uuid.uuid4().hex[:8]}.example.test", dkim_key_size=1024,
                                          verified=True)
    services.accounts.create_credential(int(sub_id), domain["name"], "app", PASSWORD)
    login = f"app@{domain['name']}"
    services.subaccounts.set_enabled(parent["id"], sub_id, False)
    try:
        with starttls_client(server, client_ctx, login) as c, pytest.raises(smtplib.SMTPException) as refused:
            c.sendmail(login, ["rcpt@dest.test"], mime(domain))
        assert refused.value.smtp_code == 550 and b"5.7.1" in refused.value.smtp_error
        assert b"subaccount is disabled" in refused.value.smtp_error
        assert db.execute("SELECT count(*) AS n FROM messages WHERE domain_id = %s", (domain["id"],)).fetchone()["n"] == 0

        services.subaccounts.set_enabled(parent["id"], sub_id, True)
        with starttls_client(server, client_ctx, login) as c:
            c.sendmail(login, ["rcpt@dest.test"], mime(domain))
        rows = db.execute("SELECT account_id FROM messages WHERE domain_id = %s", (domain["id"],)).fetchall()
        assert [r["account_id"] for r in rows] == [int(sub_id)]
    finally:
        db.execute("UPDATE recipients SET status = 'failed' WHERE domain_id = %s AND status = 'queued'",
                   (domain["id"],))
