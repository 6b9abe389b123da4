"""Suppression entries keep the address sealed plus a keyed hash: nothing readable in the tables, the
Mailgun API unchanged, lookups independent of the sealing key, and an erased person still suppressed."""

from __future__ import annotations

import hashlib
import hmac
import secrets
import uuid

import psycopg
import pytest

from envoi.infra.crypto import CannotOpen, Sealer
from envoi.infra.migrate import available, ensure_database, migrate
from envoi.suppression.sealed_address import AddressVault
from envoi.suppression.service import Suppressions
from tests.conftest import PG_ADMIN, basic

ADDRESS = "Mixed.Case@Dest.test"
TABLES = ("suppress_bounces", "suppress_unsubscribes", "suppress_complaints", "suppress_whitelists")


def plaintext_hits(db, needle: str) -> list[str]:
    """Columns of the suppression tables whose value holds `needle` (any case; bytea as raw bytes)."""
    hits = []
    for table in TABLES:
        for col in db.execute("SELECT column_name, data_type FROM information_schema.columns"
                              " WHERE table_name = %s", (table,)).fetchall():
            name, kind = col["column_name"], col["data_type"]
            if kind == "bytea":
                found = db.execute(f"SELECT count(*) AS n FROM {table} WHERE position(%s::bytea in {name}) > 0"
                                   f" OR position(%s::bytea in {name}) > 0",
                                   (needle.encode(), needle.lower().encode())).fetchone()["n"]
            else:
                found = db.execute(f"SELECT count(*) AS n FROM {table} WHERE {name}::text ILIKE %s",
                                   (f"%{needle}%",)).fetchone()["n"]
            if found:
                hits.append(f"{table}.{name}")
    return hits


def fill(services, domain):
    supp = services.suppressions
    supp.add(domain, "bounces", {"address": [ADDRESS], "error": ["mailbox unknown"]})
    supp.add(domain, "unsubscribes", {"address": [ADDRESS], "tag": ["news"]})
    supp.add(domain, "complaints", {"address": [ADDRESS]})
    supp.add(domain, "whitelists", {"address": [ADDRESS]})
    supp.add(domain, "whitelists", {"domain": ["partner.test"]})


def test_tables_hold_no_plaintext_and_the_api_reads_as_before(client, services, settings, domain, api_key, db):
    fill(services, domain)
    assert plaintext_hits(db, ADDRESS) == [] and plaintext_hits(db, "partner.test") == []
    # The lookup hash is HMAC-SHA256 of the lower-cased address under ENVOI_LOOKUP_KEY.
    expected = hmac.new(settings.lookup_key, b"envoi/suppression-address/v1\x00" + ADDRESS.lower().encode(),
                        hashlib.sha256).digest()
    row = db.execute("SELECT address_hash, address_sealed FROM suppress_complaints WHERE domain_id = %s",
                     (domain["id"],)).fetchone()
    assert bytes(row["address_hash"]) == expected
    # The sealed copy is bound to its table and domain: it does not open as another list's or domain's.
    vault = services.suppressions.vault
    assert vault.open("suppress_complaints", domain["id"], row["address_sealed"]) == ADDRESS.lower()
    for table, domain_id in (("suppress_bounces", domain["id"]), ("suppress_complaints", domain["id"] + 1)):
        with pytest.raises(CannotOpen):
            vault.open(table, domain_id, row["address_sealed"])

    got = client.simulate_get(f"/v3/{domain['name']}/bounces/{ADDRESS}", headers=basic(api_key)).json
    assert got["address"] == ADDRESS.lower() and got["error"] == "mailbox unknown"
    items = client.simulate_get(f"/v3/{domain['name']}/whitelists", headers=basic(api_key)).json["items"]
    assert sorted((i["value"], i["type"]) for i in items) == [(ADDRESS.lower(), "address"), ("partner.test", "domain")]
    # The allowlist's domain entry matches through its hash too: it beats a bounce, until removed.
    services.suppressions.add(domain, "bounces", {"address": ["x@partner.test"]})
    check = [(domain["account_id"], domain["id"], "x@Partner.test", [])]
    with services.db.transaction() as conn:
        assert services.suppressions.blocked(conn, check) == [None]
    services.suppressions.delete(domain, "whitelists", "partner.test")
    with services.db.transaction() as conn:
        assert services.suppressions.blocked(conn, check) == ["suppress-bounce"]


def test_lookups_survive_a_new_sealing_key(services, settings, domain):
    """The hash does not depend on ENVOI_SECRET_KEY: a process with another sealing key (after a
    rotation) and the same ENVOI_LOOKUP_KEY finds every entry."""
    fill(services, domain)
    rotated = Suppressions(services.db, settings.public_url,
                           AddressVault(Sealer(secrets.token_bytes(32)), settings.lookup_key))
    with services.db.transaction() as conn:
        assert rotated.blocked(conn, [(domain["account_id"], domain["id"], ADDRESS.upper(), [])]) == [
            "suppress-complaint"]
    assert rotated.delete(domain, "bounces", ADDRESS)["address"] == ADDRESS.lower()


