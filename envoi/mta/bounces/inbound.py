"""The inbound SMTP listener for asynchronous bounces (DSN) and feedback-loop reports (ARF).

Runs as `envoi inbound` (ENVOI_INBOUND_BIND:ENVOI_INBOUND_PORT, port 25 behind the MX of the
sending domains or of ENVOI_BOUNCE_DOMAIN). Replies:

* RCPT: 250 for a valid VERP address, an FBL address or postmaster@ one of our domains;
  550 5.1.1 for anything else, including a VERP address whose HMAC does not verify (forged).
* DATA: 250 once the report is recorded, or dropped because it matched nothing / was not a
  permanent failure or a complaint (logged); 451 4.3.0 if Postgres is unavailable, so the sender
  retries; 552 above ENVOI_INBOUND_MAX_BYTES (aiosmtpd's SIZE limit).

Parsing and database work run in a worker thread, never in the event loop.
"""

from __future__ import annotations

import asyncio
import logging

from envoi.mta.bounces.service import Bounces
from envoi.mta.listener import Listener, SessionOptions

log = logging.getLogger("envoi.inbound")
MAX_RECIPIENTS = 20


class _Handler:
    def __init__(self, bounces: Bounces, metrics=None):
        self.bounces = bounces
        self.metrics = metrics  # envoi.infra.metrics.Metrics (inbound_reports counter) or None

    def _count(self, kind: str, result: str) -> None:
        if self.metrics is not None:
            self.metrics.inbound_reports.labels(kind, result).inc()

    async def handle_RCPT(self, server, session, envelope, address, rcpt_options):
        if len(envelope.rcpt_tos) >= MAX_RECIPIENTS:
            return "452 4.5.3 Too many recipients"
        try:
            refusal = await asyncio.to_thread(self.bounces.check_recipient, address)
        except Exception:
            log.exception("checking recipient %r failed", address)
            return "451 4.3.0 Temporary failure, please try again later"
        if refusal:
            log.info("refused RCPT %r from %s", address, session.peer)
            return refusal
        envelope.rcpt_tos.append(address)
        return "250 2.1.5 OK"

    async def handle_DATA(self, server, session, envelope):
        raw = envelope.original_content if envelope.original_content is not None else envelope.content
        if isinstance(raw, str):
            raw = raw.encode("utf-8", "surrogateescape")
        try:
            report = await asyncio.to_thread(self.bounces.process, list(envelope.rcpt_tos), raw or b"")
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


class InboundServer(Listener):
    """The listener. `start()` runs it on its own loop thread (tests); `serve()` in the caller's loop."""

    def __init__(self, bounces: Bounces, host: str = "127.0.0.1", port: int = 0, *, hostname: str = "localhost",
                 max_bytes: int = 32 * 1024 * 1024, timeout: float = 60.0, metrics=None):
        self.bounces = bounces
        options = SessionOptions(hostname=hostname, ident="Envoi inbound", data_size_limit=max_bytes, timeout=timeout)
        super().__init__(_Handler(bounces, metrics), options, host=host, ports={"smtp": port},
                         thread_name="envoi-inbound")

