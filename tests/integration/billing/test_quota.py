"""Plans' caps at accept on real Postgres and Redis, through the API and SMTP submission: a free account's
101st recipient of the UTC day is refused (HTTP 420 / SMTP 451 4.7.1) and nothing of it is stored; a
message over what remains is refused whole; the cap lifts at midnight UTC; the monthly hard cap; paid
plans and billing off are not capped; a plan change reaches another process at once; a failed commit
gives its count back; with Redis down each process still counts."""

from __future__ import annotations

import copy
import dataclasses
import smtplib
import time
from datetime import UTC, datetime, timedelta

import pytest
from falcon import testing

from envoi import runtime
from envoi.accounts.service import Accounts
from envoi.api.app import create_app
from envoi.infra import redis as redis_infra
from envoi.mta import store as mta_store
from tests.support.api import accepted, send_form
from tests.support.submission import messages_of, mime, starttls_client

pytestmark = pytest.mark.usefixtures("clean_throttle", "nothing_left_queued", "real_clock")
NOW = datetime.now(UTC)


@pytest.fixture(scope="module")
def services(settings):
    """This module's region runs with billing on (the session's runs with it off)."""
    svc = runtime.build(settings.replace(billing=True), pool_size=4)
    yield svc
    svc.close()


@pytest.fixture
def real_clock(services):
    yield
    services.quota.clock = time.time
    services.quota.counters = redis_infra.BoundedCounters(services.redis)
    services.quota.local.forget()
    services.quota._redis_down_until = 0.0


@pytest.fixture
def nothing_left_queued(db):
    yield
    # Keep these recipients away from relays other tests of the session start.
    db.execute("UPDATE recipients SET status = 'failed' WHERE status = 'queued' AND domain_id IN"
               " (SELECT d.id FROM domains d JOIN accounts a ON a.id = d.account_id WHERE a.name LIKE 'acct-%%')")


def recipients(n: int, start: int = 0) -> list[str]:
    return [f"r{i}@dest.test" for i in range(start, start + n)]


def set_used(services, account, *, day: int | None = None, month: int | None = None) -> None:
    day_key, month_key = services.quota.keys(account["id"], datetime.now(UTC))
    if day is not None:
        services.redis.set(day_key, day)
    if month is not None:
        services.redis.set(month_key, month)


def used(services, account) -> tuple[int, int]:
    return services.quota.used(account["id"])


def tomorrow_midnight_utc() -> str:
    day = datetime.now(UTC).date() + timedelta(days=1)
    return f"{day:%a, %d %b %Y} 00:00:00 UTC"


def test_the_101st_recipient_of_the_day_is_refused_over_the_api_and_nothing_is_stored(
        client, services, account, domain, api_key, db):
    first = accepted(send_form(client, api_key, domain, to=recipients(100)))
    assert used(services, account)[0] == 100
    resp = send_form(client, api_key, domain, to="late@dest.test")
    assert resp.status_code == 420, resp.text
    assert resp.json == {"message": f"Domain {domain['name']} is not allowed to send: recipient limit exceeded"
                                    " (the Free plan sends at most 100 messages a day (UTC); this message has 1"
                                    " recipient and nothing of it was accepted), try again after "
                                    f"{tomorrow_midnight_utc()}"}
    assert 0 < int(resp.headers["Retry-After"]) <= 86400
    assert [m["message_id"] for m in messages_of(db, domain)] == [first.message_id]
    assert used(services, account) == (100, 100)  # the refusal counted nothing


def test_a_message_over_what_remains_is_refused_whole(client, services, account, domain, api_key, db):
    set_used(services, account, day=98)
    resp = send_form(client, api_key, domain, to=recipients(3))
    assert resp.status_code == 420
    assert "this message has 3 recipients" in resp.json["message"]
    assert messages_of(db, domain) == []
    assert db.execute("SELECT count(*) AS n FROM recipients WHERE domain_id = %s", (domain["id"],)).fetchone()["n"] == 0
    accepted(send_form(client, api_key, domain, to=recipients(2)))  # exactly what remains
    assert used(services, account)[0] == 100


def test_the_cap_lifts_at_midnight_utc(client, services, account, domain, api_key, db):
    set_used(services, account, day=100)
    assert send_form(client, api_key, domain).status_code == 420
    services.quota.clock = lambda: (datetime.now(UTC) + timedelta(days=1)).timestamp()
    accepted(send_form(client, api_key, domain))
    assert len(messages_of(db, domain)) == 1


