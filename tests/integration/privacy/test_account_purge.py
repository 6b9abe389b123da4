"""Deleting an account: it stops at once; after the purge delay (a test clock) nothing of it is left in any
table or Redis key, another account is intact, and an interrupted purge finishes on a rerun."""

from __future__ import annotations

import time

import pytest
from click.testing import CliRunner

from envoi import cli, runtime
from envoi.infra.settings import SettingsError
from envoi.mta.tracking import NOT_PROCESSING
from envoi.privacy import archive
from tests.conftest import basic
from tests.integration.privacy import workload
from tests.support.dashboard import PASSWORD
from tests.support.databases import drop_database, migrated_database
from tests.support.relay import wait_until

DAY = 86400.0
SCANNED_TYPES = ("text", "character varying", "jsonb", "json", "bytea", "ARRAY")


class Crash(Exception):
    pass


@pytest.fixture(scope="module")
def settings(settings):
    """This module's own database: the scans below read every row of every text column, and the session's
    database holds every earlier test's rows by now (a 10,000-member list, its 10,000 recipients: a minute
    of scanning). Both accounts of the test and everything of theirs are here, as in any region."""
    dsn = migrated_database("envoi_test_purge")
    yield settings.replace(database_url=dsn)
    drop_database(dsn)


@pytest.fixture(scope="module")
def services(settings):
    svc = runtime.build(settings)
    yield svc
    svc.close()


def scan_database(db, needles: list[str], ids: dict[str, set[int]]) -> list[str]:
    """Every column of every table that could hold the account: text-like ones for the needles (bytea as
    escaped text), id columns for its ids. Returns 'table.column: needle' for each hit."""
    hits = []
    patterns = ["%" + n.lower().replace("\\", "\\\\").replace("%", "\\%").replace("_", "\\_") + "%" for n in needles]
    columns = db.execute(
        "SELECT c.table_name, c.column_name, c.data_type FROM information_schema.columns c"
        " JOIN information_schema.tables t USING (table_schema, table_name)"
        " WHERE c.table_schema = 'public' AND t.table_type = 'BASE TABLE'").fetchall()
    assert len({c["table_name"] for c in columns}) > 30  # the whole schema, partitions included
    for col in columns:
        table, column, kind = col["table_name"], col["column_name"], col["data_type"]
        if kind in SCANNED_TYPES:
            text = f"encode(\"{column}\", 'escape')" if kind == "bytea" else f"\"{column}\"::text"
            # One pass over the column for all needles (the shared test database is large by now); only a
            # column that holds one is asked which.
            if not db.execute(f'SELECT 1 FROM "{table}" WHERE lower({text}) LIKE ANY(%s) LIMIT 1',
                              (patterns,)).fetchone():
                continue
            for needle in needles:
                if db.execute(f'SELECT 1 FROM "{table}" WHERE strpos(lower({text}), lower(%s)) > 0 LIMIT 1',
                              (needle,)).fetchone():
                    hits.append(f"{table}.{column}: {needle}")
        elif kind == "bigint" and column in ids and db.execute(
                f'SELECT 1 FROM "{table}" WHERE "{column}" = ANY(%s) LIMIT 1', (list(ids[column]),)).fetchone():
            hits.append(f"{table}.{column}: {ids[column]}")
    return hits


def scan_redis(redis, needles: list[str], account_id: int) -> list[str]:
    hits = []
    for key in redis.scan_iter(count=1000):
        name = key.decode(errors="replace")
        kind = redis.type(key).decode()
        if kind == "string":
            values = [redis.get(key)]
        elif kind == "hash":
            values = [b" ".join(pair) for pair in redis.hgetall(key).items()]
        elif kind == "list":
            values = redis.lrange(key, 0, -1)
        elif kind in ("set",):
            values = list(redis.smembers(key))
        elif kind == "zset":
            values = redis.zrange(key, 0, -1)
        elif kind == "stream":
            values = [repr(fields).encode() for _, fields in redis.xrange(key)]
        else:
            values = []
        blob = (name + " " + b" ".join(v or b"" for v in values).decode(errors="replace")).lower()
        hits += [f"{name}: {n}" for n in needles if n.lower() in blob]
        if name.endswith(f":{account_id}") or f":{account_id}:" in name:
            hits.append(f"{name}: account id")
    return hits


