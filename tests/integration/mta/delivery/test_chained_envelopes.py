"""RFC 2920 3.1 over a session that carries several messages: the next message's MAIL, RCPTs and DATA go
in the same write as the previous message's final dot, and the replies are read in order. A scripted
server on loopback answers a final dot only after waiting briefly for the next command, so it can tell
whether the envelope came behind the dot (`chained`); what each message is told stays its own."""

from __future__ import annotations

import asyncio
import threading
import time

import pytest

from envoi.mta.delivery.outcome import Kind
from envoi.mta.delivery.session import Egress, Session, SessionError
from tests.support.delivery import events_of, send
from tests.support.dns_server import DnsServer
from tests.support.relay import RelayThread, relay_settings, wait_until

MESSAGE = b"From: a@example.com\r\nTo: b@example.org\r\nSubject: s\r\n\r\nbody\r\n"


class ChainServer:
    """A PIPELINING server answering each command as it reads it, except a final dot: before answering
    that it waits up to `linger` seconds for the next command (a client that waits for the dot's reply
    first sends nothing). `dots` scripts the replies to the final dots in order ("drop": close without
    one); `rcpt` maps an address to its RCPT reply. Runs its own loop in a thread, for the relay tests."""

    def __init__(self, dots: list[str] | None = None, rcpt: dict[str, str] | None = None, linger: float = 0.3):
        self.dots = list(dots or [])
        self.rcpt = rcpt or {}
        self.linger = linger
        self.mails: list[tuple[str, bool]] = []  # (MAIL FROM line, came behind the previous dot)
        self.behind_dots: list[bytes] = []  # per final dot: the command that came in its write (or b"")
        self.messages: list[tuple[list[str], bytes]] = []  # (RCPTs accepted, data) per dot answered 250
        self.connections = 0
        self.port = 0
        self._loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self._loop.run_forever, daemon=True)

    async def _handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.connections += 1
        writer.write(b"220 chain.test ESMTP\r\n")
        pending: bytes | None = None  # a command read while lingering after a dot
        behind_dot = False
        rcpts: list[str] = []
        try:
            while True:
                line, pending = (pending, None) if pending is not None else (await reader.readline(), None)
                if not line:
                    return
                verb = line[:4].upper()
                if verb == b"EHLO":
                    writer.write(b"250-chain.test\r\n250-PIPELINING\r\n250 8BITMIME\r\n")
                elif verb == b"MAIL":
                    self.mails.append((line.decode().strip(), behind_dot))
                    rcpts = []
                    writer.write(b"250 2.1.0 Ok\r\n")
                elif verb == b"RCPT":
                    address = line.decode().split("<", 1)[1].split(">", 1)[0]
                    reply = self.rcpt.get(address, "250 2.1.5 Ok")
                    if reply.startswith("250"):
                        rcpts.append(address)
                    writer.write(reply.encode() + b"\r\n")
                elif verb == b"DATA":
                    if not rcpts:
                        writer.write(b"554 5.5.1 No valid recipients\r\n")
                        continue
                    writer.write(b"354 Go ahead\r\n")
                    data = await reader.readuntil(b"\r\n.\r\n")
                    try:
                        pending = await asyncio.wait_for(reader.readline(), self.linger)
                    except TimeoutError:
                        pending = None
                    behind_dot = bool(pending)
                    self.behind_dots.append(pending or b"")
                    reply = self.dots.pop(0) if self.dots else "250 2.0.0 Queued"
                    if reply == "drop":
                        return
                    if reply.startswith("250"):
                        self.messages.append((rcpts, data))
                    writer.write(reply.encode() + b"\r\n")
                    if reply.startswith("421"):
                        await writer.drain()
                        return
                    continue
                elif verb == b"RSET":
                    rcpts = []
                    writer.write(b"250 2.0.0 Ok\r\n")
                elif verb == b"QUIT":
                    writer.write(b"221 Bye\r\n")
                    return
                else:
                    writer.write(b"502 5.5.2 Unknown\r\n")
                behind_dot = False
        finally:
            writer.close()

    def __enter__(self) -> ChainServer:
        self._thread.start()
        server = asyncio.run_coroutine_threadsafe(asyncio.start_server(self._handle, "127.0.0.1", 0),
                                                  self._loop).result(5)
        self.port = self.smtp_port = server.sockets[0].getsockname()[1]  # smtp_port: as the dev sink's
        return self

    def __exit__(self, *exc) -> None:
        self._loop.call_soon_threadsafe(self._loop.stop)
        self._thread.join(5)


def _session(port: int) -> Session:
    return Session("chain.test", "127.0.0.1", port, Egress(None, "relay.test"), timeout=5)


