"""The live stream of events: a Redis Stream per account, fed after commit, read as Server-Sent Events.

`publish` is an events listener: once a transaction that recorded events has committed, a publisher
thread XADDs each event to its account's stream (capped with MAXLEN, so Redis memory stays bounded);
the recording process never waits on Redis. A reader
XREADs from the last id it saw, so a client that reconnects with `Last-Event-ID` misses nothing
that is still in the stream. Postgres stays the source of truth: the stream is only the fast path,
and an event trimmed away (or lost with Redis) is still in the events API.
"""

from __future__ import annotations

import json
import logging
import re
import threading
import time
from collections.abc import Callable, Collection, Iterator

from envoi.events.errors import EventQueryError, StreamUnavailable, TooManyStreams
from envoi.infra.redis import RedisError
from envoi.infra.threads import kept_alive

log = logging.getLogger(__name__)
STREAM_ID = re.compile(r"^\d{1,20}-\d{1,20}$")
# KEYS: each event's stream, then the lists to ring; ARGV: maxlen, "~" (approximate) or "=", the number of
# lists to ring, then (domain id, event JSON) per event. A ring is envoi.infra.redis.Doorbell's (LPUSH, LTRIM
# to one pending), made in the same round trip (carry_ring).
_XADD_ALL = """
local n = #KEYS - tonumber(ARGV[3])
for i = 1, n do
  redis.call('XADD', KEYS[i], 'MAXLEN', ARGV[2], ARGV[1], '*', 'd', ARGV[2 * i + 2], 'e', ARGV[2 * i + 3])
end
for i = n + 1, #KEYS do
  redis.call('LPUSH', KEYS[i], 1)
  redis.call('LTRIM', KEYS[i], 0, 0)
end
return n
"""


