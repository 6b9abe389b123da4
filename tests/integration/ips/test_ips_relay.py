"""Egress binding end to end: the real relay binds 127.0.0.x source addresses; the sink sees the peer."""

from __future__ import annotations

import time
import uuid
from collections import Counter

from envoi import runtime
from envoi.dev.sink import Sink
from tests.support.delivery import route, send
from tests.support.dns_server import DnsServer
from tests.support.ips import UNTOUCHED, recipient_states
from tests.support.relay import RelayThread, relay_settings, wait_until

HELO = {f"127.0.0.{n}": f"o{n}.mta.test" for n in range(2, 10)}


def add_ip(services, address, dedicated=False):
    services.ips.add_ip("test", address, host=services.settings.relay_host, helo=HELO[address], dedicated=dedicated)


def test_dedicated_pooled_shared_and_warmup_overflow_by_peer_address(services, settings, account, domain, db,
                                                                      clean_ips):
    new_domain = lambda label: services.accounts.add_domain(  # noqa: E731
        account["id"], f"{uuid.uuid4().hex[:8]}.{label}.test", dkim_key_size=1024, verified=True)
    pooled, plain, warming = new_domain("pooled"), new_domain("plain"), new_domain("warming")
    for address in ("127.0.0.2", "127.0.0.3", "127.0.0.4", "127.0.0.7"):
        add_ip(services, address, dedicated=True)
    for address in ("127.0.0.5", "127.0.0.6"):
        add_ip(services, address)
    services.ips.add_domain_ip("test", domain, "127.0.0.2")
    pool = services.ips.create_pool("test", "pool", ips=["127.0.0.3", "127.0.0.4"])
    services.ips.link_pool("test", pooled, pool["id"])
    services.ips.add_domain_ip("test", warming, "127.0.0.7")
    services.ips.start_warmup("test", "127.0.0.7", "3x2")  # 2 messages a day

    with Sink() as sink, DnsServer() as dns:
        rcpt_domain = f"{uuid.uuid4().hex[:8]}.dest.test"  # only this test's mail is routed to the sink
        route(dns, rcpt_domain)
        relay_cfg = relay_settings(settings, sink, dns)
        def metric(ip, via):
            return services.metrics.registry.get_sample_value("envoi_egress_deliveries_total",
                                                              {"ip": ip, "via": via}) or 0

        before = {(ip, via): metric(ip, via) for ip, via in [("127.0.0.7", "domain-ip"), ("127.0.0.2", "domain-ip")]}
        egress = runtime.start_egress(services, refresh=0.2, policy="overflow")
        try:
            with RelayThread(services, relay_cfg, egress=egress):
                counts = {domain["name"]: 3, pooled["name"]: 6, plain["name"]: 6, warming["name"]: 5}
                for row in (domain, pooled, plain, warming):
                    for n in range(counts[row["name"]]):
                        send(services, account["id"], row, f"r{n}@{rcpt_domain}")
                received = sink.wait_for(sum(counts.values()), timeout=20)
                assert all(m["rcpt_tos"][0].endswith("@" + rcpt_domain) for m in received)
        finally:
            egress.view.stop()

    by_domain: dict[str, Counter] = {}
    for message in received:
        assert message["helo"] == HELO[message["peer"]]  # each IP announces its own HELO name
        by_domain.setdefault(message["mail_from"].rpartition("@")[2], Counter())[message["peer"]] += 1
    assert by_domain[domain["name"]] == Counter({"127.0.0.2": 3})
    assert set(by_domain[pooled["name"]]) == {"127.0.0.3", "127.0.0.4"}
    assert sum(by_domain[pooled["name"]].values()) == 6
    assert set(by_domain[plain["name"]]) == {"127.0.0.5", "127.0.0.6"}
    warm = by_domain[warming["name"]]
    assert warm["127.0.0.7"] == 2 and sum(warm.values()) == 5
    assert set(warm) - {"127.0.0.7"} <= {"127.0.0.5", "127.0.0.6"}  # the overflow went to the shared pool
    assert sum(1 for m in received if m["peer"] == "127.0.0.7") == 2
    assert metric("127.0.0.7", "domain-ip") - before[("127.0.0.7", "domain-ip")] == 2
    assert metric("127.0.0.2", "domain-ip") - before[("127.0.0.2", "domain-ip")] == 3
    assert metric("127.0.0.5", "overflow") + metric("127.0.0.6", "overflow") >= 3
    usage = db.execute("SELECT reserved, used FROM ip_warmup_usage WHERE address = '127.0.0.7'").fetchone()
    assert usage == {"reserved": 2, "used": 2}
    # The events name the egress IP too.
    ips_in_events = wait_until(lambda: (rows := db.execute(
        "SELECT data->'envelope'->>'sending-ip' AS ip FROM events WHERE event = 'delivered' AND domain_id = %s",
        (domain["id"],)).fetchall()) and len(rows) == 3 and rows)
    assert {r["ip"] for r in ips_in_events} == {"127.0.0.2"}