def test_the_monthly_hard_cap(client, services, account, domain, api_key, db):
    set_used(services, account, month=2998)
    resp = send_form(client, api_key, domain, to=recipients(3))
    assert resp.status_code == 420
    assert "at most 3,000 messages a month" in resp.json["message"]
    first_of_next_month = datetime(NOW.year + NOW.month // 12, NOW.month % 12 + 1, 1, tzinfo=UTC)
    assert resp.json["message"].endswith(f"try again after {first_of_next_month:%a, %d %b %Y} 00:00:00 UTC")
    assert messages_of(db, domain) == []
    accepted(send_form(client, api_key, domain, to=recipients(2)))
    assert send_form(client, api_key, domain).status_code == 420
    assert used(services, account) == (2, 3000)


def test_a_paid_plan_with_overage_is_not_capped(client, services, account, domain, api_key, db):
    services.accounts.set_plan(account["id"], "basic")
    set_used(services, account, day=5000, month=20000)  # past the free caps and basic's included volume
    accepted(send_form(client, api_key, domain, to=recipients(3)))
    assert len(messages_of(db, domain)) == 1


def test_billing_off_means_no_quota(settings, services, account, domain, api_key, db):
    assert settings.billing is False  # the session's settings: a self-hosted region
    unbilled = runtime.build(settings, pool_size=1)
    try:
        set_used(services, account, day=100, month=3000)
        accepted(send_form(testing.TestClient(create_app(settings, unbilled)), api_key, domain, to=recipients(3)))
    finally:
        unbilled.close()
    assert len(messages_of(db, domain)) == 1


def test_a_plan_change_reaches_another_process_with_a_warm_cache_at_once(services, account, domain, api_key, db):
    other = Accounts(services.db, services.sealer, services.settings.region, audit=services.audit,
                     key_revocations=redis_infra.Generation(services.redis, f"envoi:{services.settings.region}:keys:revoked"))
    other_api = testing.TestClient(create_app(services.settings, dataclasses.replace(
        services, accounts=other, intake=_intake_with(services, other))))
    set_used(services, account, day=100)
    assert send_form(other_api, api_key, domain).status_code == 420  # warms the other process's cache
    assert other.authenticate_key(api_key).plan == "free"

    services.accounts.set_plan(account["id"], "basic", actor="operator:1")  # in "this" process
    accepted(send_form(other_api, api_key, domain))
    assert other.authenticate_key(api_key).plan == "basic"
    audit = db.execute("SELECT actor, action, details FROM audit_log WHERE account_id = %s AND action = 'account.plan'",
                       (account["id"],)).fetchall()
    assert audit == [{"actor": "operator:1", "action": "account.plan", "details": {"from": "free", "to": "basic"}}]


def _intake_with(services, accounts):
    """This process's intake (its checks and renderers) reading principals' domains through `accounts`."""
    intake = copy.copy(services.intake)
    intake.accounts = accounts
    return intake


def test_a_failed_commit_gives_the_count_back(client, services, account, domain, api_key, db, monkeypatch):
    set_used(services, account, day=10, month=10)

    def broken(conn, rows):
        raise RuntimeError("injected failure inside the intake transaction")

    monkeypatch.setattr(mta_store, "insert_messages", broken)
    assert send_form(client, api_key, domain, to=recipients(5)).status_code == 500
    assert used(services, account) == (10, 10)
    assert messages_of(db, domain) == []
    monkeypatch.undo()
    accepted(send_form(client, api_key, domain, to=recipients(5)))
    assert used(services, account) == (15, 15)


def test_with_redis_down_each_process_still_counts(client, services, account, domain, api_key, db):
    services.quota.counters = redis_infra.BoundedCounters(redis_infra.client("redis://127.0.0.1:1/0"))
    accepted(send_form(client, api_key, domain, to=recipients(99)))
    assert send_form(client, api_key, domain, to=recipients(2)).status_code == 420
    accepted(send_form(client, api_key, domain, to=recipients(1)))
    assert send_form(client, api_key, domain, to=recipients(1)).status_code == 420
    assert len(messages_of(db, domain)) == 2
    services.quota.counters = redis_infra.BoundedCounters(services.redis)  # Redis back, and its pause over:
    services.quota._redis_down_until = 0.0
    accepted(send_form(client, api_key, domain, to=recipients(1)))
    assert used(services, account)[0] == 1  # Redis knows only what it counted


# SMTP submission ---------------------------------------------------------------------------------
def test_smtp_refuses_the_101st_recipient_with_451_and_stores_nothing(server, client_ctx, services, account,
                                                                      domain, login, db):
    set_used(services, account, day=98)
    with starttls_client(server, client_ctx, login) as c:
        with pytest.raises(smtplib.SMTPDataError) as refused:
            c.sendmail(f"app@{domain['name']}", recipients(3), mime(domain))
        assert refused.value.smtp_code == 451
        reply = refused.value.smtp_error.decode()
        assert reply.startswith("4.7.1 Domain ") and "recipient limit exceeded" in reply
        assert reply.endswith(f"try again after {tomorrow_midnight_utc()}")
        assert messages_of(db, domain) == []
        c.sendmail(f"app@{domain['name']}", recipients(2), mime(domain))  # what remains, in the same session
    assert len(messages_of(db, domain)) == 1
    assert used(services, account)[0] == 100


def test_smtp_monthly_cap_is_a_permanent_550(server, client_ctx, services, account, domain, login, db):
    set_used(services, account, month=3000)
    with starttls_client(server, client_ctx, login) as c, pytest.raises(smtplib.SMTPDataError) as refused:
        c.sendmail(f"app@{domain['name']}", recipients(1), mime(domain))
    assert refused.value.smtp_code == 550
    assert refused.value.smtp_error.decode().startswith("5.7.1 Domain ")
    assert messages_of(db, domain) == []


def test_a_plan_change_reaches_an_open_smtp_session(server, client_ctx, services, account, domain, login, db):
    set_used(services, account, day=100)
    with starttls_client(server, client_ctx, login) as c:
        with pytest.raises(smtplib.SMTPDataError) as refused:
            c.sendmail(f"app@{domain['name']}", recipients(1), mime(domain))
        assert refused.value.smtp_code == 451
        services.accounts.set_plan(account["id"], "foundation")
        c.sendmail(f"app@{domain['name']}", recipients(1), mime(domain))  # the same login, read at AUTH
    assert len(messages_of(db, domain)) == 1
