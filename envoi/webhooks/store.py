"""SQL for webhooks: endpoints, signing keys, the delivery outbox and its attempts."""

from __future__ import annotations

from urllib.parse import urlsplit

from envoi.infra.db import Connection, Cursor, Jsonb

CLAIM_LOCK = 0x77686B73  # "whks": one dispatcher claims at a time (others simply skip a round)


# endpoints ----------------------------------------------------------------------------------------
def list_urls(conn: Connection, domain_id: int) -> list[dict]:
    return conn.execute("SELECT event_type, url FROM webhooks WHERE domain_id = %s ORDER BY event_type, id",
                        (domain_id,)).fetchall()


def urls_for(conn: Connection, domain_id: int, event_type: str) -> list[str]:
    rows = conn.execute("SELECT url FROM webhooks WHERE domain_id = %s AND event_type = %s ORDER BY id",
                        (domain_id, event_type)).fetchall()
    return [r["url"] for r in rows]


def lock_domain(conn: Connection, domain_id: int) -> None:
    """Serialise edits of one domain's webhooks (so the 3-URL limit holds under concurrency)."""
    conn.execute("SELECT id FROM domains WHERE id = %s FOR UPDATE", (domain_id,))


# A URL is stored as (url, url_sealed): the URL with any password masked, which is its identity, and
# the full URL sealed when it has a password (webhooks.secret_url). Setting the same masked URL again
# replaces the sealed one: that is how a password is rotated.
_UPSERT = ("INSERT INTO webhooks (account_id, domain_id, event_type, url, url_sealed, endpoint)"
           " VALUES (%s, %s, %s, %s, %s, %s) ON CONFLICT (domain_id, event_type, url)"
           " DO UPDATE SET url_sealed = EXCLUDED.url_sealed")


def set_urls(conn: Connection, account_id: int, domain_id: int, event_type: str,
             urls: list[tuple[str, bytes | None]]) -> None:
    """Make (url, url_sealed) pairs the event type's whole list."""
    conn.execute("DELETE FROM webhooks WHERE domain_id = %s AND event_type = %s AND NOT (url = ANY(%s))",
                 (domain_id, event_type, [u for u, _ in urls]))
    with conn.cursor() as cur:
        cur.executemany(_UPSERT, [(account_id, domain_id, event_type, u, sealed, endpoint_of(u)) for u, sealed in urls])


def add_url(conn: Connection, account_id: int, domain_id: int, event_type: str, url: str, sealed: bytes | None) -> None:
    conn.execute(_UPSERT, (account_id, domain_id, event_type, url, sealed, endpoint_of(url)))


def remove_url(conn: Connection, domain_id: int, event_type: str, url: str) -> None:
    conn.execute("DELETE FROM webhooks WHERE domain_id = %s AND event_type = %s AND url = %s",
                 (domain_id, event_type, url))


def delete_urls(conn: Connection, domain_id: int, urls: list[str]) -> int:
    return conn.execute("DELETE FROM webhooks WHERE domain_id = %s AND url = ANY(%s)", (domain_id, urls)).rowcount


# account-level webhooks (no domain: they fire for every domain of the account) --------------------
def lock_account(conn: Connection, account_id: int) -> None:
    """Serialise edits of one account's account-level webhooks (so the 3-URL limit holds)."""
    conn.execute("SELECT id FROM accounts WHERE id = %s FOR UPDATE", (account_id,))


def account_hooks(conn: Connection, account_id: int, hook_ids: list[str] | None = None) -> list[dict]:
    """The account's account-level webhooks, one row each: hook_id, url, description, event_types,
    created_at; in the order they were created."""
    where, args = "", [account_id]
    if hook_ids is not None:
        where = " AND hook_id = ANY(%s)"
        args.append(hook_ids)
    return conn.execute(
        "SELECT hook_id, url, description, array_agg(event_type ORDER BY event_type) AS event_types,"
        " min(created_at) AS created_at FROM webhooks WHERE account_id = %s AND domain_id IS NULL" + where +
        " GROUP BY hook_id, url, description ORDER BY min(id)", args).fetchall()


def account_urls_by_type(conn: Connection, account_id: int, except_hook: str | None = None) -> dict[str, list[str]]:
    """event type -> the account-level URLs subscribed to it (leaving out one webhook's own)."""
    rows = conn.execute("SELECT event_type, url FROM webhooks WHERE account_id = %s AND domain_id IS NULL"
                        " AND hook_id IS DISTINCT FROM %s ORDER BY id", (account_id, except_hook)).fetchall()
    out: dict[str, list[str]] = {}
    for row in rows:
        out.setdefault(row["event_type"], []).append(row["url"])
    return out


