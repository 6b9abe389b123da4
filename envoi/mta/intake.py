"""accept(): the one door into the queue, shared by the HTTP API and SMTP submission.

It stores the message, its recipients' schedule and their `accepted` events in one transaction and
returns only after the commit, so a 200 or a 250 always means the message is durable. Accepts that
arrive together (API threads, SMTP sessions) share that transaction: one commit, a few statements
for the whole group instead of a handful per message.
"""

from __future__ import annotations

import collections
import contextlib
import logging
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Protocol

from envoi.accounts.service import Accounts, Principal
from envoi.events.service import Events, ItemSeries, NewEvent, item
from envoi.infra import ids
from envoi.infra.crypto import Sealer
from envoi.infra.db import COPY_ROWS, Database, IntegrityError, is_data_error, one_statement
from envoi.infra.group_commit import GroupCommit, write_isolated
from envoi.infra.settings import Settings
from envoi.mta import senders, store
from envoi.mta.compose import Draft
from envoi.mta.errors import DomainNotFound, InvalidMessage, MessageTooLarge, NotAllowed

log = logging.getLogger(__name__)
MESSAGE_ID_BLOCK = 256  # message ids reserved per round trip
COPY_FROM = COPY_ROWS  # messages or recipients in one commit above which it COPYs instead of pipelining
SERIES_FROM = 8  # copies of one draft above which their accepted events are filled in from the first's
# What differs between the accepted events of one draft's copies whose From, Subject and Message-ID agree.
_ACCEPTED_VARYING = (("id",), ("message", "headers", "to"), ("message", "size"), ("recipient",),
                     ("recipient-domain",), ("envelope", "targets"), ("storage", "url"), ("storage", "key"))
_SHARED = ("from", "subject", "message-id")


class AcceptCheck(Protocol):
    """Refuses a draft before anything is stored by raising an IntakeError (e.g. o:sending-ip naming
    another account's IP). A check that takes something (a quota's count) returns what gives it back,
    called if the accept then fails before or at its commit."""

    def __call__(self, domain: dict, draft: Draft, /) -> Callable[[], None] | None: ...


class Renderer(Protocol):
    """Rewrites an accepted draft before it is stored (tracking links, unsubscribe headers)."""

    def __call__(self, domain: dict, draft: Draft, /) -> Draft: ...


