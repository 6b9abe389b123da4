"""The client's address, seen through the reverse proxies the operator trusts (ENVOI_TRUSTED_PROXIES).

X-Forwarded-For is believed only when the peer is a trusted proxy, and then only as far as the chain
of trusted proxies goes: the client is the right-most address that is not one of them. Anything to
its left was written by the client itself and could say anything.
"""

from __future__ import annotations

import ipaddress
from collections.abc import Iterable


class ClientAddress:
    def __init__(self, trusted_proxies: Iterable[str] = ()):
        self.networks = tuple(ipaddress.ip_network(cidr, strict=False) for cidr in trusted_proxies)

    def _trusted(self, address) -> bool:
        return address is not None and any(address in net for net in self.networks
                                           if net.version == address.version)

    def __call__(self, req) -> str:
        peer = req.remote_addr or ""
        if not self.networks or not self._trusted(_parse(peer)):
            return peer
        hops = [h.strip() for h in (req.get_header("X-Forwarded-For") or "").split(",") if h.strip()]
        for hop in reversed(hops):
            address = _parse(hop)
            if not self._trusted(address):
                # An unreadable entry ends the chain we can vouch for: it stands for the client.
                return str(address) if address is not None else hop[:64]
        return str(_parse(hops[0])) if hops else peer  # every hop is a proxy of ours: the first is the client


def _parse(text: str):
    """An address from an X-Forwarded-For entry ("1.2.3.4", "1.2.3.4:567", "[::1]:567", "::1"), or None."""
    text = text.strip()
    if text.startswith("["):
        text = text[1:].partition("]")[0]
    elif text.count(":") == 1:
        text = text.partition(":")[0]
    try:
        return ipaddress.ip_address(text)
    except ValueError:
        return None
