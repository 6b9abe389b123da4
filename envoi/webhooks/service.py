"""Webhooks: Mailgun-compatible endpoint management, signing keys, the outbox and one delivery attempt.

Flow: an events writer inserts one outbox row per (event, subscribed URL) inside the transaction that
records the events, so a webhook exists exactly when its event was committed. After commit a listener
rings a Redis doorbell; the dispatcher (`envoi webhooks dispatch`, webhooks.dispatch) leases due rows
from Postgres in batches, POSTs them concurrently and writes the attempts in batches. Postgres is the
truth: a killed dispatcher or a lost ring only delays a delivery until its lease runs out and a
dispatcher takes it again.
"""

from __future__ import annotations

import json
import logging
import secrets
import threading
import time
from datetime import UTC

from envoi.events.service import NewEvent
from envoi.infra.crypto import Sealer, hmac_sha256_hex
from envoi.infra.db import Connection, Cursor, Database
from envoi.infra.metrics import Metrics
from envoi.infra.redis import Doorbell
from envoi.infra.settings import Settings
from envoi.webhooks import secret_url, ssrf, store
from envoi.webhooks.errors import Conflict, InvalidInput, NotFound

log = logging.getLogger("envoi.webhooks")
EVENT_TYPES = ("accepted", "delivered", "opened", "clicked", "unsubscribed", "complained",
               "permanent_fail", "temporary_fail")
MAX_URLS = 3
BACKLOG_SCAN = 20_000  # pending deliveries the operator's per-account backlog looks at (the soonest due)


def event_type_of(data: dict) -> str | None:
    event = data.get("event")
    if event == "failed":
        return "permanent_fail" if data.get("severity") == "permanent" else "temporary_fail"
    return event if event in EVENT_TYPES else None


def signature(key: str, timestamp: str, token: str) -> str:
    """Mailgun's algorithm: hex HMAC-SHA256 keyed with the signing key over timestamp + token."""
    return hmac_sha256_hex(key.encode(), (timestamp + token).encode())


def sample_event(name: str, domain: str) -> dict:
    """The event-data of a test webhook: an event of type NAME about a made-up recipient."""
    event = {"event": "failed", "severity": name.split("_")[0]} if name.endswith("_fail") else {"event": name}
    return {**event, "id": f"test-{secrets.token_hex(11)}", "timestamp": time.time(),
            "recipient": "alice@example.com", "tags": [], "user-variables": {}, "test": True,
            "message": {"headers": {"to": "alice@example.com", "from": f"test@{domain}",
                                    "subject": "Envoi test webhook", "message-id": f"test@{domain}"}}}


def _account_hook(row: dict) -> dict:
    """An account-level webhook as Mailgun's /v1/webhooks shows it."""
    return {"webhook_id": row["hook_id"], "description": row["description"] or "", "url": row["url"],
            "event_types": list(row["event_types"]),
            "created_at": row["created_at"].astimezone(UTC).strftime("%Y-%m-%dT%H:%M:%SZ")}


