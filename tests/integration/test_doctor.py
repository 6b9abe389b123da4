"""`envoi doctor`: one line per check, PASS/WARN/FAIL, exit 1 when one fails; DNS through ENVOI_DNS_RESOLVER."""

from __future__ import annotations

import datetime
import random
import uuid

import trustme
from click.testing import CliRunner

from envoi.cli import main
from tests.support.dns_server import DnsServer


def line(output: str, check: str) -> str:
    return next(row for row in output.splitlines() if row.startswith(check + " ") or row.startswith(check + "  "))


def test_doctor_reports_each_check_and_fails_on_a_broken_record(cli_env, services, tmp_path):
    tag = uuid.uuid4().hex[:8]
    good_ip = f"127.{random.randint(100, 250)}.{random.randint(1, 250)}.{random.randint(1, 250)}"
    bad_ip = f"127.{random.randint(100, 250)}.{random.randint(1, 250)}.{random.randint(1, 250)}"
    services.ips.add_ip("test", good_ip, helo=f"good-{tag}.mta.test")
    services.ips.add_ip("test", bad_ip, helo=f"bad-{tag}.mta.test")
    ca = trustme.CA()
    soon = ca.issue_cert("smtp.test", not_after=datetime.datetime.now(datetime.UTC) + datetime.timedelta(days=3))
    cert = tmp_path / "smtp.pem"
    cert.write_bytes(soon.cert_chain_pems[0].bytes())
    try:
        with DnsServer() as dns:
            dns.add(f"smtp-{tag}.platform.test", "A", "127.0.0.1")
            dns.add(f"spf-{tag}.platform.test", "TXT", "v=spf1 ip4:127.0.0.1 ~all")
            dns.add(".".join(reversed(good_ip.split("."))) + ".in-addr.arpa", "PTR", f"good-{tag}.mta.test.")
            dns.add(f"good-{tag}.mta.test", "A", good_ip)
            dns.add(".".join(reversed(bad_ip.split("."))) + ".in-addr.arpa", "PTR", "someone-else.test.")
            for name, value in {"ENVOI_DNS_RESOLVER": f"127.0.0.1:{dns.port}",
                                "ENVOI_SMTP_HOSTNAME": f"smtp-{tag}.platform.test",
                                "ENVOI_SPF_INCLUDE": f"spf-{tag}.platform.test",
                                "ENVOI_INBOUND_MX_HOSTS": f"mx-{tag}.platform.test",  # not published
                                "ENVOI_TLS_CERT": str(cert), "ENVOI_TLS_KEY": str(cert)}.items():
                cli_env.setenv(name, value)
            result = CliRunner().invoke(main, ["doctor"])
    finally:
        with services.db.transaction() as conn:
            conn.execute("DELETE FROM ips WHERE address = ANY(%s)", ([good_ip, bad_ip],))
    out = result.output
    assert result.exit_code == 1, out
    assert "PASS" in line(out, "postgres reachable") and "PASS" in line(out, "redis reachable")
    assert "PASS" in line(out, "region stamps")
    assert "PASS" in line(out, "DNS: SMTP host") and "127.0.0.1" in line(out, "DNS: SMTP host")
    assert "PASS" in line(out, "DNS: SPF include")
    assert "FAIL" in line(out, "DNS: inbound MX") and f"mx-{tag}.platform.test" in line(out, "DNS: inbound MX")
    assert "PASS" in line(out, f"IP {good_ip}: PTR/HELO")
    assert "FAIL" in line(out, f"IP {bad_ip}: PTR/HELO") and "someone-else.test" in line(out, f"IP {bad_ip}: PTR/HELO")
    assert "WARN" in line(out, "TLS certificate (SMTP)")
    assert "failed" in out.splitlines()[-1]
