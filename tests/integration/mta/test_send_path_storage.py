"""How the send path's rows are stored (0305_send_path_storage): what Postgres does per message."""

from __future__ import annotations

from envoi.mta import store
from tests.support.delivery import send

TEXT = "Thank you for your order. Your parcel is on its way and will arrive soon.\r\n"


def _toast_rows(db) -> int:
    toast = db.execute("SELECT reltoastrelid::regclass::text AS t FROM pg_class WHERE oid = 'messages'::regclass"
                       ).fetchone()["t"]
    return db.execute(f"SELECT count(*) AS n FROM {toast}").fetchone()["n"]


def test_a_sealed_body_is_kept_in_its_row_and_a_big_one_out_of_line(services, account, domain, db):
    """A ~5 KB sealed body stays in its row (no TOAST chunks to write and read back); a body bigger than a
    page still goes out of line. Neither is compressed (ciphertext does not compress) and both read back."""
    before = _toast_rows(db)
    small = send(services, account["id"], domain, "a@inline.test", text=TEXT * 66)
    assert _toast_rows(db) == before
    big = send(services, account["id"], domain, "a@outofline.test", text=TEXT * 400)
    assert _toast_rows(db) > before
    rows = {r["message_id"]: r for r in db.execute(
        "SELECT message_id, storage_key, body, pg_column_compression(body) AS compression FROM messages"
        " WHERE message_id = ANY(%s)", ([small, big],))}
    assert [rows[m]["compression"] for m in (small, big)] == [None, None]
    for message_id, size in ((small, 66), (big, 400)):
        row = rows[message_id]
        mime = services.sealer.open(row["body"], row["storage_key"].encode())
        assert mime.count(b"Your parcel is on its way") == size


def test_the_relays_claim_is_a_hot_update(services, account, domain, db):
    """Leasing a recipient changes no indexed column: its new version goes on the same page without new
    index entries when the page has room, which fillfactor 50 leaves (at 100 the claim of a few pages' rows
    found room for those of the last page only). A claimed version is a little bigger (the lease's time and
    owner), so a page claimed whole may lack room for its last few. The messages load whole."""
    n = 120  # about four pages of recipients at fillfactor 50
    ids = [send(services, account["id"], domain, f"r{i}@hot.test", text=TEXT * 66) for i in range(n)]
    others = [r["id"] for r in db.execute("SELECT id FROM domains WHERE id <> %s", (domain["id"],))]
    with services.db.transaction() as conn:
        # Other domains' mail is "on other hosts": this claim takes this test's recipients only.
        rows = store.claim_due(conn, 1000, 120, "hot-test", store.HostAffinity(elsewhere=tuple(others)))
        hot = conn.execute("SELECT pg_stat_get_xact_tuples_hot_updated('recipients'::regclass) AS n,"
                           " pg_stat_get_xact_tuples_updated('recipients'::regclass) AS updated").fetchone()
        messages = store.load_messages(conn, [r["message_pk"] for r in rows])
    assert sorted(r["address"] for r in rows) == sorted(f"r{i}@hot.test" for i in range(n))
    # Other tests' rows may be touched in the same transaction (121 updates seen once in the full suite):
    # the claim's own rows are all updated, and the share that is HOT is what this test is about.
    assert hot["updated"] >= n and hot["n"] >= 0.85 * hot["updated"], hot
    assert sorted(m["message_id"] for m in messages) == sorted(ids)
    for m in messages:
        assert type(m["body"]) is bytes and services.sealer.open(m["body"], m["storage_key"].encode()).count(
            b"Your parcel is on its way") == 66
        assert m["tags"] == [] and m["headers"]["subject"] == "Hi" and m["recipient_count"] == 1
        assert float(m["created_ts"]) > 0


def test_the_claim_updates_its_rows_by_ctid(services, account, domain, db):
    """The claim's update finds the rows its scan locked by their ctid (a TID scan), not again through the
    primary key: one index lookup a row fewer (0.4 us of the claim's ~5.5 per row, bench in docs)."""
    n = 20
    for i in range(n):
        send(services, account["id"], domain, f"r{i}@ctid.test")
    others = [r["id"] for r in db.execute("SELECT id FROM domains WHERE id <> %s", (domain["id"],))]
    with services.db.transaction() as conn:
        rows = store.claim_due(conn, 1000, 120, "ctid-test", store.HostAffinity(elsewhere=tuple(others)))
        scans = conn.execute("SELECT pg_stat_get_xact_numscans('recipients_pkey'::regclass) AS n").fetchone()["n"]
        leased = conn.execute("SELECT count(*) AS n FROM recipients WHERE lease_owner = 'ctid-test'"
                              " AND leased_until > now()").fetchone()["n"]
    assert sorted(r["address"] for r in rows) == sorted(f"r{i}@ctid.test" for i in range(n))
    assert leased == n
    assert scans == 0