def insert_account_hook(conn: Connection, account_id: int, hook_id: str, url: str, description: str,
                        event_types: list[str], created_at=None) -> None:
    with conn.cursor() as cur:
        cur.executemany(
            "INSERT INTO webhooks (account_id, domain_id, hook_id, description, event_type, url, endpoint, created_at)"
            " VALUES (%s, NULL, %s, %s, %s, %s, %s, coalesce(%s, now()))",
            [(account_id, hook_id, description, t, url, endpoint_of(url), created_at) for t in event_types])


def delete_account_hooks(conn: Connection, account_id: int, hook_ids: list[str] | None) -> list[str]:
    """Delete the account's account-level webhooks with these ids (None: all); the ids deleted."""
    rows = conn.execute(
        "DELETE FROM webhooks WHERE account_id = %s AND domain_id IS NULL"
        + ("" if hook_ids is None else " AND hook_id = ANY(%s)") + " RETURNING hook_id, created_at",
        [account_id] if hook_ids is None else [account_id, hook_ids]).fetchall()
    return list(dict.fromkeys(r["hook_id"] for r in rows))


# signing keys -------------------------------------------------------------------------------------
def get_signing_key(conn: Connection, account_id: int) -> bytes | None:
    row = conn.execute("SELECT key_sealed FROM webhook_signing_keys WHERE account_id = %s", (account_id,)).fetchone()
    return bytes(row["key_sealed"]) if row else None


def insert_signing_key(conn: Connection, account_id: int, sealed: bytes) -> bytes:
    """Insert unless one exists; return the stored one (first writer wins)."""
    conn.execute("INSERT INTO webhook_signing_keys (account_id, key_sealed) VALUES (%s, %s)"
                 " ON CONFLICT (account_id) DO NOTHING", (account_id, sealed))
    return get_signing_key(conn, account_id)


def replace_signing_key(conn: Connection, account_id: int, sealed: bytes) -> None:
    conn.execute("INSERT INTO webhook_signing_keys (account_id, key_sealed) VALUES (%s, %s)"
                 " ON CONFLICT (account_id) DO UPDATE SET key_sealed = EXCLUDED.key_sealed, created_at = now()",
                 (account_id, sealed))


# outbox -------------------------------------------------------------------------------------------
def endpoint_of(url: str) -> str:
    """scheme://host:port, the unit of per-endpoint fairness."""
    parts = urlsplit(url)
    return f"{parts.scheme}://{parts.netloc.rpartition('@')[2].lower()}"


def enqueue_for_events(conn: Connection, events: list[tuple]) -> Cursor | None:
    """events: (account_id, domain_id, event_type, event_id, payload as JSON text). Makes one outbox row
    per (event, URL subscribed to its type on its domain or, account-level, on its account), matched in
    the database: the writing transaction never waits to read the subscriptions first. A URL set at
    both levels gets the event once (Mailgun deduplicates across levels), as the domain's. The cursor's
    rowcount is the number of rows made (in pipeline mode, once the transaction has synced); None when
    none can be (below)."""
    if len(events) > PROBE_ABOVE and conn.pgconn.pipeline_status == 0:
        # PERF: a batch send's thousand accepted events (~600 KB of payloads) went to Postgres to match
        # no webhook, mostly. Outside a pipeline each statement waits anyway: first ask which of the
        # batch's few (account, domain, type) could match a URL at all, and send only their events.
        wanted = _subscribed(conn, {event[:3] for event in events})
        events = [event for event in events if event[:3] in wanted]
        if not events:
            return None
    cur = conn.cursor()
    cur.execute(
        # Two index joins (domain URLs; account-level URLs not also set on the domain) rather than one
        # LATERAL union deduplicated by a sort: bench/webhook_fanout.py measured 1.2x the domain-only
        # statement this way, against 2x.
        "WITH u AS MATERIALIZED (SELECT * FROM unnest(%b::bigint[], %b::bigint[], %b::text[], %b::text[], %b::text[])"
        " WITH ORDINALITY AS u(account_id, domain_id, event_type, event_id, payload, n))"
        " INSERT INTO webhook_deliveries (account_id, domain_id, event_type, url, url_sealed, endpoint, event_id,"
        " payload)"
        " SELECT account_id, domain_id, event_type, url, url_sealed, endpoint, event_id, payload::jsonb FROM ("
        "  SELECT u.*, w.url, w.url_sealed, w.endpoint, 0 AS level, w.id FROM u"
        "  JOIN webhooks w ON w.domain_id = u.domain_id AND w.event_type = u.event_type"
        "  UNION ALL"
        "  SELECT u.*, w.url, w.url_sealed, w.endpoint, 1, w.id FROM u"
        "  JOIN webhooks w ON w.domain_id IS NULL AND w.account_id = u.account_id AND w.event_type = u.event_type"
        "  WHERE NOT EXISTS (SELECT 1 FROM webhooks d WHERE d.domain_id = u.domain_id"
        "   AND d.event_type = u.event_type AND d.url = w.url)"
        # A subaccount's events reach its parent's account-level URLs too (Mailgun's), as the parent's
        # rows: signed with the parent's key, counted in its backlog. The accounts of the batch are
        # looked up once each, not per event; an account with no parent costs one primary-key probe.
        "  UNION ALL"
        "  SELECT p.parent_id, u.domain_id, u.event_type, u.event_id, u.payload, u.n,"
        "   w.url, w.url_sealed, w.endpoint, 2, w.id FROM u"
        "  JOIN (SELECT a.id, a.parent_id FROM accounts a WHERE a.id IN (SELECT DISTINCT account_id FROM u)"
        "   AND a.parent_id IS NOT NULL) p ON p.id = u.account_id"
        "  JOIN webhooks w ON w.domain_id IS NULL AND w.account_id = p.parent_id AND w.event_type = u.event_type"
        " ) s"
        " ORDER BY n, level, id",  # outbox ids in event order: domain URLs, account ones, then the parent's
        [list(column) for column in zip(*events, strict=True)],
        # PERF: prepared at first use: its plan (a three-way union of joins, ~0.5 ms to make) is made
        # once or six times per connection, not five more times unnamed before psycopg prepares it.
        prepare=True,
    )
    return cur


