"""Inbound routes: Mailgun's /v3/routes (per account) and what the inbound MX does with mail for the
account's receiving domains.

`Routes` manages routes. `Receiving` is the inbound MX's side:

* `check_recipient()` at RCPT: an address at a domain of this region whose account has a route that
  may match it is accepted; a domain we do not serve gets 550 5.7.1 (never an open relay), an address
  no route can take 550 5.1.1.
* `receive()` at DATA, for each routed recipient in ONE transaction: the message (sealed, kept 3 days
  like Mailgun's store()), one outbox row per forward(url) / store(notify=url) and one for the
  forward(address) targets, and the events (`accepted` with flags.is-routed, `stored` for store()).
* `post_due()` (the listener's poster thread) does the outbox after commit: POSTs signed with the
  account's webhook signing key, through the webhooks' SSRF guard; forward(address) as the account's
  own mail through Intake (counted, quota-checked; the From header is the original's, the envelope the
  receiving domain's). Retried on Mailgun's schedule (10 min, 15 min, 30 min, 1 h, 2 h, 4 h) for 8
  hours; a 2xx is done, a 406 stops, a refusal of the forward (quota, sandbox) is final.

A mailing list's address (docs/mailing-lists.md) that no route may take is the list's: accepted at RCPT
when the envelope sender may post (its access level), stored like a routed message and queued as a
"mail" post to the list address, so the forward goes through Intake, which expands it to the members.
A route that may match the address wins over the list: the account chose to handle that address itself.
"""

from __future__ import annotations

import dataclasses
import email.policy
import json
import logging
import secrets
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from datetime import UTC
from email.parser import BytesHeaderParser
from email.utils import format_datetime

from envoi.accounts.service import Accounts
from envoi.events.service import Events, NewEvent, item
from envoi.infra import ids
from envoi.infra.crypto import Sealer
from envoi.infra.db import Database
from envoi.infra.errors import EnvoiError, TemporaryFailure
from envoi.lists.service import MailingLists
from envoi.mta.compose import from_mime
from envoi.mta.errors import InvalidRoute, RouteNotFound
from envoi.mta.routes import expressions, parsed
from envoi.mta.routes import store as rstore
from envoi.webhooks import secret_url, ssrf
from envoi.webhooks.service import Webhooks, signature

log = logging.getLogger("envoi.routes")
MAILGUN_RETRY_SCHEDULE = (600, 900, 1800, 3600, 7200, 14400)
RETRY_FOR = 8 * 3600.0  # Mailgun retries route POSTs for 8 hours
KEEP_SECONDS = 3 * 86400.0  # store(): Mailgun keeps messages up to 3 days
MAX_LIMIT = 1000
NOT_A_POSTER = "550 5.7.1 Not allowed to post to this mailing list"
MAX_FORWARD_HOPS = 5  # an X-Envoi-Forwarded header per forward(address): more is a loop
ROUTE_CACHE_SECONDS = 2.0  # a route or domain change reaches the inbound MX within this
KEY_CACHE_SECONDS = 10.0  # a regenerated signing key signs route posts within this
POST_CONCURRENCY = 8


def route_json(row: dict) -> dict:
    return {"id": row["id"], "priority": row["priority"], "description": row["description"],
            "expression": row["expression"], "actions": list(row["actions"]),
            "created_at": format_datetime(row["created_at"].astimezone(UTC), usegmt=True)}


