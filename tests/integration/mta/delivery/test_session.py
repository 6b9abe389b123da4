"""An exception anywhere inside an SMTP transaction leaves the pooled session clean: reset (RSET) while
the server is in the envelope or after its final reply, closed while it may be reading message data.
The next message on that session is then delivered, never answered "503 nested MAIL"."""

from __future__ import annotations

import asyncio

import pytest

from envoi.dev.sink import Sink
from envoi.mta.delivery import session as session_module
from envoi.mta.delivery.outcome import Kind
from envoi.mta.delivery.session import Egress, Session
from tests.support import faults

MESSAGE = b"From: a@example.com\r\nTo: b@example.org\r\nSubject: s\r\n\r\nbody\r\n"


def fail_in_rcpt(monkeypatch):
    faults.raise_in_rcpt(monkeypatch, b"boom")


def fail_in_data(monkeypatch):
    faults.raise_in_data(monkeypatch, b"boom")


def fail_after_final_reply(monkeypatch):
    original = session_module.from_reply
    raised = []

    def from_reply(code, message, **context):
        if code == 250 and not raised:  # the first 2xx classified is the DATA result: MAIL's is not
            raised.append(code)
            raise RuntimeError("injected after the final reply")
        return original(code, message, **context)

    monkeypatch.setattr(session_module, "from_reply", from_reply)


@pytest.mark.parametrize(("inject", "poison_to", "kept"), [
    (fail_in_rcpt, "boom@example.org", True),  # the server is in the envelope: RSET, keep the session
    (fail_in_data, "b@example.org", False),  # the server may be reading data: RSET would be text; close
    (fail_after_final_reply, "b@example.org", True),  # the transaction is over: nothing to undo, keep it
])
def test_exception_inside_a_transaction_leaves_the_session_clean(monkeypatch, inject, poison_to, kept):
    inject(monkeypatch)

    async def scenario(port: int):
        session = Session("sink.test", "127.0.0.1", port, Egress(None, "relay.test"), timeout=5)
        await session.open()
        try:
            body = MESSAGE + (b"boom\r\n" if inject is fail_in_data else b"")
            with pytest.raises(RuntimeError, match="injected"):
                await session.send("a@example.com", [poison_to], body)
            usable = session.usable
            if not usable:  # closed, as the relay's worker would then do: a fresh session
                await session.open()
            outcomes = await session.send("a@example.com", ["next@example.org"], MESSAGE)
            return usable, outcomes
        finally:
            await session.close()

    with Sink() as sink:
        usable, outcomes = asyncio.run(scenario(sink.smtp_port))
        received = sink.messages()
    assert usable is kept
    assert outcomes["next@example.org"].kind is Kind.DELIVERED, outcomes
    assert received[-1]["rcpt_tos"] == ["next@example.org"]
    if kept:  # the same connection carried the next message
        assert len({m["connected_at"] for m in received}) == 1
    else:
        assert [m["rcpt_tos"] for m in received] == [["next@example.org"]]  # the broken one never arrived


# -- PIPELINING (RFC 2920) ------------------------------------------------------------------------
def _send_all(port: int, sends: list[list[str]], body: bytes = MESSAGE):
    async def scenario():
        session = Session("sink.test", "127.0.0.1", port, Egress(None, "relay.test"), timeout=5)
        await session.open()
        try:
            return session.pipelining, [await session.send("a@example.com", to, body) for to in sends], session.usable
        finally:
            await session.close()

    return asyncio.run(scenario())


