"""MTA-STS (RFC 8461) enforced by the relay, and the TLS-RPT (RFC 8460) results it collects: real DNS
(test server), a local HTTPS policy host and the sink with and without a valid certificate."""

from __future__ import annotations

import asyncio
import json
import ssl
import time
import uuid
from datetime import UTC, datetime

import pytest
import trustme
from click.testing import CliRunner
from prometheus_client import generate_latest

from envoi.dev.sink import Sink
from envoi.mta.delivery.mx import MxResolver
from envoi.mta.delivery.session import verifying_context
from envoi.mta.delivery.sts import MtaSts
from envoi.mta.delivery.sts_fetch import FetchError, PolicyFetcher
from envoi.mta.delivery.tls_report import TlsResults, report
from envoi.webhooks.ssrf import Allow
from tests.support.delivery import events_of, send
from tests.support.dns_server import DnsServer
from tests.support.mta_sts import PolicyServer
from tests.support.relay import RelayThread, relay_settings, wait_until

ENFORCE = "version: STSv1\nmode: enforce\nmx: {mx}\nmax_age: 86400\n"
TESTING = "version: STSv1\nmode: testing\nmx: {mx}\nmax_age: 86400\n"


@pytest.fixture(scope="module")
def ca():
    return trustme.CA()


@pytest.fixture
def ca_file(ca, tmp_path):
    path = tmp_path / "ca.pem"
    ca.cert_pem.write_to_path(str(path))
    return str(path)


@pytest.fixture
def dns():
    with DnsServer() as server:
        yield server


def tls_sink(ca, *hosts):
    context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    ca.issue_cert(*hosts).configure_cert(context)
    return Sink(tls_context=context)


def sts_domain(dns, web, name, policy, *, mx=None, policy_id="v1", txt_ttl=60):
    """`name` with MX hosts (all on loopback), an _mta-sts record and its policy on the HTTPS host."""
    for pref, host in enumerate(mx or [f"mx.{name}"], start=1):
        dns.add(name, "MX", f"{pref * 10} {host}.")
        dns.add(host, "A", "127.0.0.1")
    dns.add(f"_mta-sts.{name}", "TXT", f"v=STSv1; id={policy_id};", ttl=txt_ttl)
    dns.add(f"mta-sts.{name}", "A", "127.0.0.1")
    web.policies[f"mta-sts.{name}"] = policy


def sts_settings(settings, sink, dns, web, ca_file, **changes):
    return relay_settings(settings, sink, dns, tls_ca_file=ca_file, mta_sts_port=web.port,
                          mta_sts_allow=("127.0.0.0/8",), **changes)


def last_event(db, message_id, timeout=15):
    """The first outcome after `accepted` (delivered, failed or a temporary failure)."""
    return wait_until(lambda: next((e for e in events_of(db, message_id) if e["event"] != "accepted"), None),
                      timeout)


def today():
    return datetime.now(UTC).date()


def failures(body):
    return {(d["result-type"], d.get("receiving-mx-hostname", "")): d["failed-session-count"]
            for p in body["policies"] for d in p.get("failure-details", [])}


def successes(body):
    return sum(p["summary"]["total-successful-session-count"] for p in body["policies"])


