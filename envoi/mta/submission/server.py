"""SMTP submission (RFC 6409): aiosmtpd on 587 (STARTTLS) and 465 (implicit TLS).

A client must use TLS, then AUTH PLAIN or LOGIN with one of its domain's SMTP credentials
(/v3/domains/{d}/credentials), then may send as that domain. Each message goes through the same
intake.accept() as the HTTP API and the 250 is written only after that commit returned, so a 250
always means the message is durable.

Defences (see docs/smtp-submission.md and reference/reliability.md rows 12-15, 18):

* AUTH only after TLS; MAIL/RCPT/DATA only after AUTH; on 587 every command but EHLO, NOOP,
  STARTTLS and QUIT needs STARTTLS first. Commands pipelined before the TLS handshake are
  discarded by aiosmtpd (>= 1.4.6).
* Failed AUTH is throttled per (client address, login) pair, with a growing delay before each 535,
  and more loosely per client address (AuthThrottle); while throttled even the right password gets
  454 4.7.0 from that address, never from another. A wrong login and a wrong password get the same
  535 5.7.8, after the same argon2 work.
* Connections are capped per client address and in total (ConnectionLimit: 421 4.7.0 and close);
  a connection that has not authenticated is closed after a shorter idle time than one that has.
* DATA ends only on CRLF.CRLF (aiosmtpd >= 1.4.5) and a message with a bare CR or bare LF anywhere
  is refused (550 5.6.0): SMTP smuggling needs one, and so nothing smuggled is ever queued. So is a
  NUL byte (550 5.6.0; RFC 5322 2.3), which downstream MTAs and parsers treat inconsistently.
* Size limit (552 5.3.4, data discarded while reading so memory stays bounded), recipients per
  message (452 4.5.3), line length 1000 octets, per-connection command budgets.
* The sending domain is the credential's domain. MAIL FROM and the From header must be at that
  domain or one of its subdomains (553/550 5.7.1) unless foreign senders are allowed by setting: the
  same rule as the HTTP API's (envoi.mta.senders, applied to the From header by intake).
* X-Mailgun-* headers are read as send options and removed from the stored message.
* SMTPUTF8 (RFC 6531) is offered. MAIL FROM and RCPT TO addresses are checked by the same
  compose.normalize_address as the API's; a non-ASCII one needs SMTPUTF8 on MAIL FROM (553 5.6.7).
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import dataclasses
import email.parser
import email.policy
import functools
import logging
import re
import ssl
import threading
import weakref
from dataclasses import dataclass
from datetime import UTC, datetime
from email.message import Message
from email.utils import format_datetime

from aiosmtpd.smtp import MISSING, SMTP, AuthResult, LoginPassword, Session, TLSSetupException, syntax

from envoi.accounts.service import Accounts, Principal
from envoi.infra.errors import EnvoiError, ServiceUnavailable
from envoi.mta import compose, senders
from envoi.mta.errors import IntakeError, InvalidMessage
from envoi.mta.intake import Accepted, Intake
from envoi.mta.submission import headers
from envoi.mta.submission.limits import TOO_MANY, ConnectionLimit
from envoi.mta.submission.stage import CommitStage
from envoi.mta.submission.throttle import AuthThrottle
from envoi.mta.substitution import substitute_mime

log = logging.getLogger(__name__)

_DATA_CHUNK = 256 * 1024
# Composing costs ~0.1 ms per 5 KB message: cheaper on the event loop than a thread hand-off, up to
# this much message (times its recipients, as recipient-variables make a copy per recipient).
_COMPOSE_ON_LOOP_BYTES = 1024 * 1024


def has_bare_cr_or_lf(data: bytes) -> bool:
    """A CR not followed by LF or an LF not preceded by CR (SMTP smuggling material).

    Counting is three C-speed scans; the equivalent regex (lookbehind at every LF) cost ~5% of
    the server's CPU per message."""
    crlf = data.count(b"\r\n")
    return data.count(b"\r") != crlf or data.count(b"\n") != crlf
