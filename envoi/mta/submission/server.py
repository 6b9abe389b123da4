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
* A closed account's logins fail AUTH like a wrong password (535 5.7.8). A suspended account is refused
  with 550 5.7.1 at MAIL as the session knows it, and at the end of DATA when the change came during the
  session: the commit stage reads the state as the HTTP API does (Accounts.refresh: cached under the
  generation a state change bumps, so it holds at once), before anything is stored.
* A login unknown here that a peer region knows (envoi.accounts.routing) gets 535 5.7.8 naming that
  region and its SMTP host (ENVOI_REGION_SMTP_HOSTS); it is neither counted by the throttle nor logged.
* X-Mailgun-* headers are read as send options and removed from the stored message.
* SMTPUTF8 (RFC 6531) is offered. MAIL FROM and RCPT TO addresses are checked by the same
  compose.normalize_address as the API's; a non-ASCII one needs SMTPUTF8 on MAIL FROM (553 5.6.7).
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import dataclasses
import functools
import logging
import re
import ssl
import time
from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime
from email.utils import format_datetime

from envoi.accounts.routing import RegionRouter
from envoi.accounts.service import Accounts, Principal
from envoi.infra.errors import EnvoiError, ServiceUnavailable
from envoi.mta import compose, senders
from envoi.mta.errors import IntakeError, InvalidMessage
from envoi.mta.intake import Accepted, Intake
from envoi.mta.listener import Listener, SessionOptions
from envoi.mta.submission import headers
from envoi.mta.submission.limits import ConnectionLimit
from envoi.mta.submission.stage import CommitStage
from envoi.mta.submission.throttle import AuthThrottle
from envoi.mta.substitution import substitute_mime
from envoi.mta.templated import TemplateSending

log = logging.getLogger(__name__)

# Composing costs ~0.1 ms per 5 KB message: cheaper on the event loop than a thread hand-off, up to
# this much message (times its recipients, as recipient-variables make a copy per recipient).
_COMPOSE_ON_LOOP_BYTES = 1024 * 1024


def has_bare_cr_or_lf(data: bytes) -> bool:
    """A CR not followed by LF or an LF not preceded by CR (SMTP smuggling material).

    Counting is three C-speed scans; the equivalent regex (lookbehind at every LF) cost ~5% of
    the server's CPU per message."""
    crlf = data.count(b"\r\n")
    return data.count(b"\r") != crlf or data.count(b"\n") != crlf


_date: tuple[int, str] = (0, "")


def _received_date() -> str:
    """The Received header's date (RFC 5322, to the second). PERF: formatted once a second: email.utils'
    format_datetime was ~5% of the submission server's CPU per message."""
    global _date
    now = int(time.time())
    if _date[0] != now:
        _date = (now, format_datetime(datetime.fromtimestamp(now, UTC)))
    return _date[1]


_HELO_UNSAFE = re.compile(r"[^A-Za-z0-9.:\[\]_-]")
AUTH_OK = "235 2.7.0 Authentication successful"
AUTH_INVALID = "535 5.7.8 Authentication credentials invalid"
AUTH_THROTTLED = "454 4.7.0 Too many failed authentication attempts, try again later"
AUTH_TEMPFAIL = "454 4.7.0 Temporary authentication failure"
AUTH_OTHER_REGION = "535 5.7.8 This SMTP login belongs to the {region} region: connect to {host} instead"
TEMPFAIL = "451 4.3.0 Temporary server error, please try again later"
DB_TEMPFAIL = ServiceUnavailable().smtp_reply()  # a database outage's reply
# Per-connection budgets (aiosmtpd answers 421 4.7.0 and closes past them). Generous for MAIL/RCPT/
# DATA so one connection can carry many messages; tight for what only a probe repeats.
COMMAND_LIMITS = {"AUTH": 5, "STARTTLS": 2, "EHLO": 10, "HELO": 10, "NOOP": 100, "VRFY": 5, "EXPN": 5,
                  "HELP": 10, "MAIL": 100_000, "RCPT": 1_000_000, "DATA": 100_000, "RSET": 100_000,
                  "QUIT": 1, "*": 10}


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
    region_smtp_hosts: Mapping[str, str] = field(default_factory=dict)  # named to a login of another region


