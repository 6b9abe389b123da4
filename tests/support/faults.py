"""Failures injected inside an outbound SMTP transaction (monkeypatch), for the session-recovery tests."""

from __future__ import annotations

import aiosmtplib

from envoi.mta.delivery import session as session_module


def raise_in_rcpt(monkeypatch, marker: bytes = b"boom") -> None:
    """RCPT TO for an address containing `marker` raises (after MAIL FROM was accepted)."""
    original = aiosmtplib.SMTP.execute_command

    async def execute_command(self, *args, **kwargs):
        if args[0] == b"RCPT" and marker in args[1]:
            raise RuntimeError("injected failure while sending RCPT")
        return await original(self, *args, **kwargs)

    monkeypatch.setattr(aiosmtplib.SMTP, "execute_command", execute_command)


def raise_in_data(monkeypatch, marker: bytes = b"BOOM") -> None:
    """A message containing `marker` raises after the server's 354, as its body is written (the relay's
    messages come ready for the wire, so the write is the one step every message takes there)."""
    original = session_module._Protocol.write
    commands = (b"MAIL ", b"RCPT ", b"DATA", b"RSET", b"QUIT", b"EHLO", b"HELO", b"STARTTLS", b"NOOP")

    def write(self, data: bytes) -> None:
        if marker in data and not bytes(data).startswith(commands):
            raise RuntimeError("injected failure while sending the message")
        return original(self, data)

    monkeypatch.setattr(session_module._Protocol, "write", write)