_ATOM = r"[A-Za-z0-9!#$%&'*+/=?^_`{|}~-]+"
_PLAIN_ADDR = re.compile(rf"<({_ATOM}(?:\.{_ATOM})*@[A-Za-z0-9-]+(?:\.[A-Za-z0-9-]+)*)>([^()]*)")
_HELO_UNSAFE = re.compile(r"[^A-Za-z0-9.:\[\]_-]")
AUTH_OK = "235 2.7.0 Authentication successful"
AUTH_INVALID = "535 5.7.8 Authentication credentials invalid"
AUTH_THROTTLED = "454 4.7.0 Too many failed authentication attempts, try again later"
AUTH_TEMPFAIL = "454 4.7.0 Temporary authentication failure"
TEMPFAIL = "451 4.3.0 Temporary server error, please try again later"
DB_TEMPFAIL = ServiceUnavailable().smtp_reply()  # a database outage's reply
# Per-connection budgets (aiosmtpd answers 421 4.7.0 and closes past them). Generous for MAIL/RCPT/
# DATA so one connection can carry many messages; tight for what only a probe repeats.
COMMAND_LIMITS = {"AUTH": 5, "STARTTLS": 2, "EHLO": 10, "HELO": 10, "NOOP": 100, "VRFY": 5, "EXPN": 5,
                  "HELP": 10, "MAIL": 100_000, "RCPT": 1_000_000, "DATA": 100_000, "RSET": 100_000,
                  "QUIT": 1, "*": 10}
_DEFERRED = "deferred"  # marks an AuthResult whose credentials still need checking off the loop


@dataclass(frozen=True)
class SubmissionConfig:
    hostname: str = "localhost"
    max_message_bytes: int = 25 * 1024 * 1024
    max_recipients: int = 1000
    allow_foreign_from: bool = False
    auth_failure_delay: float = 0.5  # seconds the first failed AUTH of a pair waits before its 535 (then doubling)
    timeout: float = 300.0  # idle seconds before an authenticated connection is closed
    preauth_timeout: float = 30.0  # idle seconds before a connection that has not authenticated is closed
    max_connections: int = 2000  # open connections per server process (0: no cap)
    max_connections_per_ip: int = 50  # open connections per client address (IPv6: per /64) (0: no cap)
    workers: int = 4  # threads checking AUTH (argon2, Postgres); messages go through the commit stage