PROBE_ABOVE = 64  # events (outside a pipeline) above which enqueue_for_events first asks which can match


def _subscribed(conn: Connection, keys: set[tuple]) -> set[tuple]:
    """Those of (account_id, domain_id, event_type) that enqueue_for_events' statement could match a URL
    for: one of the domain's, or an account-level one of the account or of its parent."""
    rows = conn.execute(
        "SELECT k.account_id, k.domain_id, k.event_type"
        " FROM unnest(%s::bigint[], %s::bigint[], %s::text[]) AS k(account_id, domain_id, event_type)"
        " WHERE EXISTS (SELECT 1 FROM webhooks w WHERE w.event_type = k.event_type AND (w.domain_id = k.domain_id"
        "  OR w.domain_id IS NULL AND w.account_id IN (k.account_id,"
        "   (SELECT a.parent_id FROM accounts a WHERE a.id = k.account_id))))",
        [list(column) for column in zip(*keys, strict=True)]).fetchall()
    return {(row["account_id"], row["domain_id"], row["event_type"]) for row in rows}


def insert_deliveries(conn: Connection, rows: list[tuple]) -> None:
    """rows: (account_id, domain_id, event_type, url, event_id, payload dict)."""
    with conn.cursor() as cur:
        cur.executemany(
            "INSERT INTO webhook_deliveries (account_id, domain_id, event_type, url, endpoint, event_id, payload)"
            " VALUES (%s, %s, %s, %s, %s, %s, %s)",
            [r[:4] + (endpoint_of(r[3]), r[4], Jsonb(r[5])) for r in rows])


def insert_test_deliveries(conn: Connection, account_id: int, domain_id: int, event_type: str, event_id: str,
                           payload: dict) -> list[int]:
    """One outbox row per URL of the webhook, for a test sent at once by the caller: leased for an
    hour so the dispatcher leaves it alone."""
    rows = conn.execute(
        "INSERT INTO webhook_deliveries (account_id, domain_id, event_type, url, url_sealed, endpoint, event_id,"
        " payload, leased_until)"
        " SELECT %s, domain_id, event_type, url, url_sealed, endpoint, %s, %s, now() + interval '1 hour'"
        " FROM webhooks WHERE domain_id = %s AND event_type = %s ORDER BY id RETURNING id",
        (account_id, event_id, Jsonb(payload), domain_id, event_type)).fetchall()
    return [r["id"] for r in rows]


def last_attempts(conn: Connection, delivery_ids: list[int]) -> list[dict]:
    """The latest attempt of each delivery, in delivery order."""
    return conn.execute(
        "SELECT DISTINCT ON (d.id) a.*, d.url FROM webhook_deliveries d JOIN webhook_attempts a ON a.delivery_id = d.id"
        " WHERE d.id = ANY(%s) ORDER BY d.id, a.id DESC", (delivery_ids,)).fetchall()