def test_wait_policy_holds_mail_past_the_cap_unattempted(services, settings, account, domain, db, clean_ips):
    add_ip(services, "127.0.0.2", dedicated=True)
    add_ip(services, "127.0.0.5")  # a shared pool exists, but "wait" does not overflow into it
    services.ips.add_domain_ip("test", domain, "127.0.0.2")
    services.ips.start_warmup("test", "127.0.0.2", "3x2")
    with Sink() as sink, DnsServer() as dns:
        rcpt_domain = f"{uuid.uuid4().hex[:8]}.dest.test"
        route(dns, rcpt_domain)
        relay_cfg = relay_settings(settings, sink, dns)
        egress = runtime.start_egress(services, refresh=0.2, policy="wait")
        try:
            with RelayThread(services, relay_cfg, egress=egress):
                ids = [send(services, account["id"], domain, f"w{n}@{rcpt_domain}") for n in range(5)]
                sink.wait_for(2)
                held = wait_until(lambda: (rows := db.execute(
                    "SELECT r.attempts FROM recipients r JOIN messages m ON m.id = r.message_pk"
                    " WHERE m.message_id = ANY(%s) AND r.status = 'queued' AND r.leased_until IS NULL"
                    " AND r.next_attempt_at > now() + interval '1 hour'", (ids,)).fetchall()) and len(rows) == 3
                    and rows, 15)
        finally:
            egress.view.stop()
    assert [m["peer"] for m in sink.messages()] == ["127.0.0.2", "127.0.0.2"]
    assert all(r["attempts"] == 0 for r in held)  # held back, not attempted
    events = db.execute("SELECT event FROM events WHERE message_id = ANY(%s)", (ids,)).fetchall()
    assert sorted(e["event"] for e in events) == ["accepted"] * 5 + ["delivered"] * 2
    assert db.execute("SELECT used FROM ip_warmup_usage WHERE address = '127.0.0.2'").fetchone()["used"] == 2
    db.execute("DELETE FROM messages WHERE message_id = ANY(%s)", (ids,))  # leave no queued mail behind


def test_warmup_quota_counts_recipients_and_splits_a_transaction_at_the_cap(services, settings, account, domain, db,
                                                                            clean_ips):
    # One message to five recipients at one destination, on an IP allowed 2 a day: two recipients go
    # (one transaction from that IP), three wait unattempted. Counting transactions would send all five.
    add_ip(services, "127.0.0.2", dedicated=True)
    services.ips.add_domain_ip("test", domain, "127.0.0.2")
    services.ips.start_warmup("test", "127.0.0.2", "3x2")
    with Sink() as sink, DnsServer() as dns:
        rcpt_domain = f"{uuid.uuid4().hex[:8]}.dest.test"
        route(dns, rcpt_domain)
        egress = runtime.start_egress(services, refresh=0.2, policy="wait")
        try:
            with RelayThread(services, relay_settings(settings, sink, dns), egress=egress):
                message_id = send(services, account["id"], domain, ", ".join(f"m{n}@{rcpt_domain}" for n in range(5)))
                sink.wait_for(1)
                held = wait_until(lambda: (rows := db.execute(
                    "SELECT r.attempts FROM recipients r JOIN messages m ON m.id = r.message_pk"
                    " WHERE m.message_id = %s AND r.status = 'queued' AND r.leased_until IS NULL"
                    " AND r.next_attempt_at > now() + interval '1 hour'", (message_id,)).fetchall())
                    and len(rows) == 3 and rows, 15)
        finally:
            egress.view.stop()
    [sent] = sink.messages()
    assert sent["peer"] == "127.0.0.2" and len(sent["rcpt_tos"]) == 2
    assert all(r["attempts"] == 0 for r in held)
    assert db.execute("SELECT used FROM ip_warmup_usage WHERE address = '127.0.0.2'").fetchone()["used"] == 2
    db.execute("DELETE FROM messages WHERE message_id = %s", (message_id,))  # leave no queued mail behind


