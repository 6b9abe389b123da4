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
