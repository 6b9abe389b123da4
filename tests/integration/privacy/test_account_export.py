"""The account archive: complete, secret-free, streamed; from the API and the CLI; it round-trips through
`envoi accounts import` into an empty database of the same region."""

from __future__ import annotations

import json

import pytest
from click.testing import CliRunner

from envoi import cli
from envoi.infra.db import Database
from envoi.privacy import archive
from tests.conftest import basic
from tests.integration.privacy import workload
from tests.support.databases import drop_database, migrated_database


@pytest.fixture(scope="module")
def full(services):
    return workload.build(services)


@pytest.fixture
def empty_database_url():
    """A second, empty database of the same region: where the archive is restored."""
    dsn = migrated_database("envoi_restore")
    yield dsn
    drop_database(dsn)


def sections(text: str) -> dict[str, list[dict]]:
    out: dict[str, list[dict]] = {}
    for line in text.splitlines():
        parsed = json.loads(line)
        out.setdefault(parsed["type"], []).append(parsed["data"])
    return out


def without_time(text: str) -> list[str]:
    lines = text.splitlines()
    header = json.loads(lines[0])
    header["data"].pop("exported_at")
    return [json.dumps(header), *lines[1:]]


def test_api_export_is_the_whole_account_without_secrets(client, services, full, db):
    account_id = full.account["id"]
    resp = client.simulate_get("/v1/account/export", headers=basic(full.key_secret))
    assert resp.status_code == 200 and resp.headers["content-type"] == "application/x-ndjson"
    assert "attachment" in resp.headers["content-disposition"]
    got = sections(resp.text)
    assert got["export"][0]["account_id"] == account_id and got["export"][0]["region"] == "eu"
    # every section holds exactly the account's rows, as the database has them
    for section in archive.SECTIONS:
        if section.kind == "audit":
            continue  # the export itself was audited after the archive's audit section was read
        rows = db.execute(f"SELECT {section.select} FROM {section.table} WHERE {section.scope}"
                          f" ORDER BY {', '.join(section.key)}", {"account": account_id}).fetchall()
        assert [json.loads(archive._line(section.kind, section.exported(r, services.suppressions.vault)))["data"]
                for r in rows] == got.get(section.kind, []), section.kind
    assert got["end"] == [{"counts": {s.kind: len(got.get(s.kind, [])) for s in archive.SECTIONS}}]
    # what the issue lists is there
    assert {d["name"] for d in got["domain"]} == {d["name"] for d in full.domains}
    assert len(got["message"]) == 3 and len(got["recipient"]) == 3 and len(got["event"]) >= 4
    # the events of a domain removed earlier are the account's too (read after the domains' own)
    assert [e["domain_id"] for e in got["event"]][-1] == full.removed_domain["id"]
    assert {s: len(got[s]) for s in ("bounce", "unsubscribe", "complaint", "allowlist")} == dict.fromkeys(
        ("bounce", "unsubscribe", "complaint", "allowlist"), 1)
    assert got["webhook"] and got["webhook_delivery"] and got["webhook_attempt"][0]["status_code"] == 200
    assert [u["email"] for u in got["user"]] == [full.admin_email] and len(got["invitation"]) == 2
    assert any(a["action"] == "session.created" for a in got["audit"])
    # never a secret nor a body
    secrets_db = db.execute("SELECT password_hash FROM users WHERE account_id = %s", (account_id,)).fetchall()
    for forbidden in [full.key_secret, "correct-horse-9", *(r["password_hash"] for r in secrets_db),
                      "password_hash", "secret_hash", "dkim_private_key", "url_sealed", "token_hash", "body\""]:
        assert forbidden not in resp.text, forbidden
    assert "private words" not in resp.text  # the text is in the body only
    # an exported account is audited; only admin keys export (a sending key is not an account key at all)
    assert db.execute("SELECT 1 FROM audit_log WHERE account_id = %s AND action = 'account.exported'",
                      (account_id,)).fetchone()
    _, sending = services.accounts.create_key(account_id, "sending", full.domains[0]["name"])
    assert client.simulate_get("/v1/account/export", headers=basic(sending)).status_code == 401
    _, developer = services.accounts.create_key(account_id, "developer")
    refused = client.simulate_get("/v1/account/export", headers=basic(developer))
    assert refused.status_code == 403 and refused.json == {"message": "Your role may not export account"}


def test_export_reads_in_batches_without_holding_a_connection(services, full):
    one = Database(services.settings.database_url, max_size=1, pool_timeout=2)  # a pool of one connection
    try:
        lines = archive.export_lines(one, full.account["id"], services.suppressions.vault, batch=2)
        for _ in range(6):  # mid-stream, between batches, as while a client is reading
            next(lines)
        with one.transaction() as conn:  # the only connection is free: the export does not hold it
            assert conn.execute("SELECT 1 AS ok").fetchone()["ok"] == 1
        rest = list(lines)
        assert json.loads(rest[-1])["type"] == "end"
    finally:
        one.close()