def ids_of(db, account_id: int) -> dict[str, set[int]]:
    def ids(sql):
        return {r["id"] for r in db.execute(sql, (account_id,)).fetchall()}

    domains = ids("SELECT id FROM domains WHERE account_id = %s")
    messages = ids("SELECT id FROM messages WHERE account_id = %s")
    recipients = ids("SELECT id FROM recipients WHERE account_id = %s")
    users = ids("SELECT id FROM users WHERE account_id = %s")
    deliveries = ids("SELECT id FROM webhook_deliveries WHERE account_id = %s")
    return {"account_id": {account_id}, "domain_id": domains, "message_pk": messages, "recipient_id": recipients,
            "user_id": users, "delivery_id": deliveries}


#: Tables with an account_id or domain_id column that the purge reaches otherwise: by cascade from a
#: parent it deletes, or (ips) by ON DELETE SET NULL. A new table must be added to archive.SECTIONS
#: (exported, restored and purged) or, if it cannot be, to purge._EXTRA and here.
REACHED_OTHERWISE = {"event_stats_pending", "ip_audit", "stripe_events", "ips", "ip_pools", "domain_ips",
                     "domain_ip_pools", "webhook_signing_keys", "webhook_endpoint_health"}


def test_every_table_of_an_account_is_exported_and_purged(db):
    tables = {r["table_name"] for r in db.execute(
        "SELECT DISTINCT c.table_name FROM information_schema.columns c JOIN pg_class k ON k.relname = c.table_name"
        " WHERE c.table_schema = 'public' AND c.column_name IN ('account_id', 'domain_id') AND NOT k.relispartition")}
    covered = {s.table for s in archive.SECTIONS} | REACHED_OTHERWISE
    assert tables - covered == set(), "a table of the account is neither exported nor purged"


def test_the_scheduler_runs_the_purge_and_the_inactivity_sweep(services):
    tasks = {t.name: t for t in runtime.periodic_tasks(services)}
    assert tasks["purge deleted accounts past the purge delay"].run == services.purge.run
    assert tasks["inactive accounts: warn, then purge"].run == services.inactivity.sweep


def test_a_purge_delay_over_90_days_is_refused_at_startup(settings):
    with pytest.raises(SettingsError, match="90 days"):
        runtime.build(settings.replace(account_purge_delay=91 * DAY))