def test_enforce_with_a_valid_certificate_delivers_over_verified_tls(services, settings, account, domain, db,
                                                                     dns, ca, ca_file):
    with PolicyServer(ca, ["mta-sts.good.test"]) as web, tls_sink(ca, "mx.good.test") as sink:
        sts_domain(dns, web, "good.test", ENFORCE.format(mx="mx.good.test"))
        with RelayThread(services, sts_settings(settings, sink, dns, web, ca_file)):
            event = last_event(db, send(services, account["id"], domain, "a@good.test"))
    assert event["event"] == "delivered"
    status = event["data"]["delivery-status"]
    assert status["tls"] is True and status["certificate-verified"] is True
    assert [m["rcpt_tos"] for m in sink.messages()] == [["a@good.test"]] and sink.messages()[0]["tls"]
    body = report(services.db, "good.test", today(), organization="Envoi")
    policy = body["policies"][0]["policy"]
    assert policy["policy-type"] == "sts" and policy["mx-host"] == ["mx.good.test"]
    assert "mode: enforce" in policy["policy-string"]
    assert successes(body) == 1 and not failures(body)
    stored = db.execute("SELECT policy_id, mode, mx FROM mta_sts_policies WHERE domain = 'good.test'").fetchone()
    assert stored == {"policy_id": "v1", "mode": "enforce", "mx": ["mx.good.test"]}
    metrics = generate_latest(services.metrics.registry).decode()
    assert 'envoi_tls_sessions_total{policy="sts",result="success"} 1.0' in metrics
    assert 'envoi_mta_sts_fetches_total{result="fetched"} 1.0' in metrics


def test_an_internationalised_domain_is_looked_up_by_its_a_labels(services, settings, account, domain, db, dns,
                                                                  ca, ca_file):
    ace = "xn--strae-oqa.sts.test"  # straße.sts.test
    with PolicyServer(ca, [f"mta-sts.{ace}"]) as web, tls_sink(ca, "someone-else.test") as sink:
        sts_domain(dns, web, ace, ENFORCE.format(mx=f"mx.{ace}"))
        with RelayThread(services, sts_settings(settings, sink, dns, web, ca_file)):
            event = last_event(db, send(services, account["id"], domain, "a@straße.sts.test"))
    assert web.fetches(f"mta-sts.{ace}") == 1
    assert event["event"] == "failed" and event["severity"] == "temporary"  # enforced: the certificate is wrong
    assert sink.messages() == []


def test_an_invalid_policy_is_reported_and_mail_goes_as_without_one(services, settings, account, domain, db, dns,
                                                                    ca, ca_file):
    with PolicyServer(ca, ["mta-sts.broken.test"]) as web, Sink() as sink:
        sts_domain(dns, web, "broken.test", "version: STSv1\nmode: enforce\nmax_age: 86400\n")  # no mx
        with RelayThread(services, sts_settings(settings, sink, dns, web, ca_file)):
            event = last_event(db, send(services, account["id"], domain, "a@broken.test"))
    assert event["event"] == "delivered" and len(sink.messages()) == 1
    assert failures(report(services.db, "broken.test", today(), organization="Envoi"))[
        ("sts-policy-invalid", "mta-sts.broken.test")] == 1
    assert db.execute("SELECT 1 FROM mta_sts_policies WHERE domain = 'broken.test'").fetchone() is None


def test_the_extra_ca_file_is_trusted_besides_the_system_cas(ca_file):
    system = ssl.create_default_context().cert_store_stats()["x509_ca"]
    assert verifying_context(ca_file).cert_store_stats()["x509_ca"] == system + 1


@pytest.mark.parametrize(("case", "result_type"), [
    ("wrong-name", "certificate-host-mismatch"),
    ("untrusted", "certificate-not-trusted"),
    ("no-starttls", "starttls-not-supported"),
])
def test_enforce_without_a_verified_session_defers_and_sends_nothing(services, settings, account, domain, db,
                                                                     dns, ca, ca_file, case, result_type):
    name = f"bad-{case}.test"  # the report is per domain and day: one domain per case
    if case == "wrong-name":
        sink = tls_sink(ca, "someone-else.test")
    elif case == "untrusted":
        sink = tls_sink(trustme.CA(), f"mx.{name}")
    else:
        sink = Sink()
    with PolicyServer(ca, [f"mta-sts.{name}"]) as web, sink:
        sts_domain(dns, web, name, ENFORCE.format(mx=f"mx.{name}"))
        with RelayThread(services, sts_settings(settings, sink, dns, web, ca_file)):
            event = last_event(db, send(services, account["id"], domain, f"a@{name}"))
            time.sleep(0.3)  # nothing may follow the deferral
    assert event["event"] == "failed" and event["severity"] == "temporary"
    status = event["data"]["delivery-status"]
    assert status["enhanced-code"] == "4.7.5" and f"MTA-STS policy of {name}" in status["message"]
    assert result_type in status["message"] and status["mx-host"] == f"mx.{name}"
    assert sink.messages() == []
    queued = db.execute("SELECT status FROM recipients WHERE address = %s", (f"a@{name}",)).fetchone()
    assert queued["status"] == "queued"  # deferred: retried later, never sent in plaintext
    assert failures(report(services.db, name, today(), organization="Envoi")) == {(result_type, f"mx.{name}"): 1}


