"""DKIM keys at work: real messages through the relay to the sink, their signatures verified with dkimpy
against the records on the test DNS server — RSA and ed25519, before, during and after a scheduled
rotation (the next key signs only once its record is found; the old one's record stays asked for until
the mail it signed has left the queue, then the key is retired), and with a DKIM authority (a subdomain
signs as its parent, with the parent's key)."""

from __future__ import annotations

import re
import uuid

import dkim
import dns.resolver
import pytest

from envoi import runtime
from envoi.accounts.dkim import DkimKeys
from envoi.accounts.service import dns_records, dns_targets
from envoi.dev.sink import Sink
from envoi.mta.dkim_rotation import DkimRotation
from tests.support.delivery import route, send
from tests.support.dns_server import DnsServer
from tests.support.relay import RelayThread, relay_settings, wait_until


@pytest.fixture
def dns_server():
    with DnsServer() as server:
        route(server, "dest.test")
        yield server


@pytest.fixture
def sink():
    with Sink() as s:
        yield s


@pytest.fixture
def dkim_keys(services, dns_server):
    return DkimKeys(services.db, services.sealer, services.accounts, ("127.0.0.1", dns_server.port))


def publish_signing_records(services, dns_server, domain_id):
    """Publish what the domain's records ask for (its DKIM TXT records), as its owner would."""
    row = services.accounts.get_domain_by_id(domain_id)
    for record in dns_records(row, **dns_targets(services.settings))["sending_dns_records"]:
        if "._domainkey." in record["name"]:
            dns_server.add(record["name"], "TXT", record["value"])


def resolver_of(dns_server):
    def dnsfunc(name, timeout=5):
        resolver = dns.resolver.Resolver(configure=False)
        resolver.nameservers, resolver.port, resolver.lifetime = ["127.0.0.1"], dns_server.port, 3
        try:
            answer = resolver.resolve(name.decode().rstrip("."), "TXT")
        except (dns.resolver.NXDOMAIN, dns.resolver.NoAnswer):
            return b""
        return b"".join(answer[0].strings)
    return dnsfunc


def delivered(services, settings, sink, dns_server, account, domain, to="rcpt@dest.test") -> bytes:
    """Send one message through a fresh relay (no cached keys) and return it as the sink received it."""
    with RelayThread(services, relay_settings(settings, sink, dns_server)):
        mid = send(services, account["id"], domain, to)
        msg = wait_until(lambda: next((m for m in sink.messages(to=to) if mid in m["data"]), None))
    return msg["data"].encode("utf-8", "surrogateescape")


def signatures(raw: bytes) -> list[dict]:
    """The (d, s, a) of each DKIM-Signature, in order."""
    out = []
    for field in re.findall(rb"^DKIM-Signature:(.*?)(?=^\S)", raw, re.S | re.M):
        tags = dict(re.findall(r"\b([dsa])=([^;]+);", re.sub(r"\s+", "", field.decode())))
        out.append(tags)
    return out


def verified(raw: bytes, dns_server) -> list[bool]:
    dnsfunc = resolver_of(dns_server)
    return [dkim.DKIM(raw).verify(idx=i, dnsfunc=dnsfunc) for i in range(len(signatures(raw)))]