def test_pending_stats_are_appended_without_an_index(services, account, domain, db):
    """The pending counts (a few rows per group commit, deleted whole by every fold) carry no index to
    write for each row (0420); the accept still counts."""
    assert db.execute("SELECT count(*) AS n FROM pg_indexes WHERE tablename = 'event_stats_pending'"
                      ).fetchone()["n"] == 0
    send(services, account["id"], domain, "a@pending.test", o_tag="pending-test")
    counted = db.execute(
        "SELECT (SELECT coalesce(sum(count), 0) FROM event_stats_pending WHERE domain_id = %(d)s AND tag = %(t)s"
        " AND event = 'accepted') + (SELECT coalesce(sum(count), 0) FROM event_stats_hourly WHERE domain_id = %(d)s"
        " AND tag = %(t)s AND event = 'accepted') AS n", {"d": domain["id"], "t": "pending-test"}).fetchone()["n"]
    assert counted == 1  # pending, or folded already (a fold may run right after the commit)


def test_concurrent_claims_by_ctid_share_the_queue(services, account, domain, db):
    """Two relays claiming at once (SKIP LOCKED, rows updated by ctid): every recipient is leased once,
    none twice, none left behind."""
    import threading

    n = 200
    for i in range(n):
        send(services, account["id"], domain, f"r{i}@race.test")
    others = tuple(r["id"] for r in db.execute("SELECT id FROM domains WHERE id <> %s", (domain["id"],)))
    claimed: dict[str, list[str]] = {"a": [], "b": []}

    def relay(owner: str) -> None:
        while True:
            with services.db.transaction() as conn:
                rows = store.claim_due(conn, 7, 120, f"race-{owner}", store.HostAffinity(elsewhere=others))
            if not rows:
                return
            claimed[owner] += [r["address"] for r in rows]

    threads = [threading.Thread(target=relay, args=(owner,)) for owner in claimed]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    every = claimed["a"] + claimed["b"]
    assert sorted(every) == sorted(f"r{i}@race.test" for i in range(n))
    assert db.execute("SELECT count(*) AS n FROM recipients WHERE address LIKE '%%@race.test'"
                      " AND lease_owner LIKE 'race-%%' AND leased_until > now()").fetchone()["n"] == n


def test_the_intake_plans_its_statements_once_on_a_connection_of_its_own(services, account, domain, db):
    """The group commit writes on a connection of its own, whose prepared statements get their generic plan
    at once: each batch shape is planned once per process, not five times then once more on each of the
    pool's connections in turn. The rest of the process keeps Postgres's choice (a read with a LIMIT or a
    skewed filter may need a plan made for its values); the rows are stored as before."""
    ids = [send(services, account["id"], domain, f"p{i}@plans.test", text=TEXT) for i in range(8)]
    assert services.intake.db is not services.db
    with services.intake.db.transaction() as conn:
        assert conn.execute("SHOW plan_cache_mode").fetchone()["plan_cache_mode"] == "force_generic_plan"
        # One message a batch here: one shape, written 8 times, on this one connection.
        plans = conn.execute("SELECT generic_plans, custom_plans FROM pg_prepared_statements"
                             " WHERE statement LIKE 'WITH i0 AS (INSERT INTO messages %'").fetchall()
    assert plans and all(p["custom_plans"] == 0 for p in plans), plans
    assert sum(p["generic_plans"] for p in plans) >= 8, plans
    with services.db.transaction() as conn:
        assert conn.execute("SHOW plan_cache_mode").fetchone()["plan_cache_mode"] == "auto"
    stored = db.execute("SELECT r.address, e.event FROM messages m JOIN recipients r ON r.message_pk = m.id"
                        " JOIN events e ON e.message_pk = m.id WHERE m.message_id = ANY(%s)", (ids,)).fetchall()
    assert sorted((s["address"], s["event"]) for s in stored) == [(f"p{i}@plans.test", "accepted") for i in range(8)]
