"""The SMTP listener: the one place Envoi meets aiosmtpd (submission, inbound bounces, the dev sink).

aiosmtpd parses the protocol and calls a handler's hooks (handle_RCPT, handle_DATA, ...); the
services keep only those hooks and their policy. This module owns everything else, and every use of
aiosmtpd's private API, so an aiosmtpd upgrade has one place to check (tests/unit/mta/test_listener_fence.py
fails when a private name relied on here changes upstream):

* `Connection`, aiosmtpd's SMTP with fast paths measured on the submission and sink benchmarks:
  plain addresses parsed without email's header parser, DATA read in chunks, one idle timer per
  connection, STARTTLS through the loop's own TLS (uvloop's is compiled), and the command loop, MAIL
  and RCPT as copies without aiosmtpd's per-command logging work and coroutines.
* What the services need from a connection: connection caps (421 before any TLS or SMTP), implicit
  TLS (465), a shorter idle timeout before AUTH, AUTH checked off the loop, enhanced status codes on
  aiosmtpd's own replies, and on_connect/on_disconnect handler hooks.
* `Listener`, the controller: opens the ports, runs in the caller's loop (serve()) or on its own
  thread (start()/stop()), and closes live sessions when it stops.
"""

from __future__ import annotations

import asyncio
import collections
import logging
import re
import ssl
import threading
import weakref
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass
from typing import Any, Protocol

from aiosmtpd.smtp import (
    ALLOWED_BEFORE_STARTTLS,
    BOGUS_LIMIT,
    MISSING,
    SMTP,
    AuthResult,
    LoginPassword,
    Session,
    TLSSetupException,
    sanitized_log,
    syntax,
)

log = logging.getLogger(__name__)
_wire_log = logging.getLogger("mail.log")  # aiosmtpd's logger, where its push logged each reply at DEBUG

_DATA_CHUNK = 256 * 1024
STOP_GRACE = 1.2  # seconds a session in a transaction gets to finish it when the server stops
SHUTTING_DOWN = b"421 4.3.2 Service shutting down\r\n"
_ATOM = r"[A-Za-z0-9!#$%&'*+/=?^_`{|}~-]+"
# "<local@domain> params" with dot-atom parts only: what real senders use, and what needs no parser.
_PLAIN_ADDR = re.compile(rf"<({_ATOM}(?:\.{_ATOM})*@[A-Za-z0-9-]+(?:\.[A-Za-z0-9-]+)*)>([^()]*)")
_DEFERRED = "deferred"  # marks an AuthResult whose credentials still need checking off the loop

#: (client IP, login, password) -> (what session.auth_data becomes, or None when refused; the reply).
CheckLogin = Callable[[str, str, str], Awaitable[tuple[Any, str]]]


class Limit(Protocol):
    """Connection caps (envoi.mta.submission.limits.ConnectionLimit)."""

    REFUSAL: bytes

    def admit(self, ip: str) -> str | None: ...

    def release(self, key: str) -> None: ...


@dataclass(frozen=True)
class SessionOptions:
    """What every connection of a listener gets."""

    hostname: str  # fixed: aiosmtpd would call socket.getfqdn() per connection
    ident: str
    data_size_limit: int
    smtputf8: bool = True
    tls_context: ssl.SSLContext | None = None  # STARTTLS on plain ports; the certificate of implicit-TLS ports
    require_starttls: bool = False
    timeout: float = 300.0  # idle seconds before a connection is closed
    preauth_timeout: float | None = None  # idle seconds before AUTH (None: timeout)
    command_limits: Mapping[str, int] | None = None  # per-connection budgets (aiosmtpd: 421 past them)
    enhanced_status_codes: bool = False  # rewrite aiosmtpd's own replies (for ENHANCEDSTATUSCODES)
    check_login: CheckLogin | None = None  # AUTH PLAIN/LOGIN, required before MAIL, only over TLS
    limit: Limit | None = None


