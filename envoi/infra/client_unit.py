"""The unit a client is counted by in throttles and caps: its IPv4 address, or its IPv6 /64.

An IPv6 subscriber usually holds a whole /64, so counting single addresses would let one client
rotate through 2^64 of them."""

from __future__ import annotations

import ipaddress


def client_unit(ip: str | None) -> str:
    if not ip or ":" not in ip:
        return ip or "-"
    try:
        return str(ipaddress.ip_network(f"{ip.partition('%')[0]}/64", strict=False))
    except ValueError:
        return ip
