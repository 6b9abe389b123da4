"""The inbound SMTP listener: asynchronous bounces (DSN), feedback-loop reports (ARF), and mail for
the accounts' receiving domains, handed to their routes (envoi/mta/routes).

Runs as `envoi inbound` (ENVOI_INBOUND_BIND:ENVOI_INBOUND_PORT, port 25 behind the MX of the
sending domains, the receiving domains, or ENVOI_BOUNCE_DOMAIN). Replies:

* RCPT: 250 for a valid VERP address, an FBL address or postmaster@ one of our domains; else, with
  routes wired, what `Receiving.check_recipient` says: 250 for an address a route of the domain's
  account may take, or a mailing list of that account the MAIL FROM sender may post to (550 5.7.1 if
  not); 550 5.1.1 for one neither takes, 550 5.7.1 for a domain we do not receive for (no open relay). Without routes: 550 5.1.1, including for a forged VERP address.
* DATA: 250 once the report is recorded, or dropped because it matched nothing / was not a
  permanent failure or a complaint (logged); 451 4.3.0 if Postgres is unavailable, so the sender
  retries; 552 above ENVOI_INBOUND_MAX_BYTES (aiosmtpd's SIZE limit).

Parsing and database work run in a worker thread, never in the event loop.
"""

from __future__ import annotations

import asyncio
import logging

from envoi.mta.bounces.service import Bounces
from envoi.mta.bounces.verp import looks_like_verp
from envoi.mta.listener import Listener, SessionOptions
from envoi.mta.routes.poster import Poster
from envoi.mta.routes.service import Receiving

log = logging.getLogger("envoi.inbound")
MAX_RECIPIENTS = 20


class _Handler:
    def __init__(self, bounces: Bounces, metrics=None, receiving: Receiving | None = None,
                 poster: Poster | None = None):
        self.bounces = bounces
        self.receiving = receiving
        self.poster = poster
        self.metrics = metrics  # envoi.infra.metrics.Metrics (inbound_reports counter) or None

    def _count(self, kind: str, result: str) -> None:
        if self.metrics is not None:
            self.metrics.inbound_reports.labels(kind, result).inc()

    async def handle_RCPT(self, server, session, envelope, address, rcpt_options):
        if len(envelope.rcpt_tos) >= MAX_RECIPIENTS:
            return "452 4.5.3 Too many recipients"
        try:
            refusal = await asyncio.to_thread(self.bounces.check_recipient, address)
            routed = False
            if refusal and self.receiving is not None and not looks_like_verp(address):
                refusal = await asyncio.to_thread(self.receiving.check_recipient, address, envelope.mail_from or "")
                routed = refusal is None
        except Exception:
            log.exception("checking recipient %r failed", address)
            return "451 4.3.0 Temporary failure, please try again later"
        if refusal:
            log.info("refused RCPT %r from %s", address, session.peer)
            return refusal
        envelope.rcpt_tos.append(address)
        if routed:
            _routed(envelope).add(address)
        return "250 2.1.5 OK"

    async def handle_DATA(self, server, session, envelope):
        raw = envelope.original_content if envelope.original_content is not None else envelope.content
        if isinstance(raw, str):
            raw = raw.encode("utf-8", "surrogateescape")
        routed = _routed(envelope)
        if routed:
            try:
                received = await asyncio.to_thread(self.receiving.receive, envelope.mail_from or "",
                                                   [a for a in envelope.rcpt_tos if a in routed], _crlf(raw or b""))
            except Exception:
                log.exception("receiving a message from %s failed; asking the sender to retry", session.peer)
                return "451 4.3.0 Temporary failure, please try again later"
            if self.poster is not None:
                self.poster.wake()
            log.info("received from %s: routed %s, to lists %s, dropped %s", session.peer,
                     [address for address, _ in received.routed], received.listed, received.dropped)
            if len(routed) == len(envelope.rcpt_tos):
                return "250 2.0.0 OK"
        try:
            reports = [a for a in envelope.rcpt_tos if a not in routed]
            report = await asyncio.to_thread(self.bounces.process, reports, raw or b"")
        except Exception:
            log.exception("processing a report from %s failed; asking the sender to retry", session.peer)
            self._count("other", "error")
            return "451 4.3.0 Temporary failure, please try again later"
        self._count(report.kind, "recorded" if report.recorded else "dropped")
        if report.recorded:
            log.info("%s from %s: recorded %s", report.kind, session.peer,
                     ", ".join(f"{event} {address}" for event, address, _ in report.recorded))
        else:
            log.info("%s from %s to %s dropped: %s", report.kind, session.peer, envelope.rcpt_tos, report.note)
        return "250 2.0.0 OK"


def _routed(envelope) -> set[str]:
    """The envelope's recipients that go to routes (the others are bounce/FBL addresses)."""
    if not hasattr(envelope, "envoi_routed"):
        envelope.envoi_routed = set()
    return envelope.envoi_routed


def _crlf(raw: bytes) -> bytes:
    return raw.replace(b"\r\n", b"\n").replace(b"\n", b"\r\n")


class InboundServer(Listener):
    """The listener. `start()` runs it on its own loop thread (tests); `serve()` in the caller's loop.
    With `receiving`, mail for the receiving domains goes to their routes, and a poster thread (running
    while the listener is open) posts the routes' outbox."""

    def __init__(self, bounces: Bounces, host: str = "127.0.0.1", port: int = 0, *, hostname: str = "localhost",
                 max_bytes: int = 32 * 1024 * 1024, timeout: float = 60.0, metrics=None,
                 receiving: Receiving | None = None):
        self.bounces = bounces
        self.receiving = receiving
        self.poster = Poster(receiving.post_due) if receiving is not None else None
        options = SessionOptions(hostname=hostname, ident="Envoi inbound", data_size_limit=max_bytes, timeout=timeout)
        super().__init__(_Handler(bounces, metrics, receiving, self.poster), options, host=host,
                         ports={"smtp": port}, thread_name="envoi-inbound")

    async def open(self) -> None:
        await super().open()
        if self.poster is not None:
            self.poster.start()

    async def close(self, grace: float = 0.0) -> None:
        await super().close(grace=grace)
        if self.poster is not None:
            await asyncio.to_thread(self.poster.stop)

