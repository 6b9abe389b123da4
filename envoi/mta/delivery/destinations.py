"""The relay's sending stage: a ready queue per destination (egress address, MX site), whose workers
hold reused SMTP sessions, try the MX hosts in preference order, and pause the destination when it
asks us to back off.

A delivery is sent only with one of the `unrecorded` slots, freed when its outcome is committed, so
a crash re-sends at most that many messages the remote already had (see engine).
"""

from __future__ import annotations

import asyncio
import logging
import time
from dataclasses import dataclass, field, replace

from envoi.infra.settings import Settings
from envoi.mta.bounces import verp
from envoi.mta.delivery.mx import DnsPermanentError, DnsTemporaryError, MxHost, MxResolver
from envoi.mta.delivery.outcome import BounceClass, Kind, Outcome, internal_error
from envoi.mta.delivery.prepare import prepared
from envoi.mta.delivery.record import Recorder
from envoi.mta.delivery.session import Egress, Session, SessionError, is_connection_failure, sts_deferral
from envoi.mta.delivery.shaping import RateLimiter, Rule, Shaping
from envoi.mta.delivery.sts import MtaSts, StsPolicy
from envoi.mta.delivery.tls_report import NO_POLICY, STS, SUCCESS, TlsResults

log = logging.getLogger("envoi.relay")
IDLE_SECONDS = 5.0


@dataclass
class Delivery:
    """One message to the recipients it has at one destination domain."""

    message: dict
    domain: dict
    recipients: list[dict]  # recipient rows
    egress: Egress
    claimed_at: float = field(default_factory=time.monotonic)
    unrecorded: bool = False  # holds an `unrecorded` slot until its outcome is committed
    sts: StsPolicy | None = None  # the recipient domain's MTA-STS policy in force (enforce or testing)
    wire: tuple[str, list[str], bytes] | None = None  # (MAIL FROM, RCPTs, data) once worked out for sending


@dataclass
class Destination:
    """A ready queue: deliveries for one (egress address, MX site); workers hold reused sessions."""

    # (egress address, MX site = sorted MX host names, "mta-sts" when only verified TLS sessions may be used)
    key: tuple[str | None, tuple[str, ...], str]
    mx: list[MxHost] | None  # in preference order; None: settings.smtp_route
    rule: Rule
    strict: bool = False  # MTA-STS enforce: STARTTLS with a certificate valid for the MX host, or nothing
    queue: asyncio.Queue = field(default_factory=asyncio.Queue)
    workers: int = 0
    limiter: RateLimiter | None = None

    @property
    def label(self) -> str:
        return ",".join(self.key[1])[:200]