def test_an_erased_person_stays_suppressed_and_nothing_readable_remains(client, services, domain, api_key, db):
    fill(services, domain)
    services.suppressions.add(domain, "complaints", {"address": ["kept@dest.test"]})
    resp = client.simulate_delete(f"/v3/privacy/addresses/{ADDRESS}", headers=basic(api_key))
    assert resp.status_code == 200 and resp.json["erased"]["suppression_entries"] == 4

    counts = {t: db.execute(f"SELECT count(*) AS n FROM {t} WHERE domain_id = %s", (domain["id"],)).fetchone()["n"]
              for t in TABLES}
    assert counts == {"suppress_bounces": 1, "suppress_unsubscribes": 1, "suppress_complaints": 2,
                      "suppress_whitelists": 2}  # every entry kept ...
    assert plaintext_hits(db, ADDRESS) == []  # ... with nothing readable
    assert db.execute("SELECT count(*) AS n FROM suppress_complaints WHERE domain_id = %s AND address_sealed IS NULL",
                      (domain["id"],)).fetchone()["n"] == 1
    with services.db.transaction() as conn:
        assert services.suppressions.blocked(conn, [(domain["account_id"], domain["id"], ADDRESS, ["news"])]) == [
            "suppress-complaint"]
    # Lists and exports leave the erased entries out; the address, given again, still finds (and deletes) them.
    items = client.simulate_get(f"/v3/{domain['name']}/complaints", headers=basic(api_key)).json["items"]
    assert [i["address"] for i in items] == ["kept@dest.test"]
    assert client.simulate_get(f"/v3/{domain['name']}/unsubscribes", headers=basic(api_key)).json["items"] == []
    got = client.simulate_get(f"/v3/{domain['name']}/unsubscribes/{ADDRESS}", headers=basic(api_key)).json
    assert got["address"] == ADDRESS.lower() and got["tags"] == ["news"]
    assert client.simulate_delete(f"/v3/{domain['name']}/bounces/{ADDRESS}", headers=basic(api_key)).status_code == 200
    # A new bounce after the erasure is new data: the entry is readable again.
    services.suppressions.add(domain, "bounces", {"address": [ADDRESS]})
    assert [i["address"] for i in services.suppressions.export(domain, "bounces")] == [ADDRESS.lower()]


def _fresh_database_before_0110():
    dsn = psycopg.conninfo.make_conninfo(PG_ADMIN, dbname=f"envoi_test_m0110_{uuid.uuid4().hex[:8]}")
    ensure_database(dsn)
    with psycopg.connect(dsn, autocommit=True) as conn:
        conn.execute("CREATE TABLE schema_migrations (version text PRIMARY KEY,"
                     " applied_at timestamptz NOT NULL DEFAULT now())")
        for version, sql, kind in available():
            if version >= "0110":
                break
            with conn.transaction():
                if kind == "sql":
                    conn.execute(sql)
                conn.execute("INSERT INTO schema_migrations (version) VALUES (%s)", (version,))
        conn.execute("INSERT INTO accounts (name, region) VALUES ('old', 'eu')")
        conn.execute("INSERT INTO domains (account_id, name, dkim_selector, dkim_private_key, dkim_public_key,"
                     " dkim_key_size) SELECT id, 'old.test', 's', '\\x00', 'p', 1024 FROM accounts")
        for table, column in (("suppress_bounces", "address"), ("suppress_complaints", "address"),
                              ("suppress_unsubscribes", "address")):
            conn.execute(f"INSERT INTO {table} (domain_id, {column}) SELECT id, 'old@dest.test' FROM domains")
        conn.execute("INSERT INTO suppress_whitelists (domain_id, value, type) SELECT id, 'partner.test', 'domain'"
                     " FROM domains")
    return dsn


def _drop(dsn):
    name = psycopg.conninfo.conninfo_to_dict(dsn)["dbname"]
    with psycopg.connect(PG_ADMIN, autocommit=True) as conn:
        conn.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


def test_migration_0110_seals_existing_entries_and_refuses_without_the_keys(settings):
    dsn = _fresh_database_before_0110()
    try:
        with pytest.raises(RuntimeError, match="ENVOI_LOOKUP_KEY"):
            migrate(dsn, settings.secret_key)  # no lookup key: nothing changes
        with psycopg.connect(dsn) as conn:
            assert conn.execute("SELECT address FROM suppress_bounces").fetchone() == ("old@dest.test",)
        assert "0110_seal_suppression_addresses" in migrate(dsn, settings.secret_key, lookup_key=settings.lookup_key)
        supp = Suppressions(_database(dsn), settings.public_url,
                            AddressVault(Sealer(settings.secret_key), settings.lookup_key))
        with psycopg.connect(dsn) as conn:
            domain_id = conn.execute("SELECT id FROM domains").fetchone()[0]
            columns = {r[0] for r in conn.execute("SELECT column_name FROM information_schema.columns"
                                                  " WHERE table_name = 'suppress_bounces'")}
        assert "address" not in columns and {"address_hash", "address_sealed"} <= columns
        domain = {"id": domain_id, "name": "old.test", "account_id": 1}
        assert [i["address"] for i in supp.export(domain, "complaints")] == ["old@dest.test"]
        assert supp.get(domain, "whitelists", "partner.test")["type"] == "domain"
        with supp.db.transaction() as conn:
            assert supp.blocked(conn, [(1, domain_id, "OLD@dest.test", [])]) == ["suppress-complaint"]
        supp.db.close()
    finally:
        _drop(dsn)


def _database(dsn):
    from envoi.infra.db import Database

    return Database(dsn, max_size=1)
