"""Several relay hosts, each in its own network namespace (own addresses, joined by a bridge), sharing
the region's Postgres and Redis: each sends only from its own egress IPs, mail pinned to host A's
dedicated IP leaves only from it (never claimed and deferred by B or C), and a host killed mid-run
leaves no mail behind: its leases run out and the others deliver it."""

from __future__ import annotations

import re
import signal
import time
import urllib.request
import uuid
from collections import Counter

import pytest

from envoi.dev.sink import Sink
from tests.support import netns
from tests.support.api import accepted, send_form
from tests.support.dns_server import DnsServer
from tests.support.ips import UNTOUCHED, recipient_states
from tests.support.processes import Proc, envoi, process_env

pytestmark = pytest.mark.skipif(not netns.available(), reason="needs root, iproute2 and socat (network namespaces)")

HOSTS = {"a": ["{net}.11", "{net}.21", "{net}.22"], "b": ["{net}.12", "{net}.31", "{net}.32"],
         "c": ["{net}.13", "{net}.41"]}
PINNED, PLAIN = 60, 240
METRICS_PORT = 9109
LEASE = 6


def unavailable(url: str) -> float:
    """envoi_egress_unavailable_total of a relay: deliveries it claimed and put back (no IP may send)."""
    with urllib.request.urlopen(url, timeout=3) as resp:
        text = resp.read().decode()
    match = re.search(r"^envoi_egress_unavailable_total (\S+)$", text, re.M)
    return float(match.group(1)) if match else 0.0


def settled(db, recipients) -> int:
    """How many of these recipients have a recorded outcome (no longer queued)."""
    return db.execute("SELECT count(*) AS n FROM recipients WHERE address = ANY(%s) AND status <> 'queued'",
                      (list(recipients),)).fetchone()["n"]


def start_relay(net, h, settings, dns, sink, relay_host, log_dir, policy="wait", name=None) -> Proc:
    """`envoi relay` inside host h's namespace, reaching Postgres and Redis through the gateway."""
    database_url, redis_url = net.reach(settings.database_url, settings.redis_url)
    env = process_env(settings, DATABASE_URL=database_url, REDIS_URL=redis_url,
                      ENVOI_RELAY_HOST=relay_host, ENVOI_DNS_RESOLVER=f"{net.gateway}:{dns.port}",
                      ENVOI_MX_PORT=sink.smtp_port, ENVOI_SMTP_TIMEOUT=5, ENVOI_RELAY_LEASE=LEASE,
                      ENVOI_IPS_REFRESH=0.5, ENVOI_WARMUP_POLICY=policy, ENVOI_RELAY_BATCH=20,
                      ENVOI_RELAY_CONNECTIONS=4, ENVOI_RELAY_SIGNERS=0)
    argv = envoi("relay", "--metrics-bind", f"{net.hosts[h][0]}:{METRICS_PORT}")
    return Proc(name or f"relay-{h}", net.exec_argv(h, argv), env, log_dir)


def register(services, net, own, tag, dedicated) -> None:
    for h, addresses in own.items():
        for address in addresses:
            services.ips.add_ip("test", address, host=f"{h}-{tag}", helo=f"{h}.mta.test",
                                dedicated=address == dedicated)


def route(net, dns) -> str:
    rcpt_domain = f"{uuid.uuid4().hex[:8]}.dest.test"
    dns.add(rcpt_domain, "MX", f"10 mx.{rcpt_domain}.")
    dns.add(f"mx.{rcpt_domain}", "A", net.gateway)
    return rcpt_domain