class Submission:
    """The submission service: checks, option headers, intake. Listeners come from listen()."""

    def __init__(self, intake: Intake, accounts: Accounts, throttle: AuthThrottle, config: SubmissionConfig):
        self.intake = intake
        self.accounts = accounts
        self.throttle = throttle
        self.config = config
        self._executor = concurrent.futures.ThreadPoolExecutor(config.workers, thread_name_prefix="envoi-submit")
        self.connections: weakref.WeakSet[SMTP] = weakref.WeakSet()
        self.limit = ConnectionLimit(config.max_connections, config.max_connections_per_ip)

    @classmethod
    def from_settings(cls, settings, intake: Intake, accounts: Accounts, redis, **overrides) -> Submission:
        throttle = AuthThrottle(redis, f"envoi:{settings.region}:smtp-auth-failures",
                                max_per_login=settings.smtp_auth_max_failures,
                                max_per_ip=settings.smtp_auth_max_failures_ip, window=settings.smtp_auth_window)
        config = SubmissionConfig(
            hostname=settings.smtp_hostname or settings.helo_name,
            max_message_bytes=settings.max_message_bytes,
            max_recipients=settings.smtp_max_recipients,
            allow_foreign_from=settings.allow_foreign_from,
            timeout=settings.smtp_idle_timeout,
            preauth_timeout=settings.smtp_preauth_timeout,
            max_connections=settings.smtp_max_connections,
            max_connections_per_ip=settings.smtp_max_connections_per_ip,
        )
        if overrides:
            config = dataclasses.replace(config, **overrides)
        return cls(intake, accounts, throttle, config)

    def close(self) -> None:
        if "stage" in self.__dict__:
            self.stage.close()
        self._executor.shutdown(wait=True, cancel_futures=False)

    async def run(self, fn, *args):
        return await asyncio.get_running_loop().run_in_executor(self._executor, fn, *args)

    # listeners ---------------------------------------------------------------------------------
    async def listen(self, host: str, port: int, tls_context: ssl.SSLContext, *, implicit_tls: bool,
                     reuse_port: bool = False):
        """Start one listener: STARTTLS required (587) or TLS from the first byte (465).

        reuse_port lets several processes share the port (SO_REUSEPORT; the kernel spreads connections).
        """
        loop = asyncio.get_running_loop()
        handler = _Handler(self)

        def factory() -> SMTP:
            conn = _SubmissionSMTP(
                handler,
                hostname=self.config.hostname,
                ident="Envoi ESMTP",
                data_size_limit=self.config.max_message_bytes,
                enable_SMTPUTF8=True,  # addresses are checked as the API checks them (compose)
                decode_data=False,
                tls_context=None if implicit_tls else tls_context,
                require_starttls=not implicit_tls,
                auth_required=True,
                auth_require_tls=True,
                auth_exclude_mechanism=(),
                command_call_limit=COMMAND_LIMITS,
                timeout=self.config.timeout,
                loop=loop,
            )
            conn.preauth_timeout = min(self.config.preauth_timeout, self.config.timeout)
            self.connections.add(conn)
            return conn

        return await loop.create_server(factory, host, port, ssl=tls_context if implicit_tls else None,
                                        reuse_address=True, reuse_port=reuse_port or None,
                                        ssl_handshake_timeout=30 if implicit_tls else None)

    # checks (run in worker threads) ------------------------------------------------------------
    def authenticate(self, ip: str, login: str, password: str) -> Principal | tuple[str, float]:
        """A Principal, or (the reply to send, seconds to wait before it): throttled and invalid answers
        name no reason."""
        if self.throttle.blocked(ip, login):
            return AUTH_THROTTLED, 0.0
        principal = self.accounts.authenticate_smtp(login, password)
        if principal is None:
            failures = self.throttle.failed(ip, login)
            return AUTH_INVALID, self.throttle.backoff(self.config.auth_failure_delay, failures)
        return principal

    def sender_allowed(self, principal: Principal, address: str) -> bool:
        """MAIL FROM: the rule intake applies to the From header (envoi.mta.senders)."""
        return self.config.allow_foreign_from or senders.allowed(principal.domain or "", address)

    def submit(self, principal: Principal, data: bytes, recipients: list[str], helo: str = "") -> str:
        """Check, read options, strip them, and commit through intake; return the Message-ID."""
        draft = self.compose(principal, data, recipients, helo)
        return self.intake.accept(principal, self.intake.domain_for(principal, principal.domain or ""), draft)

    def compose(self, principal: Principal, data: bytes, recipients: list[str], helo: str = "") -> compose.Draft:
        """The message as a draft: checks, options read and stripped, trace header. Pure CPU (the server
        runs it on its event loop); the sending domain is checked when the draft is prepared."""
        if has_bare_cr_or_lf(data):
            raise InvalidMessage("Message contains a bare CR or LF; lines must end with CRLF (RFC 5321 2.3.8)")
        if b"\0" in data:
            raise InvalidMessage("Message contains a NUL byte, which is not allowed in a message (RFC 5322 2.3)")
        mime, fields, recipient_variables = headers.extract(data)
        # Trace header (RFC 5321 4.4, RFC 3848 ESMTPSA). The client's IP is left out on purpose:
        # recipients need not learn where the sending application runs.
        helo = _HELO_UNSAFE.sub("", helo)[:100] or "unknown"
        mime = (f"Received: from {helo} by {self.config.hostname} (Envoi) with ESMTPSA;\r\n"
                f"\t{format_datetime(datetime.now(UTC))}\r\n").encode() + mime
        head = _parse_head(mime)  # once, for the From addresses and for composing
        # from_mime reads the From addresses (refusing a missing or ambiguous From); intake checks
        # them against the sending domain, as for the HTTP API.
        draft = compose.from_mime((principal.domain or "").lower(), mime, recipients, fields, method="smtp",
                                  head=head)
        if recipient_variables is not None:
            draft.copies = [
                compose.Composed([rcpt], substitute_mime(copy.mime, rcpt, recipient_variables.get(rcpt, {})),
                                 copy.headers)
                for copy in draft.copies for rcpt in copy.recipients
            ]
        return draft

    @functools.cached_property
    def stage(self) -> CommitStage:
        """The commit stage of this process's SMTP sessions (started on first use)."""
        return CommitStage(self._checked_draft, self.intake.commit, max_batch=self.intake.settings.intake_batch)

    def _checked_draft(self, principal: Principal, draft: compose.Draft) -> Accepted:
        return self.intake.prepare(self.intake.domain_for(principal, principal.domain or ""), draft)