def test_enforce_skips_mx_hosts_the_policy_does_not_list(services, settings, account, domain, db, dns, ca,
                                                         ca_file):
    with PolicyServer(ca, ["mta-sts.pick.test", "mta-sts.none.test"]) as web, \
            tls_sink(ca, "mx1.pick.test", "mx2.pick.test", "mx.none.test") as sink:
        # mx1 is preferred and reachable, but only mx2 is in the policy.
        sts_domain(dns, web, "pick.test", ENFORCE.format(mx="mx2.pick.test"), mx=["mx1.pick.test", "mx2.pick.test"])
        sts_domain(dns, web, "none.test", ENFORCE.format(mx="*.elsewhere.test"))
        with RelayThread(services, sts_settings(settings, sink, dns, web, ca_file)):
            picked = last_event(db, send(services, account["id"], domain, "a@pick.test"))
            refused = last_event(db, send(services, account["id"], domain, "b@none.test"))
    assert picked["event"] == "delivered" and picked["data"]["delivery-status"]["mx-host"] == "mx2.pick.test"
    assert refused["event"] == "failed" and refused["severity"] == "temporary"
    assert "no MX host (mx.none.test) matches" in refused["data"]["delivery-status"]["message"]
    assert [m["rcpt_tos"] for m in sink.messages()] == [["a@pick.test"]]
    assert failures(report(services.db, "none.test", today(), organization="Envoi")) == {("validation-failure", ""): 1}


def test_testing_mode_delivers_and_reports_the_failure(services, settings, account, domain, db, dns, ca, ca_file):
    with PolicyServer(ca, ["mta-sts.trial.test"]) as web, tls_sink(ca, "someone-else.test") as sink:
        sts_domain(dns, web, "trial.test", TESTING.format(mx="mx.trial.test"))
        with RelayThread(services, sts_settings(settings, sink, dns, web, ca_file)):
            event = last_event(db, send(services, account["id"], domain, "a@trial.test"))
    assert event["event"] == "delivered"
    assert event["data"]["delivery-status"]["certificate-verified"] is False
    assert len(sink.messages()) == 1
    body = report(services.db, "trial.test", today(), organization="Envoi")
    assert failures(body) == {("certificate-host-mismatch", "mx.trial.test"): 1}
    assert body["policies"][0]["policy"]["policy-string"][1] == "mode: testing"


def test_policy_is_cached_and_refreshed_when_the_record_id_changes(services, settings, account, domain, db, dns,
                                                                   ca, ca_file):
    with PolicyServer(ca, ["mta-sts.cache.test"]) as web, tls_sink(ca, "mx.cache.test") as sink:
        sts_domain(dns, web, "cache.test", ENFORCE.format(mx="mx.cache.test"), txt_ttl=1)
        with RelayThread(services, sts_settings(settings, sink, dns, web, ca_file)):
            for n in range(3):
                assert last_event(db, send(services, account["id"], domain, f"{n}@cache.test"))["event"] == "delivered"
            assert web.fetches("mta-sts.cache.test") == 1  # one fetch for three messages
            dns.clear()
            sts_domain(dns, web, "cache.test", TESTING.format(mx="mx.cache.test"), policy_id="v2", txt_ttl=1)
            time.sleep(1.2)  # the TXT answer's TTL
            assert last_event(db, send(services, account["id"], domain, "x@cache.test"))["event"] == "delivered"
            assert web.fetches("mta-sts.cache.test") == 2
    stored = db.execute("SELECT policy_id, mode FROM mta_sts_policies WHERE domain = 'cache.test'").fetchone()
    assert stored == {"policy_id": "v2", "mode": "testing"}


