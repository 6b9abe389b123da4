"""Key rotation under load: `envoi encryption rotate` re-seals every sealed column under the new key
while messages are accepted and delivered through the real relay to the sink; nothing is lost, DKIM
signatures still verify, nothing is left under the old key, and without the old key everything opens.

A database of its own: the session's services keep the session key, this test moves its data to another.
"""

from __future__ import annotations

import base64
import email
import email.policy
import os
import subprocess
import sys
import threading
import time
import uuid

import dkim
import psycopg
import pytest
from click.testing import CliRunner
from cryptography.hazmat.primitives.ciphers.aead import AESGCM

from envoi import runtime
from envoi.accounts import totp
from envoi.cli import main
from envoi.infra import dkim_keys, sealed_columns
from envoi.infra.crypto import Sealer, sealed_key_id
from envoi.infra.sealed_columns import SEALED, MissingKey
from envoi.mta import store
from tests.support.databases import drop_database, migrated_database
from tests.support.delivery import route, send
from tests.support.dns_server import DnsServer
from tests.support.relay import RelayThread, relay_settings, wait_until

OLD, NEW = os.urandom(32), os.urandom(32)
LOOKUP = os.urandom(32)  # the suppression lists' hash key (never rotated)

# bytea columns that hold hashes, not sealed values (each sealed column is in sealed_columns.SEALED).
NOT_SEALED = {"api_keys.secret_hash", "user_recovery_codes.code_hash", "user_sessions.token_hash",
              "user_invitations.token_hash", "suppress_bounces.address_hash", "suppress_unsubscribes.address_hash",
              "suppress_complaints.address_hash", "suppress_whitelists.value_hash"}


@pytest.fixture
def own_database(settings):
    dsn = migrated_database("envoi_test_rot")
    yield dsn
    drop_database(dsn)


def _b64(key: bytes) -> str:
    return base64.b64encode(key).decode()


def _v1(key: bytes, plaintext: bytes, context: bytes) -> bytes:
    """A value as sealed before key ids existed (version 1)."""
    nonce = os.urandom(12)
    return b"\x01" + nonce + AESGCM(key).encrypt(nonce, plaintext, context or None)


def _envoi(args: list[str], database_url: str, redis_url: str, key: str) -> subprocess.CompletedProcess:
    env = {k: v for k, v in os.environ.items() if not k.startswith("ENVOI_")} | {
        "ENVOI_DATABASE_URL_EU": database_url, "ENVOI_REDIS_URL_EU": redis_url, "ENVOI_SECRET_KEY": key,
        "ENVOI_LOOKUP_KEY": base64.b64encode(LOOKUP).decode()}
    return subprocess.run([sys.executable, "-m", "envoi.cli", *args], env=env, capture_output=True, text=True,
                          timeout=60)


def _every_sealed_value(db) -> list[tuple[str, bytes, bytes]]:
    out = []
    with db.transaction() as conn:
        for col in SEALED:
            rows = conn.execute(f"SELECT {col.column} AS v, ({col.context}) AS c FROM {col.table}"
                                f" WHERE {col.column} IS NOT NULL").fetchall()
            out += [(col.name, bytes(r["v"]), r["c"].encode()) for r in rows]
    return out


def _text_of(raw: str) -> tuple[str, str]:
    msg = email.message_from_string(raw, policy=email.policy.default)
    return msg["Subject"], msg.get_body(("plain",)).get_content().strip()


def test_every_bytea_column_is_registered_as_sealed_or_known_not_to_be(db):
    rows = db.execute("SELECT table_name || '.' || column_name AS name FROM information_schema.columns"
                      " WHERE table_schema = 'public' AND data_type = 'bytea'").fetchall()
    columns = {r["name"] for r in rows}
    assert columns - {c.name for c in SEALED} - NOT_SEALED == set(), "a new bytea column: add it to SEALED?"
    assert {c.name for c in SEALED} <= columns