class Submission:
    """The submission service: checks, option headers, intake. SubmissionServer runs its listeners."""

    def __init__(self, intake: Intake, accounts: Accounts, throttle: AuthThrottle, config: SubmissionConfig,
                 router: RegionRouter | None = None, template_sending: TemplateSending | None = None):
        self.router = router
        # Stored templates are looked up and rendered on the worker threads, not on the commit stage's
        # thread (a first compile of a large template takes seconds); without it intake renders them.
        self.template_sending = template_sending
        self.intake = intake
        self.accounts = accounts
        self.throttle = throttle
        self.config = config
        self._executor = concurrent.futures.ThreadPoolExecutor(config.workers, thread_name_prefix="envoi-submit")
        self.limit = ConnectionLimit(config.max_connections, config.max_connections_per_ip)

    @classmethod
    def from_settings(cls, settings, intake: Intake, accounts: Accounts, redis, router: RegionRouter | None = None,
                      template_sending: TemplateSending | None = None, **overrides) -> Submission:
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
            region_smtp_hosts=dict(settings.region_smtp_hosts),
        )
        if overrides:
            config = dataclasses.replace(config, **overrides)
        return cls(intake, accounts, throttle, config, router, template_sending)

    def close(self) -> None:
        if "stage" in self.__dict__:
            self.stage.close()
        self._executor.shutdown(wait=True, cancel_futures=False)

    async def run(self, fn, *args):
        return await asyncio.get_running_loop().run_in_executor(self._executor, fn, *args)

    async def check_login(self, ip: str, login: str, password: str) -> tuple[Principal | None, str]:
        """AUTH for the listener: the Principal and 235, or None and the reply (after any throttling
        delay). The check (argon2, Postgres) runs in a worker thread, never on the event loop."""
        try:
            outcome = await self.run(self.authenticate, ip, login, password)
        except Exception:
            log.exception("submission: AUTH check failed")
            return None, AUTH_TEMPFAIL
        if isinstance(outcome, Principal):
            log.info("submission: %s authenticated as %s", ip, login)
            return outcome, AUTH_OK
        reply, delay = outcome
        if reply.startswith(AUTH_OTHER_REGION.partition("{")[0]):  # routing, never transfer: the login is not logged
            log.info("submission: AUTH from %s refused: a login of another region", ip)
            return None, reply
        log.info("submission: AUTH refused for %r from %s (%s)", login, ip, reply[:3])
        if delay:
            await asyncio.sleep(delay)
        return None, reply

    def session_options(self, tls_context: ssl.SSLContext) -> SessionOptions:
        """What each connection of the listeners gets: STARTTLS required (587) or TLS from the first byte
        (465), AUTH required, enhanced status codes, caps and budgets."""
        return SessionOptions(
            hostname=self.config.hostname,
            ident="Envoi ESMTP",
            data_size_limit=self.config.max_message_bytes,
            smtputf8=True,  # addresses are checked as the API checks them (compose)
            tls_context=tls_context,
            require_starttls=True,
            timeout=self.config.timeout,
            preauth_timeout=self.config.preauth_timeout,
            command_limits=COMMAND_LIMITS,
            enhanced_status_codes=True,
            check_login=self.check_login,
            limit=self.limit,
        )

    # checks (run in worker threads) ------------------------------------------------------------
    def authenticate(self, ip: str, login: str, password: str) -> Principal | tuple[str, float]:
        """A Principal, or (the reply to send, seconds to wait before it): throttled and invalid answers
        name no reason."""
        if self.throttle.blocked(ip, login):
            return AUTH_THROTTLED, 0.0
        principal = self.accounts.authenticate_smtp(login, password)
        if principal is None:
            if (home := self._home_region(login)) is not None:
                return home, 0.0  # not counted: nothing of another region's login is kept here
            failures = self.throttle.failed(ip, login)
            return AUTH_INVALID, self.throttle.backoff(self.config.auth_failure_delay, failures)
        return principal

    def _home_region(self, login: str) -> str | None:
        """The reply naming the region (and its SMTP host) of a login unknown here that a peer knows."""
        region = self.router.home_of("smtp", login) if self.router is not None else None
        if region is None:
            return None
        host = self.config.region_smtp_hosts.get(region, f"the {region.upper()} region's SMTP host")
        return AUTH_OTHER_REGION.format(region=region.upper(), host=host)

    def sender_allowed(self, principal: Principal, address: str) -> bool:
        """MAIL FROM: the rule intake applies to the From header (envoi.mta.senders)."""
        return self.config.allow_foreign_from or senders.allowed(principal.domain or "", address)

    def submit(self, principal: Principal, data: bytes, recipients: list[str], helo: str = "") -> str:
        """Check, read options, strip them, and commit through intake; return the Message-ID."""
        draft = self.compose(principal, data, recipients, helo)
        principal = self.accounts.refresh(principal)
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
                f"\t{_received_date()}\r\n").encode() + mime
        # Once, for the From addresses and for composing; UTF-8 in header fields (RFC 6532, sent under
        # SMTPUTF8) read as text: as escapes the two From parsers would read it differently.
        head = compose.parse_head(mime, utf8=True)
        # from_mime reads the From addresses (refusing a missing or ambiguous From); intake checks
        # them against the sending domain, as for the HTTP API.
        draft = compose.from_mime((principal.domain or "").lower(), mime, recipients, fields, method="smtp",
                                  head=head, crlf=True)
        if recipient_variables is not None:
            draft.copies = [
                compose.Composed([rcpt], substitute_mime(copy.mime, rcpt, recipient_variables.get(rcpt, {})),
                                 copy.headers)
                for copy in draft.copies for rcpt in copy.recipients
            ]
        if fields.get("template"):  # rendered by intake, where the template can be looked up
            draft.template = {"fields": fields, "recipient_variables": recipient_variables}
        return draft

    def render_template(self, principal: Principal, draft: compose.Draft) -> compose.Draft:
        """The draft's stored template rendered into its copies (on a worker thread: I/O, maybe a compile)."""
        principal = self.accounts.refresh(principal)
        return self.template_sending.render_submitted(self.intake.domain_for(principal, principal.domain or ""), draft)

    @functools.cached_property
    def stage(self) -> CommitStage:
        """The commit stage of this process's SMTP sessions (started on first use)."""
        settings = self.intake.settings
        return CommitStage(self._checked_draft, self.intake.commit, max_batch=settings.intake_batch,
                           delay=settings.smtp_commit_delay)

    def _checked_draft(self, principal: Principal, draft: compose.Draft) -> Accepted:
        # On the commit stage's thread, where I/O belongs: the account's current state (one Redis GET
        # while cached; a suspension or closing made during the session refuses this message).
        principal = self.accounts.refresh(principal)
        return self.intake.prepare(self.intake.domain_for(principal, principal.domain or ""), draft)


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
        # The account's state as the session last knew it (at AUTH, or refreshed by its previous message in
        # the commit stage): no I/O on the event loop per MAIL. A suspension made since is caught when the
        # message is committed (_checked_draft reads the current state), before anything is stored.
        try:
            self.submission.accounts.ensure_may_send(principal, principal.domain or "")
        except EnvoiError as ex:
            return ex.smtp_reply()
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
            if draft.template is not None and self.submission.template_sending is not None:
                draft = await self.submission.run(self.submission.render_template, principal, draft)
            message_id = await self.submission.stage.submit(principal, draft)
        except EnvoiError as ex:  # mapped by class: each says its own reply (a database outage: 451 4.3.0)
            if (state := getattr(ex, "account_state", None)) is not None:  # learnt at commit: later MAILs refuse
                session.auth_data = dataclasses.replace(principal, account_state=state)
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


class SubmissionServer(Listener):
    """A Submission's listeners: 587 (STARTTLS) and 465 (implicit TLS). Port 0 picks a free port
    (tests), None leaves it closed; `ports` holds the bound ones after start."""

    def __init__(self, submission: Submission, tls_context: ssl.SSLContext, *, host: str = "127.0.0.1",
                 port: int | None = 0, smtps_port: int | None = 0, reuse_port: bool = False):
        self.submission = submission
        super().__init__(_Handler(submission), submission.session_options(tls_context), host=host,
                         ports={"submission": port, "smtps": smtps_port}, implicit_tls=frozenset({"smtps"}),
                         reuse_port=reuse_port, thread_name="envoi-submission")

    @property
    def port(self) -> int:
        return self.ports["submission"]

    @property
    def smtps_port(self) -> int:
        return self.ports["smtps"]