class Webhooks:
    def __init__(self, settings: Settings, db: Database, sealer: Sealer, redis=None, metrics: Metrics | None = None):
        self.settings = settings
        self.db = db
        self.sealer = sealer
        self.allow = ssrf.Allow.parse(settings.webhook_allow)
        self.doorbell = Doorbell(redis, f"envoi:{settings.region}:webhooks:wakeup") if redis is not None else None
        self.queue_name = f"envoi-{settings.region}-webhooks"
        # The outbox statement of each events batch being written (by id of the batch's list, which
        # Events hands to the writers and, once committed, to the listeners), until the listener reads it.
        self._outboxes: dict[int, Cursor] = {}
        self._lock = threading.Lock()
        self.metrics = metrics  # attempts by outcome and their duration
        self._opened: dict[tuple[int, bytes], str] = {}  # (account, sealed signing key) -> the key

    # management (v3: per event type) ----------------------------------------------------------
    @staticmethod
    def erase_recipient(conn: Connection, account_id: int, address: str) -> int:
        """Drop queued and past webhook payloads about this address (erasure request)."""
        return store.erase_recipient(conn, account_id, address)

    def _check_type(self, name: str) -> str:
        if name not in EVENT_TYPES:
            raise InvalidInput(f"Invalid webhook name '{name}': use one of {', '.join(EVENT_TYPES)}")
        return name

    def _check_urls(self, urls: list[str]) -> list[str]:
        """The URLs, checked, one per masked form (the last of any that differ only in password)."""
        urls = list({secret_url.redact(u): u for u in (u.strip() for u in urls if u and u.strip())}.values())
        if not urls:
            raise InvalidInput("url parameter is missing")
        if len(urls) > MAX_URLS:
            raise InvalidInput(f"at most {MAX_URLS} URLs per webhook")
        for url in urls:
            try:
                ssrf.check(url, self.allow)
            except ssrf.UnsafeURL as ex:
                raise InvalidInput(f"Invalid url {secret_url.redact(url)!r}: {secret_url.scrub(str(ex), url)}") from ex
        return urls

    def _stored(self, domain: dict, url: str) -> tuple[str, bytes | None]:
        """(url with its password masked, the full url sealed, or None without a password)."""
        shown, password = secret_url.split(url)
        if password is None:
            return url, None
        return shown, self.sealer.seal(url.encode(), secret_url.context(domain["id"]))

    def all(self, domain: dict) -> dict:
        with self.db.transaction() as conn:
            rows = store.list_urls(conn, domain["id"])
        hooks: dict[str, dict] = {}
        for row in rows:
            hooks.setdefault(row["event_type"], {"urls": []})["urls"].append(row["url"])
        return {"webhooks": hooks}

    def get(self, domain: dict, name: str) -> dict:
        self._check_type(name)
        with self.db.transaction() as conn:
            urls = store.urls_for(conn, domain["id"], name)
        if not urls:
            raise NotFound("Webhook not found")
        return {"webhook": {"urls": urls}}

    def create(self, domain: dict, name: str, urls: list[str]) -> dict:
        self._check_type(name)
        urls = self._check_urls(urls)
        with self.db.transaction() as conn:
            store.lock_domain(conn, domain["id"])
            if store.urls_for(conn, domain["id"], name):
                raise InvalidInput(f"Webhook {name} already exists: use PUT to change its urls")
            store.set_urls(conn, domain["account_id"], domain["id"], name, [self._stored(domain, u) for u in urls])
        return {"message": "Webhook has been created", "webhook": {"urls": [secret_url.redact(u) for u in urls]}}

    def update(self, domain: dict, name: str, urls: list[str]) -> dict:
        self._check_type(name)
        urls = self._check_urls(urls)
        with self.db.transaction() as conn:
            store.lock_domain(conn, domain["id"])
            if not store.urls_for(conn, domain["id"], name):
                raise NotFound("Webhook not found")
            store.set_urls(conn, domain["account_id"], domain["id"], name, [self._stored(domain, u) for u in urls])
        return {"message": "Webhook has been updated", "webhook": {"urls": [secret_url.redact(u) for u in urls]}}

    def delete(self, domain: dict, name: str) -> dict:
        self._check_type(name)
        with self.db.transaction() as conn:
            store.lock_domain(conn, domain["id"])
            urls = store.urls_for(conn, domain["id"], name)
            if not urls:
                raise NotFound("Webhook not found")
            store.set_urls(conn, domain["account_id"], domain["id"], name, [])
        return {"message": "Webhook has been deleted", "webhook": {"urls": urls}}

    # management (v4: URL-centric) -------------------------------------------------------------
    def v4_add(self, domain: dict, url: str, event_types: list[str], *, replace: bool) -> dict:
        [url] = self._check_urls([url])
        types = list(dict.fromkeys(self._check_type(t.strip()) for t in event_types if t.strip()))
        if not types:
            raise InvalidInput("event_types parameter is missing")
        shown, sealed = self._stored(domain, url)
        with self.db.transaction() as conn:
            store.lock_domain(conn, domain["id"])
            for name in EVENT_TYPES:
                current = store.urls_for(conn, domain["id"], name)
                if name in types:
                    if shown not in current and len(current) >= MAX_URLS:
                        raise InvalidInput(f"webhook {name} already has {MAX_URLS} urls")
                    store.add_url(conn, domain["account_id"], domain["id"], name, shown, sealed)
                elif replace and shown in current:
                    store.remove_url(conn, domain["id"], name, shown)
        return self.all(domain)

    def v4_delete(self, domain: dict, urls: list[str]) -> dict:
        urls = [secret_url.redact(u.strip()) for u in urls if u.strip()]  # with or without the password
        if not urls:
            raise InvalidInput("url parameter is missing")
        with self.db.transaction() as conn:
            store.lock_domain(conn, domain["id"])
            store.delete_urls(conn, domain["id"], urls)
        return self.all(domain)

    # account level (Mailgun's /v1/webhooks): one URL, several event types, every domain ------------
    def account_list(self, account_id: int, hook_ids: list[str] | None = None) -> dict:
        with self.db.transaction() as conn:
            rows = store.account_hooks(conn, account_id, hook_ids)
        return {"webhooks": [_account_hook(r) for r in rows]}

    def account_get(self, account_id: int, hook_id: str) -> dict:
        with self.db.transaction() as conn:
            rows = store.account_hooks(conn, account_id, [hook_id])
        if not rows:
            raise NotFound(f"webhook_id not found: {hook_id}")
        return _account_hook(rows[0])

    def account_create(self, account_id: int, url: str, event_types: list[str], description: str) -> dict:
        url, types = self._check_account_hook(url, event_types)
        hook_id = secrets.token_hex(12)  # Mailgun's ids are 24 hex digits
        with self.db.transaction() as conn:
            store.lock_account(conn, account_id)
            self._check_room(store.account_urls_by_type(conn, account_id), url, types)
            store.insert_account_hook(conn, account_id, hook_id, url, description, types)
        return {"webhook_id": hook_id}

    def account_update(self, account_id: int, hook_id: str, url: str, event_types: list[str],
                       description: str) -> None:
        """Replace the webhook's URL, event types and description (Mailgun's PUT replaces it whole)."""
        url, types = self._check_account_hook(url, event_types)
        with self.db.transaction() as conn:
            store.lock_account(conn, account_id)
            [old] = store.account_hooks(conn, account_id, [hook_id]) or [None]
            if old is None:
                raise NotFound(f"webhook_id not found: {hook_id}")
            self._check_room(store.account_urls_by_type(conn, account_id, except_hook=hook_id), url, types)
            store.delete_account_hooks(conn, account_id, [hook_id])
            store.insert_account_hook(conn, account_id, hook_id, url, description, types, old["created_at"])

    def account_delete(self, account_id: int, hook_ids: list[str] | None) -> None:
        """Delete these account-level webhooks (None: all of them); NotFound when none was there."""
        with self.db.transaction() as conn:
            store.lock_account(conn, account_id)
            deleted = store.delete_account_hooks(conn, account_id, hook_ids)
        if not deleted:
            raise NotFound("no webhooks found for account" if hook_ids is None
                           else f"webhook_id not found: {', '.join(hook_ids)}")

    def _check_account_hook(self, url: str, event_types: list[str]) -> tuple[str, list[str]]:
        types = [t.strip() for t in event_types if t.strip()]
        if not types:
            raise InvalidInput("event_types parameter is missing")
        if len(set(types)) != len(types):
            dupes = sorted({t for t in types if types.count(t) > 1})
            raise InvalidInput(f"duplicate event types: {', '.join(repr(t) for t in dupes)}")
        for name in types:
            self._check_type(name)
        [url] = self._check_urls([url or ""])
        if secret_url.split(url)[1] is not None:
            # The outbox opens a sealed URL under its event's domain (secret_url.context): an account-level
            # URL has no domain to be sealed under, so it may not carry a password.
            raise InvalidInput("an account-level webhook url cannot carry a password: put a secret in its path"
                               " or query, or use a domain webhook")
        return url, types

    @staticmethod
    def _check_room(current: dict[str, list[str]], url: str, types: list[str]) -> None:
        for name in types:
            urls = current.get(name, [])
            if url in urls:
                raise InvalidInput(f"url {url} is already an account-level webhook for event type {name}")
            if len(urls) >= MAX_URLS:
                raise Conflict(f"unable to add more than {MAX_URLS} urls for event type {name}")

    # signing key ------------------------------------------------------------------------------
    def _context(self, account_id: int) -> bytes:
        return f"webhook-signing-key:{account_id}".encode()

    def signing_key(self, account_id: int) -> str:
        with self.db.transaction() as conn:
            sealed = store.get_signing_key(conn, account_id)
            if sealed is None:
                sealed = store.insert_signing_key(conn, account_id, self._new_key(account_id))
        return self.sealer.open(sealed, self._context(account_id)).decode()

    def regenerate_signing_key(self, account_id: int) -> str:
        with self.db.transaction() as conn:
            store.replace_signing_key(conn, account_id, self._new_key(account_id))
        return self.signing_key(account_id)

    def _new_key(self, account_id: int) -> bytes:
        return self.sealer.seal(secrets.token_hex(16).encode(), self._context(account_id))

    # outbox -----------------------------------------------------------------------------------
    def events_writer(self, conn: Connection, events: list[NewEvent]) -> None:
        """Inside the events' transaction: one outbox row per (event, subscribed URL), matched in SQL."""
        typed = [(ev.account_id, ev.domain_id, t, ev.data["id"], ev.json) for ev in events
                 if (t := event_type_of(ev.data))]
        if typed and (outbox := store.enqueue_for_events(conn, typed)) is not None:
            with self._lock:
                if len(self._outboxes) > 10_000:  # rolled-back batches leave entries behind: stay bounded
                    self._outboxes.clear()
                self._outboxes[id(events)] = outbox

    def events_listener(self, events: list[NewEvent]) -> None:
        """After commit: wake the dispatcher if this batch's outbox statement made rows (it has run by
        now: its row count is known, whichever thread asks)."""
        with self._lock:
            outbox = self._outboxes.pop(id(events), None)
        if outbox is not None and outbox.rowcount > 0 and self.doorbell is not None:
            self.doorbell.ring()

    def release(self, ids: list[int]) -> None:
        """Give leased deliveries back (a stopping dispatcher): due again at once, for any dispatcher."""
        with self.db.transaction() as conn:
            released = store.release(conn, ids)
        if released and self.doorbell is not None:
            self.doorbell.ring()

    def claim(self, limit: int, finished: list[int] = (), results: list[tuple] = (),
              health: list[tuple] = (), queued: list[int] = (),
              ahead: list[tuple[int, str, int]] = ()) -> tuple[list[dict], dict[int, str]]:
        """Lease up to `limit` due deliveries fairly (store.claim) for a dispatcher; returns them and the
        signing keys of their accounts. `finished`: its leased rows whose requests have ended, results
        not yet written. `results`, `health`: a batch of results written first, in the same transaction
        (store.record_results), so the claim counts their rows as done. `queued`, `ahead`: its rows
        leased ahead and not started, and the pairs to lease ahead for (store.claim)."""
        with self.db.pipelined() as conn:  # the results, the lock and the claim in one round trip
            if results or health:
                store.record_results(conn, list(results), list(health))
            rows = store.claim(conn, self.settings.webhook_per_endpoint, self.settings.webhook_per_account, limit,
                               self.settings.webhook_lease, finished, queued, ahead)
        keys = {}
        for row in rows:
            account_id = row["account_id"]
            if account_id not in keys:
                sealed = row["key_sealed"]
                keys[account_id] = self.signing_key(account_id) if sealed is None else self._open_key(account_id,
                                                                                                     bytes(sealed))
        return rows, keys

    def _open_key(self, account_id: int, sealed: bytes) -> str:
        """A signing key as stored now (each claim reads it), opened once per sealed value: a key
        regenerated is a new sealed value, so it is used from the next claim on."""
        key = self._opened.get((account_id, sealed))
        if key is None:
            if len(self._opened) > 10_000:
                self._opened.clear()
            key = self._opened[(account_id, sealed)] = self.sealer.open(sealed, self._context(account_id)).decode()
        return key

    def target(self, row: dict) -> str:
        """The URL to POST to: row["url"] has any password masked; the full URL is sealed beside it."""
        if row["url_sealed"] is None:
            return row["url"]
        return self.sealer.open(row["url_sealed"], secret_url.context(row["domain_id"])).decode()

    @staticmethod
    def body(key: str, payload: dict) -> bytes:
        """Mailgun's webhook body: a fresh signature (timestamp, token) and the event-data."""
        timestamp, token = str(int(time.time())), secrets.token_hex(25)
        return json.dumps({"signature": {"timestamp": timestamp, "token": token,
                                         "signature": signature(key, timestamp, token)},
                           "event-data": payload}, separators=(",", ":")).encode()

    @staticmethod
    def body_of_json(key: str, payload_json: str) -> bytes:
        """body(), with the event-data already as JSON text (as the dispatcher claims it)."""
        timestamp, token = str(int(time.time())), secrets.token_hex(25)
        return (f'{{"signature":{{"timestamp":"{timestamp}","token":"{token}","signature":'
                f'"{signature(key, timestamp, token)}"}},"event-data":{payload_json}}}').encode()

    def judge(self, row: dict, status: int | None, *, retry: bool = True) -> tuple[str, str, float | None]:
        """(outcome, new state, seconds to the next attempt) of an attempt that got `status`."""
        if status is not None and 200 <= status < 300:
            return "delivered", "delivered", None
        if status in (406, 410):
            return "rejected", "rejected", None  # Mailgun: 406 means "stop retrying"; 410 Gone says the same
        if not retry or time.time() - row["created_at"].timestamp() >= self.settings.webhook_retry_for:
            return "failed", "failed", None
        schedule = self.settings.webhook_retry_schedule or (300,)
        return "retry", "pending", schedule[min(row["attempts"], len(schedule) - 1)]

    def record(self, results: list[tuple], health: list[tuple]) -> None:
        """Write a batch of attempts and endpoint health (store.record_results: one statement)."""
        with self.db.transaction() as conn:
            store.record_results(conn, results, health)

    def failing_endpoints(self, account_id: int | None = None, limit: int = 50) -> list[dict]:
        """Endpoints failing now, oldest failure first, each with its pending backlog (for the dashboard)."""
        with self.db.transaction() as conn:
            return store.failing_endpoints(conn, account_id, limit)

    def backlog_by_account(self, limit: int = 50, scan: int = BACKLOG_SCAN) -> list[dict]:
        """The accounts with the most due deliveries (over the `scan` due soonest): for the metrics."""
        with self.db.transaction() as conn:
            return store.backlog_head(conn, limit, scan)["accounts"]

    # one attempt ------------------------------------------------------------------------------
    def deliver(self, delivery_id: int, *, retry: bool = True) -> str:
        """Make one attempt for an outbox row and record it. Returns the outcome. retry=False: a failed
        attempt is final (a test sends once)."""
        timeout = self.settings.webhook_timeout
        with self.db.transaction() as conn:
            row = store.start(conn, delivery_id, timeout * 2 + 5)  # None: done, running or not due yet
            sealed = store.get_signing_key(conn, row["account_id"]) if row is not None else None
        if row is None:
            return "skipped"
        if sealed is None:
            key = self.signing_key(row["account_id"])
        else:
            key = self.sealer.open(sealed, self._context(row["account_id"])).decode()
        body = self.body(key, row["payload"])
        target = self.target(row)
        response = ssrf.post(target, body, self.allow, timeout)
        response.error = secret_url.scrub(response.error, target)
        attempt_no = row["attempts"] + 1
        status = response.status
        outcome, state, next_in = self.judge(row, status, retry=retry)
        with self.db.transaction() as conn:
            store.insert_attempt(conn, delivery_id, row["domain_id"], attempt_no, status, response.error,
                                 response.latency_ms, response.excerpt, outcome)
            store.finish(conn, delivery_id, status=state, attempts=attempt_no, last_status=status,
                         next_in=next_in)
        if self.metrics is not None:
            self.metrics.observe_webhook(outcome, response.latency_ms / 1000)
        if outcome != "delivered":
            log.info("webhook %s to %s: %s (%s)", delivery_id, row["url"], outcome, status or response.error)
        return outcome

    def send_test(self, domain: dict, name: str) -> list[dict]:
        """POST a sample event of type NAME to each of the domain's URLs for it, now, through the delivery's
        own path (signed with the account's key, the SSRF guard, recorded in the attempts log), once.
        Returns per URL: {url, outcome, status, error, response, latency_ms}."""
        self._check_type(name)
        payload = sample_event(name, domain["name"])
        with self.db.transaction() as conn:
            ids = store.insert_test_deliveries(conn, domain["account_id"], domain["id"], name,
                                               payload["id"], payload)
        if not ids:
            raise NotFound("Webhook not found")
        for delivery_id in ids:
            self.deliver(delivery_id, retry=False)
        with self.db.transaction() as conn:
            rows = store.last_attempts(conn, ids)
        return [{"url": r["url"], "outcome": r["outcome"], "status": r["status_code"], "error": r["error"],
                 "response": r["response"], "latency_ms": r["latency_ms"]} for r in rows]

    def backlog(self) -> int:
        """Deliveries due now and not in flight (for the backlog gauge)."""
        with self.db.transaction() as conn:
            return store.backlog(conn)

    def backlog_overview(self, *, limit: int = 20, scan: int = BACKLOG_SCAN) -> dict:
        """For the operator: {"due" (exact, as the gauge), "oldest_due_at", "accounts": top `limit` by
        due deliveries, counted over the `scan` due soonest, "scanned", "complete"}."""
        with self.db.transaction() as conn:
            due = store.backlog(conn)
            head = store.backlog_head(conn, limit, scan)
        return {"due": due, **head, "scanned": min(due, scan), "complete": due <= scan}

    def purge_expired(self) -> int:
        """Webhook payloads are event data: they go when the events do (ENVOI_EVENT_RETENTION)."""
        total = 0
        while True:
            with self.db.transaction() as conn:
                n = store.purge(conn, self.settings.event_retention)
            total += n
            if n < 5000:
                return total

    def attempts(self, domain: dict, name: str | None, params: dict) -> dict:
        if name is not None:
            self._check_type(name)
        try:
            limit = int(params.get("limit") or 100)
            before = int(params["before"]) if params.get("before") else None
        except ValueError as ex:
            raise InvalidInput("limit and before must be integers") from ex
        if not 1 <= limit <= 300:
            raise InvalidInput("limit must be between 1 and 300")
        with self.db.transaction() as conn:
            url = secret_url.redact(params["url"]) if params.get("url") else None
            rows = store.attempts(conn, domain["id"], name, url, before, limit)
        items = [{
            "id": r["id"], "delivery_id": r["delivery_id"], "webhook": r["event_type"], "url": r["url"],
            "event_id": r["event_id"], "attempt": r["attempt_no"], "status": r["status_code"],
            "error": r["error"], "latency_ms": r["latency_ms"], "response": r["response"], "outcome": r["outcome"],
            "delivery_status": r["delivery_status"], "timestamp": r["attempted_at"].timestamp(),
            "event-data": r["payload"],  # what was sent (the body's event-data; the signature is not kept)
        } for r in rows]
        base = f"{self.settings.public_url}/v3/domains/{domain['name']}/webhooks"
        base += f"/{name}/attempts" if name else "/attempts"
        paging = {"next": f"{base}?limit={limit}&before={rows[-1]['id']}"} if len(rows) == limit else {}
        return {"items": items, "paging": paging}