def has_line_over(body: bytes, limit: int) -> bool:
    """Whether a line of `body` (the octets between two CRLFs) is longer than `limit` octets.

    PERF: splitting a 5 KB body into its lines was ~3 % of the submission loop's time. A line of
    limit + 1 octets holds a whole aligned block of (limit + 2) // 2 octets, and a line holds no CRLF;
    so when every whole block holds a CRLF no line is too long, found with one find per block (~1.4 µs
    against ~5.5 µs for 5 KB). Otherwise the lines are measured."""
    block = (limit + 2) // 2
    find = body.find
    for start in range(0, len(body) - block + 1, block):
        if find(b"\r\n", start, start + block) < 0:
            return max(map(len, body.split(b"\r\n"))) > limit
    return False


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


def _syntax_error(command: str, extended: bool) -> str:
    """aiosmtpd's 501 reply for MAIL or RCPT (`command` "MAIL FROM" or "RCPT TO")."""
    return f"501 Syntax: {command}: <address>" + (" [SP <mail-parameters>]" if extended else "")


class Connection(SMTP):
    """One SMTP connection: aiosmtpd's SMTP with Envoi's fast paths (see the module docstring)."""

    preauth_timeout: float | None = None
    enhanced_status_codes = False  # aiosmtpd's own replies rewritten by enhanced() (EnhancedConnection)
    _limit: Limit | None = None
    _check_login: CheckLogin | None = None
    _on_connect: Callable[[Session], None] | None = None
    _on_disconnect: Callable[[Session], None] | None = None
    _slot: str | None = None  # the Limit key this connection holds
    _refused = False  # over a connection cap: answered 421 and closed; no SMTP session at all

    def _create_session(self) -> Session:
        return _Session(self.loop)

    def _getaddr(self, arg: str) -> tuple[str | None, str | None]:
        # The stock parser runs email's header parser and builds a class per call (the largest
        # per-message cost in the sink benchmark). Anything unusual still goes to the stock parser.
        m = _PLAIN_ADDR.fullmatch(arg)
        if m is None or self.local_part_limit:
            return super()._getaddr(arg)
        return m[1], m[2].lstrip()

    def _reset_timeout(self, duration: float | None = None) -> None:
        """Idle timeout with one timer per connection: aiosmtpd cancels and re-creates a timer at every
        command (~2% of the submission server's CPU). Each command moves a deadline; the timer, when it
        fires, closes the connection only if the deadline has passed, and otherwise waits out the rest.
        Until the client has authenticated the shorter preauth_timeout applies: an idle stranger holds
        a file descriptor for less time than a customer's pooled connection."""
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
        new = self._original_transport is None  # not STARTTLS's second call
        if new and self._limit is not None:
            peer = transport.get_extra_info("peername")
            self._slot = self._limit.admit(peer[0] if peer else "?")
            if self._slot is None:
                self._refused = True
                transport.write(self._limit.REFUSAL)
                transport.close()
                return
        implicit = new and transport.get_extra_info("ssl_object") is not None
        super().connection_made(transport)
        if implicit:
            # aiosmtpd only knows STARTTLS: tell it this connection is already encrypted, so AUTH is
            # offered and allowed (auth_require_tls stays on).
            self._tls_protocol = _ImplicitTLS()
            self.session.ssl = {"implicit": True, "cipher": transport.get_extra_info("cipher")}
        if self._on_connect is not None:  # a fresh session: a new connection, or TLS after STARTTLS
            self._on_connect(self.session)

    def connection_lost(self, error) -> None:
        if self._slot is not None:
            self._limit.release(self._slot)
            self._slot = None
        if self._refused:
            return
        if self._on_disconnect is not None:
            self._on_disconnect(self.session)
        super().connection_lost(error)

    async def push(self, status) -> None:
        """aiosmtpd's push (the reply and CRLF, in UTF-8 under SMTPUTF8), awaiting the writer's drain only
        when it has something to do: a paused transport (flow control), a closing one, a reader's error
        (drain raises them as before). PERF: drain's coroutines on every reply, four per message.
        EnhancedConnection's rewrite happens here too, not in an override (a coroutine per reply)."""
        if isinstance(status, str):
            if self.enhanced_status_codes:
                status = enhanced(status)
            status = status.encode("utf-8" if self.enable_SMTPUTF8 else "ascii")
        writer = self._writer
        writer.write(status + b"\r\n")
        if _wire_log.isEnabledFor(logging.DEBUG):
            _wire_log.debug("%r << %r", self.session.peer, status)
        if self._paused or self._connection_lost or writer.transport.is_closing() \
                or self._reader.exception() is not None:
            await writer.drain()

    async def _handle_client(self) -> None:
        """aiosmtpd's command loop, a copy with the same replies, limits and order of checks, whose two
        log calls per command line run only when mail.log would emit them. PERF: aiosmtpd sanitizes
        every line for both (a list, a regex match and a logging call each, three lines per message)
        before the logger drops them (`envoi smtp` keeps mail.log at WARNING: it logs addresses)."""
        if self._proxy_timeout is not None:  # the PROXY protocol: never configured by Envoi
            return await super()._handle_client()
        log_ = _wire_log
        log_.info("%r handling connection", self.session.peer)
        await self.push(f"220 {self.hostname} {self.__ident__}")
        if self._enforce_call_limit:
            call_limit: dict[str, int] = collections.defaultdict(lambda: self._call_limit_default,
                                                                 self._call_limit_base)
        else:
            call_limit = {}
        bogus_budget = BOGUS_LIMIT

        while self.transport is not None:
            try:
                try:
                    line: bytes = await self._reader.readuntil()
                except asyncio.LimitOverrunError as error:
                    # Line too long. Read until end of line before sending 500.
                    await self._reader.read(error.consumed)
                    while True:
                        try:
                            await self._reader.readuntil()
                            break
                        except asyncio.LimitOverrunError as e:
                            await self._reader.read(e.consumed)
                            continue
                    await self.push("500 Command line too long")
                    continue
                if log_.isEnabledFor(logging.DEBUG):
                    sanitized_log(log_.debug, "_handle_client readline: %r", line)
                line = line.rstrip(b"\r\n")
                if log_.isEnabledFor(logging.INFO):
                    sanitized_log(log_.info, "%r >> %r", self.session.peer, line)
                if not line:
                    await self.push("500 Error: bad syntax")
                    continue
                command_bytes, _, arg_bytes = line.partition(b" ")
                try:
                    command = command_bytes.upper().decode("ascii")
                except UnicodeDecodeError:
                    await self.push("500 Error: bad syntax")
                    continue
                if not arg_bytes:
                    arg: str | None = None
                else:
                    arg_bytes = arg_bytes.strip()
                    if self.enable_SMTPUTF8:
                        arg = arg_bytes.decode("utf-8", "surrogateescape")
                    else:
                        try:
                            arg = arg_bytes.decode("ascii")
                        except UnicodeDecodeError:
                            await self.push("500 Error: strict ASCII mode")
                            continue
                max_sz = self.command_size_limits[command] if self.session.extended_smtp \
                    else self.command_size_limit
                if len(line) > max_sz:
                    await self.push("500 Command line too long")
                    continue
                if not self._tls_handshake_okay and command != "QUIT":
                    await self.push("554 Command refused due to lack of security")
                    continue
                if self.require_starttls and not self._tls_protocol and command not in ALLOWED_BEFORE_STARTTLS:
                    await self.push("530 Must issue a STARTTLS command first")  # RFC 3207 part 4
                    continue
                if self._enforce_call_limit:
                    budget = call_limit[command]
                    if budget < 1:
                        log_.warning("%r over limit for %s", self.session.peer, command)
                        await self.push(f"421 4.7.0 {command} sent too many times")
                        self.transport.close()
                        continue
                    call_limit[command] = budget - 1
                method = self._smtp_methods.get(command)
                if method is None:
                    log_.warning("%r unrecognised: %s", self.session.peer, command)
                    bogus_budget -= 1
                    if bogus_budget < 1:
                        log_.warning("%r too many bogus commands", self.session.peer)
                        await self.push("502 5.5.1 Too many unrecognized commands, goodbye.")
                        self.transport.close()
                        continue
                    await self.push(f'500 Error: command "{command}" not recognized')
                    continue
                self._reset_timeout()  # a valid command
                await method(arg)
            except asyncio.CancelledError:
                # The connection got reset during the DATA command.
                log_.info("%r Connection lost during _handle_client()", self.session.peer)
                self._writer.close()
                raise
            except ConnectionResetError:
                log_.info("%r Connection lost during _handle_client()", self.session.peer)
                self._writer.close()
                raise
            except Exception as error:
                status = None
                try:
                    status = await self.handle_exception(error)
                except Exception as inner_error:
                    try:
                        log_.exception("%r Exception in handle_exception()", self.session.peer)
                        status = f"500 Error: ({inner_error.__class__.__name__}) {inner_error}"
                    except Exception:
                        status = "500 Error: Cannot describe error"
                finally:
                    if isinstance(error, TLSSetupException):
                        self.transport.close()
                        self.connection_lost(error)
                    else:
                        await self.push(status)

    def data_received(self, data: bytes) -> None:
        # StreamReaderProtocol's, straight to the reader aiosmtpd keeps (its weakref property and frame: ~1 µs
        # per read, four reads per message); nothing after connection_lost, as there.
        if not self._refused and not self._connection_lost:
            self._reader.feed_data(data)

    def eof_received(self):
        return False if self._refused else super().eof_received()

    def _not_ready(self, command: str) -> str | None:
        """aiosmtpd's check_helo_needed and check_auth_needed (same replies, same log line), as the reply
        to send or None. PERF: they are two coroutines per MAIL, RCPT and DATA."""
        session = self.session
        if not session.host_name:
            return "503 Error: send HELO first"
        if self._auth_required and not session.authenticated:
            _wire_log.info(f"{command}: Authentication required")
            return "530 5.7.0 Authentication required"
        return None

    def _path_argument(self, keyword: str, arg: str | None, syntaxerr: str) -> tuple[str, str] | str:
        """MAIL's and RCPT's argument as aiosmtpd checks it: (address, parameters), or the refusal to send
        (the syntax reply, or 553 for a malformed address). Not a coroutine: one fewer per command."""
        if arg is None or (arg := self._strip_command_keyword(keyword, arg)) is None:
            return syntaxerr
        address, params = self._getaddr(arg)
        if address is None:
            return "553 5.1.3 Error: malformed address"
        if not address or (params and not self.session.extended_smtp):
            return syntaxerr
        return address, params

    @syntax("MAIL FROM: <address>", extended=" [SP <mail-parameters>]")
    async def smtp_MAIL(self, arg: str | None) -> None:
        """aiosmtpd's MAIL, a copy with the same checks and replies that calls the handler's hook
        directly (no coroutine around the hook, none for the HELO and AUTH checks)."""
        if (refusal := self._not_ready("MAIL")) is not None:
            await self.push(refusal)
            return
        session = self.session
        syntaxerr = _syntax_error("MAIL FROM", session.extended_smtp)
        if isinstance(path := self._path_argument("FROM:", arg, syntaxerr), str):
            await self.push(path)
            return
        address, addrparams = path
        envelope = self.envelope
        if envelope.mail_from:
            await self.push("503 Error: nested MAIL command")
            return
        mail_options = addrparams.upper().split()
        params = self._getparams(mail_options)
        if params is None:
            await self.push(syntaxerr)
            return
        if not self._decode_data:
            body = params.pop("BODY", "7BIT")
            if body not in ["7BIT", "8BITMIME"]:
                await self.push("501 Error: BODY can only be one of 7BIT, 8BITMIME")
                return
        smtputf8 = params.pop("SMTPUTF8", False)
        if not isinstance(smtputf8, bool):
            await self.push("501 Error: SMTPUTF8 takes no arguments")
            return
        if smtputf8 and not self.enable_SMTPUTF8:
            await self.push("501 Error: SMTPUTF8 disabled")
            return
        envelope.smtp_utf8 = smtputf8
        size = params.pop("SIZE", None)
        if size:
            if isinstance(size, bool) or not size.isdigit():
                await self.push(syntaxerr)
                return
            elif self.data_size_limit and int(size) > self.data_size_limit:
                await self.push("552 Error: message size exceeds fixed maximum message size")
                return
        if len(params) > 0:
            await self.push("555 MAIL FROM parameters not recognized or not implemented")
            return
        hook = self._handle_hooks.get("MAIL")
        status = MISSING if hook is None else await hook(self, session, envelope, address, mail_options)
        if status is MISSING:
            envelope.mail_from = address
            envelope.mail_options.extend(mail_options)
            status = "250 OK"
        _wire_log.info("%r sender: %s", session.peer, address)
        await self.push(status)

    @syntax("RCPT TO: <address>", extended=" [SP <mail-parameters>]")
    async def smtp_RCPT(self, arg: str | None) -> None:
        """aiosmtpd's RCPT, a copy with the same checks and replies that calls the handler's hook
        directly (as smtp_MAIL)."""
        if (refusal := self._not_ready("RCPT")) is not None:
            await self.push(refusal)
            return
        envelope = self.envelope
        if not envelope.mail_from:
            await self.push("503 Error: need MAIL command")
            return
        session = self.session
        syntaxerr = _syntax_error("RCPT TO", session.extended_smtp)
        if isinstance(path := self._path_argument("TO:", arg, syntaxerr), str):
            await self.push(path)
            return
        address, params = path
        rcpt_options = params.upper().split()
        params_dict = self._getparams(rcpt_options)
        if params_dict is None:
            await self.push(syntaxerr)
            return
        if len(params_dict) > 0:  # aiosmtpd recognises no RCPT parameter
            await self.push("555 RCPT TO parameters not recognized or not implemented")
            return
        hook = self._handle_hooks.get("RCPT")
        status = MISSING if hook is None else await hook(self, session, envelope, address, rcpt_options)
        if status is MISSING:
            envelope.rcpt_tos.append(address)
            envelope.rcpt_options.extend(rcpt_options)
            status = "250 OK"
        _wire_log.info("%r recip: %s", session.peer, address)
        await self.push(status)

    @syntax("DATA")
    async def smtp_DATA(self, arg: str) -> None:
        """aiosmtpd's DATA, reading the body in chunks instead of one await per line (that loop was a
        sixth of the submission server's CPU). Same rules: the body ends at CRLF "." CRLF, dots are
        unstuffed, too much data (552) or a line over 1,000 octets (500) is answered after the final
        dot, and bytes pipelined behind the dot stay for the next command. Bodies stay bytes
        (decode_data is always off)."""
        if (refusal := self._not_ready("DATA")) is not None:
            await self.push(refusal)
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
        body = bytes(memoryview(data)[2:])
        if has_line_over(body, self.line_length_limit - 2):
            await self.push("500 Line too long (see RFC5321 4.5.3.1.6)")
            self._set_post_data_state()
            return
        body = body.replace(b"\r\n.", b"\r\n")
        if body.startswith(b"."):
            body = body[1:]
        self.envelope.content = self.envelope.original_content = body
        hook = self._handle_hooks.get("DATA")
        status = MISSING if hook is None else await hook(self, self.session, self.envelope)
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

    # AUTH: aiosmtpd parses PLAIN/LOGIN and calls a synchronous authenticator. Checking a password
    # (argon2 + Postgres) must not block the loop, so the authenticator only captures the
    # credentials and check_login runs here, awaited.
    def _authenticate(self, mechanism: str, auth_data) -> AuthResult:
        if self._check_login is None:
            return super()._authenticate(mechanism, auth_data)
        return AuthResult(success=False, handled=False, message=_DEFERRED, auth_data=auth_data)

    async def auth_PLAIN(self, _, args) -> AuthResult:
        return await self._check(await super().auth_PLAIN(_, args))

    async def auth_LOGIN(self, _, args) -> AuthResult:
        return await self._check(await super().auth_LOGIN(_, args))

    async def _check(self, result: AuthResult) -> AuthResult:
        if result.message != _DEFERRED or not isinstance(result.auth_data, LoginPassword):
            return result
        ip = self.session.peer[0] if self.session.peer else "?"
        login = result.auth_data.login.decode("utf-8", "surrogateescape")
        password = result.auth_data.password.decode("utf-8", "surrogateescape")
        auth_data, reply = await self._check_login(ip, login, password)
        if auth_data is None:
            return AuthResult(success=False, handled=False, message=reply)
        self._reset_timeout(self._timeout_duration)  # from here on the (longer) authenticated idle timeout
        return AuthResult(success=True, auth_data=auth_data, message=reply)