# The columns the dispatcher needs to send a claimed delivery.
# payload as JSON text: the dispatcher puts it into the body as it is (no parse and dump per delivery).
_CLAIMED = "id, account_id, domain_id, event_type, url, url_sealed, endpoint, payload::text AS payload, attempts, created_at"


# The fair ranking of store.claim (its parameters: per_endpoint, per_account, limit, finished, queued).
_CLAIM_CTES = """
pairs AS (
    -- Each (account, endpoint) with pending rows, by a skip scan of webhook_deliveries_pair_due:
    -- one index probe per pair, whatever its backlog.
    (SELECT account_id, endpoint FROM webhook_deliveries WHERE status = 'pending'
     ORDER BY account_id, endpoint LIMIT 1)
    UNION ALL
    SELECT n.account_id, n.endpoint FROM pairs p CROSS JOIN LATERAL (
        SELECT account_id, endpoint FROM webhook_deliveries
        WHERE status = 'pending' AND (account_id, endpoint) > (p.account_id, p.endpoint)
        ORDER BY account_id, endpoint LIMIT 1) n
), inflight AS (
    -- Leased rows only (the webhook_deliveries_inflight index): a test sent from the API is leased
    -- too; a job of the RQ worker of old counts through its lease as well. The claimer's own rows
    -- whose requests have ended (results not written yet) are not in flight any more.
    -- Nor are its rows leased ahead and not started yet (`queued`, claim()).
    SELECT endpoint, account_id FROM webhook_deliveries
    WHERE status = 'pending' AND leased_until > now() AND id <> ALL(%(finished)s::bigint[])
      AND id <> ALL(%(queued)s::bigint[])
), busy_endpoint AS (
    SELECT endpoint, count(*) AS n FROM inflight GROUP BY endpoint
), busy_account AS (
    SELECT account_id, count(*) AS n FROM inflight GROUP BY account_id
), room AS (
    SELECT p.account_id, p.endpoint,
           least(%(per_endpoint)s - coalesce(be.n, 0), %(per_account)s - coalesce(ba.n, 0), %(limit)s) AS n
    FROM pairs p LEFT JOIN busy_endpoint be USING (endpoint) LEFT JOIN busy_account ba USING (account_id)
), waiting AS (
    -- A pair's oldest due rows, at most its free room: a row further back could not be claimed
    -- this round (its turn would exceed the room), so an endpoint or account at its cap (a dead
    -- endpoint's backlog) costs the claim one probe, not a scan and a sort.
    SELECT w.id, r.endpoint, r.account_id, w.next_attempt_at,
           row_number() OVER (PARTITION BY r.endpoint, r.account_id ORDER BY w.next_attempt_at, w.id) AS turn
    FROM room r CROSS JOIN LATERAL (
        SELECT id, next_attempt_at FROM webhook_deliveries d
        WHERE d.status = 'pending' AND d.account_id = r.account_id AND d.endpoint = r.endpoint
          AND d.next_attempt_at <= now()
          -- the claimer's own rows leased ahead compete for the slots as if due (they are its oldest)
          AND (d.leased_until IS NULL OR d.leased_until <= now() OR d.id = ANY(%(queued)s::bigint[]))
          AND (d.running_until IS NULL OR d.running_until <= now())
        ORDER BY d.next_attempt_at, d.id LIMIT r.n) w
    WHERE r.n > 0
), due AS (
    -- An endpoint host shared by several accounts serves them in turns too.
    SELECT id, endpoint, account_id,
           row_number() OVER (PARTITION BY endpoint ORDER BY turn, next_attempt_at, id) AS endpoint_rank
    FROM waiting
), endpoint_ok AS (
    SELECT due.id, due.account_id, due.endpoint_rank,
           row_number() OVER (PARTITION BY due.account_id ORDER BY due.endpoint_rank, due.id) AS account_rank
    FROM due LEFT JOIN busy_endpoint b USING (endpoint)
    WHERE due.endpoint_rank <= %(per_endpoint)s - coalesce(b.n, 0)
)"""
_CLAIM_PICK = """
SELECT e.id FROM endpoint_ok e LEFT JOIN busy_account b USING (account_id)
WHERE e.account_rank <= %(per_account)s - coalesce(b.n, 0)
ORDER BY e.account_rank, e.id
LIMIT %(limit)s
"""
CLAIM_SQL = f"WITH RECURSIVE {_CLAIM_CTES}{_CLAIM_PICK}"