def test_a_failed_refresh_keeps_the_cached_policy_and_is_reported(services, settings, account, domain, db, dns,
                                                                  ca, ca_file):
    with PolicyServer(ca, ["mta-sts.keep.test"]) as web, tls_sink(ca, "mx.keep.test") as good:
        sts_domain(dns, web, "keep.test", ENFORCE.format(mx="mx.keep.test"), txt_ttl=1)
        with RelayThread(services, sts_settings(settings, good, dns, web, ca_file)):
            assert last_event(db, send(services, account["id"], domain, "a@keep.test"))["event"] == "delivered"
        web.status["mta-sts.keep.test"] = 500
        dns.clear()
        sts_domain(dns, web, "keep.test", "", policy_id="v2", txt_ttl=1)
        with Sink() as plain, RelayThread(services, sts_settings(settings, plain, dns, web, ca_file)):
            event = last_event(db, send(services, account["id"], domain, "b@keep.test"))
            assert web.fetches("mta-sts.keep.test") == 2
    # The cached enforce policy (from Postgres, a new relay process) still holds: no plaintext delivery.
    assert event["event"] == "failed" and event["severity"] == "temporary"
    assert plain.messages() == []
    assert failures(report(services.db, "keep.test", today(), organization="Envoi"))[
        ("sts-policy-fetch-error", "mta-sts.keep.test")] == 1


def test_no_policy_keeps_todays_behaviour_at_one_cached_lookup_per_domain(services, settings, account, domain, db,
                                                                          dns, ca, ca_file):
    # a name of its own: the day's TLS report is per domain, and other tests deliver to plain.test
    plain = f"plain-{uuid.uuid4().hex[:8]}.test"
    dns.add(plain, "MX", f"10 mx.{plain}.")
    dns.add(f"mx.{plain}", "A", "127.0.0.1")
    with PolicyServer(ca, [f"mta-sts.{plain}"]) as web, Sink() as sink, \
            RelayThread(services, sts_settings(settings, sink, dns, web, ca_file)):
        ids = [send(services, account["id"], domain, f"{n}@{plain}") for n in range(5)]
        assert all(last_event(db, mid)["event"] == "delivered" for mid in ids)
    assert len(sink.messages()) == 5 and web.requests == []
    assert dns.count(f"_mta-sts.{plain}", "TXT") == 1  # per domain, not per message
    body = report(services.db, plain, today(), organization="Envoi")
    assert body["policies"][0]["policy"] == {"policy-type": "no-policy-found", "policy-domain": plain}
    # Counted per session (the sink offers no STARTTLS), not per message: one per EHLO the sink answered
    # (the relay may open a session a message then does not need).
    sessions = failures(body)
    assert set(sessions) == {("starttls-not-supported", f"mx.{plain}")}
    assert sessions[("starttls-not-supported", f"mx.{plain}")] == sink.stats()["sessions"] >= 1


def test_cost_of_a_domain_without_mta_sts_is_one_cached_lookup(services, dns, ca_file):
    """In-process timing: after the first message, policy_for is a cached TXT answer and a dict look-up."""
    resolver = MxResolver(("127.0.0.1", dns.port), timeout=2.0)
    fetcher = PolicyFetcher(resolver, verifying_context(ca_file), allow=Allow.parse(()), port=1)
    sts = MtaSts(services.db, resolver, fetcher, TlsResults(services.db))

    async def run():
        assert await sts.policy_for("nopolicy.test") is None
        rounds = []  # the best of several rounds: the machine is shared, other processes add noise
        for _ in range(5):
            started = time.perf_counter()
            for _ in range(400):
                assert await sts.policy_for("nopolicy.test") is None
            rounds.append((time.perf_counter() - started) / 400)
        return min(rounds)

    per_message = asyncio.run(run())
    assert dns.count("_mta-sts.nopolicy.test", "TXT") == 1 and fetcher.fetches == 0
    print(f"policy_for without MTA-STS, cached: {per_message * 1e6:.1f} µs per message")
    assert per_message < 50e-6


