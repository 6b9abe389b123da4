"""SQL for messages and the per-recipient delivery schedule."""

from __future__ import annotations

import json
from dataclasses import dataclass
from datetime import datetime

from envoi.infra.db import Connection, insert_columns

MESSAGE_COLUMNS = (("id", "bigint"), ("account_id", "bigint"), ("domain_id", "bigint"), ("message_id", "text"), ("storage_key", "text"),
                   ("mail_from", "text"), ("method", "text"), ("body", "bytea"), ("body_expires_at", "timestamptz"),
                   ("headers", "text"), ("tags", "jsonb"), ("user_variables", "text"), ("options", "text"),
                   ("attachments", "text"), ("size", "int"), ("message_id_given", "boolean"))
_JSON_TEXT = ("headers", "user_variables", "options", "attachments")
_MESSAGE_EXPRESSIONS = {**{name: f"u.{name}::jsonb" for name in _JSON_TEXT},
                        "tags": "ARRAY(SELECT jsonb_array_elements_text(u.tags))"}
_MESSAGE_COPY = {**{name: "jsonb" for name in _JSON_TEXT}, "tags": "text[]"}  # the expressions' types, for COPY


#: The index that keeps a caller-given Message-ID (h:Message-Id) unique per domain (0165_given_message_id).
GIVEN_MESSAGE_ID_INDEX = "messages_given_message_id"


def reserve_message_ids(conn: Connection, n: int) -> list[int]:
    """n ids from the messages sequence, for rows inserted later with insert_messages."""
    # One row holding an array: a batch send reserves a thousand, and a row each cost ~40 us in Python.
    return conn.execute("SELECT ARRAY(SELECT nextval('messages_id_seq') FROM generate_series(1, %s)) AS ids",
                        (n,)).fetchone()["ids"]


class JsonText(str):
    """A JSON column's value already encoded: what all of a draft's copies share is encoded once."""


def json_text(value) -> JsonText:
    return JsonText(json.dumps(value))


def message_row(**values) -> tuple:
    """One message's values in MESSAGE_COLUMNS order, without its id (insert_messages prepends it):
    JSON columns and tags as Python values or as JsonText."""
    return tuple(values[name] if isinstance(values[name], JsonText)
                 else json.dumps(values[name]) if name in _JSON_TEXT
                 else json.dumps(values[name] or []) if name == "tags"
                 else values[name] for name, _ in MESSAGE_COLUMNS[1:])


def insert_messages(conn: Connection, rows: list[tuple]) -> None:
    """Insert message rows ((id, *message_row(...)), ids from reserve_message_ids) in one statement
    that needs no reply: it can be pipelined (or, many rows outside a pipeline, one COPY)."""
    insert_columns(conn, "messages", MESSAGE_COLUMNS, rows, expressions=_MESSAGE_EXPRESSIONS, copy_as=_MESSAGE_COPY)


def insert_recipients(conn: Connection, rows: list[tuple]) -> None:
    """rows: (message_pk, account_id, domain_id, address, rcpt_domain, next_attempt_at, expires_at,
    egress_pin): egress_pin from egress_pin(options), None for most mail."""
    insert_columns(conn, "recipients", (("message_pk", "bigint"), ("account_id", "bigint"), ("domain_id", "bigint"),
                                        ("address", "text"), ("rcpt_domain", "text"),
                                        ("next_attempt_at", "timestamptz"), ("expires_at", "timestamptz"),
                                        ("egress_pin", "text")), rows)


def egress_pin(options: dict) -> str | None:
    """The egress a message asks for itself, as the relay's claim matches it (HostAffinity.pins_elsewhere
    holds "<account id>/<pin>"): 'ip:<address>' (o:sending-ip), 'pool:<id>' (o:sending-ip-pool) or None."""
    if ip := options.get("sending_ip"):
        return f"ip:{ip}"
    if pool := options.get("sending_ip_pool"):
        return f"pool:{pool}"
    return None


@dataclass(frozen=True)
class HostAffinity:
    """What a relay leaves to other relay hosts at claim (host-affine claiming).

    elsewhere: domains whose own IPs (or linked pool) are enabled only on other hosts; overflow: those
    of them whose mail this relay may take once it has been due a whole lease (their host is down).
    pins_elsewhere: "<account id>/<egress_pin>" of o:sending-ip / o:sending-ip-pool the account owns
    whose enabled IPs are all on other hosts; pin_overflow: domains whose mail with such a pin may be
    taken after a lease (their own ip_overflow is 'overflow': an explicit pin never overflows by the
    relay's default). A recipient with a pin follows the pin rule, never its domain's."""

    elsewhere: tuple[int, ...] = ()
    overflow: tuple[int, ...] = ()
    pins_elsewhere: tuple[str, ...] = ()
    pin_overflow: tuple[int, ...] = ()