# The claim: the fair ranking, the rows leased and returned with their accounts' sealed signing keys,
# in one statement (it was three round trips: ranking, lease, keys). A row locked by a results write in
# progress is skipped; one whose result was committed since the ranking's snapshot is re-checked (the
# FOR UPDATE's condition holds for pending rows only) rather than leased again.
_LEASE = f"""
UPDATE webhook_deliveries d SET leased_until = now() + make_interval(secs => %(lease)s), running_until = NULL
FROM locked WHERE d.id = locked.id
RETURNING {", ".join(f"d.{c.strip()}" for c in _CLAIMED.split(","))},
    (SELECT k.key_sealed FROM webhook_signing_keys k WHERE k.account_id = d.account_id) AS key_sealed"""
LEASE_SQL = f"""
WITH RECURSIVE {_CLAIM_CTES}, picked AS ({_CLAIM_PICK}), locked AS (
    SELECT id FROM webhook_deliveries
    WHERE id IN (SELECT id FROM picked) AND status = 'pending'
    FOR UPDATE SKIP LOCKED
){_LEASE}, false AS ahead
"""
# The claim with rows leased ahead too (claim()'s `ahead`; a statement of its own, so a claim without
# them costs what it did): a pair's next due rows after those picked, for pairs no other account's rows
# share an endpoint with and whose account has no other endpoint with pending rows. They are in flight
# for every other claimer; their dispatcher starts each only when one of the same pair's requests ends
# (or a later claim picks it), so each pair's (and each endpoint's and account's) requests stay within
# what the fair ranking granted it.
LEASE_AHEAD_SQL = f"""
WITH RECURSIVE {_CLAIM_CTES}, picked AS ({_CLAIM_PICK}), asked AS (
    SELECT * FROM unnest(%(a_account)s::bigint[], %(a_endpoint)s::text[], %(a_n)s::int[]) AS a(account_id, endpoint, n)
    WHERE NOT EXISTS (SELECT 1 FROM pairs p WHERE p.endpoint = a.endpoint AND p.account_id <> a.account_id)
      AND NOT EXISTS (SELECT 1 FROM pairs p WHERE p.account_id = a.account_id AND p.endpoint <> a.endpoint)
), ahead AS (
    SELECT w.id FROM asked a CROSS JOIN LATERAL (
        SELECT id, next_attempt_at FROM webhook_deliveries d
        WHERE d.status = 'pending' AND d.account_id = a.account_id AND d.endpoint = a.endpoint
          AND d.next_attempt_at <= now()
          AND (d.leased_until IS NULL OR d.leased_until <= now())
          AND (d.running_until IS NULL OR d.running_until <= now())
          AND d.id NOT IN (SELECT id FROM picked)
        ORDER BY d.next_attempt_at, d.id LIMIT a.n) w
    ORDER BY w.next_attempt_at, w.id
    LIMIT greatest(0, %(limit)s - (SELECT count(*) FROM picked))
), locked AS (
    SELECT id FROM webhook_deliveries
    WHERE id IN (SELECT id FROM picked UNION ALL SELECT id FROM ahead) AND status = 'pending'
    FOR UPDATE SKIP LOCKED
){_LEASE}, d.id IN (SELECT id FROM ahead) AS ahead
"""


def release(conn: Connection, ids: list[int]) -> int:
    """End the leases of these pending deliveries (their dispatcher stops without a result)."""
    return conn.execute("UPDATE webhook_deliveries SET leased_until = NULL WHERE id = ANY(%s) AND status = 'pending'"
                        " AND leased_until IS NOT NULL", (ids,)).rowcount


