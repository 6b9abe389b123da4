"""One outbound SMTP session (aiosmtplib), reused for many messages to the same destination."""

from __future__ import annotations

import asyncio
import re
import ssl
import time
from dataclasses import dataclass

import aiosmtplib
from aiosmtplib.protocol import SMTPProtocol

from envoi.mta import idn
from envoi.mta.delivery.outcome import BounceClass, Kind, Outcome, from_reply
from envoi.mta.delivery.tls_report import verify_result_type
from envoi.mta.signing import normalize_crlf


@dataclass(frozen=True)
class Egress:
    """The source address to bind and the name to announce in EHLO."""

    address: str | None
    helo: str


def _tls_context(verify: bool, cafile: str | None = None) -> ssl.SSLContext:
    context = ssl.create_default_context()  # the system's CAs
    if cafile:
        context.load_verify_locations(cafile=cafile)  # and the operator's, besides them
    if not verify:
        context.check_hostname = False
        context.verify_mode = ssl.CERT_NONE
    return context


VERIFYING = _tls_context(True)
NOT_VERIFYING = _tls_context(False)
_VERIFYING_WITH: dict[str, ssl.SSLContext] = {}


def verifying_context(cafile: str | None) -> ssl.SSLContext:
    """The context that checks MX certificates (and MTA-STS policy hosts'): the system's CAs and the
    bundle in ENVOI_TLS_CA_FILE."""
    if not cafile:
        return VERIFYING
    if cafile not in _VERIFYING_WITH:
        _VERIFYING_WITH[cafile] = _tls_context(True, cafile)
    return _VERIFYING_WITH[cafile]


_CONTROL = re.compile(rb"[\x00-\x1f\x7f]")  # aiosmtplib's guard against command injection
_MAX_BUFFERED = 65536  # replies buffered behind the one being read


class _Protocol(SMTPProtocol):
    """aiosmtplib's protocol, keeping the replies to pipelined commands (RFC 2920).

    aiosmtplib drops bytes that arrive while a parsed reply waits to be read (so unsolicited data is
    never paired with a later command); after a pipelined write the next replies arrive just then.
    `_expecting` is set only while a pipeline's replies are due (read, or written behind a message's
    final dot and to be read by the next transaction): data is buffered, never dropped, and
    `read_replies` parses what is buffered before waiting for more. Everything else is aiosmtplib's."""

    _expecting = False

    def data_received(self, data: bytes) -> None:
        if self._expecting and self._response_waiter is not None and self._response_waiter.done():
            self._buffer.extend(data)  # the next replies: parsed by read_replies() once this one is read
            if len(self._buffer) > _MAX_BUFFERED and self.transport is not None:
                self.transport.close()  # a server streaming junk: the next read finds the connection lost
            return
        super().data_received(data)

    async def replies(self, commands: bytes, n: int, *, more: bool = False) -> list[aiosmtplib.SMTPResponse]:
        """Write pipelined commands (CRLF-terminated) at once; return the first n replies in order
        (more: further replies are due after them, see read_replies)."""
        self._expecting = True
        self._response_pending = True
        self.write(commands)
        return await self.read_replies(n, more=more)

    async def read_replies(self, n: int, *, more: bool = False) -> list[aiosmtplib.SMTPResponse]:
        """The next n replies to commands already written, in order. more: replies to further commands
        written are still due after these, so what arrives meanwhile is kept for the next call."""
        self._expecting = True
        try:
            replies = []
            while len(replies) < n:
                waiter = self._response_waiter
                # A reply parsed into the waiter came first; else one already buffered behind the last read.
                reply = self._read_response_from_buffer() if waiter is not None and not waiter.done() else None
                replies.append(reply if reply is not None else await self.read_response(timeout=None))
                self._response_pending = True  # read_response cleared it: more replies may be due
            return replies
        except BaseException:
            more = False
            raise
        finally:
            if not more:
                self._expecting = False
                self._response_pending = False