def test_the_next_envelope_goes_behind_the_final_dot_and_each_message_keeps_its_own_replies():
    first = ("a@example.com", ["x@example.org"], MESSAGE)
    second = ("b@example.com", ["x@example.org", "bad@example.org"], MESSAGE + b"second\r\n")

    async def scenario(port: int):
        session = _session(port)
        await session.open()
        try:
            one = await session.send(*first, following=second)
            chained = session.chained
            two = await session.send(*second)
            return one, chained, two, session.chained
        finally:
            await session.close()

    with ChainServer(dots=["554 5.7.1 Message refused", "250 2.0.0 Queued"],
                     rcpt={"bad@example.org": "550 5.1.1 No such user"}) as server:
        one, chained, two, still_chained = asyncio.run(scenario(server.port))
    assert chained and not still_chained
    assert [behind for _, behind in server.mails] == [False, True]  # came in the dot's write
    assert (one["x@example.org"].kind, one["x@example.org"].code) == (Kind.FAILED, 554)  # its own refusal
    assert (two["x@example.org"].kind, two["x@example.org"].code) == (Kind.DELIVERED, 250)
    assert (two["bad@example.org"].kind, two["bad@example.org"].code) == (Kind.FAILED, 550)
    assert server.messages == [(["x@example.org"], MESSAGE + b"second\r\n.\r\n")]
    assert server.connections == 1


def test_a_session_lost_before_the_dots_reply_fails_only_that_message_and_the_next_goes_on_a_new_one():
    first = ("a@example.com", ["x@example.org"], MESSAGE)
    second = ("b@example.com", ["y@example.org"], MESSAGE + b"second\r\n")

    async def scenario(port: int):
        session = _session(port)
        await session.open()
        with pytest.raises(SessionError) as broke:
            await session.send(*first, following=second)
        usable = session.usable
        session = _session(port)  # the relay's worker: a new session for the message it carried
        await session.open()
        try:
            return broke.value.outcome, usable, await session.send(*second)
        finally:
            await session.close()

    with ChainServer(dots=["drop"]) as server:
        outcome, usable, two = asyncio.run(scenario(server.port))
    assert outcome.kind is Kind.RETRY and outcome.description == "connection failure"
    assert not usable
    assert two["y@example.org"].kind is Kind.DELIVERED
    assert server.messages == [(["y@example.org"], MESSAGE + b"second\r\n.\r\n")]  # sent once, on the new one
    assert server.connections == 2


def test_a_chained_session_is_never_quit_or_reset_and_refuses_another_message():
    """With an envelope's replies due, QUIT or RSET would be paired with them (and after a 354 read as
    message text): closing aborts instead, and a send of any other message drops the session."""
    first = ("a@example.com", ["x@example.org"], MESSAGE)
    second = ("b@example.com", ["y@example.org"], MESSAGE)

    async def scenario(port: int):
        session = _session(port)
        await session.open()
        await session.send(*first, following=second)
        with pytest.raises(SessionError, match="another message"):
            await session.send("c@example.com", ["z@example.org"], MESSAGE)
        other = _session(port)
        await other.open()
        await other.send(*first, following=second)
        await other.close()
        return session.usable, other.usable

    with ChainServer() as server:
        usable, other_usable = asyncio.run(scenario(server.port))
        time.sleep(0.5)
    assert not usable and not other_usable
    assert [m for m, _ in server.mails].count("MAIL FROM:<c@example.com>") == 0
    assert len(server.messages) == 2  # the two first messages; the chained envelopes never got data


# -- the relay's workers ------------------------------------------------------------------------------
@pytest.fixture
def dns():
    with DnsServer() as server:
        yield server


def _relay(services, settings, server, dns):
    # Through a route (one destination, queued as claimed: no MX lookups in between) and one connection.
    return RelayThread(services, relay_settings(settings, server, dns, smtp_route=("127.0.0.1", server.port),
                                                relay_connections=1))


def test_the_relay_chains_envelopes_to_one_destination(services, settings, account, domain, db, dns):
    with ChainServer() as server:
        ids = [send(services, account["id"], domain, f"u{i}@chain.test") for i in range(6)]
        counted = services.metrics.registry.get_sample_value
        before = counted("envoi_smtp_chained_envelopes_total")
        with _relay(services, settings, server, dns):
            for mid in ids:
                wait_until(lambda mid=mid: events_of(db, mid)[-1]["event"] == "delivered")
        chained = counted("envoi_smtp_chained_envelopes_total") - before
    assert len(server.messages) == 6 and server.connections == 1
    assert [behind for _, behind in server.mails] == [False] + [True] * 5
    assert chained == 5  # envoi_smtp_chained_envelopes_total counts each envelope that went behind a dot


def test_a_421_to_a_dot_defers_the_chained_message_without_an_attempt(services, settings, account, domain, db,
                                                                     dns):
    with ChainServer(dots=["421 4.7.0 Too busy, try again in 2 seconds"]) as server:
        ids = [send(services, account["id"], domain, f"u{i}@chain.test") for i in range(2)]
        with _relay(services, settings, server, dns):
            events = [wait_until(lambda mid=mid: (e := events_of(db, mid)) and e[-1]["event"] == "delivered" and e)
                      for mid in ids]
    assert server.behind_dots[0].startswith(b"MAIL FROM:")  # the second's envelope went behind the 421'd dot
    first, second = sorted(events, key=len, reverse=True)
    assert [e["event"] for e in first] == ["accepted", "failed", "delivered"]  # the 421 is the first's
    assert first[1]["data"]["delivery-status"]["code"] == 421
    assert [e["event"] for e in second] == ["accepted", "delivered"]  # put back unattempted
    assert second[1]["data"]["delivery-status"]["attempt-no"] == 1
    assert sorted(rcpts[0] for rcpts, _ in server.messages) == ["u0@chain.test", "u1@chain.test"]