def claim(conn: Connection, per_endpoint: int, per_account: int, limit: int, lease_seconds: float,
          finished: list[int] = (), queued: list[int] = (), ahead: list[tuple[int, str, int]] = ()) -> list[dict]:
    """Lease up to `limit` due deliveries fairly and return them (the _CLAIMED columns).

    A row is in flight while its lease runs (a dispatcher is sending it). At most `per_endpoint` rows
    per endpoint host and `per_account` rows per account are in flight at once, over all dispatcher
    processes, and due rows are handed
    out round-robin (first each account's oldest, then their second, ...), so one tenant's backlog
    never queues in front of another's. Rows whose lease ran out (a dispatcher was killed) are due
    again: this is also the sweeper. Claimers take turns (an advisory lock for the transaction), so
    two never count the same free slots; the rows are locked with SKIP LOCKED so a claim never waits
    behind a batch of results being written. Each (account, endpoint)'s due rows are read in order up
    to its free room only (webhook_deliveries_pair_due, migration 0205): a claim costs the same with a
    dead endpoint's backlog of 100,000 rows as without it, so the claim lock, which every dispatcher
    takes turns on, never becomes the other tenants' bottleneck.

    `finished`: the claimer's leased rows whose requests have ended, results not yet written: they do
    not count against the caps (their slots are free), and stay leased, so no one claims them again.
    Without it an endpoint's slot stayed taken for the result's write and the next claim too, which
    bounded one endpoint to about per_endpoint / 0.1 s deliveries per second.

    `queued`: the claimer's rows leased ahead and not started (not in flight: they wait for a slot of
    their own pair, and are picked again like due rows, to be started now, when the ranking gives them one). `ahead`: (account_id, endpoint, n): also lease up to n of that pair's next due rows,
    marked `ahead` (the claimer starts one as a request of the same pair ends, so a fast endpoint's
    slots do not wait for the next claim: at most 20 claims a second bounded one endpoint to
    per_endpoint x 20 deliveries a second per process). Only for a pair alone on its endpoint and in its
    account (others' rows compete for those slots in the fair ranking of every claim); within `limit`
    with the rows picked to start now, after them.
    """
    # The lock is a statement of its own: the claim's snapshot must be taken after it is held (it then
    # sees the previous claimer's leases). In a pipeline both go in one round trip.
    conn.execute("SELECT pg_advisory_xact_lock(%s)", (CLAIM_LOCK,))
    # Plain index scans, never bitmap ones: every lease and result leaves a dead entry in the partial
    # indexes (webhook_deliveries_inflight above all) until a vacuum, which on an outbox that keeps its
    # finished rows comes seldom; a bitmap scan visits each dead entry's heap page on every claim
    # (EXPLAIN ANALYZE after bench/outbox_sql.py's 8,000 deliveries, no vacuum: 0.4-1.8 ms a claim over
    # the inflight index's 1,921 dead entries, 45 ms when the planner took webhook_deliveries_due's 13,754
    # instead), an index scan marks them dead the first time (kill_prior_tuple) and skips them after:
    # the whole claim 0.6 ms.
    conn.execute("SET LOCAL enable_bitmapscan = off")
    params = {"per_endpoint": per_endpoint, "per_account": per_account, "limit": limit, "finished": list(finished),
              "queued": list(queued), "lease": lease_seconds}
    if not ahead:
        return conn.execute(LEASE_SQL, params).fetchall()
    account_ids, endpoints, counts = zip(*ahead, strict=True)
    return conn.execute(LEASE_AHEAD_SQL, {**params, "a_account": list(account_ids), "a_endpoint": list(endpoints),
                                          "a_n": list(counts)}).fetchall()


# A batch of results in one statement: the attempts, the outbox rows' new state and the endpoints'
# health (data-modifying CTEs), one round trip instead of three; the dispatcher sends it in the next
# claim's transaction (webhooks.dispatch).
RESULTS_SQL = """
WITH u AS MATERIALIZED (
    SELECT * FROM unnest(%(id)s::bigint[], %(domain_id)s::bigint[], %(attempt_no)s::int[], %(status_code)s::int[],
                         %(error)s::text[], %(latency_ms)s::int[], %(response)s::text[], %(outcome)s::text[],
                         %(state)s::text[], %(next_in)s::float8[])
        AS u(id, domain_id, attempt_no, status_code, error, latency_ms, response, outcome, state, next_in)
), attempts AS (
    INSERT INTO webhook_attempts (delivery_id, domain_id, attempt_no, status_code, error, latency_ms, response,
                                  outcome)
    SELECT u.id, u.domain_id, u.attempt_no, u.status_code, u.error, u.latency_ms, u.response, u.outcome FROM u
    -- A delivery deleted while in flight (erasure, purge, a deleted account) has no attempts to keep;
    -- its result must not fail the batch of everyone else's.
    WHERE EXISTS (SELECT 1 FROM webhook_deliveries d WHERE d.id = u.id)
), health AS (
    -- A success clears the endpoint's failing state; failures alone start it (or keep it).
    INSERT INTO webhook_endpoint_health AS h (account_id, endpoint, failing_since, failures, last_error,
                                              last_failure_at, last_success_at)
    SELECT e.account_id, e.endpoint,
           CASE WHEN e.ok > 0 THEN NULL ELSE now() END, CASE WHEN e.ok > 0 THEN 0 ELSE e.bad END,
           e.error, CASE WHEN e.bad > 0 THEN now() END, CASE WHEN e.ok > 0 THEN now() END
    FROM unnest(%(h_account)s::bigint[], %(h_endpoint)s::text[], %(h_ok)s::int[], %(h_bad)s::int[],
                %(h_error)s::text[]) AS e(account_id, endpoint, ok, bad, error)
    ORDER BY 1, 2
    ON CONFLICT (account_id, endpoint) DO UPDATE SET
        failing_since = CASE WHEN EXCLUDED.last_success_at IS NOT NULL THEN NULL
                             ELSE coalesce(h.failing_since, EXCLUDED.failing_since) END,
        failures = CASE WHEN EXCLUDED.last_success_at IS NOT NULL THEN 0 ELSE h.failures + EXCLUDED.failures END,
        last_error = coalesce(EXCLUDED.last_error, h.last_error),
        last_failure_at = coalesce(EXCLUDED.last_failure_at, h.last_failure_at),
        last_success_at = coalesce(EXCLUDED.last_success_at, h.last_success_at)
)
UPDATE webhook_deliveries d SET status = u.state, attempts = u.attempt_no, last_status = u.status_code,
    leased_until = NULL, running_until = NULL,
    next_attempt_at = CASE WHEN u.state = 'pending' THEN now() + make_interval(secs => u.next_in)
                           ELSE d.next_attempt_at END,
    finished_at = CASE WHEN u.state = 'pending' THEN NULL ELSE now() END
FROM u WHERE d.id = u.id AND d.status = 'pending'
"""
_RESULT_COLUMNS = ("id", "domain_id", "attempt_no", "status_code", "error", "latency_ms", "response", "outcome",
                   "state", "next_in")