class _Client(aiosmtplib.SMTP):
    """aiosmtplib's client over `_Protocol`. The relay connects over plain TCP only (STARTTLS later),
    so this is aiosmtplib's _create_connection for that case."""

    async def _create_connection(self, timeout: float | None) -> aiosmtplib.SMTPResponse:
        protocol = _Protocol(loop=self.loop, connection_lost_callback=self._on_connection_lost)
        try:
            transport, _ = await asyncio.wait_for(
                self.loop.create_connection(lambda: protocol, host=self.hostname, port=self.port,
                                            local_addr=self.source_address), timeout=timeout)
        except TimeoutError as ex:
            raise aiosmtplib.SMTPConnectTimeoutError(
                f"Timed out connecting to {self.hostname} on port {self.port}") from ex
        except OSError as ex:
            raise aiosmtplib.SMTPConnectError(f"Error connecting to {self.hostname} on port {self.port}: {ex}") from ex
        self.protocol, self.transport = protocol, transport
        try:
            response = await protocol.read_response(timeout=timeout)
        except aiosmtplib.SMTPServerDisconnected as ex:
            raise aiosmtplib.SMTPConnectError(f"Error connecting to {self.hostname} on port {self.port}: {ex}") from ex
        except aiosmtplib.SMTPTimeoutError as ex:
            raise aiosmtplib.SMTPConnectTimeoutError("Timed out waiting for server ready message") from ex
        if response.code != 220:
            raise aiosmtplib.SMTPConnectResponseError(response.code, response.message)
        return response


class SessionError(Exception):
    """The session could not be set up or broke; carries the outcome for every recipient in flight."""

    def __init__(self, outcome: Outcome):
        super().__init__(outcome.message)
        self.outcome = outcome