# aiosmtpd replies that carry no enhanced status code (for servers advertising ENHANCEDSTATUSCODES).
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


def enhanced(status: str) -> str:
    """A reply with an enhanced status code where aiosmtpd's own has none (others unchanged)."""
    if status.startswith("501 ") and status[4:5].isalpha():
        return "501 5.5.4 " + status[4:]
    if status.startswith("500 Error: command"):
        return "500 5.5.1 " + status[11:]
    return _REWRITE.get(status, status)


class EnhancedConnection(Connection):
    """A Connection whose replies from aiosmtpd itself carry enhanced status codes (RFC 2034)."""

    enhanced_status_codes = True


class Listener:
    """Serves a handler's hooks on one or more ports: in the current loop (serve()) or on a thread of
    its own (start()/stop(), for tests, benchmarks and the dev sink).

    `ports` maps a name to the port to bind (0: a free one; None: not opened); the names in
    `implicit_tls` speak TLS from the first byte (465), the others offer STARTTLS when
    options.tls_context is set. `ports` holds the bound ones after open(). The handler may also
    define on_connect(session), called with each fresh session (at connection and again after
    STARTTLS, as aiosmtpd starts a new one), and on_disconnect(session).
    """

    def __init__(self, handler: Any, options: SessionOptions, *, host: str = "127.0.0.1",
                 ports: Mapping[str, int | None] | None = None, implicit_tls: frozenset[str] = frozenset(),
                 reuse_port: bool = False, thread_name: str = "envoi-smtp"):
        self.handler = handler
        self.options = options
        self.host = host
        self.requested = dict(ports if ports is not None else {"smtp": 0})
        self.implicit_tls = implicit_tls
        self.reuse_port = reuse_port  # several processes share the port (SO_REUSEPORT; the kernel spreads connections)
        self.thread_name = thread_name
        self.ports: dict[str, int] = {}
        self.connections: weakref.WeakSet[Connection] = weakref.WeakSet()
        self._servers: list[asyncio.base_events.Server] = []
        self._loop: asyncio.AbstractEventLoop | None = None
        self._thread: threading.Thread | None = None
        self._stopped: asyncio.Event | None = None

    @property
    def port(self) -> int:
        """The first bound port."""
        return next(iter(self.ports.values()))

    def _factory(self, loop: asyncio.AbstractEventLoop, implicit_tls: bool) -> Callable[[], Connection]:
        o = self.options
        cls = EnhancedConnection if o.enhanced_status_codes else Connection
        kwargs: dict[str, Any] = dict(
            hostname=o.hostname, ident=o.ident, data_size_limit=o.data_size_limit, enable_SMTPUTF8=o.smtputf8,
            decode_data=False, tls_context=None if implicit_tls else o.tls_context,
            require_starttls=o.require_starttls and not implicit_tls,
            command_call_limit=dict(o.command_limits) if o.command_limits is not None else None,
            timeout=o.timeout, loop=loop)
        if o.check_login is not None:
            kwargs.update(auth_required=True, auth_require_tls=True, auth_exclude_mechanism=())
        preauth_timeout = min(o.preauth_timeout, o.timeout) if o.preauth_timeout else None
        on_connect = getattr(self.handler, "on_connect", None)
        on_disconnect = getattr(self.handler, "on_disconnect", None)

        def factory() -> Connection:
            conn = cls(self.handler, **kwargs)
            conn.preauth_timeout = preauth_timeout
            conn._limit = o.limit
            conn._check_login = o.check_login
            conn._on_connect = on_connect
            conn._on_disconnect = on_disconnect
            self.connections.add(conn)
            return conn

        return factory

    async def open(self) -> None:
        loop = asyncio.get_running_loop()
        for name, port in self.requested.items():
            if port is None:
                continue
            implicit = name in self.implicit_tls
            server = await loop.create_server(
                self._factory(loop, implicit), self.host, port, ssl=self.options.tls_context if implicit else None,
                reuse_address=True, reuse_port=self.reuse_port or None,
                ssl_handshake_timeout=30 if implicit else None)
            self._servers.append(server)
            self.ports[name] = server.sockets[0].getsockname()[1]

    async def close(self, grace: float = 0.0) -> None:
        for server in self._servers:
            server.close()
        if grace > 0:
            await self._wind_down(grace)
        # Abort live sessions (a client may keep one open) so no task outlives the loop. A session
        # waiting on its handler keeps its thread: the handler's work happened or did not; no reply is sent.
        for conn in list(self.connections):
            if conn.transport is not None:
                conn.transport.abort()
        await asyncio.sleep(0)
        self._servers.clear()

    async def _wind_down(self, grace: float) -> None:
        """Stopping (SIGTERM): a session between transactions is told 421 and closed at once; one in a
        transaction (MAIL given, DATA being read or committed) gets up to `grace` seconds to finish it,
        then its 421. A client told 421 retries elsewhere (RFC 5321 3.8); the process is gone within 2 s."""
        deadline = asyncio.get_running_loop().time() + grace
        while True:
            busy = False
            for conn in list(self.connections):
                transport = conn.transport
                if transport is None or transport.is_closing():
                    continue
                envelope = getattr(conn, "envelope", None)
                if envelope is not None and envelope.mail_from is not None \
                        and asyncio.get_running_loop().time() < deadline:
                    busy = True
                    continue
                transport.write(SHUTTING_DOWN)
                transport.close()
            if not busy:
                break
            await asyncio.sleep(0.02)
        await asyncio.sleep(0.05)  # let the 421s be written before what is left is aborted

    async def serve(self, stop: asyncio.Event | None = None, on_ready: Callable[[], None] | None = None) -> None:
        """Listen until `stop` is set or request_stop() is called (e.g. from a signal handler); then
        sessions in a transaction get STOP_GRACE seconds to finish it (see _wind_down)."""
        self._stopped = stop or asyncio.Event()
        await self.open()
        if on_ready is not None:
            on_ready()
        try:
            await self._stopped.wait()
        finally:
            await self.close(grace=STOP_GRACE)

    def request_stop(self) -> None:
        if self._stopped is not None:
            self._stopped.set()

    # thread mode (tests, benchmarks, the dev sink) ---------------------------------------------
    def start(self):
        self._loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self._loop.run_forever, name=self.thread_name, daemon=True)
        self._thread.start()
        try:
            asyncio.run_coroutine_threadsafe(self.open(), self._loop).result(10)
        except BaseException:
            self.stop()
            raise
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
        await asyncio.sleep(0)  # let the aborted transports' connection_lost() callbacks run

    def __enter__(self):
        return self if self._loop is not None else self.start()

    def __exit__(self, *exc) -> None:
        self.stop()
