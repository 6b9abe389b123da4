"""X-Mailgun-Sending-Ip over SMTP submission: another account's IP is refused (550 5.7.1), an owned one kept."""

from __future__ import annotations

import smtplib

import pytest

from envoi.mta.submission.server import Submission, SubmissionServer
from tests.support.tls import loopback_contexts

PASSWORD = "correct-horse-9"


@pytest.fixture(scope="module")
def tls(services):
    server_ctx, client_ctx = loopback_contexts()
    return server_ctx, client_ctx


@pytest.fixture(scope="module")
def server(services, settings, tls):
    submission = Submission.from_settings(settings, services.intake, services.accounts, services.redis,
                                          auth_failure_delay=0, workers=2)
    with SubmissionServer(submission, tls[0]) as srv:
        yield srv
    submission.close()


def test_sending_ip_header_must_name_an_owned_ip(services, server, tls, account, domain, db, clean_ips):
    for address in ("127.0.0.2", "127.0.0.3"):
        services.ips.add_ip("test", address, host=services.settings.relay_host, helo=f"{address}.mta.test",
                            dedicated=True)
    services.ips.add_domain_ip("test", domain, "127.0.0.2")
    other = services.accounts.create_account("other")
    services.ips.assign_ip("test", "127.0.0.3", other["id"])
    services.accounts.create_credential(account["id"], domain["name"], "app", PASSWORD)
    login = f"app@{domain['name']}"

    def mime(ip: str) -> bytes:
        return (f"From: App <{login}>\r\nTo: r@ips-smtp.invalid.test\r\nSubject: hi\r\n"
                f"X-Mailgun-Sending-Ip: {ip}\r\n\r\nbody\r\n").encode()

    client = smtplib.SMTP("127.0.0.1", server.port, timeout=10)
    try:
        client.starttls(context=tls[1])
        client.login(login, PASSWORD)
        with pytest.raises(smtplib.SMTPDataError) as refused:
            client.sendmail(login, ["r@ips-smtp.invalid.test"], mime("127.0.0.3"))
        assert refused.value.smtp_code == 550
        assert b"5.7.1" in refused.value.smtp_error and b"Rejected: IP 127.0.0.3" in refused.value.smtp_error
        assert db.execute("SELECT count(*) AS n FROM messages WHERE domain_id = %s",
                          (domain["id"],)).fetchone()["n"] == 0
        client.sendmail(login, ["r@ips-smtp.invalid.test"], mime("127.0.0.2"))
    finally:
        client.quit()
    row = db.execute("SELECT options FROM messages WHERE domain_id = %s", (domain["id"],)).fetchone()
    assert row["options"]["sending_ip"] == "127.0.0.2"
    db.execute("DELETE FROM messages WHERE domain_id = %s", (domain["id"],))