def test_relays_on_three_hosts_send_from_their_own_ips_and_a_dead_hosts_mail_is_delivered(
        services, settings, account, domain, client, api_key, db, clean_ips, tmp_path):
    plain = services.accounts.add_domain(account["id"], f"{uuid.uuid4().hex[:8]}.plain.test",
                                         dkim_key_size=1024, verified=True)
    tag = uuid.uuid4().hex[:6]
    with netns.Hosts(HOSTS) as net, Sink(smtp_host=net.gateway) as sink, DnsServer(host=net.gateway) as dns:
        own = {h: net.hosts[h][1:] for h in HOSTS}  # each host's egress IPs
        dedicated = own["a"][0]
        register(services, net, own, tag, dedicated)
        services.ips.add_domain_ip("test", domain, dedicated)
        shared = {a for addresses in own.values() for a in addresses} - {dedicated}

        rcpt_domain = route(net, dns)
        relays = {h: start_relay(net, h, settings, dns, sink, f"{h}-{tag}", tmp_path) for h in HOSTS}
        metrics = {h: f"http://{net.hosts[h][0]}:{METRICS_PORT}/metrics" for h in HOSTS}
        for h, proc in relays.items():
            proc.wait_ready(lambda h=h: unavailable(metrics[h]) >= 0, timeout=60)

        # Accepted over the HTTP API in the root namespace, pinned and shared-pool mail interleaved.
        expected: dict[str, str] = {}  # recipient -> "pinned" | "plain"
        for n in range(PINNED + PLAIN):
            kind = "pinned" if n % 5 == 0 else "plain"
            to = f"r{n}@{rcpt_domain}"
            accepted(send_form(client, api_key, domain if kind == "pinned" else plain, to=to))
            expected[to] = kind
            if n == PINNED + PLAIN // 3:
                # Host B mid-run, holding leases: kill -9 (no clean shutdown, nothing handed back).
                deadline = time.monotonic() + 20
                while not any(m["peer"] in own["b"] for m in sink.messages()) and time.monotonic() < deadline:
                    time.sleep(0.05)
                b_unavailable = unavailable(metrics["b"])
                relays["b"].popen.send_signal(signal.SIGKILL)
                relays["b"].popen.wait(10)
                killed_at = len(sink.messages())

        # Done when every accepted recipient is at the sink and its outcome is recorded: a message B sent
        # but had not recorded when it died is sent again once B's lease runs out (a duplicate).
        deadline = time.monotonic() + 90
        while time.monotonic() < deadline:
            got = {r for m in sink.messages() for r in m["rcpt_tos"]}
            if set(expected) <= got and settled(db, expected) == len(expected):
                break
            time.sleep(0.2)
        received = sink.messages()
        c_unavailable, a_unavailable = unavailable(metrics["c"]), unavailable(metrics["a"])
        for proc in relays.values():
            proc.stop(signal.SIGTERM)

    per_rcpt = Counter(r for m in received for r in m["rcpt_tos"])
    missing = set(expected) - set(per_rcpt)
    assert not missing, f"{len(missing)} accepted messages never delivered"
    for message in received:
        (to,) = message["rcpt_tos"]
        allowed = {dedicated} if expected[to] == "pinned" else shared
        assert message["peer"] in allowed, (to, expected[to], message["peer"])
    # Every host sent its share, B only before it died; nothing was sent from A's dedicated IP but pinned mail.
    peers = Counter(m["peer"] for m in received)
    assert peers[dedicated] >= PINNED and any(peers[a] for a in own["b"]) and any(peers[a] for a in own["c"])
    assert not any(m["peer"] in own["b"] for m in received[killed_at + 4 * 2:])  # only B's last in-flight
    # Host-affine claiming: B and C never claimed pinned mail only to put it back.
    assert b_unavailable == 0 and c_unavailable == 0 and a_unavailable == 0
    # B's unrecorded deliveries (at most 2 per connection) are sent again by the others: counted, bounded.
    duplicates = sum(n - 1 for n in per_rcpt.values())
    print(f"delivered {len(per_rcpt)} of {len(expected)}, duplicates {duplicates}, by peer {dict(peers)}")
    assert duplicates <= 2 * 4
    assert settled(db, expected) == len(expected)