class Session:
    def __init__(self, host: str, address: str, port: int, egress: Egress, timeout: float,
                 ca_file: str | None = None, require_verified: str | None = None):
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
        # The domain whose MTA-STS policy is enforced on this session: STARTTLS with a certificate valid
        # for the MX host, or no session at all (RFC 8461 4.2); None: opportunistic TLS.
        self.require_verified = require_verified
        self.tls_failure: tuple[str, str] | None = None  # (RFC 8460 result type, detail) of the TLS setup
        self.counted = False  # counted in the open-connections gauge
        self.in_data = False  # DATA was accepted and the final reply not read yet: RSET would be data
        self.pipelining = False  # the server offers PIPELINING: MAIL, RCPTs and DATA go in one write
        # The next transaction's envelope, written behind the last message's final dot (RFC 2920): its
        # replies are still due, so until `send` reads them nothing else may be written (RSET, QUIT).
        self._chained: _Chained | None = None

    def _context(self) -> dict:
        return {"mx_host": self.host, "tls": self.tls, "certificate_verified": self.certificate_verified,
                "sending_ip": self.egress.address or ""}

    def _client(self) -> aiosmtplib.SMTP:
        return _Client(
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
            else:
                self.tls_failure = ("starttls-not-supported", f"{self.host} does not offer STARTTLS")
                if self.require_verified:
                    raise SessionError(self.sts_refusal())
            self.pipelining = self.smtp.supports_extension("pipelining")  # as offered after STARTTLS
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
            self.tls_failure = _verification_failure(ex, self.host)
            if self.require_verified:
                raise SessionError(self.sts_refusal()) from ex
            # Opportunistic TLS: an unverifiable certificate still beats plaintext (Postfix "may").
            await self.close()
            self.smtp = self._client()
            await self.smtp.connect()
            await self.smtp.ehlo()
            await self.smtp.starttls(tls_context=NOT_VERIFYING, server_hostname=self.host)
            self.certificate_verified = False
        self.tls = True
        await self.smtp.ehlo()  # RFC 3207: the session starts over after STARTTLS

    def sts_refusal(self) -> Outcome:
        """The deferral of mail for a domain whose enforced MTA-STS policy this session cannot meet."""
        kind, detail = self.tls_failure or ("validation-failure", "TLS not established")
        return sts_deferral(self.require_verified or "", f"{kind}: {detail}", self._context())

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

    @property
    def chained(self) -> bool:
        """The next transaction's envelope is on the wire: only `send` of that very message may follow."""
        return self._chained is not None

    async def send(self, mail_from: str, recipients: list[str], data: bytes,
                   following: tuple[str, list[str], bytes] | None = None) -> dict[str, Outcome]:
        """One transaction; return an outcome per recipient. Raises SessionError if the session broke.

        following: the (mail_from, recipients, data) this session will carry next. With PIPELINING its
        envelope goes in the same write as this message's final dot (RFC 2920 3.1 allows it), and the
        next `send`, which must be of exactly that message, reads its replies: one write and one
        wake-up per message. This message's outcome comes from the reply to its dot alone; if the
        session breaks before that reply, the next message was never sent (only its envelope).

        Whatever else raises inside the transaction (a bug, a hook) leaves the session clean: reset
        (RSET) before DATA, closed after it, so it can never turn the next message's MAIL into a
        "503 nested MAIL". The exception then goes to the caller, which decides that message's fate."""
        started = time.monotonic()
        outcomes: dict[str, Outcome] = {}
        chained, self._chained = self._chained, None
        if chained is not None:
            if chained.message != (mail_from, recipients, data):  # a caller's bug: never mis-pair replies
                self.abort()
                raise SessionError(connection_failure("internal error: another message's envelope was chained",
                                                      self._context()))
            outcomes, envelope = chained.outcomes, chained.envelope
        else:
            envelope = self._envelope(mail_from, recipients, data, outcomes)
            if envelope is None:
                return outcomes
        after = self._chain(following) if following is not None and self.pipelining else None
        try:
            # One deadline for the transaction (each step's allowance summed) instead of aiosmtplib's
            # wait_for per reply: a timer per transaction rather than a future, a timer and an extra
            # wake-up per reply (~4% of the relay's CPU). A timeout is an OSError: handled below.
            async with asyncio.timeout(self.timeout * (3 + len(recipients))):
                return await self._transaction(*envelope, data, started, outcomes, chained is not None, after)
        except (aiosmtplib.SMTPException, OSError) as ex:
            if isinstance(ex, TimeoutError) or self.in_data:
                # A reply may still come (never pair it with a later command), or the server is
                # still reading message data (a QUIT would be text): drop the connection.
                self.in_data = False
                self.abort()
            else:
                await self.close()
            message = "timed out waiting for the server's reply" if isinstance(ex, TimeoutError) else (
                str(ex) or type(ex).__name__)
            # NOTE: a disconnect after the final "." may mean the remote got the message; the retry
            # that follows is the one place duplicates can come from (counted by the relay).
            outcome = connection_failure(message, self._context())
            raise SessionError(outcome) from ex
        except Exception:
            await self._recover()
            raise
        except BaseException:  # cancelled: no more commands on this connection
            self.abort()
            raise

    def _envelope(self, mail_from: str, recipients: list[str], data: bytes,
                  outcomes: dict[str, Outcome]) -> tuple[bytes, list[tuple[str, bytes]]] | None:
        """The MAIL FROM argument and the RCPT paths, decided before any command is sent: IDN domains
        as A-labels, SMTPUTF8 when an address or the header needs it and the server offers it. A
        recipient this server cannot take gets its outcome here (None: nobody is left to send to)."""
        smtputf8 = self.smtp.supports_extension("smtputf8")
        try:
            sender, utf8 = idn.wire_address(mail_from)
        except idn.AddressError as ex:
            outcomes.update(dict.fromkeys(recipients, self._unsendable(f"sender {ex}", "5.1.7")))
            return None
        if utf8 and not smtputf8:
            outcomes.update(dict.fromkeys(recipients, self._no_smtputf8("sender")))
            return None
        paths = []
        for rcpt in recipients:
            try:
                path, needs = idn.wire_address(rcpt)
            except idn.AddressError as ex:
                outcomes[rcpt] = self._unsendable(f"recipient {ex}", "5.1.3")
                continue
            if needs and not smtputf8:
                outcomes[rcpt] = self._no_smtputf8("recipient")
                continue
            utf8 = utf8 or needs
            paths.append((rcpt, _path(path)))
        if not paths:
            return None
        # UTF-8 in the header alone (RFC 6532) asks for SMTPUTF8 where offered; where it is not, the
        # message still goes (as before, and as Postfix does for mail not flagged SMTPUTF8).
        if smtputf8 and not utf8 and not data.isascii():  # most messages are ASCII: one C-speed scan
            end = data.find(b"\r\n\r\n")
            utf8 = not (data[:end] if end >= 0 else data).isascii()
        return b"FROM:" + _path(sender) + (b" SMTPUTF8" if utf8 and smtputf8 else b""), paths

    def _chain(self, following: tuple[str, list[str], bytes]) -> _Chained | None:
        """The next message's envelope, to go behind this one's dot; None: it goes in its own write
        (nobody to send to here, or anything odd: its own send() then deals with it)."""
        outcomes: dict[str, Outcome] = {}
        try:
            envelope = self._envelope(*following, outcomes)
            return _Chained(following, envelope, _pipeline(*envelope), outcomes) if envelope else None
        except Exception:
            return None

    def _no_smtputf8(self, which: str) -> Outcome:
        return Outcome(Kind.FAILED, 553, "SMTPUTF8 not supported by the receiving server", enhanced_code="5.6.7",
                       bounce_class=BounceClass.MESSAGE,
                       description=f"the {which} address has a UTF-8 local part and the receiving server does"
                                   " not offer SMTPUTF8 (RFC 6531), so it cannot take this message",
                       extra={"reason": "generic"}, **self._context())

    def _unsendable(self, message: str, enhanced_code: str) -> Outcome:
        return Outcome(Kind.FAILED, 553, message, enhanced_code=enhanced_code, bounce_class=BounceClass.OTHER,
                       description="the address cannot be written in an SMTP envelope",
                       extra={"reason": "generic"}, **self._context())

    async def _recover(self) -> None:
        """After an unexpected exception inside a transaction: RSET if the server is still in the
        envelope, close if it may be reading message data (there RSET would be taken as text)."""
        if self.in_data or self._chained is not None or self.smtp is None:
            self.in_data = False
            self.abort()
            return
        try:
            await self._reset()  # closes the session if RSET fails
        except Exception:
            self.abort()

    async def _transaction(self, mail_from: bytes, recipients: list[tuple[str, bytes]], data: bytes,
                           started: float, outcomes: dict[str, Outcome], written: bool = False,
                           after: _Chained | None = None) -> dict[str, Outcome]:
        smtp = self.smtp
        if self.pipelining:
            # RFC 2920: MAIL, the RCPTs and DATA in one write, their replies read in order; then the
            # message. Two round trips, two writes and two wake-ups per message instead of 3 + RCPTs
            # (one and one when the envelope went behind the previous message's dot: `written`).
            # From this write on the server may be reading message data (DATA may be accepted).
            pipeline = b"" if written else _pipeline(mail_from, recipients)
            self.in_data = True
            if written:
                mail, *rcpts, data_reply = await smtp.protocol.read_replies(len(recipients) + 2)
            else:
                mail, *rcpts, data_reply = await smtp.protocol.replies(pipeline, len(recipients) + 2)
            if data_reply.code != 354:
                self.in_data = False
        else:
            # execute_command rather than mail()/rcpt(): those re-parse every address with
            # email.utils; ours were validated at intake (or built by VERP), and execute_command
            # still refuses control characters.
            mail, rcpts, data_reply = await smtp.execute_command(b"MAIL", mail_from, timeout=None), [], None
            if mail.code == 250:
                rcpts = [await smtp.execute_command(b"RCPT", b"TO:" + path, timeout=None) for _, path in recipients]
        if mail.code != 250:
            outcome = from_reply(mail.code, mail.message, **self._context())
            outcomes.update((rcpt, outcome) for rcpt, _ in recipients)
            await self._abandon(data_reply)
            return outcomes
        accepted = []
        for (rcpt, _), response in zip(recipients, rcpts, strict=True):
            if response.code in (250, 251):
                accepted.append(rcpt)
            else:
                outcomes[rcpt] = from_reply(response.code, response.message, **self._context())
        if not accepted:
            await self._abandon(data_reply)
            return outcomes
        try:
            response = await self._data(data, data_reply, after)
            result = from_reply(response.code, response.message, **self._context())
        except aiosmtplib.SMTPResponseException as ex:
            result = from_reply(ex.code, ex.message, **self._context())
        result.session_seconds = round(time.monotonic() - started, 3)
        for rcpt in accepted:
            outcomes[rcpt] = result
        self.messages_sent += 1
        return outcomes

    async def _abandon(self, data_reply: aiosmtplib.SMTPResponse | None) -> None:
        """End a transaction that sends no message. A pipelined DATA that was accepted anyway (no
        recipient was) gets the bare "." RFC 2920 3.1 asks for, which delivers nothing; then RSET."""
        if data_reply is not None and data_reply.code == 354:
            protocol = self.smtp.protocol
            if protocol is None:
                raise aiosmtplib.SMTPServerDisconnected("Connection lost")
            protocol.write(b".\r\n")
            await protocol.read_response(timeout=None)
            self.in_data = False
        await self._reset()

    async def _data(self, data: bytes, response: aiosmtplib.SMTPResponse | None,
                    after: _Chained | None = None) -> aiosmtplib.SMTPResponse:
        """DATA (unless pipelined: `response` is its reply) and the message, then (after) the next
        transaction's envelope in the same write. aiosmtplib's data() runs two regex passes over every
        message (line endings, dot-stuffing) — ~8% of the relay's CPU; here both are C-speed bytes
        checks (wire_message), done already for the relay's messages (a WireMessage)."""
        if response is None:
            self.in_data = True
            response = await self.smtp.execute_command(b"DATA", timeout=None)
        if response.code != 354:
            self.in_data = False
            # The envelope may still be open (RFC 5321 leaves it so after a refused DATA): RSET, so
            # the next MAIL on this session is not a "503 nested MAIL".
            await self._reset()
            raise aiosmtplib.SMTPDataError(response.code, response.message)
        if type(data) is not WireMessage:  # the relay's messages come ready (the signer threads made them)
            data = wire_message(data)
        protocol = self.smtp.protocol
        if after is None:
            protocol.write(data + b".\r\n")
            response = await protocol.read_response(timeout=None)
        else:
            (response,) = await protocol.replies(b"".join((data, b".\r\n", after.commands)), 1, more=True)
            self._chained = after  # its replies come next, whatever this one says
        self.in_data = False
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
        self._chained = None
        smtp, self.smtp = self.smtp, None
        if smtp is not None:
            smtp.close()

    async def close(self) -> None:
        if self._chained is not None:  # replies to a written envelope are due: QUIT would be mis-paired
            self.abort()
            return
        smtp, self.smtp = self.smtp, None
        if smtp is None:
            return
        try:
            if smtp.is_connected:
                await smtp.quit(timeout=5)
        except (aiosmtplib.SMTPException, OSError):
            smtp.close()


class WireMessage(bytes):
    """A message as it goes on the wire between DATA's 354 and the final dot: CRLF line ends throughout
    (normalize_crlf), lines starting with a dot doubled (RFC 5321 4.5.2). Session.send sends one as it
    is; other bytes it makes so first."""


def wire_message(message: bytes, *, crlf: bool = False) -> WireMessage:
    """message as it goes on the wire (crlf: it is normalize_crlf's output already). Made off the event
    loop by the relay's signer threads: the checks are three passes over the message (~10 us for 5 KB)
    that the signer has just made anyway."""
    if not crlf:
        message = normalize_crlf(message)
    if message.startswith(b"."):
        message = b"." + message
    return WireMessage(message.replace(b"\r\n.", b"\r\n.."))


@dataclass(frozen=True)
class _Chained:
    """The next transaction, its envelope written behind a message's final dot."""

    message: tuple[str, list[str], bytes]  # (mail_from, recipients, data) as given to send()
    envelope: tuple[bytes, list[tuple[str, bytes]]]  # the MAIL FROM argument and the RCPT paths
    commands: bytes  # MAIL, RCPTs and DATA, pipelined
    outcomes: dict[str, Outcome]  # recipients refused before any command (IDN, SMTPUTF8)


def _pipeline(mail_from: bytes, recipients: list[tuple[str, bytes]]) -> bytes:
    """MAIL, the RCPTs and DATA as one pipelined write (RFC 2920)."""
    commands = [b"MAIL " + mail_from] + [b"RCPT TO:" + path for _, path in recipients] + [b"DATA"]
    if _CONTROL.search(b"".join(commands)):  # as execute_command refuses them
        raise ValueError("Command arg contains a prohibited control character")
    return b"\r\n".join(commands) + b"\r\n"


def _path(address: str) -> bytes:
    """An address as an SMTP path (<a@b>, or <> for the null sender); UTF-8 only under SMTPUTF8."""
    return b"<" + address.encode() + b">"


def connection_failure(message: str, context: dict) -> Outcome:
    return Outcome(Kind.RETRY, 421, message, enhanced_code="4.4.2", bounce_class=BounceClass.CONNECTION,
                   description="connection failure", **context)


def is_connection_failure(outcome: Outcome) -> bool:
    """True for our own "could not talk to it" outcome (421 by convention), not a remote's 421 reply."""
    return outcome.description == "connection failure" and outcome.enhanced_code == "4.4.2"


def sts_deferral(domain: str, why: str, context: dict) -> Outcome:
    """Mail for a domain in MTA-STS enforce mode that may not go this way: retried later, never sent."""
    return Outcome(Kind.RETRY, 451, f"MTA-STS policy of {domain} (enforce) not met: {why}",
                   enhanced_code="4.7.5", bounce_class=BounceClass.POLICY,
                   description=f"mta-sts: deferred, the policy of {domain} requires a verified TLS session"
                               " with an MX host it lists", **context)


def _verification_failure(ex: BaseException, host: str) -> tuple[str, str]:
    """(RFC 8460 result type, detail) of a failed certificate verification."""
    seen = ex
    while seen is not None:
        if isinstance(seen, ssl.SSLCertVerificationError):
            return verify_result_type(seen.verify_code), f"{host}: {seen.verify_message}"
        seen = seen.__cause__ or seen.__context__
    return "validation-failure", f"{host}: {ex}"


def _is_verification_error(ex: BaseException) -> bool:
    seen = ex
    while seen is not None:
        if isinstance(seen, ssl.SSLCertVerificationError) or "CERTIFICATE_VERIFY_FAILED" in str(seen):
            return True
        seen = seen.__cause__ or seen.__context__
    return False