def test_mail_pinned_to_another_hosts_ip_is_not_claimed_here(services, settings, account, domain, db, clean_ips):
    """Host-affine claiming on loopback (the namespaced test, test_relay_hosts.py, needs root): this
    relay's host has a shared IP; the domain's dedicated IP is on another host. Under "wait" this relay
    never leases the pinned mail (no claim-and-put-back), while mail of other domains leaves at once."""
    other = services.accounts.add_domain(account["id"], f"{uuid.uuid4().hex[:8]}.other.test", dkim_key_size=1024,
                                         verified=True)
    add_ip(services, "127.0.0.5")
    services.ips.add_ip("test", "127.0.0.2", host="elsewhere", helo=HELO["127.0.0.2"], dedicated=True)
    services.ips.add_domain_ip("test", domain, "127.0.0.2")
    with Sink() as sink, DnsServer() as dns:
        rcpt_domain = f"{uuid.uuid4().hex[:8]}.dest.test"
        route(dns, rcpt_domain)
        before = services.metrics.registry.get_sample_value("envoi_egress_unavailable_total") or 0
        egress = runtime.start_egress(services, refresh=0.2, policy="wait")
        try:
            with RelayThread(services, relay_settings(settings, sink, dns, relay_lease=4.0), egress=egress):
                pinned = [send(services, account["id"], domain, f"p{n}@{rcpt_domain}") for n in range(3)]
                for n in range(3):
                    send(services, account["id"], other, f"o{n}@{rcpt_domain}")
                received = sink.wait_for(3, timeout=15)
                time.sleep(2.0)  # many claim rounds: none takes the pinned mail
        finally:
            egress.view.stop()
    assert sorted(m["rcpt_tos"][0] for m in sink.messages()) == [f"o{n}@{rcpt_domain}" for n in range(3)]
    assert {m["peer"] for m in received} == {"127.0.0.5"}
    assert recipient_states(db, pinned) == [UNTOUCHED] * 3
    assert (services.metrics.registry.get_sample_value("envoi_egress_unavailable_total") or 0) == before


def _pinned_elsewhere_domains(services, account):
    """Two domains pinned to another host's dedicated IP: one `wait`, one `overflow`."""
    made = {}
    for n, policy in ((3, "wait"), (4, "overflow")):
        d = services.accounts.add_domain(account["id"], f"{uuid.uuid4().hex[:8]}.{policy}.test", dkim_key_size=1024,
                                         verified=True)
        services.accounts.update_domain(account["id"], d["name"], ip_overflow=policy)
        services.ips.add_ip("test", f"127.0.0.{n}", host="elsewhere", helo=HELO[f"127.0.0.{n}"], dedicated=True)
        services.ips.add_domain_ip("test", d, f"127.0.0.{n}")
        made[policy] = d
    return made


