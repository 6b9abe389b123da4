"""One outbound SMTP session (aiosmtplib), reused for many messages to the same destination."""

from __future__ import annotations

import asyncio
import ssl
import time
from dataclasses import dataclass

import aiosmtplib

from envoi.mta.delivery.outcome import BounceClass, Kind, Outcome, from_reply
from envoi.mta.signing import normalize_crlf


@dataclass(frozen=True)
class Egress:
    """The source address to bind and the name to announce in EHLO."""

    address: str | None
    helo: str


def _tls_context(verify: bool, cafile: str | None = None) -> ssl.SSLContext:
    context = ssl.create_default_context(cafile=cafile)
    if not verify:
        context.check_hostname = False
        context.verify_mode = ssl.CERT_NONE
    return context


VERIFYING = _tls_context(True)
NOT_VERIFYING = _tls_context(False)
_VERIFYING_WITH: dict[str, ssl.SSLContext] = {}


def verifying_context(cafile: str | None) -> ssl.SSLContext:
    """The context that checks MX certificates: system CAs, or the bundle in ENVOI_TLS_CA_FILE."""
    if not cafile:
        return VERIFYING
    if cafile not in _VERIFYING_WITH:
        _VERIFYING_WITH[cafile] = _tls_context(True, cafile)
    return _VERIFYING_WITH[cafile]


class SessionError(Exception):
    """The session could not be set up or broke; carries the outcome for every recipient in flight."""

    def __init__(self, outcome: Outcome):
        super().__init__(outcome.message)
        self.outcome = outcome


