"""Intake.commit and the SMTP server's CommitStage against the real database: batches commit together,
and what fails fails alone (a refused draft, a value Postgres refuses), or all together (the
transaction itself failed) without any message being reported as accepted."""

from __future__ import annotations

import asyncio
import threading

import psycopg
import pytest

from envoi.accounts.service import Principal
from envoi.mta import store as mta_store
from envoi.mta.compose import compose
from envoi.mta.errors import DomainNotFound
from envoi.mta.submission.stage import CommitStage


def draft(domain, subject: str):
    values = {"from": [f"s@{domain['name']}"], "to": ["r@dest.test"], "subject": [subject], "text": ["hi"]}
    return compose(domain["name"], values, [], [])


def stored_subjects(db, domain) -> list[str]:
    rows = db.execute("SELECT headers->>'subject' AS s FROM messages WHERE domain_id = %s", (domain["id"],))
    return sorted(r["s"] for r in rows.fetchall())


@pytest.fixture
def queued_away(db, domain):
    yield
    db.execute("UPDATE recipients SET status = 'failed' WHERE domain_id = %s AND status = 'queued'", (domain["id"],))


def test_commit_isolates_a_value_postgres_refuses(services, domain, db, queued_away):
    intake = services.intake
    good, bad, other = (intake.prepare(domain, draft(domain, s)) for s in ("good", "bad", "other"))
    at = [name for name, _ in mta_store.MESSAGE_COLUMNS[1:]].index("mail_from")
    row = list(bad.stored[0].row)
    row[at] = "nul\x00byte@example.test"  # text cannot hold NUL: a DataError
    bad.stored[0].row = tuple(row)
    errors = intake.commit([good, bad, other])
    assert errors[0] is None and errors[2] is None
    assert isinstance(errors[1], psycopg.DataError)
    assert stored_subjects(db, domain) == ["good", "other"]
    rcpts = db.execute("SELECT count(*) AS n FROM recipients WHERE domain_id = %s", (domain["id"],)).fetchone()
    assert rcpts["n"] == 2


def test_stage_resolves_each_session_and_a_refused_draft_fails_alone(services, account, domain, db, queued_away):
    principal = Principal(None, account["id"], "admin")
    intake = services.intake

    def prepare(dom, d):
        return intake.prepare(intake.domain_for(principal, dom), d)

    stage = CommitStage(prepare, intake.commit)
    try:
        async def run():
            futures = [stage.submit(domain["name"], draft(domain, f"m{i}")) for i in range(10)]
            futures.append(stage.submit("not-mine.example.test", draft(domain, "foreign")))
            return await asyncio.gather(*futures, return_exceptions=True)

        results = asyncio.run(run())
    finally:
        stage.close()
    assert isinstance(results[-1], DomainNotFound)
    assert stored_subjects(db, domain) == sorted(f"m{i}" for i in range(10))
    rows = db.execute("SELECT message_id FROM messages WHERE domain_id = %s", (domain["id"],)).fetchall()
    assert sorted(f"<{r['message_id']}>" for r in rows) == sorted(results[:-1])


def test_stage_reports_a_failed_transaction_to_every_session_of_the_batch(services, domain, db, queued_away):
    intake = services.intake

    def failing_commit(batch):
        raise psycopg.OperationalError("the database went away")

    stage = CommitStage(lambda d: intake.prepare(domain, d), failing_commit)
    try:
        async def run():
            return await asyncio.gather(*[stage.submit(draft(domain, f"m{i}")) for i in range(5)],
                                        return_exceptions=True)

        results = asyncio.run(run())
    finally:
        stage.close()
    assert all(isinstance(r, psycopg.OperationalError) for r in results)
    assert stored_subjects(db, domain) == []


def test_closing_the_stage_commits_what_is_waiting(services, domain, db, queued_away):
    intake = services.intake
    stage = CommitStage(lambda d: intake.prepare(domain, d), intake.commit, max_batch=5)

    async def run():
        futures = [stage.submit(draft(domain, f"m{i}")) for i in range(20)]  # four batches still queued
        await asyncio.get_running_loop().run_in_executor(None, stage.close)
        # A close that dropped what was waiting would leave these futures pending: fail, do not hang.
        return await asyncio.wait_for(asyncio.gather(*futures), 10)

    results = asyncio.run(run())
    assert len(results) == 20
    assert stored_subjects(db, domain) == sorted(f"m{i}" for i in range(20))
    with pytest.raises(RuntimeError):
        asyncio.run(_submit_after_close(stage, domain))


async def _submit_after_close(stage, domain):
    return stage.submit(draft(domain, "late"))


def test_under_load_the_stage_waits_for_company_and_a_lone_session_does_not(services, domain, db, queued_away):
    intake = services.intake
    sizes: list[int] = []
    gate = threading.Event()

    def prepare(d):
        if d.copies[0].headers.get("subject") == "gate":
            gate.wait(10)  # holds the stage while the pair queues up behind it
        return intake.prepare(domain, d)

    def commit(batch):
        sizes.append(len(batch))
        return intake.commit(batch)

    stage = CommitStage(prepare, commit, delay=0.2)

    async def run():
        loop = asyncio.get_running_loop()
        await stage.submit(draft(domain, "alone"))
        started = loop.time()
        await stage.submit(draft(domain, "alone-again"))  # the last batch was alone: no wait
        alone = loop.time() - started
        held = stage.submit(draft(domain, "gate"))
        await asyncio.sleep(0.05)
        pair = [stage.submit(draft(domain, f"pair{i}")) for i in range(2)]
        gate.set()
        await asyncio.gather(held, *pair)
        # Under load (the last batch had company): six sessions' messages, 20 ms apart, share one batch.
        spread = []
        for i in range(6):
            spread.append(stage.submit(draft(domain, f"spread{i}")))
            await asyncio.sleep(0.02)
        await asyncio.wait_for(asyncio.gather(*spread), 10)
        return alone

    try:
        alone = asyncio.run(run())
    finally:
        stage.close()
    assert alone < 0.2
    assert sizes == [1, 1, 1, 2, 6]
    assert len(stored_subjects(db, domain)) == 11