def claim_due(conn: Connection, limit: int, lease_seconds: float, owner: str | None = None,
              affinity: HostAffinity | None = None, overflow_after: float | None = None) -> list[dict]:
    """Lease up to `limit` due recipients. A crashed relay's lease simply runs out, so nothing is lost.

    `affinity`: mail pinned to other relay hosts' IPs (by its domain, or by its own o:sending-ip /
    o:sending-ip-pool) is left to those hosts, unless `overflow_after` is given, its policy lets it
    overflow, and it has been due that long (its host is down or behind): then this relay may take it
    and send it over its shared pool."""
    affinity_sql, args = _affinity(affinity, overflow_after)
    args = [*args, limit]
    # PERF: the due rows are updated by their ctid (a TID scan), not found again through the primary key
    # (three buffer reads a row). The rows are locked by FOR UPDATE, so no one else can move them between
    # the two; a row another transaction updated after this statement's snapshot (its locked version is
    # not visible to the update) is left for the next claim, as a locked row is.
    return conn.execute(
        f"""
        WITH due AS (
            SELECT ctid FROM recipients
            WHERE status = 'queued' AND next_attempt_at <= now()
              AND (leased_until IS NULL OR leased_until < now()){affinity_sql}
            ORDER BY next_attempt_at
            LIMIT %s
            FOR UPDATE SKIP LOCKED
        )
        UPDATE recipients r SET leased_until = now() + make_interval(secs => %s), lease_owner = %s
        FROM due WHERE r.ctid = due.ctid
        RETURNING r.id, r.message_pk, r.account_id, r.domain_id, r.address, r.rcpt_domain, r.attempts,
                  r.expires_at
        """,
        (*args, lease_seconds, owner),
    ).fetchall()


def _affinity(affinity: HostAffinity | None, overflow_after: float | None) -> tuple[str, list]:
    """The claim's host-affinity filter and its parameters (empty for a single-host region)."""
    if affinity is None or not (affinity.elsewhere or affinity.pins_elsewhere):
        return "", []
    late = "next_attempt_at < now() - make_interval(secs => %s)"
    domain, domain_args = "TRUE", []
    if affinity.elsewhere:
        domain, domain_args = "domain_id <> ALL(%s)", [list(affinity.elsewhere)]
        if overflow_after is not None and affinity.overflow:
            domain = f"({domain} OR (domain_id = ANY(%s) AND {late}))"
            domain_args += [list(affinity.overflow), overflow_after]
    if not affinity.pins_elsewhere:
        return f" AND (egress_pin IS NOT NULL OR {domain})", domain_args
    pin, pin_args = "NOT (account_id::text || '/' || egress_pin = ANY(%s))", [list(affinity.pins_elsewhere)]
    if overflow_after is not None and affinity.pin_overflow:
        pin = f"({pin} OR (domain_id = ANY(%s) AND {late}))"
        pin_args += [list(affinity.pin_overflow), overflow_after]
    return f" AND CASE WHEN egress_pin IS NULL THEN {domain} ELSE {pin} END", [*domain_args, *pin_args]


def release_leases(conn: Connection, owner: str) -> int:
    """Give back every lease `owner` holds (its relay restarted: nothing it held is in flight)."""
    return conn.execute(
        "UPDATE recipients SET leased_until = NULL, lease_owner = NULL"
        " WHERE status = 'queued' AND lease_owner = %s AND leased_until > now()",
        (owner,),
    ).rowcount


def hand_back_leases(conn: Connection, ids: list[int], owner: str) -> int:
    """Give back these leases now (the relay is stopping with them unfinished): another relay may take
    them at once instead of after the lease runs out."""
    return conn.execute(
        "UPDATE recipients SET leased_until = NULL, lease_owner = NULL"
        " WHERE id = ANY(%s) AND status = 'queued' AND lease_owner = %s",
        (ids, owner),
    ).rowcount


def renew_leases(conn: Connection, ids: list[int], owner: str, lease_seconds: float) -> None:
    conn.execute(
        "UPDATE recipients SET leased_until = now() + make_interval(secs => %s)"
        " WHERE id = ANY(%s) AND status = 'queued' AND lease_owner = %s AND leased_until IS NOT NULL",
        (lease_seconds, ids, owner),
    )


