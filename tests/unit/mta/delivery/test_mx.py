"""MX resolution against a real DNS server on localhost (tests/support/dns_server.py)."""

import asyncio
import base64
import json
import os
import signal
import subprocess
import sys
import time

import dns.message
import dns.query
import pytest

from envoi.mta.delivery.mx import DnsPermanentError, DnsTemporaryError, MxHost, MxResolver
from tests.support.dns_server import DnsServer
from tests.support.paths import ROOT


@pytest.fixture
def server():
    with DnsServer() as s:
        yield s


def resolver(server, **kwargs) -> MxResolver:
    return MxResolver(nameserver=("127.0.0.1", server.port), **kwargs)


def run(coro):
    return asyncio.run(coro)


def test_mx_in_preference_order(server):
    for value in ("30 c.example.com.", "10 a1.example.com.", "20 b.example.com.", "10 a2.example.com."):
        server.add("example.com", "MX", value)
    hosts = run(resolver(server).mx("example.com"))
    assert [h.preference for h in hosts] == [10, 10, 20, 30]
    assert {h.host for h in hosts[:2]} == {"a1.example.com", "a2.example.com"}
    assert hosts[2:] == [MxHost(20, "b.example.com"), MxHost(30, "c.example.com")]


def test_domain_is_normalised(server):
    server.add("example.com", "MX", "10 MX.Example.COM.")
    assert run(resolver(server).mx("Example.COM.")) == [MxHost(10, "mx.example.com")]


def test_implicit_mx_from_address_records(server):
    server.add("v4.test", "A", "192.0.2.1")
    server.add("v6.test", "AAAA", "2001:db8::1")

    async def both(r):
        return await r.mx("v4.test"), await r.mx("v6.test")

    assert run(both(resolver(server))) == ([MxHost(0, "v4.test")], [MxHost(0, "v6.test")])


def test_no_mx_and_no_address_is_permanent(server):
    server.add("txtonly.test", "TXT", "v=spf1 -all")
    with pytest.raises(DnsPermanentError) as e:
        run(resolver(server).mx("txtonly.test"))
    assert e.value.enhanced_code == "5.1.2"


def test_null_mx(server):
    server.add("null.test", "MX", "0 .")
    with pytest.raises(DnsPermanentError) as e:
        run(resolver(server).mx("null.test"))
    assert e.value.enhanced_code == "5.1.10"
    assert "null MX" in e.value.description


def test_nxdomain(server):
    with pytest.raises(DnsPermanentError) as e:
        run(resolver(server).mx("nowhere.test"))
    assert e.value.enhanced_code == "5.1.2"


def test_invalid_domain_is_permanent(server):
    with pytest.raises(DnsPermanentError) as e:
        run(resolver(server).mx("a..b"))
    assert e.value.enhanced_code == "5.1.2"


def test_servfail_is_temporary_and_not_cached(server):
    server.add("flaky.test", "MX", "10 mx.flaky.test.")
    server.servfail("flaky.test")
    r = resolver(server)
    with pytest.raises(DnsTemporaryError):
        run(r.mx("flaky.test"))
    server.clear()  # the server recovers
    server.add("flaky.test", "MX", "10 mx.flaky.test.")
    assert run(r.mx("flaky.test")) == [MxHost(10, "mx.flaky.test")]


def test_timeout_is_temporary_within_the_configured_timeout(server):
    server.drop("silent.test")
    start = time.monotonic()
    with pytest.raises(DnsTemporaryError):
        run(resolver(server, timeout=0.3).mx("silent.test"))
    # bounded by the configured timeout, not the 5 s default (0.3 s: each of these tests waits it out)
    assert time.monotonic() - start < 2.0
    assert server.count("silent.test", "MX") >= 1  # the query did arrive, and was ignored


def test_unreachable_server_is_temporary():
    with DnsServer() as s:
        port = s.port
    with pytest.raises(DnsTemporaryError):
        run(MxResolver(nameserver=("127.0.0.1", port), timeout=0.3).mx("example.com"))


def test_answers_are_cached(server):
    server.add("example.com", "MX", "10 mx.example.com.")
    server.add("mx.example.com", "A", "192.0.2.1")
    r = resolver(server)

    async def twice():
        for _ in range(2):
            assert await r.mx("example.com") == [MxHost(10, "mx.example.com")]
            assert await r.addresses("mx.example.com") == ["192.0.2.1"]

    run(twice())
    assert server.count("example.com", "MX") == 1
    assert server.count("mx.example.com", "A") == 1