def test_deleted_account_stops_at_once_and_is_purged_after_the_delay(client, services, db):
    redis_client = services.redis
    gone = workload.build(services)
    kept = workload.build(services)
    account_id = gone.account["id"]
    ids = ids_of(db, account_id)
    ids["domain_id"].add(gone.removed_domain["id"])  # its events outlived it
    assert db.execute("SELECT count(*) AS n FROM events WHERE domain_id = %s",
                      (gone.removed_domain["id"],)).fetchone()["n"] >= 1
    kept_before = {t: db.execute(f"SELECT count(*) AS n FROM {t} WHERE account_id = %s", (kept.account["id"],))
                   .fetchone()["n"] for t in ("messages", "events", "webhook_deliveries", "users", "audit_log")}
    wait_until(lambda: redis_client.exists(services.stream.key(account_id)))  # its live stream holds its events
    # a tracking link of the account, from the body it sent
    token = services.tracking.sign("o", account_id, gone.domains[0]["id"], gone.message_ids[0],
                                   f"person0-{gone.tag}@far.test")
    assert client.simulate_get(f"/o/{token}").status_code == 200
    click = services.tracking.sign("c", account_id, gone.domains[0]["id"], gone.message_ids[0],
                                   f"person0-{gone.tag}@far.test", "https://shop.example/offer")
    assert client.simulate_get(f"/c/{click}").headers["location"] == "https://shop.example/offer"

    closed_at = time.time()
    services.privacy.close_account(account_id, actor="test")
    # at once: no key, no login, no tracking (neither recorded nor answered with its data)
    assert client.simulate_get("/v4/domains", headers=basic(gone.key_secret)).status_code == 401
    opens = db.execute("SELECT count(*) AS n FROM events WHERE account_id = %s AND event = 'opened'",
                       (account_id,)).fetchone()["n"]
    assert client.simulate_get(f"/o/{token}").status_code == 404
    refused = client.simulate_get(f"/c/{click}")
    assert refused.status_code == 404 and "location" not in refused.headers
    unsubscribe = services.tracking.sign("u", account_id, gone.domains[0]["id"], gone.message_ids[0],
                                         f"person0-{gone.tag}@far.test", ["*"])
    page = client.simulate_get(f"/u/{unsubscribe}")  # the confirmation page, which shows the address
    assert page.status_code == 404 and gone.tag not in page.text
    assert db.execute("SELECT count(*) AS n FROM events WHERE account_id = %s AND event = 'opened'",
                      (account_id,)).fetchone()["n"] == opens
    assert "closed" in NOT_PROCESSING
    with pytest.raises(Exception, match="closed"):
        services.users.login(gone.admin_email, PASSWORD)

    # before the delay (30 days by default), nothing is gone
    assert services.purge.delay == 30 * DAY
    # (the shared test database may hold other tests' closed accounts: only this one's fate is asserted)
    assert account_id not in services.purge.run(now=closed_at + 29 * DAY)
    assert db.execute("SELECT count(*) AS n FROM messages WHERE account_id = %s", (account_id,)).fetchone()["n"] == 3
    assert scan_database(db, [gone.domains[0]["name"]], {})  # still there (and the scan finds it)

    # a purge that crashes halfway (after the first batch of events) leaves the account due; a rerun ends it
    services.purge.batch = 1
    try:
        def crash(table):
            if table == "events":
                raise Crash()

        with pytest.raises(Crash):
            services.purge.purge_account(account_id, after_batch=crash)
    finally:
        services.purge.batch = 1000
    assert db.execute("SELECT count(*) AS n FROM webhook_attempts WHERE domain_id = ANY(%s)",
                      (list(ids["domain_id"]),)).fetchone()["n"] == 0  # done before the crash
    assert db.execute("SELECT 1 FROM accounts WHERE id = %s", (account_id,)).fetchone()  # still due
    assert account_id in services.purge.run(now=closed_at + 30 * DAY + 1)
    assert account_id not in services.purge.run(now=closed_at + 31 * DAY)  # idempotent: nothing left to do

    # nothing of it anywhere: every table's text, JSON, arrays and bytes, its ids, and every Redis key
    assert db.execute("SELECT 1 FROM accounts WHERE id = %s", (account_id,)).fetchone() is None
    assert scan_database(db, gone.needles, ids) == []
    assert scan_redis(redis_client, gone.needles, account_id) == []
    # ... but the operator's record that it was purged, without personal data
    [record] = db.execute("SELECT account_id, actor, action, target, details FROM audit_log"
                          " WHERE action = 'account.purged' AND details->>'account_id' = %s", (str(account_id),))
    assert record == {"account_id": None, "actor": "scheduler", "action": "account.purged", "target": "",
                      "details": {"account_id": account_id}}
    # the other account is intact and still works
    kept_after = {t: db.execute(f"SELECT count(*) AS n FROM {t} WHERE account_id = %s", (kept.account["id"],))
                  .fetchone()["n"] for t in kept_before}
    assert kept_after == kept_before
    assert client.simulate_get("/v4/domains", headers=basic(kept.key_secret)).status_code == 200
    assert redis_client.exists(services.stream.key(kept.account["id"]))


def test_cli_purges_a_closed_account_now_and_refuses_an_open_one(services, cli_env, db):
    account = services.accounts.create_account("purge-me-now")
    services.accounts.add_domain(account["id"], f"purge-{account['id']}.example.test", dkim_key_size=1024)
    result = CliRunner().invoke(cli.main, ["accounts", "purge", "--account-id", str(account["id"])])
    assert result.exit_code == 1 and "is not closed" in result.output
    assert db.execute("SELECT 1 FROM accounts WHERE id = %s", (account["id"],)).fetchone()
    assert CliRunner().invoke(cli.main, ["accounts", "close", str(account["id"]), "--yes"]).exit_code == 0
    result = CliRunner().invoke(cli.main, ["accounts", "purge", "--account-id", str(account["id"])])
    assert result.exit_code == 0, result.output
    assert db.execute("SELECT 1 FROM accounts WHERE id = %s", (account["id"],)).fetchone() is None
    assert db.execute("SELECT count(*) AS n FROM domains WHERE name = %s",
                      (f"purge-{account['id']}.example.test",)).fetchone()["n"] == 0
    assert db.execute("SELECT actor FROM audit_log WHERE action = 'account.purged' AND details->>'account_id' = %s",
                      (str(account["id"]),)).fetchone()["actor"].startswith("cli:")