def test_rsa_and_ed25519_signatures_verify_before_during_and_after_a_rotation(
        services, settings, account, domain, db, dns_server, sink, dkim_keys):
    name = domain["name"]
    old = domain["dkim_selector"]
    rotation = DkimRotation(services.db, services.accounts, dkim_keys, grace=0)
    publish_signing_records(services, dns_server, domain["id"])
    ed = dkim_keys.create(account["id"], name, "ed", algorithm="ed25519")
    dns_server.add(ed.dns_record["name"], "TXT", ed.dns_record["value"])
    dkim_keys.activate(account["id"], name, "ed")

    raw = delivered(services, settings, sink, dns_server, account, domain)
    assert [(s["d"], s["s"], s["a"]) for s in signatures(raw)] == [(name, old, "rsa-sha256"),
                                                                   (name, "ed", "ed25519-sha256")]
    assert verified(raw, dns_server) == [True, True]

    # rotation on, and the key older than its interval: the scheduler makes the next key
    dkim_keys.set_rotation(account["id"], name, True, "5d")
    db.execute("UPDATE domains SET dkim_rotated_at = now() - interval '6 days' WHERE id = %s", (domain["id"],))
    run = rotation.run()
    assert name in run.rotated and name in run.waiting  # its record is not published yet
    new = services.accounts.get_domain_by_id(domain["id"])["dkim_pending_selector"]
    assert new and new != old
    # while the new record is missing, the old key keeps signing; one message waits in the queue
    sink.set_script({"rcpt": {"slow@dest.test": "451 4.3.0 try later"}})
    with RelayThread(services, relay_settings(settings, sink, dns_server)):
        waiting = send(services, account["id"], domain, "slow@dest.test")
        wait_until(lambda: db.execute(
            "SELECT m.dkim_signature FROM recipients r JOIN messages m ON m.id = r.message_pk"
            " WHERE m.message_id = %s AND r.attempts >= 1 AND r.status = 'queued' AND m.dkim_signature IS NOT NULL",
            (waiting,)).fetchone())
    raw = delivered(services, settings, sink, dns_server, account, domain)
    assert signatures(raw)[0]["s"] == old and verified(raw, dns_server) == [True, True]

    # the new record is published: the next run switches signing to it; the old key is kept, retiring,
    # because mail it signed is still queued
    publish_signing_records(services, dns_server, domain["id"])
    dns_server.add(f"{new}._domainkey.{name}", "TXT",
                   f"v=DKIM1; k=rsa; p={services.accounts.get_domain_by_id(domain['id'])['dkim_pending_public_key']}")
    run = rotation.run()
    assert name in run.switched and f"{old}._domainkey.{name}" in run.kept
    row = services.accounts.get_domain_by_id(domain["id"])
    assert row["dkim_selector"] == new and row["dkim_pending_selector"] is None
    retiring = [r for r in dns_records(row, **dns_targets(services.settings))["sending_dns_records"] if r.get("retiring")]
    assert [r["name"] for r in retiring] == [f"{old}._domainkey.{name}"]

    raw = delivered(services, settings, sink, dns_server, account, domain)
    assert [(s["s"], s["a"]) for s in signatures(raw)] == [(new, "rsa-sha256"), ("ed", "ed25519-sha256")]
    assert verified(raw, dns_server) == [True, True]

    # the waiting message leaves with the signature it was given (the old key's), which still verifies
    sink.reset_script()
    db.execute("UPDATE recipients SET next_attempt_at = now() WHERE message_pk ="
               " (SELECT id FROM messages WHERE message_id = %s)", (waiting,))
    with RelayThread(services, relay_settings(settings, sink, dns_server)):
        msg = wait_until(lambda: next((m for m in sink.messages(to="slow@dest.test") if waiting in m["data"]), None))
    raw = msg["data"].encode("utf-8", "surrogateescape")
    assert signatures(raw)[0]["s"] == old and verified(raw, dns_server) == [True, True]
    # nothing signed with the old key is queued any more: it is retired, its record no longer asked for
    run = rotation.run()
    assert f"{old}._domainkey.{name}" in run.retired
    row = services.accounts.get_domain_by_id(domain["id"])
    assert not any(r.get("retiring") for r in dns_records(row, **dns_targets(services.settings))["sending_dns_records"])
    assert old not in {k.selector for k in dkim_keys.list(account["id"], name)}


def test_a_subdomain_with_dkim_authority_signs_as_its_parent(services, settings, account, dns_server, sink,
                                                             dkim_keys):
    parent = services.accounts.add_domain(account["id"], f"{uuid.uuid4().hex[:8]}.parent.test",
                                          dkim_key_size=1024, verified=True)
    sub = services.accounts.add_domain(account["id"], f"mail.{parent['name']}", dkim_key_size=1024, verified=True)
    publish_signing_records(services, dns_server, parent["id"])
    publish_signing_records(services, dns_server, sub["id"])

    raw = delivered(services, settings, sink, dns_server, account, sub)
    assert [(s["d"], s["s"]) for s in signatures(raw)] == [(sub["name"], sub["dkim_selector"])]

    _, changed = dkim_keys.set_authority(account["id"], sub["name"], False)
    assert changed
    sub_row = services.accounts.get_domain_by_id(sub["id"])
    records = [r["name"] for r in dns_records(sub_row, **dns_targets(services.settings))["sending_dns_records"]
               if "._domainkey." in r["name"]]
    assert records == [f"{parent['dkim_selector']}._domainkey.{parent['name']}"]  # the records say so
    raw = delivered(services, settings, sink, dns_server, account, sub)
    assert b"From: Sender <s@mail." in raw
    assert [(s["d"], s["s"]) for s in signatures(raw)] == [(parent["name"], parent["dkim_selector"])]
    assert verified(raw, dns_server) == [True]


def test_the_scheduler_runs_the_rotation_job(services):
    task = {t.name: t for t in runtime.periodic_tasks(services)}["dkim: rotate keys, sign with found ones, retire drained ones"]
    assert task.every_seconds == 300 and task.run.__self__.dkim is services.dkim