class LiveStream:
    #: Seconds between keep-alive comments when no event flows (proxies close idle connections).
    heartbeat = 15.0
    #: Seconds one XREAD blocks; below the Redis client's socket timeout (5 s).
    block = 2.0
    #: Events read per XREAD.
    batch = 200
    #: Trim to exactly maxlen (tests); by default Redis trims in whole nodes (`MAXLEN ~`), cheaper.
    trim_exact = False
    #: Events waiting for the publisher thread before new ones are dropped (Redis slow or down).
    outbox_max = 50_000

    def __init__(self, redis, region: str, *, maxlen: int = 10_000, max_clients: int = 12,
                 max_seconds: float = 300.0):
        self.redis = redis
        self.region = region
        self.maxlen = maxlen
        self.max_seconds = max_seconds
        self.max_clients = max_clients
        self._slots = threading.BoundedSemaphore(max_clients)
        self._lock = threading.Lock()
        self._wakeup = threading.Condition(self._lock)
        self._outbox: list = []
        self._rings: set[str] = set()  # doorbells to ring with the next publish (carry_ring)
        self._dropped = 0
        self._publisher: threading.Thread | None = None

    def key(self, account_id: int) -> str:
        return f"envoi:{self.region}:events:live:{account_id}"

    # writing --------------------------------------------------------------------------------------
    def publish(self, events: list) -> None:
        """Events listener (after commit): hand the events to the publisher thread and return.

        The caller (an API request, the relay's event loop) never waits on Redis, and a Redis outage
        costs it nothing: the publisher logs, drops what it cannot send (it is in Postgres) and
        carries on."""
        if not events:
            return
        with self._lock:
            if len(self._outbox) >= self.outbox_max:
                self._dropped += len(events)
                return
            self._outbox.extend(events)
            self._publisher = kept_alive(self._publisher, self._publish_loop, "live-stream")
            self._wakeup.notify()

    def carry_ring(self, key: str) -> bool:
        """Ring the doorbell list `key` (envoi.infra.redis.Doorbell) in the round trip that publishes the events
        waiting for the publisher thread; False (nothing done) when none wait.

        PERF: an intake commit publishes its accepted events and rings the relay's doorbell right after. Each
        woke a thread of its own and made a round trip of its own; carried, the ring costs neither."""
        with self._lock:
            if not self._outbox:
                return False
            self._rings.add(key)
            return True

    def _publish_loop(self) -> None:
        while True:
            with self._lock:
                while not self._outbox:
                    self._wakeup.wait()
                batch, self._outbox = self._outbox[:500], self._outbox[500:]
                rings, self._rings = self._rings, set()
                dropped, self._dropped = self._dropped, 0
            if dropped:
                log.warning("live stream: dropped %d events (publisher behind; they are in Postgres)", dropped)
            self.publish_now(batch, rings)

    def publish_now(self, events: list, rings: Collection[str] = ()) -> bool:
        """XADD events to their accounts' streams in one round trip, and ring the doorbell lists `rings`;
        False if Redis failed (a lost ring only delays the relay until its next poll).

        PERF: one script call for the whole batch (its XADDs run in Redis) rather than a pipeline of
        one XADD each: redis-py's per-command Python (arguments, packing, a reply parsed per command)
        was ~5 % of the API's CPU per accepted message."""
        if not events and not rings:
            return True
        keys, args = [], [self.maxlen, "=" if self.trim_exact else "~", len(rings)]
        for ev in events:
            keys.append(self.key(ev.account_id))
            args += (ev.domain_id, ev.json)
        keys += rings
        try:
            # EVAL with the script's text: Redis keeps it compiled by its hash, and there is no NOSCRIPT case.
            self.redis.execute_command("EVAL", _XADD_ALL, len(keys), *keys, *args)
            return True
        except RedisError as ex:
            log.warning("live stream: %s (events are in Postgres; live readers miss them)", ex)
            return False

    # a person's data (export, erasure) ------------------------------------------------------------
    def entries_about(self, account_id: int, needle: str) -> list[tuple[str, dict]]:
        """The account's stream entries whose event mentions `needle` (compared lower-cased, as it
        appears in the event's JSON), oldest first: a data-subject export's view of the live stream."""
        return [(entry_id, json.loads(raw)) for entry_id, raw in self._scan(account_id, needle)]

    def erase_about(self, account_id: int, needle: str) -> int:
        """XDEL every entry of the account's stream that mentions `needle` (an erased person's events,
        and those of a message they shared with others: the stream is only the fast path, the events
        API keeps the scrubbed copies). Returns how many went."""
        ids = [entry_id for entry_id, _ in self._scan(account_id, needle)]
        for start in range(0, len(ids), 500):
            self.redis.xdel(self.key(account_id), *ids[start:start + 500])
        return len(ids)

    def _scan(self, account_id: int, needle: str) -> Iterator[tuple[str, str]]:
        needle = json.dumps(needle.lower())[1:-1]
        key, last = self.key(account_id), "-"
        while True:
            entries = self.redis.xrange(key, last, "+", count=1000)
            for entry_id, fields in entries:
                raw = _text(fields.get(b"e", fields.get("e", b"")))
                if needle in raw.lower():
                    yield _text(entry_id), raw
            if len(entries) < 1000:
                return
            last = "(" + _text(entries[-1][0])

    # reading --------------------------------------------------------------------------------------
    def gap(self, account_id: int, last_id: str) -> dict | None:
        """When a client resumes from an id that was trimmed off the stream (MAXLEN), the events it
        may have missed, as a time window for the events API; None when nothing was missed."""
        key = self.key(account_id)
        first = self.redis.xrange(key, count=1)
        if not first or _id(_text(first[0][0])) <= _id(last_id) or self.redis.xrange(key, last_id, last_id):
            return None
        first_id = _text(first[0][0])
        return {"message": "events recorded while you were away were trimmed from the live stream;"
                           " fetch them from the events API (begin/end below)",
                "last-event-id": last_id, "resumed-at": first_id,
                "begin": _id(last_id)[0] / 1000 - 1, "end": _id(first_id)[0] / 1000 + 1}

    def latest(self, account_id: int) -> str:
        entries = self.redis.xrevrange(self.key(account_id), count=1)
        return _text(entries[0][0]) if entries else "0-0"

    def read(self, account_id: int, last_id: str, block: float | None = None) -> list[tuple[str, int, dict]]:
        """Entries after last_id as (id, domain_id, event item); waits up to `block` seconds."""
        timeout = self.block if block is None else block
        answer = self.redis.xread({self.key(account_id): last_id}, count=self.batch,
                                  block=max(1, int(timeout * 1000)))
        out = []
        for _, entries in answer or []:
            for entry_id, fields in entries:
                fields = {_text(k): v for k, v in fields.items()}
                out.append((_text(entry_id), int(fields["d"]), json.loads(fields["e"])))
        return out

    def open(self, account_id: int, *, domain_id: int | None, matches: Callable[[dict], bool],
             last_event_id: str | None, max_seconds: float | None = None,
             decorate: Callable[[int, dict], dict] | None = None) -> SseBody:
        """An SSE response body for one client; raises TooManyStreams when the process is full."""
        if last_event_id is not None and not STREAM_ID.match(last_event_id):
            raise EventQueryError("Last-Event-ID is not an id this stream gave out")
        if not self._slots.acquire(blocking=False):
            raise TooManyStreams(f"this server already serves {self.max_clients} live streams; retry shortly")
        try:
            start = last_event_id or self.latest(account_id)
            gap = self.gap(account_id, last_event_id) if last_event_id else None
        except RedisError as ex:
            self._slots.release()
            raise StreamUnavailable("the live stream is unavailable right now; the events API has every event") from ex
        except Exception:
            self._slots.release()
            raise
        limit = self.max_seconds if max_seconds is None else min(max_seconds, self.max_seconds)
        body = self._events(account_id, domain_id, matches, start, limit, decorate, gap)
        return SseBody(body, self._slots.release)

    def _events(self, account_id, domain_id, matches, last_id, max_seconds, decorate, gap) -> Iterator[bytes]:
        deadline = time.monotonic() + max_seconds
        # Tell EventSource how soon to reconnect once this response ends at its maximum duration.
        yield b"retry: 1000\n: connected\n\n"
        if gap is not None:
            # A named event: EventSource's onmessage ignores it, addEventListener("gap", ...) gets it.
            yield f"event: gap\ndata: {json.dumps(gap)}\n\n".encode()
        quiet_since = time.monotonic()
        while True:
            left = deadline - time.monotonic()
            if left <= 0:
                return
            try:
                entries = self.read(account_id, last_id, min(self.block, left))
            except RedisError as ex:
                log.warning("live stream read: %s", ex)
                time.sleep(min(1.0, max(left, 0)))
                entries = []
            chunks = []
            for entry_id, entry_domain, data in entries:
                last_id = entry_id
                if domain_id is not None and entry_domain != domain_id:
                    continue
                if not matches(data):
                    continue
                if decorate is not None:
                    data = decorate(entry_domain, data)
                chunks.append(f"id: {entry_id}\ndata: {json.dumps(data, separators=(',', ':'))}\n\n")
            if chunks:
                quiet_since = time.monotonic()
                yield "".join(chunks).encode()
            elif time.monotonic() - quiet_since >= self.heartbeat:
                quiet_since = time.monotonic()
                # An id without data moves the client's Last-Event-ID past events filtered out.
                yield f": keep-alive\nid: {last_id}\n\n".encode()


class SseBody:
    """A WSGI response iterable that frees its stream slot when the server closes it."""

    def __init__(self, events: Iterator[bytes], release: Callable[[], None]):
        self._events = events
        self._release = release
        self._released = False

    def __iter__(self):
        return self

    def __next__(self) -> bytes:
        return next(self._events)

    def close(self) -> None:
        try:
            self._events.close()
        finally:
            if not self._released:
                self._released = True
                self._release()


def _id(stream_id: str) -> tuple[int, int]:
    ms, _, seq = stream_id.partition("-")
    return int(ms), int(seq or 0)


def _text(value) -> str:
    return value.decode() if isinstance(value, bytes) else str(value)