class Session:
    def __init__(self, host: str, address: str, port: int, egress: Egress, timeout: float,
                 ca_file: str | None = None):
        self.host = host  # the MX name, for delivery-status
        self.address = address
        self.port = port
        self.egress = egress
        self.timeout = timeout
        self.tls = False
        self.certificate_verified = False
        self.messages_sent = 0
        self.smtp: aiosmtplib.SMTP | None = None
        self.opened_at = 0.0
        self.ca_file = ca_file
        self.counted = False  # counted in the open-connections gauge

    def _context(self) -> dict:
        return {"mx_host": self.host, "tls": self.tls, "certificate_verified": self.certificate_verified,
                "sending_ip": self.egress.address or ""}

    def _client(self) -> aiosmtplib.SMTP:
        return aiosmtplib.SMTP(
            hostname=self.address, port=self.port, local_hostname=self.egress.helo,
            source_address=(self.egress.address, 0) if self.egress.address else None,
            timeout=self.timeout, start_tls=False,
        )

    async def open(self) -> None:
        """Connect, EHLO and STARTTLS when offered (opportunistic). Per-message TLS policy
        (o:require-tls, o:skip-verification) is checked against `tls` / `certificate_verified`
        before each transaction, so one session serves messages with and without the requirement."""
        self.opened_at = time.monotonic()
        self.smtp = self._client()
        try:
            await self.smtp.connect()
            await self.smtp.ehlo()
            if self.smtp.supports_extension("starttls"):
                await self._starttls()
        except SessionError:
            await self.close()
            raise
        except aiosmtplib.SMTPResponseException as ex:
            await self.close()
            raise SessionError(from_reply(ex.code, ex.message, **self._context())) from ex
        except (aiosmtplib.SMTPException, OSError) as ex:
            await self.close()
            raise SessionError(connection_failure(str(ex) or type(ex).__name__, self._context())) from ex

    async def _starttls(self) -> None:
        try:
            await self.smtp.starttls(tls_context=verifying_context(self.ca_file), server_hostname=self.host)
            self.certificate_verified = True
        except (ssl.SSLCertVerificationError, aiosmtplib.SMTPException) as ex:
            if not _is_verification_error(ex):
                raise
            # Opportunistic TLS: an unverifiable certificate still beats plaintext (Postfix "may").
            await self.close()
            self.smtp = self._client()
            await self.smtp.connect()
            await self.smtp.ehlo()
            await self.smtp.starttls(tls_context=NOT_VERIFYING, server_hostname=self.host)
            self.certificate_verified = False
        self.tls = True
        await self.smtp.ehlo()  # RFC 3207: the session starts over after STARTTLS

    def policy_refusal(self, require_tls: bool, verify: bool) -> Outcome | None:
        """Why this session may not carry a message with these TLS requirements, or None."""
        if require_tls and not self.tls:
            return Outcome(Kind.FAILED, 550, "TLS required but the server does not offer STARTTLS",
                           enhanced_code="5.7.10", bounce_class=BounceClass.POLICY,
                           description="o:require-tls: the receiving server does not support TLS",
                           extra={"reason": "generic"}, **self._context())
        if require_tls and verify and not self.certificate_verified:
            return Outcome(Kind.FAILED, 550, "TLS required but the server certificate could not be verified",
                           enhanced_code="5.7.10", bounce_class=BounceClass.POLICY,
                           description="o:require-tls: certificate verification failed"
                                       " (o:skip-verification allows unverified certificates)",
                           extra={"reason": "generic"}, **self._context())
        return None

    async def send(self, mail_from: str, recipients: list[str], data: bytes) -> dict[str, Outcome]:
        """One transaction; return an outcome per recipient. Raises SessionError if the session broke."""
        started = time.monotonic()
        outcomes: dict[str, Outcome] = {}
        try:
            # One deadline for the transaction (each step's allowance summed) instead of aiosmtplib's
            # wait_for per reply: a timer per transaction rather than a future, a timer and an extra
            # wake-up per reply (~4% of the relay's CPU). A timeout is an OSError: handled below.
            async with asyncio.timeout(self.timeout * (3 + len(recipients))):
                return await self._transaction(mail_from, recipients, data, started, outcomes)
        except (aiosmtplib.SMTPException, OSError) as ex:
            if isinstance(ex, TimeoutError):
                self.abort()  # a reply may still come: never pair it with a later command
                message = "timed out waiting for the server's reply"
            else:
                await self.close()
                message = str(ex) or type(ex).__name__
            # NOTE: a disconnect after the final "." may mean the remote got the message; the retry
            # that follows is the one place duplicates can come from (counted by the relay).
            outcome = connection_failure(message, self._context())
            raise SessionError(outcome) from ex

    async def _transaction(self, mail_from: str, recipients: list[str], data: bytes, started: float,
                           outcomes: dict[str, Outcome]) -> dict[str, Outcome]:
        smtp = self.smtp
        # execute_command rather than mail()/rcpt(): those re-parse every address with
        # email.utils; ours were validated at intake (or built by VERP), and execute_command
        # still refuses control characters.
        response = await smtp.execute_command(b"MAIL", b"FROM:" + _path(mail_from), timeout=None)
        if response.code != 250:
            outcome = from_reply(response.code, response.message, **self._context())
            await self._reset()
            return dict.fromkeys(recipients, outcome)
        accepted = []
        for rcpt in recipients:
            response = await smtp.execute_command(b"RCPT", b"TO:" + _path(rcpt), timeout=None)
            if response.code in (250, 251):
                accepted.append(rcpt)
            else:
                outcomes[rcpt] = from_reply(response.code, response.message, **self._context())
        if not accepted:
            await self._reset()
            return outcomes
        try:
            response = await self._data(data)
            result = from_reply(response.code, response.message, **self._context())
        except aiosmtplib.SMTPResponseException as ex:
            result = from_reply(ex.code, ex.message, **self._context())
        result.session_seconds = round(time.monotonic() - started, 3)
        for rcpt in accepted:
            outcomes[rcpt] = result
        self.messages_sent += 1
        return outcomes

    async def _data(self, data: bytes) -> aiosmtplib.SMTPResponse:
        """DATA and the message. aiosmtplib's data() runs two regex passes over every message (line
        endings, dot-stuffing) — ~8% of the relay's CPU; the message is normally CRLF already (intake
        stored it so, and the signature covers exactly that), so here both are C-speed bytes checks."""
        response = await self.smtp.execute_command(b"DATA", timeout=None)
        if response.code != 354:
            raise aiosmtplib.SMTPDataError(response.code, response.message)
        data = normalize_crlf(data)
        if data.startswith(b"."):
            data = b"." + data
        protocol = self.smtp.protocol
        protocol.write(data.replace(b"\r\n.", b"\r\n..") + b".\r\n")
        response = await protocol.read_response(timeout=None)
        if response.code != 250:
            raise aiosmtplib.SMTPDataError(response.code, response.message)
        return response

    async def _reset(self) -> None:
        try:
            await self.smtp.rset()
        except (aiosmtplib.SMTPException, OSError):
            await self.close()

    @property
    def usable(self) -> bool:
        return self.smtp is not None and self.smtp.is_connected

    def abort(self) -> None:
        smtp, self.smtp = self.smtp, None
        if smtp is not None:
            smtp.close()

    async def close(self) -> None:
        smtp, self.smtp = self.smtp, None
        if smtp is None:
            return
        try:
            if smtp.is_connected:
                await smtp.quit(timeout=5)
        except (aiosmtplib.SMTPException, OSError):
            smtp.close()


def _path(address: str) -> bytes:
    """An address as an SMTP path (<a@b>, or <> for the null sender); ASCII only (no SMTPUTF8 yet)."""
    return b"<" + address.encode("ascii") + b">"


def connection_failure(message: str, context: dict) -> Outcome:
    return Outcome(Kind.RETRY, 421, message, enhanced_code="4.4.2", bounce_class=BounceClass.CONNECTION,
                   description="connection failure", **context)


def is_connection_failure(outcome: Outcome) -> bool:
    """True for our own "could not talk to it" outcome (421 by convention), not a remote's 421 reply."""
    return outcome.description == "connection failure" and outcome.enhanced_code == "4.4.2"


def _is_verification_error(ex: BaseException) -> bool:
    seen = ex
    while seen is not None:
        if isinstance(seen, ssl.SSLCertVerificationError) or "CERTIFICATE_VERIFY_FAILED" in str(seen):
            return True
        seen = seen.__cause__ or seen.__context__
    return False