_HEALTH_COLUMNS = ("h_account", "h_endpoint", "h_ok", "h_bad", "h_error")


def record_results(conn: Connection, results: list[tuple], health: list[tuple] = ()) -> None:
    """A batch of attempts and the endpoints' health, in one statement (RESULTS_SQL). results: (delivery_id,
    domain_id, attempt_no, status_code, error, latency_ms, response, outcome, new state, seconds to the
    next attempt or None). Only a row still pending is changed (a result that comes after another
    dispatcher's, once a lease ran out, is recorded as an attempt but changes nothing done); a row
    deleted meanwhile is skipped. health: (account_id, endpoint, successes, failures, last error)."""
    columns = list(zip(*results, strict=True)) if results else [()] * len(_RESULT_COLUMNS)
    health_columns = list(zip(*health, strict=True)) if health else [()] * len(_HEALTH_COLUMNS)
    conn.execute(RESULTS_SQL, {**{k: list(c) for k, c in zip(_RESULT_COLUMNS, columns, strict=True)},
                               **{k: list(c) for k, c in zip(_HEALTH_COLUMNS, health_columns, strict=True)}})


def failing_endpoints(conn: Connection, account_id: int | None, limit: int = 50, count_up_to: int = 100_000) -> list[dict]:
    """Endpoints failing now (oldest failure first), of one account or all, each with its pending
    backlog (counted up to `count_up_to`)."""
    scope, args = ("AND h.account_id = %s", [account_id]) if account_id is not None else ("", [])
    return conn.execute(
        f"""
        SELECT h.*, a.name AS account_name,
               (SELECT count(*) FROM (SELECT 1 FROM webhook_deliveries d WHERE d.account_id = h.account_id
                 AND d.endpoint = h.endpoint AND d.status = 'pending' LIMIT %s) x) AS backlog
        FROM webhook_endpoint_health h LEFT JOIN accounts a ON a.id = h.account_id
        WHERE h.failing_since IS NOT NULL {scope}
        ORDER BY h.failing_since, h.account_id, h.endpoint LIMIT %s
        """, [count_up_to, *args, limit]).fetchall()


def start(conn: Connection, delivery_id: int, run_seconds: float) -> dict | None:
    """Mark a delivery as being sent now; None if it is finished or another job is on it.

    The mark only keeps two jobs off one row; losing it in a crash is harmless, so it is committed
    without waiting for the WAL flush.
    """
    conn.execute("SET LOCAL synchronous_commit = off")
    return conn.execute(
        "UPDATE webhook_deliveries SET running_until = now() + make_interval(secs => %s)"
        " WHERE id = %s AND status = 'pending' AND (running_until IS NULL OR running_until <= now())"
        " AND next_attempt_at <= now() + interval '1 second'"
        " RETURNING *", (run_seconds, delivery_id)).fetchone()


def finish(conn: Connection, delivery_id: int, *, status: str, attempts: int, last_status: int | None,
           next_in: float | None) -> None:
    if status == "pending":
        conn.execute(
            "UPDATE webhook_deliveries SET attempts = %s, last_status = %s, leased_until = NULL,"
            " running_until = NULL, next_attempt_at = now() + make_interval(secs => %s) WHERE id = %s",
            (attempts, last_status, next_in, delivery_id))
    else:
        conn.execute(
            "UPDATE webhook_deliveries SET status = %s, attempts = %s, last_status = %s, leased_until = NULL,"
            " running_until = NULL, finished_at = now() WHERE id = %s",
            (status, attempts, last_status, delivery_id))