def test_mail_pinned_to_a_dead_host_waits_for_it_or_overflows_when_the_policy_allows(
        services, settings, account, domain, client, api_key, db, clean_ips, tmp_path):
    """Host A (the domain's dedicated IP) is down. Under "wait" host B leaves its mail queued, unclaimed
    and unattempted; under "overflow" B takes it once it has been due a whole lease, over its shared IP."""
    tag = uuid.uuid4().hex[:6]
    hosts = {"a": HOSTS["a"], "b": HOSTS["b"]}
    with netns.Hosts(hosts) as net, Sink(smtp_host=net.gateway) as sink, DnsServer(host=net.gateway) as dns:
        own = {h: net.hosts[h][1:] for h in hosts}
        dedicated = own["a"][0]
        register(services, net, own, tag, dedicated)
        services.ips.add_domain_ip("test", domain, dedicated)
        rcpt_domain = route(net, dns)
        metrics = f"http://{net.hosts['b'][0]}:{METRICS_PORT}/metrics"
        pinned = [accepted(send_form(client, api_key, domain, to=f"p{n}@{rcpt_domain}")).message_id
                  for n in range(5)]

        waiting = start_relay(net, "b", settings, dns, sink, f"b-{tag}", tmp_path, policy="wait", name="b-wait")
        try:
            waiting.wait_ready(lambda: unavailable(metrics) >= 0, timeout=60)
            time.sleep(2 * LEASE)  # long past the lease: "wait" never overflows
            assert recipient_states(db, pinned) == [UNTOUCHED] * 5
            assert unavailable(metrics) == 0  # not claimed and put back either
            assert sink.messages() == []
        finally:
            waiting.stop(signal.SIGTERM)

        overflowing = start_relay(net, "b", settings, dns, sink, f"b-{tag}", tmp_path, policy="overflow",
                                  name="b-overflow")
        try:
            received = sink.wait_for(5, timeout=30)
        finally:
            overflowing.stop(signal.SIGTERM)
    assert sorted(r for m in received for r in m["rcpt_tos"]) == sorted(f"p{n}@{rcpt_domain}" for n in range(5))
    assert {m["peer"] for m in received} <= set(own["b"])  # B's shared pool, never an address of A


def test_mail_naming_another_hosts_ip_is_left_to_that_host(
        services, settings, account, domain, client, api_key, db, clean_ips, tmp_path):
    """o:sending-ip = host A's dedicated IP, submitted while only host B runs (relay default "overflow",
    the domain has no policy of its own): B sends the domain's other mail at once but never claims the
    pinned message, past a whole lease; once A's relay runs, it leaves from A's dedicated address."""
    tag = uuid.uuid4().hex[:6]
    hosts = {"a": HOSTS["a"], "b": HOSTS["b"]}
    with netns.Hosts(hosts) as net, Sink(smtp_host=net.gateway) as sink, DnsServer(host=net.gateway) as dns:
        own = {h: net.hosts[h][1:] for h in hosts}
        dedicated = own["a"][0]
        register(services, net, own, tag, dedicated)
        services.ips.assign_ip("test", dedicated, account["id"])  # the account's, not the domain's
        rcpt_domain = route(net, dns)
        metrics = f"http://{net.hosts['b'][0]}:{METRICS_PORT}/metrics"
        relay_b = start_relay(net, "b", settings, dns, sink, f"b-{tag}", tmp_path, policy="overflow")
        relay_a = None
        try:
            relay_b.wait_ready(lambda: unavailable(metrics) >= 0, timeout=60)
            pinned = [accepted(send_form(client, api_key, domain, to=f"p{n}@{rcpt_domain}",
                                         **{"o:sending-ip": dedicated})).message_id for n in range(3)]
            accepted(send_form(client, api_key, domain, to=f"plain@{rcpt_domain}"))
            [plain] = sink.wait_for(1, timeout=30)
            time.sleep(LEASE * 1.5)  # past a whole lease: overflow would have taken it by now
            assert recipient_states(db, pinned) == [UNTOUCHED] * 3
            assert unavailable(metrics) == 0  # never claimed and put back either
            assert len(sink.messages()) == 1

            relay_a = start_relay(net, "a", settings, dns, sink, f"a-{tag}", tmp_path, policy="overflow")
            received = sink.wait_for(4, timeout=60)
        finally:
            for proc in (relay_a, relay_b):
                if proc is not None:
                    proc.stop(signal.SIGTERM)
    assert plain["rcpt_tos"] == [f"plain@{rcpt_domain}"] and plain["peer"] in own["b"]
    by_rcpt = {m["rcpt_tos"][0]: m["peer"] for m in received}
    assert {to: by_rcpt[to] for to in (f"p{n}@{rcpt_domain}" for n in range(3))} == {
        f"p{n}@{rcpt_domain}": dedicated for n in range(3)}