def _parse_head(mime: bytes) -> Message:
    """compose.parse_head, reading UTF-8 in header fields (RFC 6532, sent under SMTPUTF8) as text:
    parsed as bytes it would be undecodable escapes, which the From parsers read differently."""
    head = compose.parse_head(mime)
    if mime.isascii():  # the usual case: one C-speed scan
        return head
    end = mime.find(b"\r\n\r\n")
    if mime[:end].isascii():
        return head
    return email.parser.HeaderParser(policy=email.policy.compat32).parsestr(
        mime[: end + 4].decode("utf-8", "surrogateescape"))


class _Session(Session):
    # aiosmtpd logs a deprecation warning on every login_data write; we never read it.
    @property
    def login_data(self):
        return self._login_data

    @login_data.setter
    def login_data(self, value) -> None:
        self._login_data = value


class _StartedTLS:
    """Stands in for aiosmtpd's SSLProtocol after STARTTLS through loop.start_tls: truthy, with the
    `_extra` connection details aiosmtpd copies into session.ssl."""

    def __init__(self, transport):
        self._extra = {"ssl_object": transport.get_extra_info("ssl_object"),
                       "cipher": transport.get_extra_info("cipher"), "peercert": transport.get_extra_info("peercert")}

    def __bool__(self) -> bool:
        return True


class _ImplicitTLS:
    """Stands in for aiosmtpd's STARTTLS protocol object on 465, where TLS precedes the greeting."""

    def __bool__(self) -> bool:
        return True


# aiosmtpd replies that carry no enhanced status code (we advertise ENHANCEDSTATUSCODES).
_REWRITE = {
    "530 Must issue a STARTTLS command first": "530 5.7.0 Must issue a STARTTLS command first",
    "552 Error: Too much mail data": "552 5.3.4 Message size exceeds the maximum message size",
    "552 Error: message size exceeds fixed maximum message size":
        "552 5.3.4 Message size exceeds the maximum message size",
    "500 Line too long (see RFC5321 4.5.3.1.6)": "500 5.5.2 Line too long (RFC 5321 4.5.3.1.6: 1000 octets)",
    "500 Command line too long": "500 5.5.2 Command line too long",
    "500 Error: bad syntax": "500 5.5.2 Syntax error",
    "500 Error: strict ASCII mode": "500 5.5.2 Non-ASCII data is not accepted (no SMTPUTF8)",
    "503 Error: need MAIL command": "503 5.5.1 Need MAIL command first",
    "503 Error: need RCPT command": "503 5.5.1 Need RCPT command first",
    "503 Error: nested MAIL command": "503 5.5.1 Nested MAIL command",
    "503 Error: send HELO first": "503 5.5.1 Send HELO first",
    "503 Error: send EHLO first": "503 5.5.1 Send EHLO first",
    "503 Already authenticated": "503 5.5.1 Already authenticated",
    "553 5.1.3 Error: malformed address": "553 5.1.3 Malformed address",
    "555 MAIL FROM parameters not recognized or not implemented":
        "555 5.5.4 MAIL FROM parameters not recognized or not implemented",
    "555 RCPT TO parameters not recognized or not implemented":
        "555 5.5.4 RCPT TO parameters not recognized or not implemented",
    "502 EXPN not implemented": "502 5.5.1 EXPN not implemented",
    "554 Command refused due to lack of security": "554 5.7.0 Command refused due to lack of security",
}