def insert_attempt(conn: Connection, delivery_id: int, domain_id: int, attempt_no: int, status_code, error,
                   latency_ms: int, response: str, outcome: str) -> None:
    conn.execute(
        "INSERT INTO webhook_attempts (delivery_id, domain_id, attempt_no, status_code, error, latency_ms,"
        " response, outcome) VALUES (%s, %s, %s, %s, %s, %s, %s, %s)",
        (delivery_id, domain_id, attempt_no, status_code, error, latency_ms, response, outcome))


def attempts(conn: Connection, domain_id: int, event_type: str | None, url: str | None, before: int | None,
             limit: int) -> list[dict]:
    # The domain's account's own deliveries: a parent's rows for its subaccount's events carry the
    # subaccount's domain but are the parent's (its URL, its endpoint's answers).
    where, args = ["a.domain_id = %s", "d.account_id = (SELECT account_id FROM domains WHERE id = %s)"], [domain_id,
                                                                                                       domain_id]
    if event_type:
        where.append("d.event_type = %s")
        args.append(event_type)
    if url:
        where.append("d.url = %s")
        args.append(url)
    if before:
        where.append("a.id < %s")
        args.append(before)
    args.append(limit)
    return conn.execute(
        "SELECT a.*, d.url, d.event_type, d.event_id, d.payload, d.status AS delivery_status,"
        " d.attempts AS delivery_attempts"
        " FROM webhook_attempts a JOIN webhook_deliveries d ON d.id = a.delivery_id"
        f" WHERE {' AND '.join(where)} ORDER BY a.id DESC LIMIT %s", args).fetchall()


def purge(conn: Connection, older_than_seconds: float, batch: int = 5000) -> int:
    """Delete deliveries (and, by cascade, their attempts) older than the event retention."""
    return conn.execute(
        "DELETE FROM webhook_deliveries WHERE id IN (SELECT id FROM webhook_deliveries"
        " WHERE created_at < now() - make_interval(secs => %s) LIMIT %s)", (older_than_seconds, batch)).rowcount


def backlog(conn: Connection) -> int:
    return conn.execute("SELECT count(*) AS n FROM webhook_deliveries WHERE status = 'pending'"
                        " AND next_attempt_at <= now() AND (leased_until IS NULL OR leased_until <= now())"
                        ).fetchone()["n"]


def backlog_head(conn: Connection, limit: int, scan: int) -> dict:
    """The backlog for the operator's page, over the `scan` pending deliveries due soonest (a range of
    the webhook_deliveries_due index, never the whole outbox): the oldest due time, and the `limit`
    accounts with the most due deliveries not in flight, each with its oldest due time and when its
    oldest event was queued."""
    oldest = conn.execute("SELECT next_attempt_at AS at FROM webhook_deliveries WHERE status = 'pending'"
                          " AND next_attempt_at <= now() ORDER BY next_attempt_at LIMIT 1").fetchone()
    accounts = conn.execute(
        """
        WITH head AS (
            SELECT account_id, next_attempt_at, created_at, leased_until, running_until FROM webhook_deliveries
            WHERE status = 'pending' AND next_attempt_at <= now() ORDER BY next_attempt_at LIMIT %(scan)s
        )
        SELECT h.account_id, a.name AS account_name,
               count(*) FILTER (WHERE (h.leased_until IS NULL OR h.leased_until <= now())) AS due,
               count(*) FILTER (WHERE h.leased_until > now() OR h.running_until > now()) AS in_flight,
               min(h.next_attempt_at) AS first_due_at, min(h.created_at) AS oldest_created_at
        FROM head h LEFT JOIN accounts a ON a.id = h.account_id
        GROUP BY h.account_id, a.name ORDER BY 3 DESC, h.account_id LIMIT %(limit)s
        """, {"scan": scan, "limit": limit}).fetchall()
    return {"oldest_due_at": oldest["at"] if oldest else None, "accounts": accounts}


def erase_recipient(conn: Connection, account_id: int, address: str) -> int:
    """Webhook deliveries (and their attempts) whose event is about this address: the account's own, and
    its parent's copies of its events (the parent's account-level webhooks), which are under its domains."""
    return conn.execute(
        "DELETE FROM webhook_deliveries WHERE lower(payload->>'recipient') = %s AND (account_id = %s"
        " OR domain_id IN (SELECT id FROM domains WHERE account_id = %s))",
        (address, account_id, account_id)).rowcount