def test_a_pipelining_server_gets_the_envelope_in_one_write_and_every_outcome_is_kept():
    with Sink(pipelining=True) as sink:
        sink.set_script({"rcpt": {"bad@example.org": "550 5.1.1 No such user"}, "data": ["451 4.3.0 Try later"]})
        body = MESSAGE + b".leading dot\r\n"
        pipelining, results, usable = _send_all(sink.smtp_port, [
            ["x@example.org", "bad@example.org", "y@example.org"],  # DATA refused (451): both retried
            ["bad@example.org"],  # nobody accepted: DATA refused by the server, RSET, nothing sent
            ["x@example.org", "bad@example.org"],  # delivered to x on the same session
        ], body)
        received = sink.messages()
    assert pipelining and usable
    first, alone, third = ({rcpt: (o.kind, o.code) for rcpt, o in r.items()} for r in results)
    assert first == {"x@example.org": (Kind.RETRY, 451), "y@example.org": (Kind.RETRY, 451),
                     "bad@example.org": (Kind.FAILED, 550)}
    assert alone == {"bad@example.org": (Kind.FAILED, 550)}
    assert third == {"x@example.org": (Kind.DELIVERED, 250), "bad@example.org": (Kind.FAILED, 550)}
    assert [m["rcpt_tos"] for m in received] == [["x@example.org"]]
    assert received[0]["data"].encode("utf-8", "surrogateescape").endswith(b"\r\n.leading dot\r\n")
    assert len({m["connected_at"] for m in received}) == 1


def test_without_pipelining_commands_go_one_by_one():
    with Sink() as sink:
        pipelining, results, _ = _send_all(sink.smtp_port, [["x@example.org"]])
    assert not pipelining and results[0]["x@example.org"].kind is Kind.DELIVERED