def test_policy_hosts_on_private_addresses_redirects_and_other_types_are_refused(dns, ca, ca_file):
    with PolicyServer(ca, ["mta-sts.a.test", "mta-sts.b.test", "mta-sts.c.test"]) as web:
        for name in ("a.test", "b.test", "c.test"):
            dns.add(f"mta-sts.{name}", "A", "127.0.0.1")
            web.policies[f"mta-sts.{name}"] = ENFORCE.format(mx=f"mx.{name}")
        web.status["mta-sts.b.test"] = 301
        web.headers["mta-sts.b.test"] = {"Location": "https://mta-sts.a.test/.well-known/mta-sts.txt"}
        web.headers["mta-sts.c.test"] = {"Content-Type": "text/html"}
        resolver = MxResolver(("127.0.0.1", dns.port), timeout=2.0)

        def fetch(name, allow=("127.0.0.0/8",), context=None):
            fetcher = PolicyFetcher(resolver, context or verifying_context(ca_file), allow=Allow.parse(allow),
                                    port=web.port, timeout=3)
            return asyncio.run(fetcher.fetch(name))

        assert "mode: enforce" in fetch("a.test")
        with pytest.raises(FetchError, match="private or reserved address"):
            fetch("a.test", allow=())  # production: loopback refused, nothing asked
        assert web.fetches("mta-sts.a.test") == 1
        with pytest.raises(FetchError, match="HTTP 301"):
            fetch("b.test")
        assert web.fetches("mta-sts.a.test") == 1  # the redirect was not followed
        with pytest.raises(FetchError, match="not text/plain"):
            fetch("c.test")
        with pytest.raises(FetchError) as untrusted:
            fetch("a.test", context=ssl.create_default_context())  # system CAs do not know trustme's
        assert untrusted.value.result_type == "sts-webpki-invalid"


def test_cli_prints_the_rfc8460_report(cli_env, settings, db):
    from envoi.cli import main

    db.execute("INSERT INTO tls_report_results (day, policy_domain, policy_type, policy_id, result_type,"
               " receiving_mx, receiving_ip, sessions) VALUES"
               " ('2026-03-01', 'cli.test', 'sts', 'v1', 'success', 'mx.cli.test', '192.0.2.1', 7),"
               " ('2026-03-01', 'cli.test', 'sts', 'v1', 'certificate-expired', 'mx.cli.test', '192.0.2.1', 2)")
    result = CliRunner().invoke(main, ["tls", "report", "cli.test", "--day", "2026-03-01", "--contact",
                                       "tls@example.com"])
    assert result.exit_code == 0, result.output
    body = json.loads(result.output)
    assert body["date-range"] == {"start-datetime": "2026-03-01T00:00:00Z", "end-datetime": "2026-03-01T23:59:59Z"}
    assert body["contact-info"] == "tls@example.com" and body["report-id"].startswith("2026-03-01_cli.test_")
    (policy,) = body["policies"]
    assert policy["summary"] == {"total-successful-session-count": 7, "total-failure-session-count": 2}
    assert policy["failure-details"] == [{"result-type": "certificate-expired", "failed-session-count": 2,
                                          "receiving-mx-hostname": "mx.cli.test", "receiving-ip": "192.0.2.1"}]
    listed = CliRunner().invoke(main, ["tls", "domains", "--day", "2026-03-01"])
    assert listed.output.split() == ["cli.test"]
    bad = CliRunner().invoke(main, ["tls", "report", "cli.test", "--day", "yesterday"])
    assert bad.exit_code != 0 and "not a date" in bad.output