def signed_and_waiting(conn: Connection, domain_ids: list[int], signing_domain: str, selector: str) -> bool:
    """Is mail of these domains signed with (signing_domain, selector) still queued, or may it be: a
    waiting recipient whose message's stored DKIM-Signature names the key, or one in flight whose
    message's signature is not stored (the relay keeps it in memory until the outcome)? The signer
    writes each tag after a space or a fold (envoi.mta.signing), so " s=<selector>;" finds it."""
    return conn.execute(
        "SELECT 1 FROM recipients r JOIN messages m ON m.id = r.message_pk"
        " WHERE r.domain_id = ANY(%s) AND r.status = 'queued' AND ("
        "  (strpos(m.dkim_signature, ' s=' || %s || ';') > 0 AND strpos(m.dkim_signature, ' d=' || %s || ';') > 0)"
        "  OR (m.dkim_signature IS NULL AND r.leased_until > now())) LIMIT 1",
        (domain_ids, selector, signing_domain)).fetchone() is not None


def domain_ed25519(conn: Connection, domain_id: int) -> dict | None:
    return conn.execute(
        "SELECT dkim_ed25519_selector AS selector, dkim_ed25519_key AS key, dkim_ed25519_public_key AS public_key"
        " FROM domains WHERE id = %s AND dkim_ed25519_key IS NOT NULL",
        (domain_id,),
    ).fetchone()


def set_domain_ed25519(conn: Connection, domain_id: int, selector: str, sealed_key: bytes, public_key: str) -> None:
    conn.execute(
        "UPDATE domains SET dkim_ed25519_selector = %s, dkim_ed25519_key = %s, dkim_ed25519_public_key = %s"
        " WHERE id = %s",
        (selector, sealed_key, public_key, domain_id),
    )


def load_messages(conn: Connection, message_pks: list[int]) -> list[dict]:
    # PERF: binary results: the sealed body comes as its bytes, not as hex text twice its size that
    # Postgres encodes and psycopg decodes (~5 us of Postgres and ~9 us of the relay per 5 KB message).
    # The five JSON columns come as one array, decoded in one call (psycopg's loader per column, its
    # bytes copy and json.loads' encoding detection were ~2 us each), and the epoch as a float rather
    # than a Decimal: 23 -> 13 us of the relay per row.
    rows = conn.execute(
        "SELECT id, account_id, domain_id, message_id, storage_key, mail_from,"
        " json_build_array(headers, tags, user_variables, options, attachments) AS json,"
        " method, size, body, dkim_signature, extract(epoch from created_at)::float8 AS created_ts,"
        " (SELECT count(*) FROM recipients r WHERE r.message_pk = m.id) AS recipient_count"
        " FROM messages m WHERE id = ANY(%s)",
        (message_pks,), binary=True,
    ).fetchall()
    for row in rows:
        row["headers"], row["tags"], row["user_variables"], row["options"], row["attachments"] = row.pop("json")
    return rows


def save_dkim_signature(conn: Connection, message_pk: int, signature: str) -> None:
    save_dkim_signatures(conn, {message_pk: signature})


def save_dkim_signatures(conn: Connection, signatures: dict[int, str]) -> None:
    """Store each message's DKIM-Signature once (retries reuse it); one statement for the batch."""
    if not signatures:
        return
    conn.execute(
        "UPDATE messages m SET dkim_signature = v.sig FROM unnest(%s::bigint[], %s::text[]) AS v(id, sig)"
        " WHERE m.id = v.id AND m.dkim_signature IS NULL",
        (list(signatures), list(signatures.values())),
    )


def finish(conn: Connection, rows: list[tuple]) -> None:
    """rows: (recipient_id, status, code, message) for final outcomes."""
    if not rows:
        return
    ids, statuses, codes, messages = (list(col) for col in zip(*rows, strict=True))
    conn.execute(
        "UPDATE recipients r SET status = v.status, last_code = v.code, last_message = v.message,"
        " attempts = r.attempts + 1, leased_until = NULL, updated_at = now()"
        " FROM unnest(%s::bigint[], %s::text[], %s::int[], %s::text[]) AS v(id, status, code, message)"
        " WHERE r.id = v.id",
        (ids, statuses, codes, messages),
    )