def test_rotation_under_load_loses_nothing(settings, own_database, monkeypatch, sink):
    old_settings = settings.replace(database_url=own_database, secret_key=OLD, secret_key_id="old",
                                   webhook_allow=("127.0.0.1/32",))
    new_settings = old_settings.replace(secret_key=NEW, secret_key_id="new", previous_secret_keys=(("old", OLD),))
    only_new = new_settings.replace(previous_secret_keys=())

    # Before: a region on the old key, with a value in every sealed column.
    runtime.check_sealing_keys(old_settings)  # what its processes did at start
    old = runtime.build(old_settings, pool_size=4)
    try:
        account = old.accounts.create_account("rotation")
        domain = old.accounts.add_domain(account["id"], f"{uuid.uuid4().hex[:8]}.example.test",
                                         dkim_key_size=1024, verified=True)
        old.accounts.rotate_dkim_key(account["id"], domain["name"])  # a pending key, sealed too
        old.dkim.create(account["id"], domain["name"], "spare", bits="1024")  # a key not signing yet (dkim_keys)
        ed_private, ed_public = dkim_keys.generate_ed25519()
        with old.db.transaction() as conn:
            store.set_domain_ed25519(conn, domain["id"], "ed", dkim_keys.seal_ed25519(old.sealer, domain["name"],
                                                                                       ed_private), ed_public)
        old.webhooks.create(domain, "delivered", ["https://user:s3cret@127.0.0.1:9/in"])
        old.webhooks.signing_key(account["id"])
        for kind in ("bounces", "unsubscribes", "complaints", "whitelists"):  # sealed suppression addresses
            old.suppressions.add(domain, kind, {"address": f"{kind}@dest.test"})
        operator = old.users.create_operator(f"op-{uuid.uuid4().hex[:6]}@example.test", "a long password 1")
        secret = totp.new_secret()
        old.users.enable_totp(operator, secret, totp.code(secret))
        old.routes.create(account["id"], priority="0", description="", expression="catch_all()", actions=["store()"])
        runtime.build_receiving(old).receive("a@outside.test", [f"in@{domain['name']}"],
                                             b"From: a@outside.test\r\nSubject: kept\r\n\r\nhello\r\n")
        sent: dict[str, tuple[str, str]] = {}  # message id -> (subject, text)

        def send_one(services, n: int, phase: str) -> None:
            subject, text = f"{phase} {n}", f"{phase} body {n} {uuid.uuid4().hex}"
            mid = send(services, account["id"], domain, f"r{n}@dest.test", subject=subject, text=text)
            sent[mid] = (subject, text)

        for n in range(150):  # queued, not delivered yet: the relay opens them while rotation runs
            send_one(old, n, "before")
        # Some values as written before key ids (version 1), under the old key.
        with old.db.transaction() as conn:
            for row in conn.execute("SELECT id, storage_key, body FROM messages ORDER BY id LIMIT 20").fetchall():
                plain = old.sealer.open(row["body"], row["storage_key"].encode())
                conn.execute("UPDATE messages SET body = %s WHERE id = %s",
                             (_v1(OLD, plain, row["storage_key"].encode()), row["id"]))
            row = conn.execute("SELECT dkim_private_key FROM domains WHERE id = %s", (domain["id"],)).fetchone()
            pem = old.sealer.open(row["dkim_private_key"], f"dkim:{domain['name']}".encode())
            conn.execute("UPDATE domains SET dkim_private_key = %s WHERE id = %s",
                         (_v1(OLD, pem, f"dkim:{domain['name']}".encode()), domain["id"]))
        before = sealed_columns.counts(old.db)
        # (webhook_deliveries fill as messages are delivered, during the rotation, under the new key.)
        assert {name for name, per_key in before.items() if per_key} == {c.name for c in SEALED} - {
            "webhook_deliveries.url_sealed"}
    finally:
        old.close()

    # The operator's step 1: every process restarts with the new key current, the old one previous.
    monkeypatch.setenv("ENVOI_REGION", "eu")
    monkeypatch.setenv("ENVOI_DATABASE_URL_EU", own_database)
    monkeypatch.setenv("ENVOI_REDIS_URL_EU", settings.redis_url)
    monkeypatch.setenv("ENVOI_SECRET_KEY", f"new:{_b64(NEW)}")
    monkeypatch.setenv("ENVOI_LOOKUP_KEY", _b64(settings.lookup_key))
    monkeypatch.setenv("ENVOI_PREVIOUS_SECRET_KEYS", f"old:{_b64(OLD)}")
    runtime.check_sealing_keys(new_settings)
    # A process given only the new key refuses to start: the old one still seals data.
    with pytest.raises(MissingKey, match="old"):
        runtime.check_sealing_keys(only_new)
    refused = _envoi(["relay", "--metrics-port", "0"], own_database, settings.redis_url, f"new:{_b64(NEW)}")
    assert refused.returncode == 1 and refused.stderr.strip().splitlines() == [
        "Error: data may be sealed under key id(s) old, which this process was not given: add them to "
        "ENVOI_PREVIOUS_SECRET_KEYS (see `envoi encryption status`)"], refused.stderr
    unknown = CliRunner().invoke(main, ["encryption", "status"], env={"ENVOI_PREVIOUS_SECRET_KEYS": ""})
    assert unknown.exit_code == 1 and "old\t" in unknown.output and "UNKNOWN" in unknown.output, unknown.output
    new = runtime.build(new_settings, pool_size=6)
    stop = threading.Event()
    try:
        with DnsServer() as dns:
            route(dns, "dest.test")
            with RelayThread(new, relay_settings(new_settings, sink, dns), suppressions=new.suppressions):
                def load() -> None:
                    n = 1000
                    while not stop.is_set():
                        send_one(new, n, "during")
                        n += 1
                        time.sleep(0.005)

                sender = threading.Thread(target=load, daemon=True)
                sender.start()
                try:
                    wait_until(lambda: sink.stats()["messages"] >= 5, 20)  # delivering while we rotate
                    accepted_at_start = len(sent)
                    # Step 2: rotate, in small batches so it runs alongside the load.
                    result = CliRunner().invoke(main, ["encryption", "rotate", "--batch", "7"])
                    assert result.exit_code == 0, result.output
                    assert "could not open 0" in result.output and "retired key id(s) old" in result.output
                    # Writers kept working while it ran (how much the relay delivered meanwhile depends on
                    # the machine's load: the relay shares this process; every message is checked below).
                    assert len(sent) > accepted_at_start, "nothing was accepted while the rotation ran"
                finally:
                    stop.set()
                    sender.join(10)
                assert sum(1 for s in sent.values() if s[0].startswith("during")) > 0
                wait_until(lambda: sink.stats()["messages"] >= len(sent), 60)
        # Every message arrived once, intact, and DKIM-signed with a signature that verifies.
        arrived = {}
        for m in sink.messages():
            msg = email.message_from_string(m["data"], policy=email.policy.default)
            arrived[msg["Message-ID"].strip("<>")] = m["data"]
        assert set(arrived) == set(sent)
        records = {f"{domain['dkim_selector']}._domainkey.{domain['name']}.": f"k=rsa; p={domain['dkim_public_key']}",
                   f"ed._domainkey.{domain['name']}.": f"k=ed25519; p={ed_public}"}

        def dnsfunc(name, timeout=5):
            return f"v=DKIM1; {records[name.decode()]}".encode()

        def signed(raw: str) -> bool:
            """Both signatures (RSA and ed25519) are there and verify."""
            n = raw.count("\nDKIM-Signature:") + raw.startswith("DKIM-Signature:")
            verifier = dkim.DKIM(raw.encode())
            return n == 2 and all(verifier.verify(idx=i, dnsfunc=dnsfunc) for i in range(n))

        for mid, (subject, text) in sent.items():
            assert _text_of(arrived[mid]) == (subject, text), mid
            assert signed(arrived[mid]), mid

        # Step 3: nothing under the old key any more; status says it can go.
        after = sealed_columns.counts(new.db)
        assert {kid for per_key in after.values() for kid in per_key} == {"new"}, after
        status = CliRunner().invoke(main, ["encryption", "status"])
        assert status.exit_code == 0, status.output
        assert "old\t0\tprevious: seals nothing any more" in status.output
    finally:
        stop.set()
        new.close()

    # Step 4: the old key removed from the settings; every sealed value opens, and a new message is
    # signed with the re-sealed DKIM key and delivered.
    monkeypatch.delenv("ENVOI_PREVIOUS_SECRET_KEYS")
    runtime.check_sealing_keys(only_new)  # processes start again
    final = runtime.build(only_new, pool_size=4)
    try:
        values = _every_sealed_value(final.db)
        assert {name for name, _, _ in values} == {c.name for c in SEALED}
        for _, sealed, context in values:
            assert sealed_key_id(sealed) == "new"
            final.sealer.open(sealed, context)  # raises if it does not open
        assert len(final.webhooks.signing_key(account["id"])) == 32  # through the code that uses it
        for kind in ("bounces", "unsubscribes", "complaints", "whitelists"):  # found by hash, opened under "new"
            item = final.suppressions.get(domain, kind, f"{kind}@dest.test")
            assert item.get("address", item.get("value")) == f"{kind}@dest.test"
        status = CliRunner().invoke(main, ["encryption", "status"])
        assert status.exit_code == 0 and "old" not in status.output, status.output
        sink.clear()
        with DnsServer() as dns:
            route(dns, "dest.test")
            with RelayThread(final, relay_settings(only_new, sink, dns)):
                mid = send(final, account["id"], domain, "last@dest.test", subject="after", text="after body")
                raw = sink.wait_for(1, 20)[0]["data"]
        assert _text_of(raw) == ("after", "after body") and mid in raw
        assert signed(raw)
    finally:
        final.close()


