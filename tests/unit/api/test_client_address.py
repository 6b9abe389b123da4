"""ClientAddress: X-Forwarded-For is believed only from trusted proxies, and only up to the first untrusted hop."""

from falcon import testing

from envoi.api.client_address import ClientAddress


def client(trusted, peer, forwarded=None) -> str:
    req = testing.create_req(remote_addr=peer, headers={"X-Forwarded-For": forwarded} if forwarded else {})
    return ClientAddress(trusted)(req)


def test_forwarded_for_is_read_only_from_trusted_proxies():
    assert client((), "10.0.0.1", "1.2.3.4") == "10.0.0.1"  # nothing trusted: the peer
    assert client(("10.0.0.0/8",), "192.0.2.1", "1.2.3.4") == "192.0.2.1"  # an untrusted peer's header is ignored
    assert client(("10.0.0.0/8",), "10.0.0.1", "6.6.6.6, 1.2.3.4, 10.0.0.2") == "1.2.3.4"
    assert client(("10.0.0.0/8",), "10.0.0.1") == "10.0.0.1"  # a proxy's own request
    assert client(("10.0.0.0/8",), "10.0.0.1", "10.0.0.3, 10.0.0.2") == "10.0.0.3"  # all ours: the first
    assert client(("10.0.0.0/8", "2001:db8::/32"), "2001:db8::1", "[2001:db8:1::5]:443, 1.2.3.4:5678") == "1.2.3.4"
    assert client(("10.0.0.0/8",), "10.0.0.1", "1.2.3.4, junk") == "junk"  # unreadable ends what we can vouch for
