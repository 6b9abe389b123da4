"""Connection caps for SMTP submission: per client address and in total, per server process.

Idle connections cost a file descriptor each; without caps one client could hold them all and cut
every other client off. Past a cap the server answers 421 4.7.0 and closes (RFC 5321 3.8), before
any TLS or SMTP work. Used only from the server's event loop, so plain counters suffice.
"""

from __future__ import annotations

from envoi.infra.client_unit import client_unit

TOO_MANY = b"421 4.7.0 Too many connections, try again later\r\n"


class ConnectionLimit:
    REFUSAL = TOO_MANY  # what the listener writes before closing a connection over a cap

    def __init__(self, total: int, per_address: int):
        self.total = total
        self.per_address = per_address
        self.open = 0
        self._by_address: dict[str, int] = {}

    def admit(self, ip: str) -> str | None:
        """Take a slot for a new connection from `ip`; the key to release(), or None when over a cap."""
        key = client_unit(ip)
        held = self._by_address.get(key, 0)
        if (self.total and self.open >= self.total) or (self.per_address and held >= self.per_address):
            return None
        self.open += 1
        self._by_address[key] = held + 1
        return key

    def release(self, key: str) -> None:
        self.open -= 1
        held = self._by_address.pop(key, 1) - 1
        if held > 0:
            self._by_address[key] = held

    def held_by(self, ip: str) -> int:
        return self._by_address.get(client_unit(ip), 0)