def test_links_and_return_paths_signed_before_a_rotation_work_while_the_old_key_is_listed(settings):
    from envoi.mta.bounces import verp
    from envoi.mta.tracking import ForgedToken

    before = runtime.build(settings.replace(secret_key=OLD, secret_key_id="old"), pool_size=1)
    rotated = runtime.build(settings.replace(secret_key=NEW, secret_key_id="new", previous_secret_keys=(("old", OLD),)),
                            pool_size=1)
    retired = runtime.build(settings.replace(secret_key=NEW, secret_key_id="new"), pool_size=1)
    try:
        token = before.tracking.sign("c", 1, 2, "m@x", "r@dest.test", "https://example.test/")
        assert rotated.tracking.verify("c", token)["recipient"] == "r@dest.test"
        with pytest.raises(ForgedToken):
            retired.tracking.verify("c", token)
        bounce = verp.return_path("example.test", 41, 42, verp.key_from_secret(OLD))
        assert runtime.build_inbound(rotated).bounces.check_recipient(bounce) is None  # accepted: ours
        assert runtime.build_inbound(retired).bounces.check_recipient(bounce) == "550 5.1.1 No such user here"
    finally:
        for built in (before, rotated, retired):
            built.close()


def test_a_value_a_writer_replaces_during_rotation_is_left_to_the_writer(settings, own_database):
    old_settings = settings.replace(database_url=own_database, secret_key=OLD, secret_key_id="old")
    old = runtime.build(old_settings, pool_size=2)
    try:
        account = old.accounts.create_account("cas")
        domains = [old.accounts.add_domain(account["id"], f"{uuid.uuid4().hex[:8]}.example.test", dkim_key_size=1024,
                                           verified=True) for _ in range(3)]
    finally:
        old.close()
    new = runtime.build(old_settings.replace(secret_key=NEW, secret_key_id="new", previous_secret_keys=(("old", OLD),)),
                        pool_size=2)
    written = []

    class RacingSealer(Sealer):
        def reseal(self, sealed: bytes, context: bytes = b"") -> bytes:
            if not written:  # a writer (a DKIM key rotation) replaces the first value between read and write
                pem, _ = dkim_keys.generate_rsa(1024)
                written.append(dkim_keys.seal_rsa(new.sealer, domains[0]["name"], pem))
                with psycopg.connect(own_database, autocommit=True) as conn:
                    conn.execute("UPDATE domains SET dkim_private_key = %s WHERE id = %s", (written[0], domains[0]["id"]))
            return super().reseal(sealed, context)

    try:
        column = next(c for c in SEALED if c.name == "domains.dkim_private_key")
        outcome = sealed_columns.rotate(new.db, RacingSealer(NEW, key_id="new", previous=[("old", OLD)]), column)
        assert (outcome.resealed, outcome.skipped, outcome.failed) == (2, 1, 0)
        with new.db.transaction() as conn:
            rows = conn.execute("SELECT id, name, dkim_private_key FROM domains ORDER BY id").fetchall()
        assert bytes(rows[0]["dkim_private_key"]) == written[0]  # the writer's value, not overwritten
        for row in rows:
            assert sealed_key_id(bytes(row["dkim_private_key"])) == "new"
            dkim_keys.load_rsa(dkim_keys.open_rsa(Sealer(NEW, key_id="new"), row["name"], row["dkim_private_key"]))
    finally:
        new.close()