def test_each_pinned_domain_follows_its_own_overflow_policy(services, settings, account, db, clean_ips):
    """Per-domain ip_overflow against the relay default (ENVOI_WARMUP_POLICY): under either default,
    the `overflow` domain's mail pinned to a down host is taken here after a whole lease and leaves from
    this host's shared IP; the `wait` domain's stays queued, unattempted and unleased."""
    add_ip(services, "127.0.0.5")
    made = _pinned_elsewhere_domains(services, account)
    for default in ("wait", "overflow"):  # the relay default opposite to one domain each time
        with Sink() as sink, DnsServer() as dns:
            rcpt_domain = f"{uuid.uuid4().hex[:8]}.dest.test"
            route(dns, rcpt_domain)
            egress = runtime.start_egress(services, refresh=0.2, policy=default)
            try:
                with RelayThread(services, relay_settings(settings, sink, dns, relay_lease=1.5), egress=egress):
                    waiting = [send(services, account["id"], made["wait"], f"w{n}@{rcpt_domain}") for n in range(2)]
                    for n in range(2):
                        send(services, account["id"], made["overflow"], f"v{n}@{rcpt_domain}")
                    received = sink.wait_for(2, timeout=20)
                    time.sleep(3.5)  # two more leases: the `wait` mail is still not taken
            finally:
                egress.view.stop()
        assert sorted(m["rcpt_tos"][0] for m in sink.messages()) == [f"v{n}@{rcpt_domain}" for n in range(2)], default
        assert {m["peer"] for m in received} == {"127.0.0.5"}
        assert recipient_states(db, waiting) == [UNTOUCHED] * 2, default
        db.execute("UPDATE recipients SET status = 'failed' FROM messages m WHERE m.id = recipients.message_pk"
                   " AND m.message_id = ANY(%s)", (waiting,))  # out of the next round's way


def test_mail_naming_another_hosts_ip_waits_for_it_unless_its_domain_overflows(services, settings, account, domain,
                                                                              db, clean_ips):
    """o:sending-ip / o:sending-ip-pool naming IPs that live only on another host: this relay never leases
    that mail, even under the relay default "overflow" (the sender asked for that address: only the
    domain's own ip_overflow=overflow lets it leave from here); once the domain says so, it leaves from
    this host's shared IP after a whole lease. Mail of the same domain without the option leaves at once."""
    add_ip(services, "127.0.0.5")
    services.ips.add_ip("test", "127.0.0.3", host="elsewhere", helo=HELO["127.0.0.3"], dedicated=True)
    services.ips.add_ip("test", "127.0.0.4", host="elsewhere", helo=HELO["127.0.0.4"], dedicated=True)
    for address in ("127.0.0.3", "127.0.0.4"):
        services.ips.assign_ip("test", address, account["id"])
    pool = services.ips.create_pool("test", "away", ips=["127.0.0.4"], account_id=account["id"])
    with Sink() as sink, DnsServer() as dns:
        rcpt_domain = f"{uuid.uuid4().hex[:8]}.dest.test"
        route(dns, rcpt_domain)
        before = services.metrics.registry.get_sample_value("envoi_egress_unavailable_total") or 0
        egress = runtime.start_egress(services, refresh=0.2, policy="overflow")
        try:
            with RelayThread(services, relay_settings(settings, sink, dns, relay_lease=1.5), egress=egress):
                pinned = [send(services, account["id"], domain, f"p{n}@{rcpt_domain}", **{"o:sending-ip": "127.0.0.3"})
                          for n in range(2)]
                pinned.append(send(services, account["id"], domain, f"p2@{rcpt_domain}",
                                   **{"o:sending-ip-pool": pool["id"]}))
                send(services, account["id"], domain, f"plain@{rcpt_domain}")
                assert [m["rcpt_tos"] for m in sink.wait_for(1, timeout=15)] == [[f"plain@{rcpt_domain}"]]
                time.sleep(4.0)  # more than two leases: not taken, under the relay's "overflow" default
                assert recipient_states(db, pinned) == [UNTOUCHED] * 3
                pins = db.execute("SELECT r.egress_pin FROM recipients r JOIN messages m ON m.id = r.message_pk"
                                  " WHERE m.message_id = ANY(%s) ORDER BY r.address", (pinned,)).fetchall()
                assert [r["egress_pin"] for r in pins] == ["ip:127.0.0.3", "ip:127.0.0.3", f"pool:{pool['id']}"]
                assert len(sink.messages()) == 1
                assert (services.metrics.registry.get_sample_value("envoi_egress_unavailable_total") or 0) == before
                # The domain opts in: its pinned mail overflows here, from this host's shared IP.
                services.accounts.update_domain(account["id"], domain["name"], ip_overflow="overflow")
                received = sink.wait_for(4, timeout=20)
        finally:
            egress.view.stop()
    assert sorted(r for m in received for r in m["rcpt_tos"]) == sorted(
        [f"p{n}@{rcpt_domain}" for n in range(3)] + [f"plain@{rcpt_domain}"])
    assert {m["peer"] for m in received} == {"127.0.0.5"}