class Intake:
    def __init__(
        self,
        settings: Settings,
        db: Database,
        accounts: Accounts,
        events: Events,
        sealer: Sealer,
        *,
        checks: Sequence[AcceptCheck] = (),
        renderers: Sequence[Renderer] = (),
        on_commit: Callable[[], None] = lambda: None,
        on_accepted: Callable[[int, str], None] = lambda count, method: None,
        activity=None,
        expand_lists: Callable[[dict, Draft], Draft] | None = None,
    ):
        self.settings = settings
        self.db = db
        self.accounts = accounts
        self.events = events
        self.sealer = sealer
        # After the built-in checks (size, sender, sandbox): the checks, then the renderers, in order.
        self.checks = tuple(checks)
        self.renderers = tuple(renderers)
        self.on_commit = on_commit  # rings the relay's doorbell; never fails the accept
        self.on_accepted = on_accepted
        self.activity = activity  # envoi.accounts.activity.Activity: a send marks the account active (daily)
        # envoi.mta.list_expansion.ListExpander.expand_mime: a mailing list among the recipients becomes
        # one copy per subscribed member (the API's compose expands `to` itself and marks the draft).
        self.expand_lists = expand_lists
        self._message_ids: collections.deque[int] = collections.deque()
        self._message_ids_lock = threading.Lock()
        # A caller queued behind a writer waits at most for one writer (a pool connection, then the
        # write deadline): a stuck database answers 503, not never.
        wait = settings.db_pool_timeout + settings.db_write_deadline if settings.db_write_deadline else None
        self._commits = GroupCommit(self._write, max_batch=settings.intake_batch, isolate=is_data_error,
                                   delay=settings.intake_commit_delay, timeout=wait)

    def domain_for(self, principal: Principal, domain_name: str) -> dict:
        """The caller's sending domain, or DomainNotFound (also for another tenant's domain); refused
        for a suspended or closed account (the principal carries its account's current state)."""
        domain_name = domain_name.lower()
        allowed = principal.may_send_as(domain_name) and principal.account_id is not None
        domain = self.accounts.sending_domain(domain_name, principal.account_id) if allowed else None
        if domain is None:
            raise DomainNotFound(f"Domain not found: {domain_name}")
        self.accounts.ensure_may_send(principal, domain_name)  # suspended or closed (no I/O)
        if domain["state"] == "disabled":
            raise NotAllowed(f"Domain {domain_name} is not allowed to send: domain is disabled")
        # The account's plan and custom monthly limit come with the principal (read and kept current with
        # its state): the quota check reads them from the domain, with no round trip.
        if domain.get("plan") == principal.plan and domain.get("monthly_limit") == principal.monthly_limit:
            return domain
        return {**domain, "plan": principal.plan, "monthly_limit": principal.monthly_limit}

    def accept(self, principal: Principal, domain: dict, draft: Draft) -> str:
        """Commit the draft to the queue; return its Message-ID in angle brackets.

        Concurrent accepts share a transaction (group commit); each returns only after the commit
        that holds its message."""
        accepted = self.prepare(domain, draft)
        try:
            self._commits.submit(accepted.stored)
        except IntegrityError as ex:
            accepted.undo()
            if (refusal := _duplicate_message_id(ex, domain, draft)) is not None:
                raise refusal from ex
            raise
        except BaseException:
            accepted.undo()
            raise
        self._count(accepted)
        if log.isEnabledFor(logging.DEBUG):  # to follow one message across processes (ENVOI_LOG_FORMAT=json)
            log.debug("message accepted", extra={"message_id": accepted.message_id})
        return accepted.message_id

    def prepare(self, domain: dict, draft: Draft) -> Accepted:
        """The first half of accept(): checks and renders the draft and builds its rows (no I/O but a
        mailing list's members, read when a recipient is one)."""
        if self.expand_lists is not None and not (draft.expanded or draft.rendered):
            draft = self.expand_lists(domain, draft)
        # A mailing list's copies are each a message of its own: the limit holds for each.
        size = max(len(c.mime) for c in draft.copies) if draft.expanded else draft.size
        if size > self.settings.max_message_bytes:
            raise MessageTooLarge(
                f"message size {size} bytes exceeds the limit of {self.settings.max_message_bytes} bytes")
        if not self.settings.allow_foreign_from:
            senders.check(domain["name"], draft.from_addresses or [draft.mail_from])
        if domain["state"] == "unverified":
            self._check_test_recipients(domain, draft)
        undo: list[Callable[[], None]] = []
        try:
            for check in self.checks:
                if (give_back := check(domain, draft)) is not None:
                    undo.append(give_back)
            for render in () if draft.rendered else self.renderers:
                draft = render(domain, draft)
            return Accepted(f"<{draft.message_id}>", draft.method, self._rows_for(domain, draft), undo)
        except BaseException:
            Accepted.undo_all(undo)
            raise

    @staticmethod
    def _check_test_recipients(domain: dict, draft: Draft) -> None:
        """An unverified domain sends only to its account's authorised recipients (Mailgun's sandbox
        rule): proof of control of a domain comes before mail in its name reaches strangers. The
        list comes cached with the domain row (Accounts.sending_domain), so this reads no database."""
        allowed = domain.get("authorized_recipients") or frozenset()
        for copy in draft.copies:
            for rcpt in copy.recipients:
                if rcpt.lower() not in allowed:
                    raise NotAllowed(
                        f"Domain {domain['name']} is not allowed to send: Unverified domains are for test purposes"
                        " only. Please verify the domain or add the address to authorized recipients in"
                        " Account Settings.")

    def commit(self, batch: list[Accepted]) -> list[BaseException | None]:
        """The second half of accept() for a caller that batches accepts itself (the SMTP server's
        commit stage): one transaction now; None per accept committed, or what refused it (a value
        the database refused fails only its own accept). Raises if the transaction failed as a whole."""
        try:
            outcomes = write_isolated(self._write, [accepted.stored for accepted in batch], is_data_error)
        except BaseException:
            for accepted in batch:
                accepted.undo()
            raise
        for accepted, (_, error) in zip(batch, outcomes, strict=True):
            if error is None:
                self._count(accepted)
            else:
                accepted.undo()
        return [error for _, error in outcomes]

    def _count(self, accepted: Accepted) -> None:
        self.on_accepted(sum(len(m.recipients) for m in accepted.stored), accepted.method)

    def _rows_for(self, domain: dict, draft: Draft) -> list[_Stored]:
        """Everything the transaction writes for this draft, built before taking a connection."""
        now = time.time()
        due = datetime.fromtimestamp(max(now, draft.deliver_at or now), UTC)
        lifetime = domain.get("message_ttl") or self.settings.message_lifetime
        expires = due + timedelta(seconds=float(lifetime))
        body_expires = datetime.fromtimestamp(now, UTC) + timedelta(seconds=self.settings.body_retention)
        stored = []
        pin = store.egress_pin(draft.options or {})  # the claim leaves mail pinned to another host's IP to it
        # What every copy shares is encoded once (a batch send has a copy per recipient).
        shared = {"tags": store.json_text(draft.tags), "user_variables": store.json_text(draft.user_variables),
                  "options": store.json_text(draft.options), "attachments": store.json_text(draft.attachments)}
        storage_url = f"{self.settings.public_url}/v3/domains/{domain['name']}/messages/"
        scheduled = int(draft.deliver_at) if draft.deliver_at and draft.deliver_at > now else None
        series = None  # a batch send's accepted events: the first copy's, filled in for the others (ItemSeries)
        for number, copy in enumerate(draft.copies):
            message = {"headers": copy.headers, "tags": draft.tags, "user_variables": draft.user_variables,
                       "options": draft.options, "attachments": draft.attachments, "size": len(copy.mime)}
            key = ids.storage_key()
            row = store.message_row(account_id=domain["account_id"], domain_id=domain["id"],
                                    message_id=draft.message_id, storage_key=key, mail_from=draft.mail_from,
                                    method=draft.method, body=self.sealer.seal(copy.mime, key.encode()),
                                    body_expires_at=body_expires, headers=copy.headers, size=len(copy.mime),
                                    message_id_given=draft.message_id_given and number == 0, **shared)
            storage = {"url": storage_url + key, "key": key, "region": self.settings.region}
            # Mailgun's accepted event of scheduled mail (o:deliverytime) says when it leaves, in epoch seconds.
            shown = message if scheduled is None else {**message, "scheduled-for": scheduled}
            texts = None
            if series is not None and all(copy.headers.get(h) == series.sample["message"]["headers"][h] for h in _SHARED):
                made = [series.make((ids.event_id(), copy.headers.get("to"), len(copy.mime), rcpt,
                                     rcpt.rpartition("@")[2], rcpt, storage["url"], key)) for rcpt in copy.recipients]
                events, texts = [data for data, _ in made], [text for _, text in made]
            else:
                events = [item("accepted", message=shown, recipient=rcpt, ts=now, method=draft.method,
                               envelope={"sender": draft.mail_from, "targets": rcpt, "transport": "smtp"},
                               storage=storage)
                          for rcpt in copy.recipients]
                if series is None and events and len(draft.copies) > SERIES_FROM and number == 0:
                    with contextlib.suppress(ValueError):  # a value holding the series' own marker: item() each
                        series = ItemSeries(events[0], _ACCEPTED_VARYING)
            stored.append(_Stored(domain["account_id"], domain["id"], row,
                                  [(r, r.rpartition("@")[2], due, expires, pin) for r in copy.recipients], events,
                                  texts))
        return stored

    def _write(self, batch: list[list[_Stored]]) -> list[None]:
        """One transaction for every accept waiting: messages, their recipients, their events."""
        stored = [m for accepted in batch for m in accepted]
        pks = self._reserve_ids(len(stored))
        recorded: list[NewEvent] = []
        recipients = []
        for pk, m in zip(pks, stored, strict=True):
            account_id, domain_id = m.account_id, m.domain_id
            recipients += [(pk, account_id, domain_id, *r) for r in m.recipients]
            recorded += [NewEvent(account_id, domain_id, pk, data, text)
                         for data, text in zip(m.events, m.texts or [None] * len(m.events), strict=True)]
        # Pipelined, with the message ids known beforehand: the transaction waits on the database once,
        # at commit, instead of once per statement. A batch send's hundreds of rows rather go as COPYs
        # (not possible in a pipeline; insert_columns): a few round trips, against a much cheaper
        # encoding of the rows and cheaper inserts in Postgres.
        copies = len(stored) > COPY_FROM or len(recipients) > COPY_FROM
        with self.db.transaction(bounded=True) if copies else self.db.pipelined() as conn:
            # Pipelined, the rows of messages, recipients, events and stats go as one statement (one_statement;
            # the webhook outbox and tags statements go before it: they read none of them, nor does
            # events.record here, its accepted events carrying their method).
            with contextlib.nullcontext() if copies else one_statement(conn):
                store.insert_messages(conn, [(pk, *m.row) for pk, m in zip(pks, stored, strict=True)])
                store.insert_recipients(conn, recipients)
                self.events.record(conn, recorded)
            if self.activity is not None:
                self.activity.record(conn, {m.account_id for m in stored})
        # Committed: nothing below may fail the batch (a retry would store the messages twice).
        self.events.committed(recorded)
        try:
            self.on_commit()
        except Exception:
            log.exception("waking the relay failed; it finds the messages on its next poll")
        return [None] * len(batch)

    def _reserve_ids(self, n: int) -> list[int]:
        """Message ids from a block this process reserved (ids stay unique; a restart leaves a gap)."""
        with self._message_ids_lock:
            if len(self._message_ids) < n:
                with self.db.transaction(bounded=True) as conn:
                    self._message_ids.extend(store.reserve_message_ids(conn, max(n, MESSAGE_ID_BLOCK)))
            return [self._message_ids.popleft() for _ in range(n)]