class _SubmissionSMTP(SMTP):
    preauth_timeout: float | None = None  # set by the listener's factory
    _slot: str | None = None  # the ConnectionLimit key this connection holds
    _refused = False  # over a connection cap: answered 421 and closed; no SMTP session at all

    def _create_session(self) -> Session:
        return _Session(self.loop)

    def _getaddr(self, arg: str) -> tuple[str | None, str | None]:
        # Fast path for plain <local@domain> (as in the sink): the stock parser runs email's header
        # parser and builds a class per call. Anything unusual still goes to the stock parser.
        m = _PLAIN_ADDR.fullmatch(arg)
        if m is None:
            return super()._getaddr(arg)
        return m[1], m[2].lstrip()

    def _reset_timeout(self, duration: float | None = None) -> None:
        """Idle timeout with one timer per connection: aiosmtpd cancels and re-creates a timer at every
        command (~2% of the server's CPU). Each command moves a deadline; the timer, when it fires,
        closes the connection only if the deadline has passed, and otherwise waits out the rest.
        Until the client has authenticated the shorter preauth_timeout applies: an idle stranger holds a
        file descriptor for less time than a customer's pooled connection."""
        if not duration:
            authenticated = self.session is not None and self.session.authenticated
            duration = self._timeout_duration if authenticated else (self.preauth_timeout or self._timeout_duration)
        self._idle_deadline = self.loop.time() + duration
        handle = self._timeout_handle
        if handle is None or handle.cancelled() or handle.when() > self._idle_deadline:
            if handle is not None:
                handle.cancel()
            self._timeout_handle = self.loop.call_at(self._idle_deadline, self._idle_check)

    def _idle_check(self) -> None:
        if self.loop.time() < self._idle_deadline:
            self._timeout_handle = self.loop.call_at(self._idle_deadline, self._idle_check)
        else:
            self._timeout_cb()

    def connection_made(self, transport) -> None:
        if self._original_transport is None and self._slot is None:  # a new connection (not STARTTLS's second call)
            peer = transport.get_extra_info("peername")
            self._slot = self.event_handler.submission.limit.admit(peer[0] if peer else "?")
            if self._slot is None:
                self._refused = True
                transport.write(TOO_MANY)
                transport.close()
                return
        implicit = self._original_transport is None and transport.get_extra_info("ssl_object") is not None
        super().connection_made(transport)
        if implicit:
            # aiosmtpd only knows STARTTLS: tell it this connection is already encrypted, so AUTH is
            # offered and allowed (auth_require_tls stays on).
            self._tls_protocol = _ImplicitTLS()
            self.session.ssl = {"implicit": True, "cipher": transport.get_extra_info("cipher")}

    def connection_lost(self, error) -> None:
        if self._slot is not None:
            self.event_handler.submission.limit.release(self._slot)
            self._slot = None
        if not self._refused:
            super().connection_lost(error)

    def data_received(self, data: bytes) -> None:
        if not self._refused:
            super().data_received(data)

    def eof_received(self):
        return False if self._refused else super().eof_received()

    @syntax("DATA")
    async def smtp_DATA(self, arg: str) -> None:
        """aiosmtpd's DATA, reading the body in chunks instead of one await per line (that loop was a
        sixth of the server's CPU). Same rules: the body ends at CRLF "." CRLF, dots are unstuffed,
        too much data (552) or a line over 1,000 octets (500) is answered after the final dot, and
        bytes pipelined behind the dot stay for the next command."""
        if await self.check_helo_needed() or await self.check_auth_needed("DATA"):
            return
        if not self.envelope.rcpt_tos:
            await self.push("503 Error: need RCPT command")
            return
        if arg:
            await self.push("501 Syntax: DATA")
            return
        await self.push("354 End data with <CR><LF>.<CR><LF>")
        limit = self.data_size_limit
        data = bytearray(b"\r\n")  # a virtual CRLF: an empty body is "." CRLF at once
        dropped = 0  # bytes discarded past the size limit
        while True:
            try:
                chunk = await self._reader.read(_DATA_CHUNK)
            except asyncio.CancelledError:
                log.info("connection lost during DATA")
                self._writer.close()
                raise
            if not chunk:  # EOF: eof_received cancels this coroutine; nothing is accepted
                return
            search_from = max(0, len(data) - 4)
            data += chunk
            end = data.find(b"\r\n.\r\n", search_from)
            if end >= 0:
                self._reader._buffer[:0] = data[end + 5 :]  # pipelined commands: not ours to eat
                del data[end + 2 :]
                break
            if limit and len(data) - 2 > limit:
                dropped += len(data) - 6
                del data[:-4]  # keep what a terminator split across reads needs
        if dropped or (limit and len(data) - 2 > limit):
            await self.push("552 Error: Too much mail data")
            self._set_post_data_state()
            return
        body = bytes(data[2:])
        if body and max(map(len, body.split(b"\r\n"))) > self.line_length_limit - 2:
            await self.push("500 Line too long (see RFC5321 4.5.3.1.6)")
            self._set_post_data_state()
            return
        body = body.replace(b"\r\n.", b"\r\n")
        if body.startswith(b"."):
            body = body[1:]
        self.envelope.content = self.envelope.original_content = body
        status = await self._call_handler_hook("DATA")
        self._set_post_data_state()
        await self.push("250 OK" if status is MISSING else status)

    async def smtp_STARTTLS(self, arg: str) -> None:
        # aiosmtpd wires asyncio's pure-Python SSLProtocol in by hand; loop.start_tls gives the
        # running loop's own TLS (uvloop's is compiled), which roughly halves the CPU per message.
        if arg:
            await self.push("501 Syntax: STARTTLS")
            return
        if not self.tls_context:
            await self.push("454 TLS not available")
            return
        if self._tls_protocol:
            await self.push("503 5.5.1 TLS already active")
            return
        # Plaintext pipelined behind STARTTLS is dropped (RFC 3207 4.2; the CVE-2011-0411 injection).
        self._reader._buffer.clear()
        await self.push("220 Ready to start TLS")
        plain = self.transport
        try:
            encrypted = await self.loop.start_tls(plain, self, self.tls_context, server_side=True,
                                                  ssl_handshake_timeout=30)
        except asyncio.CancelledError:
            raise
        except Exception as error:
            raise TLSSetupException() from error
        self._original_transport = plain
        self._tls_protocol = _StartedTLS(encrypted)
        # aiosmtpd's STARTTLS branch (fresh session state over TLS) also empties the read buffer;
        # by now it can only hold what the client sent over TLS, so that is kept.
        received = bytes(self._reader._buffer)
        self.connection_made(encrypted)
        self._reader._buffer.extend(received)

    async def push(self, status) -> None:
        if isinstance(status, str):
            if status.startswith("501 ") and status[4:5].isalpha():
                status = "501 5.5.4 " + status[4:]
            elif status.startswith("500 Error: command"):
                status = "500 5.5.1 " + status[11:]
            else:
                status = _REWRITE.get(status, status)
        await super().push(status)

    # AUTH: aiosmtpd parses PLAIN/LOGIN and calls a synchronous authenticator. Checking a password
    # (argon2 + Postgres) must not block the loop, so the authenticator only captures the
    # credentials and the check runs in a worker thread here.
    def _authenticate(self, mechanism: str, auth_data) -> AuthResult:
        return AuthResult(success=False, handled=False, message=_DEFERRED, auth_data=auth_data)

    async def auth_PLAIN(self, _, args) -> AuthResult:
        return await self._check(await super().auth_PLAIN(_, args))

    async def auth_LOGIN(self, _, args) -> AuthResult:
        return await self._check(await super().auth_LOGIN(_, args))

    async def _check(self, result: AuthResult) -> AuthResult:
        if result.message != _DEFERRED or not isinstance(result.auth_data, LoginPassword):
            return result
        submission: Submission = self.event_handler.submission
        ip = self.session.peer[0] if self.session.peer else "?"
        login = result.auth_data.login.decode("utf-8", "surrogateescape")
        password = result.auth_data.password.decode("utf-8", "surrogateescape")
        try:
            outcome = await submission.run(submission.authenticate, ip, login, password)
        except Exception:
            log.exception("submission: AUTH check failed")
            return AuthResult(success=False, handled=False, message=AUTH_TEMPFAIL)
        if isinstance(outcome, Principal):
            log.info("submission: %s authenticated as %s", ip, login)
            self._reset_timeout(self._timeout_duration)  # from here on the (longer) authenticated idle timeout
            return AuthResult(success=True, auth_data=outcome, message=AUTH_OK)
        reply, delay = outcome
        log.info("submission: AUTH refused for %r from %s (%s)", login, ip, reply[:3])
        if delay:
            await asyncio.sleep(delay)
        return AuthResult(success=False, handled=False, message=reply)