class Routes:
    def __init__(self, db: Database, sealer: Sealer, webhooks: Webhooks, public_url: str):
        self.db = db
        self.sealer = sealer
        self.allow = webhooks.allow
        self.public_url = public_url.rstrip("/")

    # checks ---------------------------------------------------------------------------------
    def _check(self, expression: str | None, actions: list[str] | None) -> None:
        try:
            if expression is not None:
                expressions.parse_filter(expression)
            for text in actions or ():
                action = expressions.parse_action(text)
                for url in [*action.urls(), *([action.notify] if action.notify else [])]:
                    try:
                        ssrf.check(url, self.allow)
                    except ssrf.UnsafeURL as ex:
                        raise InvalidRoute(f"Invalid url {url!r}: {ex}") from ex
        except expressions.InvalidExpression as ex:
            raise InvalidRoute(str(ex)) from ex

    @staticmethod
    def _priority(value: str | None) -> int:
        try:
            priority = int(value if value not in (None, "") else 0)
        except ValueError as ex:
            raise InvalidRoute("priority must be an integer") from ex
        if not 0 <= priority <= 2**31 - 1:
            raise InvalidRoute("priority must be between 0 and 2147483647")
        return priority

    # API ------------------------------------------------------------------------------------
    def create(self, account_id: int, *, priority: str | None, description: str | None, expression: str | None,
               actions: list[str]) -> dict:
        if not expression:
            raise InvalidRoute("expression parameter is missing")
        actions = [a for a in actions if a.strip()]
        if not actions:
            raise InvalidRoute("action parameter is missing")
        self._check(expression, actions)
        with self.db.transaction() as conn:
            row = rstore.insert_route(conn, secrets.token_hex(12), account_id, self._priority(priority),
                                      description or "", expression, actions)
        return {"message": "Route has been created", "route": route_json(row)}

    def list(self, account_id: int, skip: str | None, limit: str | None) -> dict:
        try:
            skip_n, limit_n = int(skip or 0), int(limit or 100)
        except ValueError as ex:
            raise InvalidRoute("skip and limit must be integers") from ex
        if skip_n < 0 or not 1 <= limit_n <= MAX_LIMIT:
            raise InvalidRoute(f"skip must be 0 or more and limit between 1 and {MAX_LIMIT}")
        with self.db.transaction() as conn:
            total, rows = rstore.list_routes(conn, account_id, skip_n, limit_n)
        return {"total_count": total, "items": [route_json(r) for r in rows]}

    def get(self, account_id: int, route_id: str) -> dict:
        with self.db.transaction() as conn:
            row = rstore.get_route(conn, account_id, route_id)
        if row is None:
            raise RouteNotFound()
        return {"route": route_json(row)}

    def update(self, account_id: int, route_id: str, *, priority: str | None, description: str | None,
               expression: str | None, actions: list[str]) -> dict:
        changes: dict = {}
        if priority not in (None, ""):
            changes["priority"] = self._priority(priority)
        if description is not None:
            changes["description"] = description
        if expression:
            changes["expression"] = expression
        actions = [a for a in actions if a.strip()]
        if actions:
            changes["actions"] = actions
        self._check(expression or None, actions)
        with self.db.transaction() as conn:
            row = (rstore.update_route(conn, account_id, route_id, changes) if changes
                   else rstore.get_route(conn, account_id, route_id))
        if row is None:
            raise RouteNotFound()
        return {**route_json(row), "message": "Route has been updated"}

    def delete(self, account_id: int, route_id: str) -> dict:
        with self.db.transaction() as conn:
            if not rstore.delete_route(conn, account_id, route_id):
                raise RouteNotFound()
        return {"message": "Route has been deleted", "id": route_id}


    # stored messages --------------------------------------------------------------------------
    def stored(self, domain: dict, storage_key: str) -> tuple[dict, bytes] | None:
        """(row, raw) of a message a store() action kept, while it is kept; None otherwise."""
        with self.db.transaction() as conn:
            row = rstore.stored_message(conn, domain["id"], storage_key)
        if row is None:
            return None
        return row, self.sealer.open(row["raw"], storage_key.encode())

    def stored_json(self, domain: dict, storage_key: str) -> dict | None:
        found = self.stored(domain, storage_key)
        if found is None:
            return None
        row, raw = found
        url = f"{self.public_url}/v3/domains/{domain['name']}/messages/{storage_key}"
        return parsed.stored_json(raw, recipient=row["recipient"], sender=row["sender"], domain=domain["name"],
                                  message_url=url)

    @staticmethod
    def received_about(conn, account_id: int, address: str) -> list[dict]:
        """A data subject's export: the messages received for or from ADDRESS (lower case), without
        their content (the storage URL serves that while it is kept)."""
        return rstore.inbound_about(conn, account_id, address)

    @staticmethod
    def erase_address(conn, account_id: int, address: str) -> int:
        """Erasure: the messages received for or from ADDRESS (lower case) and their pending posts."""
        return rstore.erase_address(conn, account_id, address)

    def purge_expired(self, batch: int = 1000) -> int:
        total = 0
        while True:
            with self.db.transaction() as conn:
                done = rstore.purge_expired(conn, batch)
            total += done
            if done < batch:
                return total