def reschedule(conn: Connection, rows: list[tuple]) -> None:
    """rows: (recipient_id, next_attempt_at, code, message, count_attempt); code None keeps the last one."""
    if not rows:
        return
    ids, whens, codes, messages, counted = (list(col) for col in zip(*rows, strict=True))
    conn.execute(
        "UPDATE recipients r SET next_attempt_at = v.at, last_code = coalesce(v.code, r.last_code),"
        " last_message = coalesce(v.message, r.last_message), attempts = r.attempts + v.counted,"
        " leased_until = NULL, updated_at = now()"
        " FROM unnest(%s::bigint[], %s::timestamptz[], %s::int[], %s::text[], %s::int[])"
        " AS v(id, at, code, message, counted) WHERE r.id = v.id",
        (ids, whens, codes, messages, [1 if c else 0 for c in counted]),
    )


def queue_depth(conn: Connection) -> dict:
    row = conn.execute(
        "SELECT count(*) FILTER (WHERE next_attempt_at <= now()) AS due,"
        " count(*) AS scheduled, coalesce(extract(epoch FROM now() - min(next_attempt_at)"
        " FILTER (WHERE next_attempt_at <= now())), 0)::float8 AS oldest_due_seconds"
        " FROM recipients WHERE status = 'queued'"
    ).fetchone()
    return dict(row)


def next_due_at(conn: Connection) -> datetime | None:
    row = conn.execute(
        "SELECT min(next_attempt_at) AS at FROM recipients WHERE status = 'queued'"
    ).fetchone()
    return row["at"]


# The operator's queue page. The queue can hold millions of recipients: each figure below reads
# either one end of the recipients_due index (next_attempt_at WHERE status = 'queued') or a bounded
# "head" of it, the `scan` queued rows that are due soonest, never the whole queue.
def oldest_due(conn: Connection) -> datetime | None:
    """When the most overdue queued recipient became due (the first entry of recipients_due)."""
    row = conn.execute("SELECT next_attempt_at AS at FROM recipients WHERE status = 'queued'"
                       " ORDER BY next_attempt_at LIMIT 1").fetchone()
    return row["at"] if row else None


_HEAD = ("WITH head AS (SELECT rcpt_domain, next_attempt_at, leased_until, lease_owner, attempts, message_pk"
         " FROM recipients WHERE status = 'queued' ORDER BY next_attempt_at LIMIT %(scan)s)")


def queue_by_destination(conn: Connection, limit: int, scan: int) -> list[dict]:
    """The `limit` busiest recipient domains among the `scan` queued recipients due soonest: queued,
    due now, in flight (leased by a relay), retrying (attempted before), the earliest due time and when
    the oldest of their messages was accepted. Cost: an index range scan of `scan` rows + one
    hash aggregate + `limit` primary-key lookups in messages."""
    return conn.execute(
        _HEAD + """,
        grouped AS (
            SELECT rcpt_domain, count(*) AS queued,
                   count(*) FILTER (WHERE next_attempt_at <= now()) AS due,
                   count(*) FILTER (WHERE leased_until > now()) AS in_flight,
                   count(*) FILTER (WHERE attempts > 0) AS retrying,
                   min(next_attempt_at) AS first_due_at, min(message_pk) AS oldest_message
            FROM head GROUP BY rcpt_domain ORDER BY count(*) DESC, rcpt_domain LIMIT %(limit)s
        )
        SELECT g.rcpt_domain AS destination, g.queued, g.due, g.in_flight, g.retrying, g.first_due_at,
               m.created_at AS oldest_accepted_at
        FROM grouped g LEFT JOIN messages m ON m.id = g.oldest_message
        ORDER BY g.queued DESC, g.rcpt_domain
        """, {"scan": scan, "limit": limit}).fetchall()


def queue_by_relay_host(conn: Connection, scan: int) -> list[dict]:
    """Per relay host (lease_owner, i.e. ENVOI_RELAY_HOST) among the `scan` queued recipients due
    soonest: what it holds leased now (in flight) and what it tried last and must retry. Rows no relay
    has touched yet are under host NULL."""
    return conn.execute(
        _HEAD + """
        SELECT lease_owner AS relay_host, count(*) AS queued,
               count(*) FILTER (WHERE leased_until > now()) AS in_flight,
               count(*) FILTER (WHERE attempts > 0 AND (leased_until IS NULL OR leased_until <= now())) AS to_retry,
               min(next_attempt_at) AS first_due_at
        FROM head GROUP BY lease_owner ORDER BY count(*) DESC, lease_owner NULLS LAST
        """, {"scan": scan}).fetchall()


def stored_message(conn: Connection, domain_id: int, storage_key: str) -> dict | None:
    return conn.execute(
        "SELECT m.id, m.storage_key, m.mail_from, m.headers, m.body, m.attachments, m.tags, m.user_variables,"
        " m.options, m.size, m.account_id, m.domain_id, m.method,"
        " array(SELECT r.address FROM recipients r WHERE r.message_pk = m.id ORDER BY r.id) AS recipients"
        " FROM messages m WHERE m.domain_id = %s AND m.storage_key = %s",
        (domain_id, storage_key),
    ).fetchone()