# RFC 6531 3.4: a non-ASCII address (UTF-8 local part or U-labels) only in a SMTPUTF8 transaction.
SMTPUTF8_NEEDED = "553 5.6.7 A non-ASCII address needs SMTPUTF8 on MAIL FROM (RFC 6531)"


class _Handler:
    def __init__(self, submission: Submission):
        self.submission = submission

    async def handle_EHLO(self, server, session, envelope, hostname: str, responses: list[str]) -> list[str]:
        session.host_name = hostname
        return responses[:-1] + ["250-PIPELINING", "250-ENHANCEDSTATUSCODES", responses[-1]]

    async def handle_MAIL(self, server, session, envelope, address: str, mail_options: list[str]) -> str:
        principal: Principal = session.auth_data
        if not (envelope.smtp_utf8 or address.isascii()):
            return SMTPUTF8_NEEDED
        try:
            address = compose.normalize_address(address, "from")
        except IntakeError:
            return "553 5.1.7 Sender address is not valid"
        if not self.submission.sender_allowed(principal, address):
            return f"553 5.7.1 Sender address {address} is not allowed for the domain {principal.domain}"
        envelope.mail_from = address
        envelope.mail_options.extend(mail_options)
        return "250 2.1.0 Sender OK"

    async def handle_RCPT(self, server, session, envelope, address: str, rcpt_options: list[str]) -> str:
        if not (envelope.smtp_utf8 or address.isascii()):
            return SMTPUTF8_NEEDED
        try:
            address = compose.normalize_address(address)
        except IntakeError:
            return "553 5.1.3 Recipient address is not valid"
        if address in envelope.rcpt_tos:
            return "250 2.1.5 Recipient OK"
        if len(envelope.rcpt_tos) >= self.submission.config.max_recipients:
            return f"452 4.5.3 Too many recipients (at most {self.submission.config.max_recipients} per message)"
        envelope.rcpt_tos.append(address)
        envelope.rcpt_options.extend(rcpt_options)
        return "250 2.1.5 Recipient OK"

    async def handle_DATA(self, server, session, envelope) -> str:
        principal: Principal = session.auth_data
        data: bytes = envelope.original_content or b""
        try:
            args = (principal, data, list(envelope.rcpt_tos), session.host_name or "")
            if len(data) * len(envelope.rcpt_tos) <= _COMPOSE_ON_LOOP_BYTES:
                draft = self.submission.compose(*args)
            else:  # big, or possibly one copy per recipient (recipient-variables): keep the loop free
                draft = await self.submission.run(self.submission.compose, *args)
            message_id = await self.submission.stage.submit(principal, draft)
        except EnvoiError as ex:  # mapped by class: each says its own reply (a database outage: 451 4.3.0)
            reply = ex.smtp_reply()
            log.log(logging.WARNING if ex.logged else logging.INFO, "submission: refused from %s: %s (%s)",
                    principal.domain, reply[:9], ex)
            return reply
        except Exception:
            log.exception("submission: intake failed")
            return TEMPFAIL
        return f"250 2.0.0 Ok: queued as {message_id}"

    async def handle_RSET(self, server, session, envelope) -> str:
        return "250 2.0.0 OK"

    async def handle_NOOP(self, server, session, envelope, arg) -> str:
        return "250 2.0.0 OK"

    async def handle_QUIT(self, server, session, envelope) -> str:
        return "221 2.0.0 Bye"

    async def handle_exception(self, error: Exception) -> str:
        log.exception("submission: session error", exc_info=error)
        return "451 4.3.0 Temporary server error"