def _duplicate_message_id(error: IntegrityError, domain: dict, draft: Draft) -> InvalidMessage | None:
    """The insert refused a caller-given Message-ID the domain already used: a 400 (nothing was stored),
    as any other bad value; None for another unique violation."""
    if getattr(error.diag, "constraint_name", None) != store.GIVEN_MESSAGE_ID_INDEX:
        return None
    return InvalidMessage(f"Message-Id <{draft.message_id}> is already used by another message of domain"
                          f" {domain['name']}; a Message-Id must be unique per domain")


@dataclass
class Accepted:
    """A draft ready to commit: its Message-ID (in angle brackets), how it came in, its rows."""

    message_id: str
    method: str
    stored: list[_Stored]
    give_back: list[Callable[[], None]] = field(default_factory=list)  # the checks' undos (quota)

    def undo(self) -> None:
        """The accept failed: give back what its checks took (once)."""
        undo, self.give_back = self.give_back, []
        self.undo_all(undo)

    @staticmethod
    def undo_all(undo: list[Callable[[], None]]) -> None:
        for give_back in undo:
            try:
                give_back()
            except Exception:
                log.exception("giving back what a check took failed")


@dataclass
class _Stored:
    """One stored copy of a message: its account and domain, its row (store.message_row), (address,
    domain, due, expires) per recipient, its events."""

    account_id: int
    domain_id: int
    row: tuple
    recipients: list[tuple]
    events: list[dict]
    texts: list[str] | None = None  # the events' JSON, where made with them (ItemSeries)