def test_expired_ttl_is_queried_again(server):
    server.add("short.test", "MX", "10 mx.short.test.", ttl=1)
    r = resolver(server)
    run(r.mx("short.test"))
    time.sleep(1.1)
    run(r.mx("short.test"))
    assert server.count("short.test", "MX") == 2


def test_ttl_is_capped(server):
    server.add("long.test", "MX", "10 mx.long.test.", ttl=86400)
    r = resolver(server, max_ttl=1)
    run(r.mx("long.test"))
    time.sleep(1.1)
    run(r.mx("long.test"))
    assert server.count("long.test", "MX") == 2


def test_permanent_errors_are_cached_briefly(server):
    r = resolver(server, negative_ttl=1)
    for _ in range(2):
        with pytest.raises(DnsPermanentError):
            run(r.mx("nowhere.test"))
    assert server.count("nowhere.test", "MX") == 1
    time.sleep(1.1)
    server.add("nowhere.test", "MX", "10 mx.nowhere.test.")  # the domain gets created
    assert run(r.mx("nowhere.test")) == [MxHost(10, "mx.nowhere.test")]


def test_concurrent_lookups_share_one_query(server):
    server.add("busy.test", "MX", "10 mx.busy.test.")
    r = resolver(server)

    async def many():
        return await asyncio.gather(*(r.mx("busy.test") for _ in range(20)))

    assert all(hosts == [MxHost(10, "mx.busy.test")] for hosts in run(many()))
    assert server.count("busy.test", "MX") == 1


def test_addresses_ipv4_then_ipv6(server):
    server.add("mx.test", "AAAA", "2001:db8::25")
    server.add("mx.test", "A", "192.0.2.25")
    assert run(resolver(server).addresses("mx.test")) == ["192.0.2.25", "2001:db8::25"]


def test_addresses_of_missing_host_is_empty(server):
    assert run(resolver(server).addresses("gone.test")) == []


def test_addresses_literal_ip_is_not_resolved(server):
    r = resolver(server)
    assert run(r.addresses("192.0.2.7")) == ["192.0.2.7"]
    assert run(r.addresses("2001:db8::7")) == ["2001:db8::7"]
    assert server.queries == []


def test_addresses_timeout_is_temporary(server):
    server.drop("silent-mx.test")
    with pytest.raises(DnsTemporaryError):
        run(resolver(server, timeout=0.3).addresses("silent-mx.test"))


def test_long_dkim_txt_is_split_and_reassembled(server):
    key = base64.b64encode(os.urandom(294)).decode()  # the size of a 2048-bit public key
    value = f"v=DKIM1; k=rsa; p={key}"
    server.add("s1._domainkey.example.com", "TXT", value)

    # On the wire: several character-strings of at most 255 bytes each.
    response = dns.query.udp(
        dns.message.make_query("s1._domainkey.example.com", "TXT"), "127.0.0.1", port=server.port
    )
    strings = response.answer[0][0].strings
    assert len(strings) == 2 and all(len(s) <= 255 for s in strings)

    assert run(resolver(server).txt("s1._domainkey.example.com")) == [value]


def test_txt_too_big_for_udp_comes_over_tcp(server):
    value = "v=DKIM1; k=rsa; p=" + "A" * 3000  # more than the 1232-byte EDNS payload
    server.add("big._domainkey.example.com", "TXT", value)
    assert run(resolver(server).txt("big._domainkey.example.com")) == [value]
    assert server.count("big._domainkey.example.com", "TXT") == 2  # truncated UDP, then TCP


def test_empty_non_terminal_is_nodata_not_nxdomain(server):
    server.add("s1._domainkey.example.com", "TXT", "v=DKIM1; p=")
    r = resolver(server)
    assert run(r.txt("_domainkey.example.com")) == []
    with pytest.raises(DnsPermanentError, match="no MX and no address"):
        run(r.mx("_domainkey.example.com"))


def test_server_runs_as_a_process(tmp_path):
    zone = tmp_path / "zone.json"
    zone.write_text(
        json.dumps([["example.com", "MX", "10 mx.example.com."], ["mx.example.com", "A", "127.0.0.1", 30]])
    )
    proc = subprocess.Popen(
        [sys.executable, "-m", "tests.support.dns_server", "--port", "0", "--zone", str(zone)],
        cwd=ROOT,
        stdout=subprocess.PIPE,
        text=True,
    )
    try:
        line = proc.stdout.readline()
        assert line.startswith("listening on 127.0.0.1:")
        port = int(line.rsplit(":", 1)[1])
        r = MxResolver(nameserver=("127.0.0.1", port))
        assert run(r.mx("example.com")) == [MxHost(10, "mx.example.com")]
        assert run(r.addresses("mx.example.com")) == ["127.0.0.1"]
    finally:
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(timeout=5) == 0