@dataclasses.dataclass
class Received:
    """What one inbound message came to (logs, tests)."""

    routed: list[tuple[str, list[str]]] = dataclasses.field(default_factory=list)  # (recipient, route ids)
    dropped: list[str] = dataclasses.field(default_factory=list)  # recipients no route matched
    message_ids: list[int] = dataclasses.field(default_factory=list)  # inbound_messages rows
    listed: list[str] = dataclasses.field(default_factory=list)  # mailing list addresses posted to


class Receiving:
    def __init__(self, db: Database, sealer: Sealer, events: Events, accounts: Accounts, intake, webhooks: Webhooks,
                 *, public_url: str, timeout: float = 10.0, retry_schedule: tuple = MAILGUN_RETRY_SCHEDULE,
                 retry_for: float = RETRY_FOR, keep_seconds: float = KEEP_SECONDS,
                 lists: MailingLists | None = None):
        self.db, self.sealer, self.events, self.accounts, self.intake = db, sealer, events, accounts, intake
        self.lists = lists  # None: list addresses are not received (only routes)
        self.webhooks = webhooks
        self.allow = webhooks.allow
        self.public_url = public_url.rstrip("/")
        self.timeout, self.retry_schedule, self.retry_for = timeout, retry_schedule, retry_for
        self.keep_seconds = keep_seconds
        self._cache: dict[int, tuple[float, list]] = {}
        self._domains: dict[str, tuple[float, dict | None]] = {}
        self._keys: dict[int, tuple[float, str]] = {}
        self._lock = threading.Lock()
        self._pool = ThreadPoolExecutor(POST_CONCURRENCY, thread_name_prefix="envoi-route-post")

    # routes of an account, parsed, briefly cached (every RCPT reads them) ---------------------
    def _routes(self, account_id: int) -> list[tuple[str, expressions.Filter, list[expressions.Action]]]:
        now = time.monotonic()
        with self._lock:
            hit = self._cache.get(account_id)
        if hit is not None and now - hit[0] < ROUTE_CACHE_SECONDS:
            return hit[1]
        with self.db.transaction() as conn:
            rows = rstore.all_routes(conn, account_id)
        parsed_routes = []
        for row in rows:
            try:
                parsed_routes.append((row["id"], expressions.parse_filter(row["expression"]),
                                      [expressions.parse_action(a) for a in row["actions"]]))
            except expressions.InvalidExpression:
                log.warning("route %s of account %s no longer parses; skipped", row["id"], account_id)
        with self._lock:
            self._cache[account_id] = (now, parsed_routes)
        return parsed_routes

    def _domain(self, address: str) -> tuple[str, dict | None]:
        address = (address or "").strip().strip("<>")
        local, at, domain = address.rpartition("@")
        if not at or not local or not domain or len(address) > 320:
            return address, None
        name = domain.lower().rstrip(".")
        now = time.monotonic()
        with self._lock:
            hit = self._domains.get(name)
        if hit is None or now - hit[0] >= ROUTE_CACHE_SECONDS:
            with self.db.transaction() as conn:
                hit = (now, rstore.receiving_domain(conn, name))
            with self._lock:
                if len(self._domains) > 10_000:  # bounded: random domains at RCPT must not grow it
                    self._domains.clear()
                self._domains[name] = hit
        return f"{local}@{domain.lower()}", hit[1]

    def _signing_key(self, account_id: int) -> str:
        now = time.monotonic()
        with self._lock:
            hit = self._keys.get(account_id)
        if hit is None or now - hit[0] >= KEY_CACHE_SECONDS:
            hit = (now, self.webhooks.signing_key(account_id))
            with self._lock:
                self._keys[account_id] = hit
        return hit[1]

    # RCPT -----------------------------------------------------------------------------------
    def check_recipient(self, address: str, sender: str = "") -> str | None:
        """None to accept; else the SMTP reply refusing the address. SENDER (MAIL FROM) decides whether
        a mailing list's address is accepted."""
        address, domain = self._domain(address)
        if domain is None or domain["account_state"] not in ("active",):
            return "550 5.7.1 Relaying denied: we do not receive mail for this domain"
        if any(f.match(address.lower()) is not None for _, f, _ in self._routes(domain["account_id"])):
            return None
        if self._is_list(domain, address):
            return None if self._may_post(domain, address, sender) else NOT_A_POSTER
        return "550 5.1.1 No such user here"

    def _is_list(self, domain: dict, address: str) -> bool:
        return self.lists is not None and bool(self.lists.lists_among(domain["account_id"], [address]))

    def _may_post(self, domain: dict, address: str, sender: str) -> bool:
        """The list's access level for this envelope sender. A null sender (a DSN, an auto-reply) never
        posts: members would get backscatter."""
        sender = (sender or "").strip().strip("<>")
        if not sender:
            return False
        return self.lists.may_post(domain["account_id"], address, sender)  # a list deleted meanwhile: False

    # DATA -----------------------------------------------------------------------------------
    def receive(self, sender: str, recipients: list[str], raw: bytes) -> Received:
        head = BytesHeaderParser(policy=email.policy.default).parsebytes(raw.split(b"\r\n\r\n", 1)[0] + b"\r\n\r\n")
        result = Received()
        if len(head.get_all("X-Envoi-Forwarded", [])) >= MAX_FORWARD_HOPS:
            log.warning("inbound message from %r dropped: forwarding loop (%s hops)", sender, MAX_FORWARD_HOPS)
            result.dropped.extend(recipients)
            return result
        new_events: list[NewEvent] = []
        with self.db.transaction() as conn:
            for rcpt in recipients:
                address, domain = self._domain(rcpt)
                if domain is None:
                    result.dropped.append(rcpt)
                    continue
                plan = expressions.plan(self._routes(domain["account_id"]), address.lower(), head)
                if not plan.route_ids:
                    # Checked again here: RCPT may have let the address through for a route whose
                    # header filter did not match at DATA.
                    if self._is_list(domain, address) and self._may_post(domain, address, sender):
                        self._to_list(conn, domain, address.lower(), sender, raw, head, result, new_events)
                    else:
                        result.dropped.append(address)
                    continue
                key = ids.storage_key()
                sealed = self.sealer.seal(raw, key.encode())
                message_pk = rstore.insert_message(conn, domain["account_id"], domain["id"], key, address, sender,
                                                   plan.store, sealed, self.keep_seconds)
                rstore.insert_posts(conn, domain["account_id"], message_pk,
                                    [("forward", u) for u in plan.urls] + [("notify", u) for u in plan.notify]
                                    + ([("mail", ",".join(plan.addresses))] if plan.addresses else []))
                new_events.extend(self._events(domain, address, head, len(raw), key, plan))
                result.routed.append((address, plan.route_ids))
                result.message_ids.append(message_pk)
            self.events.record(conn, new_events)
        self.events.committed(new_events)
        return result

    def _to_list(self, conn, domain: dict, address: str, sender: str, raw: bytes, head, result: Received,
                 new_events: list[NewEvent]) -> None:
        """A post to a mailing list: kept (sealed, not store()d for the API) until its "mail" post to the
        list address has gone through Intake, which expands it to the subscribed members."""
        key = ids.storage_key()
        message_pk = rstore.insert_message(conn, domain["account_id"], domain["id"], key, address, sender, False,
                                           self.sealer.seal(raw, key.encode()), self.keep_seconds)
        rstore.insert_posts(conn, domain["account_id"], message_pk, [("mail", address)])
        accepted = item("accepted", message=_message(head, len(raw)), recipient=address, method="smtp",
                        **{"mailing-list": {"address": address}})
        accepted["flags"].update({"is-routed": False, "is-authenticated": False})
        new_events.append(NewEvent(domain["account_id"], domain["id"], None, accepted))
        result.listed.append(address)
        result.message_ids.append(message_pk)

    def _events(self, domain: dict, address: str, head, size: int, key: str, plan) -> list[NewEvent]:
        message = _message(head, size)
        storage = {"url": f"{self.public_url}/v3/domains/{domain['name']}/messages/{key}", "key": key}
        accepted = item("accepted", message=message, recipient=address, method="smtp",
                        routes=[{"id": r} for r in plan.route_ids])
        accepted["flags"].update({"is-routed": True, "is-authenticated": False})
        out = [NewEvent(domain["account_id"], domain["id"], None, accepted)]
        if plan.store:
            stored = item("stored", message=message, recipient=address, storage=storage)
            stored["flags"]["is-authenticated"] = False
            out.append(NewEvent(domain["account_id"], domain["id"], None, stored))
        return out

    def _mail(self, row: dict, raw: bytes) -> tuple[str, str | None]:
        """forward(address): the message, as the account's own mail from the receiving domain (the
        route's owner named every target; the original From is kept, the envelope is ours). Returns
        (delivered | pending | failed, error): an outage is retried, a refusal (quota, a suspended
        account, an unverified domain's sandbox) is final."""
        try:
            principal = self.accounts.principal_of_user(row["account_id"])
            domain_row = self.intake.domain_for(principal, row["domain"])
            mime = f"X-Envoi-Forwarded: {row['recipient']}\r\n".encode() + raw
            draft = from_mime(row["domain"], mime, row["target"].split(","), {}, method="smtp")
            own = f"postmaster@{row['domain']}"
            self.intake.accept(principal, domain_row, dataclasses.replace(draft, mail_from=own, from_addresses=[own]))
            return "delivered", None
        except TemporaryFailure as ex:
            return "pending", ex.message
        except EnvoiError as ex:
            return "failed", ex.message
        except Exception as ex:  # anything else is retried (and logged)
            log.exception("forward of inbound message %s failed", row["storage_key"])
            return "pending", type(ex).__name__

    # the outbox: forward(url) and store(notify=url) POSTs ------------------------------------
    def post_due(self, limit: int = 50, only: list[int] | None = None) -> int:
        """Post what is due (leased first, so several posters never post one row twice). Returns the
        number of posts attempted."""
        with self.db.transaction() as conn:
            rows = rstore.claim_posts(conn, limit, self.timeout * 2 + 5, only)
        list(self._pool.map(self._post, rows))  # a few at once: one slow receiver does not hold the rest
        return len(rows)

    def _payload(self, row: dict) -> tuple[bytes, str]:
        raw = self.sealer.open(row["raw"], row["storage_key"].encode())
        timestamp, token = str(int(time.time())), secrets.token_hex(25)
        signed = {"timestamp": timestamp, "token": token,
                  "signature": signature(self._signing_key(row["account_id"]), timestamp, token)}
        if row["kind"] == "notify":
            url = f"{self.public_url}/v3/domains/{row['domain']}/messages/{row['storage_key']}"
            form = parsed.stored_json(raw, recipient=row["recipient"], sender=row["sender"], domain=row["domain"],
                                      message_url=url)
            fields = {k: (v if isinstance(v, str) else json.dumps(v)) for k, v in form.items()}
            return parsed.encode({**fields, **signed}, [])
        mime = row["target"].split("?", 1)[0].rstrip("/").endswith("mime")
        form, files = parsed.fields(raw, recipient=row["recipient"], sender=row["sender"], mime=mime)
        form.update(signed)
        return parsed.encode(form, files)

    def _post(self, row: dict) -> str:
        attempt = row["attempts"] + 1
        status = None
        if row["raw"] is None:
            outcome, error = "failed", "message expired before its route's action was done"
        elif row["kind"] == "mail":
            outcome, error = self._mail(row, self.sealer.open(row["raw"], row["storage_key"].encode()))
        else:
            body, content_type = self._payload(row)
            response = ssrf.post(row["target"], body, self.allow, self.timeout,
                                 headers={"Content-Type": content_type, "User-Agent": "envoi-routes/1"})
            status, error = response.status, response.error
            if status is not None and 200 <= status < 300:
                outcome = "delivered"
            elif status == 406:
                outcome = "rejected"  # Mailgun: 406 means do not retry
            else:
                outcome = "pending"
        if outcome == "pending" and time.time() - row["created_at"].timestamp() >= self.retry_for:
            outcome = "failed"
        next_in = self.retry_schedule[min(attempt - 1, len(self.retry_schedule) - 1)] if outcome == "pending" else 0
        with self.db.transaction() as conn:
            rstore.finish_post(conn, row["id"], status=outcome, attempts=attempt, last_status=status,
                               error=error, next_in=next_in)
        if outcome != "delivered":
            shown = ssrf_safe(row["target"]) if row["kind"] != "mail" else "its forward() addresses"
            log.info("route action %s (%s) to %s: %s (%s)", row["id"], row["kind"], shown, outcome, status or error)
        return outcome


def _message(head, size: int) -> dict:
    """The message part of an inbound message's events."""
    return {"headers": {"to": str(head.get("To", "")), "from": str(head.get("From", "")),
                        "subject": str(head.get("Subject", "")),
                        "message-id": str(head.get("Message-ID", "")).strip().strip("<>")},
            "size": size}


def ssrf_safe(url: str) -> str:
    """A URL for logs: without any password."""
    return secret_url.redact(url)