@pytest.mark.parametrize("replies_together", [True, False])
def test_pipelined_replies_are_paired_in_order_however_they_arrive(replies_together):
    """A server that answers only once MAIL, both RCPTs and DATA have arrived (a client waiting for
    each reply would hang): its replies in one packet, or one packet each with pauses between."""
    received: list[bytes] = []

    async def handle(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        writer.write(b"220 raw.test ESMTP\r\n")
        assert (await reader.readline()).startswith(b"EHLO")
        writer.write(b"250-raw.test\r\n250-PIPELINING\r\n250 8BITMIME\r\n")
        for _ in range(2):
            envelope = [await reader.readline() for _ in range(4)]
            assert [line[:4] for line in envelope] == [b"MAIL", b"RCPT", b"RCPT", b"DATA"]
            replies = [b"250 2.1.0 Ok\r\n", b"250 2.1.5 Ok\r\n", b"550-5.1.1 No\r\n550 5.1.1 such user\r\n",
                       b"354 Go ahead\r\n"]
            for reply in replies if not replies_together else [b"".join(replies)]:
                writer.write(reply)
                await writer.drain()
                await asyncio.sleep(0 if replies_together else 0.02)
            received.append(await reader.readuntil(b"\r\n.\r\n"))
            writer.write(b"250 2.0.0 Queued as X\r\n")
        assert await reader.readline() == b"QUIT\r\n"
        writer.write(b"221 Bye\r\n")
        writer.close()

    async def scenario():
        server = await asyncio.start_server(handle, "127.0.0.1", 0)
        port = server.sockets[0].getsockname()[1]
        session = Session("raw.test", "127.0.0.1", port, Egress(None, "relay.test"), timeout=2)
        await session.open()
        outcomes = [await session.send("a@example.com", ["x@example.org", "y@example.org"], MESSAGE)
                    for _ in range(2)]
        await session.close()
        server.close()
        return outcomes

    for outcomes in asyncio.run(scenario()):
        assert outcomes["x@example.org"].kind is Kind.DELIVERED and outcomes["x@example.org"].code == 250
        assert outcomes["y@example.org"].kind is Kind.FAILED and outcomes["y@example.org"].code == 550
        assert outcomes["y@example.org"].message == "5.1.1 No\n5.1.1 such user"
    assert received == [MESSAGE + b".\r\n"] * 2


@pytest.mark.parametrize(("poison_to", "kept"), [
    (["boom@example.org"], True),  # nobody accepted, so the server refused DATA: RSET, keep the session
    (["boom@example.org", "b@example.org"], False),  # DATA accepted: the server reads data, close
])
def test_an_exception_after_a_pipelined_envelope_leaves_the_session_clean(monkeypatch, poison_to, kept):
    original = session_module.from_reply

    def from_reply(code, message, **context):
        if code == 550:
            raise RuntimeError("injected while classifying a RCPT reply")
        return original(code, message, **context)

    monkeypatch.setattr(session_module, "from_reply", from_reply)

    async def scenario(port: int):
        session = Session("sink.test", "127.0.0.1", port, Egress(None, "relay.test"), timeout=5)
        await session.open()
        try:
            with pytest.raises(RuntimeError, match="injected"):
                await session.send("a@example.com", poison_to, MESSAGE)
            usable = session.usable
            if not usable:
                await session.open()
            return usable, await session.send("a@example.com", ["next@example.org"], MESSAGE)
        finally:
            await session.close()

    with Sink(pipelining=True) as sink:
        sink.set_script({"rcpt": {"boom@example.org": "550 5.1.1 No such user"}})
        usable, outcomes = asyncio.run(scenario(sink.smtp_port))
        received = sink.messages()
    assert usable is kept
    assert outcomes["next@example.org"].kind is Kind.DELIVERED, outcomes
    assert [m["rcpt_tos"] for m in received] == [["next@example.org"]]  # the broken one never arrived


def test_a_pipelined_data_accepted_with_no_recipient_gets_a_bare_dot_then_rset():
    """RFC 2920 3.1: a server that answers 354 although it refused every RCPT gets an empty message
    (a lone "."), which delivers nothing, then RSET; the session stays usable."""
    seen: list[bytes] = []

    async def handle(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        writer.write(b"220 raw.test ESMTP\r\n")
        await reader.readline()
        writer.write(b"250-raw.test\r\n250 PIPELINING\r\n")
        while line := await reader.readline():
            seen.append(line)
            reply = {b"MAIL": b"250 Ok", b"RCPT": b"550 5.1.1 No such user", b"DATA": b"354 Go ahead",
                     b".\r\n": b"554 5.5.1 No valid recipients", b"RSET": b"250 Ok", b"QUIT": b"221 Bye"}
            writer.write(reply[line[:4] if line != b".\r\n" else line] + b"\r\n")
            if line.startswith(b"QUIT"):
                writer.close()
                return

    async def scenario():
        server = await asyncio.start_server(handle, "127.0.0.1", 0)
        session = Session("raw.test", "127.0.0.1", server.sockets[0].getsockname()[1], Egress(None, "relay.test"),
                          timeout=2)
        await session.open()
        outcomes = await session.send("a@example.com", ["x@example.org"], MESSAGE)
        usable = session.usable
        await session.close()
        server.close()
        return outcomes, usable

    outcomes, usable = asyncio.run(scenario())
    assert outcomes["x@example.org"].kind is Kind.FAILED and outcomes["x@example.org"].code == 550
    assert usable
    assert [line.split(b":")[0].strip() for line in seen] == [b"MAIL FROM", b"RCPT TO", b"DATA", b".", b"RSET",
                                                              b"QUIT"]


def test_pipelining_after_starttls(tmp_path):
    """The pipelined envelope and its replies over the TLS transport STARTTLS puts in place (the
    protocol object carries on under it): EHLO's PIPELINING is read again after STARTTLS."""
    import ssl

    import trustme

    ca = trustme.CA()
    context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    ca.issue_cert("mx.tls.test").configure_cert(context)
    ca_file = tmp_path / "ca.pem"
    ca.cert_pem.write_to_path(str(ca_file))

    async def scenario(port: int):
        session = Session("mx.tls.test", "127.0.0.1", port, Egress(None, "relay.test"), timeout=5,
                          ca_file=str(ca_file))
        await session.open()
        try:
            sent = [await session.send("a@example.com", to, MESSAGE)
                    for to in (["x@example.org", "bad@example.org"], ["y@example.org"])]
            return session.tls, session.certificate_verified, session.pipelining, sent
        finally:
            await session.close()

    with Sink(tls_context=context, pipelining=True) as sink:
        sink.set_script({"rcpt": {"bad@example.org": "550 5.1.1 No such user"}})
        tls, verified, pipelining, sent = asyncio.run(scenario(sink.smtp_port))
        received = sink.messages()
    assert tls and verified and pipelining
    assert [{rcpt: o.code for rcpt, o in outcomes.items()} for outcomes in sent] == [
        {"x@example.org": 250, "bad@example.org": 550}, {"y@example.org": 250}]
    assert [(m["rcpt_tos"], m["tls"]) for m in received] == [(["x@example.org"], True), (["y@example.org"], True)]