class SubmissionServer:
    """Runs a Submission's listeners: in the current loop (serve()) or in a thread (start()/stop()).

    Port 0 picks a free port (tests); `ports` holds the bound ones after start.
    """

    def __init__(self, submission: Submission, tls_context: ssl.SSLContext, *, host: str = "127.0.0.1",
                 port: int | None = 0, smtps_port: int | None = 0, reuse_port: bool = False):
        self.submission = submission
        self.reuse_port = reuse_port
        self.tls_context = tls_context
        self.host = host
        self.requested = {"submission": port, "smtps": smtps_port}
        self.ports: dict[str, int] = {}
        self._servers: list[asyncio.base_events.Server] = []
        self._loop: asyncio.AbstractEventLoop | None = None
        self._thread: threading.Thread | None = None
        self._stopped: asyncio.Event | None = None

    @property
    def port(self) -> int:
        return self.ports["submission"]

    @property
    def smtps_port(self) -> int:
        return self.ports["smtps"]

    async def open(self) -> None:
        for name, port in self.requested.items():
            if port is None:
                continue
            server = await self.submission.listen(self.host, port, self.tls_context, implicit_tls=name == "smtps",
                                                  reuse_port=self.reuse_port)
            self._servers.append(server)
            self.ports[name] = server.sockets[0].getsockname()[1]

    async def close(self) -> None:
        for server in self._servers:
            server.close()
        # Abort live sessions (a client may keep one open) so no task outlives the loop. A session
        # waiting on intake keeps its thread: the commit either happened or did not; no 250 is sent.
        for conn in list(self.submission.connections):
            if conn.transport is not None:
                conn.transport.abort()
        await asyncio.sleep(0)
        self._servers.clear()

    async def serve(self, on_ready=None) -> None:
        """Listen until request_stop() (e.g. from a signal handler)."""
        self._stopped = asyncio.Event()
        await self.open()
        if on_ready is not None:
            on_ready()
        try:
            await self._stopped.wait()
        finally:
            await self.close()

    def request_stop(self) -> None:
        if self._stopped is not None:
            self._stopped.set()

    # thread mode (tests, benchmarks) -----------------------------------------------------------
    def start(self) -> SubmissionServer:
        self._loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self._loop.run_forever, name="envoi-submission", daemon=True)
        self._thread.start()
        asyncio.run_coroutine_threadsafe(self.open(), self._loop).result(10)
        return self

    def stop(self) -> None:
        if self._loop is None:
            return
        try:
            asyncio.run_coroutine_threadsafe(self._close_all(), self._loop).result(10)
        finally:
            self._loop.call_soon_threadsafe(self._loop.stop)
            if self._thread is not None:
                self._thread.join(10)
            self._loop.close()
            self._loop = self._thread = None

    async def _close_all(self) -> None:
        await self.close()
        tasks = [t for t in asyncio.all_tasks() if t is not asyncio.current_task()]
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        await asyncio.sleep(0)

    def __enter__(self) -> SubmissionServer:
        return self if self._loop is not None else self.start()

    def __exit__(self, *exc) -> None:
        self.stop()