class Destinations:
    def __init__(self, settings: Settings, resolver: MxResolver, shaping: Shaping, recorder: Recorder, *,
                 connections: asyncio.Semaphore, unrecorded: asyncio.Semaphore, metrics=None,
                 sts: MtaSts | None = None, tls_results: TlsResults | None = None):
        self.settings = settings
        self.resolver = resolver
        self.shaping = shaping
        # ENVOI_SMTP_ROUTE (a smarthost or the dev sink) is one destination that takes everything.
        self.route_rule = replace(shaping.default, name="route", max_connections=settings.relay_connections)
        self.recorder = recorder
        self.connections = connections  # open SMTP sessions, all destinations together
        self.unrecorded = unrecorded  # deliveries sent and not yet recorded
        self.metrics = metrics
        self.sts = sts  # None: MTA-STS off (ENVOI_MTA_STS=no or ENVOI_SMTP_ROUTE)
        self.tls_results = tls_results
        self.verp_key = verp.key_from_secret(settings.secret_key)
        self.by_key: dict[tuple, Destination] = {}
        self.paused: dict[tuple, float] = {}  # destination key -> monotonic time it may be tried again
        self._workers: set[asyncio.Task] = set()
        self._tasks: set[asyncio.Task] = set()

    def use_shaping(self, shaping: Shaping) -> None:
        """New shaping rules (SIGHUP): every destination, open or not, follows them from now on; sessions
        already open stay open (a lower max_connections is reached as workers finish)."""
        self.shaping = shaping
        self.route_rule = replace(shaping.default, name="route", max_connections=self.settings.relay_connections)
        for dest in self.by_key.values():
            rule = shaping.for_site(dest.key[1]) if dest.mx is not None else self.route_rule
            if rule.messages_per_minute != dest.rule.messages_per_minute:
                dest.limiter = RateLimiter(rule.messages_per_minute) if rule.messages_per_minute else None
            dest.rule = rule

    def ready(self) -> int:
        """Deliveries waiting in ready queues."""
        return sum(d.queue.qsize() for d in self.by_key.values())

    async def stop(self) -> None:
        tasks = list(self._workers) + list(self._tasks)
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)

    def dispatch(self, delivery: Delivery, rcpt_domain: str) -> None:
        options = delivery.message["options"] or {}
        if options.get("testmode"):
            # Test mode: accepted and recorded as delivered with Mailgun's code 650, never sent.
            self.recorder.result_each(delivery, Outcome(Kind.DELIVERED, 650, "Test mode", description="test mode"))
            return
        if self.settings.smtp_route:
            host, port = self.settings.smtp_route
            self._enqueue(delivery, (f"{host}:{port}",), None)
            return
        task = asyncio.create_task(self._route(delivery, rcpt_domain))
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def _route(self, delivery: Delivery, rcpt_domain: str) -> None:
        """Resolve the MX set (cached by TTL) and queue the delivery on that MX site's destination."""
        try:
            hosts = await self.resolver.mx(rcpt_domain)
        except (DnsTemporaryError, DnsPermanentError) as ex:
            self.recorder.result_each(delivery, dns_outcome(ex))
            return
        except Exception as ex:  # never lose a claimed recipient to a bug: retry it
            log.exception("MX lookup crashed")
            self.recorder.result_each(delivery, dns_outcome(DnsTemporaryError(str(ex))))
            return
        strict = False
        if self.sts is not None:
            try:
                delivery.sts = policy = await self.sts.policy_for(rcpt_domain)
            except Exception as ex:  # the cache unreadable (Postgres down): a policy may exist, so wait
                log.exception("MTA-STS lookup failed")
                self.recorder.result_each(delivery, dns_outcome(DnsTemporaryError(f"MTA-STS lookup: {ex}")))
                return
            if policy is not None and policy.enforced:
                # RFC 8461 4.1: an MX host the policy does not list is not used at all.
                strict, allowed = True, [h for h in hosts if policy.policy.matches(h.host)]
                if not allowed:
                    why = f"no MX host ({', '.join(h.host for h in hosts)[:200]}) matches the policy's mx patterns"
                    self._report(delivery, "validation-failure", detail=why)
                    self.recorder.result_each(delivery, sts_deferral(policy.domain, why, {}))
                    return
                hosts = allowed
        self._enqueue(delivery, tuple(sorted({h.host for h in hosts})), hosts, strict)

    def _report(self, delivery: Delivery, result: str, session: Session | None = None, detail: str = "") -> None:
        """Count one TLS result for the delivery's recipient domain (TLS-RPT, RFC 8460)."""
        if self.tls_results is None:
            return
        policy = delivery.sts
        domain = policy.domain if policy is not None else delivery.recipients[0]["rcpt_domain"]
        self.tls_results.record(
            domain, STS if policy is not None else NO_POLICY, result,
            policy_id=policy.policy_id if policy is not None else "", detail=detail,
            mx=session.host if session else "", ip=session.address if session else "",
            sending_ip=delivery.egress.address or "")

    def _report_session(self, delivery: Delivery, session: Session) -> None:
        """A session was set up: what TLS came to, judged by the domain's policy (testing mode included)."""
        policy = delivery.sts
        if policy is None:  # opportunistic: an unverified certificate is no failure, plaintext is
            if session.tls:
                self._report(delivery, SUCCESS, session)
            else:
                self._report(delivery, session.tls_failure[0], session, session.tls_failure[1])
        elif session.tls_failure is not None:
            self._report(delivery, session.tls_failure[0], session, session.tls_failure[1])
        elif not policy.policy.matches(session.host):
            self._report(delivery, "validation-failure", session,
                         f"{session.host} is not an mx of the policy of {policy.domain}")
        else:
            self._report(delivery, SUCCESS, session)

    def _enqueue(self, delivery: Delivery, site: tuple[str, ...], mx: list[MxHost] | None,
                 strict: bool = False) -> None:
        key = (delivery.egress.address, site, "mta-sts" if strict else "")
        until = self.paused.get(key)
        if until is not None:
            if until > time.monotonic():
                # The destination asked us to back off (421): put it back unattempted until then.
                self.recorder.defer(delivery.recipients, until - time.monotonic())
                return
            del self.paused[key]
        dest = self.by_key.get(key)
        if dest is None:
            rule = self.shaping.for_site(site) if mx is not None else self.route_rule
            limiter = RateLimiter(rule.messages_per_minute) if rule.messages_per_minute else None
            dest = self.by_key[key] = Destination(key, mx, rule, strict=strict, limiter=limiter)
        dest.queue.put_nowait(delivery)
        if dest.workers < dest.rule.max_connections and dest.queue.qsize() > dest.workers - 1:
            dest.workers += 1
            task = asyncio.create_task(self._worker(dest))
            self._workers.add(task)
            task.add_done_callback(self._workers.discard)

    def _pause(self, dest: Destination, outcome: Outcome) -> None:
        """421 or "try again in N seconds": close, stop sending to this destination for a while."""
        seconds = outcome.retry_after or dest.rule.pause_seconds
        self.paused[dest.key] = time.monotonic() + seconds
        log.info("destination %s paused for %.0fs: %s %s", dest.label, seconds, outcome.code, outcome.message)
        while not dest.queue.empty():
            self.recorder.defer(dest.queue.get_nowait().recipients, seconds)

    def _fail_queued(self, dest: Destination, outcome: Outcome) -> None:
        while not dest.queue.empty():
            self.recorder.result_each(dest.queue.get_nowait(), outcome)

    async def _worker(self, dest: Destination) -> None:
        session: Session | None = None
        recorder = self.recorder
        # The delivery taken from the queue while the previous one was sent, so that its envelope could
        # go behind that message's final dot on this session (Session.send's `following`).
        carried: Delivery | None = None
        try:
            async with self.connections:
                while True:
                    if carried is not None:
                        delivery, carried = carried, None
                    else:
                        if session is not None and session.chained:  # never: the chained one is carried
                            await self._close(dest, session)
                            session = None
                        try:  # PERF: under load the queue is never empty; wait_for costs a task per call
                            delivery = dest.queue.get_nowait()
                        except asyncio.QueueEmpty:
                            try:
                                delivery = await asyncio.wait_for(dest.queue.get(), IDLE_SECONDS)
                            except TimeoutError:
                                return
                    until = self.paused.get(dest.key)
                    if until is not None and until > time.monotonic():
                        recorder.defer(delivery.recipients, until - time.monotonic())
                        continue
                    if dest.limiter is not None and (wait := dest.limiter.delay()):
                        await asyncio.sleep(wait)
                    if session is not None and session.messages_sent >= dest.rule.messages_per_connection:
                        await self._close(dest, session)
                        session = None
                    if session is None or not session.usable:
                        if session is not None:
                            await self._close(dest, session)
                        try:
                            session = await self._connect(dest, delivery)
                        except SessionError as ex:
                            session = None
                            recorder.result_each(delivery, ex.outcome)
                            if not is_connection_failure(ex.outcome) and (
                                    ex.outcome.code == 421 or ex.outcome.retry_after):
                                self._pause(dest, ex.outcome)
                            else:
                                # The destination is unreachable: what is queued for it shares the fate.
                                self._fail_queued(dest, ex.outcome)
                            continue
                        except (DnsTemporaryError, DnsPermanentError) as ex:
                            recorder.result_each(delivery, dns_outcome(ex))
                            self._fail_queued(dest, dns_outcome(ex))
                            continue
                        except Exception as ex:  # a bug while connecting: retry this delivery, carry on
                            log.exception("connecting crashed")
                            session = None
                            for rcpt in delivery.recipients:
                                recorder.result(delivery, rcpt, internal_error(ex, rcpt["attempts"] + 1))
                            continue
                    if not delivery.unrecorded:
                        await self.unrecorded.acquire()
                        delivery.unrecorded = True
                    # Its sending slot is taken at its own turn: an envelope is no message (no final dot).
                    carried = self._follower(dest, session)
                    try:
                        outcomes = await self._send(session, delivery, carried)
                    except SessionError as ex:  # the session broke mid-transaction: only this one retries
                        await self._close(dest, session)
                        session = None
                        recorder.result_each(delivery, ex.outcome)
                        continue
                    except Exception as ex:  # a bug or a message that cannot be sent; Session.send left
                        log.exception("delivery crashed",  # the session clean (reset or closed)
                                      extra={"message_id": delivery.message.get("message_id")})
                        for rcpt in delivery.recipients:
                            recorder.result(delivery, rcpt, internal_error(ex, rcpt["attempts"] + 1, session.host))
                        continue
                    throttled = next((o for o in outcomes if o.code == 421 and not is_connection_failure(o)), None)
                    if throttled is not None:
                        await self._close(dest, session)
                        session = None
                        self._pause(dest, throttled)
        finally:
            dest.workers -= 1
            if carried is not None:  # a worker that ends (crashed, cancelled) leaves it to the others
                dest.queue.put_nowait(carried)
            if session is not None:
                await self._close(dest, session)
            if dest.workers == 0 and dest.queue.empty():
                self.by_key.pop(dest.key, None)

    def _follower(self, dest: Destination, session: Session) -> Delivery | None:
        """The next delivery of this destination, taken now so its envelope can go behind the current
        message's final dot, when this session will carry it right after the current one anyway: the
        server offers PIPELINING, no rate to keep, room left on the connection."""
        if (not session.pipelining or dest.limiter is not None or dest.queue.empty()
                or session.messages_sent + 1 >= dest.rule.messages_per_connection):
            return None
        return dest.queue.get_nowait()

    async def _close(self, dest: Destination, session: Session) -> None:
        if session.counted:
            session.counted = False
            if self.metrics:
                self.metrics.connections.labels(dest.label).dec()
        await session.close()

    async def _connect(self, dest: Destination, delivery: Delivery) -> Session:
        """Try the MX hosts in preference order (and each one's addresses); the next on failure."""
        if dest.mx is None:
            host, port = self.settings.smtp_route
            targets = [(host, [host], port)]
        else:
            targets = [(mx.host, None, self.settings.remote_smtp_port) for mx in dest.mx]
        last: SessionError | None = None
        for mx_host, addresses, port in targets:
            if addresses is None:
                try:
                    addresses = await self.resolver.addresses(mx_host)
                except (DnsTemporaryError, DnsPermanentError) as ex:
                    last = SessionError(dns_outcome(DnsTemporaryError(str(ex))))
                    continue
            for address in addresses:
                session = Session(mx_host, address, port, delivery.egress, self.settings.smtp_timeout,
                                  ca_file=self.settings.tls_ca_file,
                                  require_verified=delivery.sts.domain if dest.strict and delivery.sts else None)
                try:
                    await session.open()
                except SessionError as ex:
                    last = ex
                    if dest.strict and session.tls_failure is not None:  # refused by the policy: next MX
                        self._report(delivery, session.tls_failure[0], session, session.tls_failure[1])
                    if ex.outcome.kind is Kind.FAILED and ex.outcome.code >= 500 and ex.outcome.code != 554:
                        raise
                    continue
                except BaseException:
                    session.abort()  # a bug or a cancellation while opening: never leave the socket behind
                    raise
                if dest.mx is not None:
                    self._report_session(delivery, session)
                session.counted = True
                if self.metrics:
                    self.metrics.connections.labels(dest.label).inc()
                return session
        if last is None:
            raise DnsTemporaryError(f"no address found for any MX of {dest.label}")
        raise last

    async def _send(self, session: Session, delivery: Delivery, following: Delivery | None = None) -> list[Outcome]:
        """Send a delivery and record its outcomes; `following`, the one this session sends next, has
        its envelope go behind this message's dot when it may go on this session."""
        refusal = self._refusal(session, delivery)
        if refusal is not None:
            self.recorder.result_each(delivery, refusal)
            return [refusal]
        mail_from, addresses, data = self._wire(delivery)
        after = None
        if following is not None and self._refusal(session, following) is None:
            try:
                after = self._wire(following)
            except Exception:  # it cannot be prepared: its own turn records why
                after = None
        outcomes = await session.send(mail_from, addresses, data, after)
        if session.chained:  # the next envelope went behind this dot (counted: how often chaining happens)
            self.metrics.chained_envelopes.inc()
        result = self.recorder.result
        for rcpt in delivery.recipients:
            result(delivery, rcpt, outcomes[rcpt["address"]])
        return list(outcomes.values())

    def _refusal(self, session: Session, delivery: Delivery) -> Outcome | None:
        """Why this session may not carry this delivery (its TLS requirements, MTA-STS), or None."""
        options = delivery.message["options"] or {}
        require_tls = bool(options.get("require_tls", delivery.domain.get("require_tls")))
        skip = options.get("skip_verification", delivery.domain.get("skip_verification"))
        refusal = session.policy_refusal(require_tls, not skip)
        if refusal is None and delivery.sts is not None and delivery.sts.enforced and not (
                session.require_verified and session.tls and session.certificate_verified):
            refusal = sts_deferral(delivery.sts.domain, "the session is not a verified TLS session", {})
        return refusal

    def _wire(self, delivery: Delivery) -> tuple[str, list[str], bytes]:
        """(MAIL FROM, RCPT addresses, data), worked out once: a chained envelope and the send of its
        message must agree exactly."""
        if delivery.wire is None:
            data = prepared(delivery.message)
            delivery.wire = (self._mail_from(delivery), [r["address"] for r in delivery.recipients], data)
        return delivery.wire

    def _mail_from(self, delivery: Delivery) -> str:
        """The envelope sender: a VERP return path naming the message (and the recipient if alone)."""
        message = delivery.message
        if self.verp_key is None or not message["mail_from"]:
            return message["mail_from"]
        domain = self.settings.bounce_domain or delivery.domain["name"]
        return verp.envelope_sender(domain, message["id"], [r["id"] for r in delivery.recipients], self.verp_key)


def dns_outcome(ex: Exception) -> Outcome:
    if isinstance(ex, DnsPermanentError):
        return Outcome(Kind.FAILED, 550, str(ex), enhanced_code=ex.enhanced_code,
                       bounce_class=BounceClass.DNS,
                       description=str(ex))
    return Outcome(Kind.RETRY, 451, f"DNS lookup failed: {ex}", enhanced_code="4.4.3",
                   bounce_class=BounceClass.DNS, description="temporary DNS failure")