def test_cli_export_import_round_trip(services, full, cli_env, empty_database_url, tmp_path, db):
    account_id = full.account["id"]
    first, second = tmp_path / "first.jsonl", tmp_path / "second.jsonl"
    result = CliRunner().invoke(cli.main, ["accounts", "export", str(account_id), "-o", str(first)])
    assert result.exit_code == 0, result.output
    assert "Exporting" in result.output  # the progress bar (on stderr, mixed in by CliRunner)
    piped = CliRunner().invoke(cli.main, ["accounts", "export", str(account_id)])  # to stdout: the bare archive
    assert piped.exit_code == 0 and "Exporting" not in piped.output
    assert [json.loads(line)["type"] for line in piped.output.splitlines()][::len(piped.output.splitlines()) - 1] == [
        "export", "end"]
    # restore into an empty database of the same region, through the CLI
    cli_env.setenv("ENVOI_DATABASE_URL_EU", empty_database_url)
    result = CliRunner().invoke(cli.main, ["accounts", "import", str(first)])
    assert result.exit_code == 0, result.output
    restored = json.loads(result.output.strip().splitlines()[-1])
    assert restored["account_id"] == account_id and restored["restored"]["message"] == 3
    result = CliRunner().invoke(cli.main, ["accounts", "export", str(account_id), "-o", str(second)])
    assert result.exit_code == 0, result.output
    # the restored account's archive is the same, line for line, apart from the export time... and the
    # audit entry of the first export, made after its audit section was read
    a, b = without_time(first.read_text()), without_time(second.read_text())
    exported = [line for line in b if '"action": "account.exported"' in line]
    assert len(exported) == len([line for line in a if '"action": "account.exported"' in line]) + 1
    b = [line for line in b if line != exported[-1]]
    b[-1] = json.dumps({"type": "end", "data": {"counts": {**json.loads(b[-1])["data"]["counts"],
                                                           "audit": json.loads(a[-1])["data"]["counts"]["audit"]}}})
    assert a == b
    # importing it again is refused (the account exists), and changes nothing
    result = CliRunner().invoke(cli.main, ["accounts", "import", str(first)])
    assert result.exit_code == 1 and f"account {account_id} already exists" in result.output
    # the restored secrets are unusable: the key's hash is random, the password must be reset
    restored_db = Database(empty_database_url, max_size=1)
    try:
        with restored_db.transaction() as conn:
            users = conn.execute("SELECT password_hash FROM users WHERE account_id = %s", (account_id,)).fetchall()
            assert [u["password_hash"] for u in users] == ["!restored: reset the password"]
            dkim = conn.execute("SELECT dkim_private_key FROM domains WHERE account_id = %s", (account_id,)).fetchall()
            assert {bytes(d["dkim_private_key"]) for d in dkim} == {b""}
    finally:
        restored_db.close()


def test_import_refuses_a_cut_short_or_foreign_archive(services, full, empty_database_url, tmp_path):
    lines = list(archive.export_lines(services.db, full.account["id"], services.suppressions.vault))
    target = Database(empty_database_url, max_size=1)
    try:
        with pytest.raises(archive.ArchiveInvalid, match="this is us"):
            archive.import_archive(target, lines, "us", services.suppressions.vault)
        with pytest.raises(archive.ArchiveInvalid, match="cut short"):
            archive.import_archive(target, lines[:-1], "eu", services.suppressions.vault)
        altered = [*lines[:-1], lines[-1].replace('"message": 3', '"message": 2')]
        with pytest.raises(archive.ArchiveInvalid, match="do not match"):
            archive.import_archive(target, altered, "eu", services.suppressions.vault)
        with target.transaction() as conn:  # all or nothing
            assert conn.execute("SELECT count(*) AS n FROM accounts").fetchone()["n"] == 0
            assert conn.execute("SELECT count(*) AS n FROM messages").fetchone()["n"] == 0
    finally:
        target.close()
    # into the database it came from, under a new account id: its domains' names are taken there
    fresh = 10**9 + int(full.tag[:6], 16)
    header, account_line = json.loads(lines[0]), json.loads(lines[1])
    header["data"]["account_id"] = account_line["data"]["id"] = fresh
    renumbered = [json.dumps(header), json.dumps(account_line), *lines[2:]]
    with pytest.raises(archive.ArchiveInvalid) as caught:
        archive.import_archive(services.db, renumbered, "eu", services.suppressions.vault)
    assert caught.value.message.startswith("the archive's domain rows do not fit this database")
    assert services.accounts.list_accounts(search=str(fresh)) == []