def purge_expired_bodies(conn: Connection, limit: int) -> int:
    """Drop message bodies past their retention; the rows stay for events and the schedule.

    A body still needed by a queued recipient is kept until that recipient finishes.
    """
    cur = conn.execute(
        """
        UPDATE messages SET body = NULL, dkim_signature = NULL
        WHERE id IN (
            SELECT m.id FROM messages m
            WHERE m.body IS NOT NULL AND m.body_expires_at < now()
              AND NOT EXISTS (SELECT 1 FROM recipients r WHERE r.message_pk = m.id AND r.status = 'queued')
            LIMIT %s FOR UPDATE SKIP LOCKED
        )
        """,
        (limit,),
    )
    return cur.rowcount


def messages_to(conn: Connection, account_id: int, address: str) -> list[dict]:
    """What was sent to an address (metadata, no bodies), for a data-subject export."""
    return conn.execute(
        "SELECT m.message_id, m.headers, m.tags, m.method, m.size, m.created_at, r.status, r.attempts,"
        " r.last_code, r.last_message FROM recipients r JOIN messages m ON m.id = r.message_pk"
        " WHERE r.account_id = %s AND lower(r.address) = %s ORDER BY m.created_at",
        (account_id, address),
    ).fetchall()


def erase_recipient(conn: Connection, account_id: int, address: str) -> dict:
    """Remove an address from the schedule (queued mail to it is cancelled) and delete the messages
    that were addressed to it alone, bodies included."""
    pks = [r["message_pk"] for r in conn.execute(
        "DELETE FROM recipients WHERE account_id = %s AND lower(address) = %s RETURNING message_pk",
        (account_id, address))]
    deleted = conn.execute(
        "DELETE FROM messages m WHERE m.id = ANY(%s)"
        " AND NOT EXISTS (SELECT 1 FROM recipients r WHERE r.message_pk = m.id)",
        (list(set(pks)),)).rowcount
    return {"recipients": len(pks), "messages": deleted}


def lock_message_recipients(conn: Connection, domain_id: int, storage_key: str) -> tuple[dict | None, list[dict]]:
    """The message (metadata, no body) and its recipients, locked against the relay's claim until the
    transaction ends; (None, []) when the domain has no such message."""
    message = conn.execute(
        "SELECT id, account_id, domain_id, message_id, mail_from, headers, tags, user_variables, options,"
        " attachments, size, method FROM messages WHERE domain_id = %s AND storage_key = %s",
        (domain_id, storage_key)).fetchone()
    if message is None:
        return None, []
    return message, conn.execute(
        "SELECT id, address, status, leased_until > now() AS leased FROM recipients WHERE message_pk = %s"
        " ORDER BY id FOR UPDATE", (message["id"],)).fetchall()


def lock_queued(conn: Connection, limit: int, *, domain_id: int | None = None,
                account_id: int | None = None) -> list[dict]:
    """Up to `limit` queued recipients of the domain (or of the whole account) that no relay holds, locked
    (skipping rows a relay is claiming right now: those are in flight), with their messages' metadata for
    the events. Rare operator/customer actions: they read the queued rows' index, not a per-domain one."""
    column, value = ("domain_id", domain_id) if domain_id is not None else ("account_id", account_id)
    if value is None:
        raise ValueError("lock_queued needs a domain or an account")
    return conn.execute(
        "SELECT r.id, r.address, m.id AS message_pk, m.account_id, m.domain_id, m.message_id, m.mail_from,"
        " m.headers, m.tags, m.user_variables, m.options, m.attachments, m.size, m.method"
        " FROM recipients r JOIN messages m ON m.id = r.message_pk"
        f" WHERE r.{column} = %s AND r.status = 'queued' AND (r.leased_until IS NULL OR r.leased_until < now())"
        " ORDER BY r.id LIMIT %s FOR UPDATE OF r SKIP LOCKED", (value, limit)).fetchall()


def cancel_recipients(conn: Connection, ids: list[int], reason: str) -> None:
    """Take queued recipients out of the schedule as failed (the relay claims only queued ones)."""
    conn.execute("UPDATE recipients SET status = 'failed', last_message = %s, leased_until = NULL,"
                 " lease_owner = NULL, updated_at = now() WHERE id = ANY(%s) AND status = 'queued'", (reason, ids))
