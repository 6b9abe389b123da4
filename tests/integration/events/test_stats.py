"""Stats and tags from the rollups, and retention: partitions created, dropped and purged per plan."""

from __future__ import annotations

import threading
import time
from datetime import UTC, datetime, timedelta
from urllib.parse import urlencode

import pytest

from envoi.api.app import create_app
from envoi.events import store
from envoi.events.service import Retention
from tests.conftest import basic
from tests.support.events import record
from tests.support.relay import wait_until

DAY = 86400


def test_stats_total_counts_match_events(client, services, api_key, domain, db):
    now = time.time()
    hour_ago = now - 3600
    for _ in range(3):
        record(services, domain, "accepted", method="http", tags=["news"])
    record(services, domain, "accepted", method="smtp", ts=hour_ago)
    record(services, domain, "delivered", method="http", tags=["news"])
    record(services, domain, "delivered", method="smtp", ts=hour_ago)
    record(services, domain, "failed", severity="permanent", reason="bounce")
    record(services, domain, "failed", severity="permanent", reason="suppress-bounce")
    record(services, domain, "failed", severity="temporary", reason="generic",
           delivery_status={"code": 421, "bounce-class": "spam-block"})
    record(services, domain, "failed", severity="temporary", reason="generic", delivery_status={"code": 451})
    record(services, domain, "opened")

    resp = client.simulate_get(f"/v3/{domain['name']}/stats/total", headers=basic(api_key), query_string=urlencode(
        [("event", "accepted"), ("event", "delivered"), ("event", "failed"), ("event", "opened"),
         ("duration", "1d"), ("resolution", "day")]))
    assert resp.status_code == 200, resp.text
    body = resp.json
    assert body["resolution"] == "day" and body["start"].endswith("00:00:00 UTC")
    totals = {"accepted": 0, "delivered": 0, "failed": 0, "opened": 0}
    for bucket in body["stats"]:
        for event in ("accepted", "delivered", "opened"):
            totals[event] += bucket[event]["total"]
        totals["failed"] += bucket["failed"]["permanent"]["total"] + bucket["failed"]["temporary"]["total"]
    stored = {r["event"]: r["n"] for r in db.execute(
        "SELECT event, count(*) AS n FROM events WHERE domain_id = %s GROUP BY event", (domain["id"],))}
    assert totals == stored == {"accepted": 4, "delivered": 2, "failed": 4, "opened": 1}
    # folding pending counts into the hourly rollup changes nothing that is served
    services.stats.fold()
    assert db.execute("SELECT count(*) AS n FROM event_stats_pending WHERE domain_id = %s",
                      (domain["id"],)).fetchone()["n"] == 0
    again = client.simulate_get(f"/v3/{domain['name']}/stats/total", headers=basic(api_key), query_string=urlencode(
        [("event", "accepted"), ("event", "delivered"), ("event", "failed"), ("event", "opened"),
         ("duration", "1d"), ("resolution", "day")])).json
    assert again["stats"] == body["stats"]

    hourly = client.simulate_get(f"/v3/{domain['name']}/stats/total", headers=basic(api_key), query_string=urlencode(
        [("event", "accepted"), ("event", "delivered"), ("event", "failed"), ("duration", "3h"),
         ("resolution", "hour")])).json
    assert len(hourly["stats"]) == 4 and hourly["stats"][0]["time"].endswith(":00:00 UTC")
    summed = {"smtp": 0, "http": 0}
    failed = {"bounce": 0, "suppress-bounce": 0, "permanent": 0, "espblock": 0, "temporary": 0}
    accepted = 0
    for bucket in hourly["stats"]:
        accepted += bucket["accepted"]["outgoing"]
        summed["smtp"] += bucket["delivered"]["smtp"]
        summed["http"] += bucket["delivered"]["http"]
        perm, temp = bucket["failed"]["permanent"], bucket["failed"]["temporary"]
        failed["bounce"] += perm["bounce"]
        failed["suppress-bounce"] += perm["suppress-bounce"]
        failed["permanent"] += perm["total"]
        failed["espblock"] += temp["espblock"]
        failed["temporary"] += temp["total"]
    assert accepted == 4 and summed == {"smtp": 1, "http": 1}
    assert failed == {"bounce": 1, "suppress-bounce": 1, "permanent": 2, "espblock": 1, "temporary": 2}
    # the hour before holds the older events
    by_time = {b["time"]: b for b in hourly["stats"]}
    older = datetime.fromtimestamp(hour_ago - hour_ago % 3600, UTC).strftime("%a, %d %b %Y %H:%M:%S UTC")
    assert by_time[older]["accepted"]["total"] == 1 and by_time[older]["delivered"]["smtp"] == 1


@pytest.mark.parametrize(("query", "message"), [
    ("", "event is required"),
    ("event=bogus", "not a valid event type"),
    ("event=accepted&resolution=week", "resolution must be one of"),
    ("event=accepted&duration=3y", "not a valid duration"),
    ("event=accepted&duration=99999999999d", "not a valid duration"),
    ("event=accepted&end=1e300", "not a valid date"),
    ("event=accepted&resolution=hour&duration=2000d", "more than"),
])
def test_stats_bad_input(client, api_key, domain, query, message):
    resp = client.simulate_get(f"/v3/{domain['name']}/stats/total", headers=basic(api_key), query_string=query)
    assert resp.status_code == 400 and message in resp.json["message"]


def test_tags_rollup_and_api(client, services, api_key, domain, db):
    first = time.time() - 7200
    record(services, domain, "accepted", tags=["alpha", "beta"], ts=first)
    record(services, domain, "delivered", tags=["alpha"])
    record(services, domain, "accepted", tags=["gamma"])
    services.stats.fold()  # last-seen moves forward when pending counts are folded (every 2 s)
    url = f"/v3/{domain['name']}/tags"
    resp = client.simulate_get(url, headers=basic(api_key), query_string="limit=2")
    assert resp.status_code == 200
    assert [t["tag"] for t in resp.json["items"]] == ["alpha", "beta"]
    alpha = resp.json["items"][0]
    assert alpha["first-seen"] == datetime.fromtimestamp(first, UTC).strftime("%Y-%m-%dT%H:%M:%SZ")
    assert alpha["last-seen"] > alpha["first-seen"]
    nxt = resp.json["paging"]["next"].split("?", 1)[1]
    assert [t["tag"] for t in client.simulate_get(url, headers=basic(api_key), query_string=nxt).json["items"]] == [
        "gamma"]
    assert [t["tag"] for t in client.simulate_get(url, headers=basic(api_key),
                                                  query_string="prefix=g").json["items"]] == ["gamma"]

    resp = client.simulate_put(f"{url}/alpha", headers={**basic(api_key),
                                                        "Content-Type": "application/x-www-form-urlencoded"},
                               body="description=Signup+button")
    assert resp.status_code == 200
    assert client.simulate_get(f"{url}/alpha", headers=basic(api_key)).json["description"] == "Signup button"

    stats = client.simulate_get(f"{url}/alpha/stats", headers=basic(api_key),
                                query_string="event=accepted&event=delivered&duration=1d").json
    assert stats["tag"] == "alpha"
    assert sum(b["accepted"]["total"] for b in stats["stats"]) == 1
    assert sum(b["delivered"]["total"] for b in stats["stats"]) == 1

    assert client.simulate_delete(f"{url}/beta", headers=basic(api_key)).status_code == 200
    assert db.execute("SELECT count(*) AS n FROM event_tags WHERE domain_id = %s AND tag = 'beta'",
                      (domain["id"],)).fetchone()["n"] == 0
    assert db.execute("SELECT count(*) AS n FROM event_stats_hourly WHERE domain_id = %s AND tag = 'beta'",
                      (domain["id"],)).fetchone()["n"] == 0
    assert client.simulate_get(f"{url}/beta", headers=basic(api_key)).status_code == 404


def partition_names(db) -> set[str]:
    return {r["relname"] for r in db.execute(
        "SELECT c.relname FROM pg_inherits i JOIN pg_class c ON c.oid = i.inhrelid"
        " WHERE i.inhparent = 'events'::regclass")}


def test_partitions_and_retention_purge(services, db):
    events = services.events
    saved = events.retention
    free = services.accounts.create_account("free-acct", "free")
    trial = services.accounts.create_account("trial-acct", "trial")
    free_domain = services.accounts.add_domain(free["id"], f"f{time.time_ns()}.example.test", dkim_key_size=1024, verified=True)
    trial_domain = services.accounts.add_domain(trial["id"], f"t{time.time_ns()}.example.test", dkim_key_size=1024, verified=True)
    now = time.time()
    assert events._maintaining.acquire(timeout=30)  # no background run races this test's explicit ones
    try:
        # Rows whose day has no partition wait in the default partition; never lost.
        events.retention = Retention(60 * DAY, {"trial": 3 * DAY})
        ancient = record(services, free_domain, "delivered", ts=now - 35 * DAY)
        free_old = record(services, free_domain, "delivered", ts=now - 10 * DAY)
        trial_old = record(services, trial_domain, "delivered", ts=now - 10 * DAY)
        trial_new = record(services, trial_domain, "delivered")
        in_default = {r["event_id"] for r in db.execute("SELECT event_id FROM events_default")}
        assert {ancient["id"], free_old["id"], trial_old["id"]} <= in_default

        report = events.maintain()
        old_day = datetime.fromtimestamp(now - 35 * DAY, UTC).date()
        ten_day = datetime.fromtimestamp(now - 10 * DAY, UTC).date()
        assert store.partition_name(old_day) in report["created"]
        assert store.partition_name(ten_day) in report["created"]
        ahead = (datetime.now(UTC) + timedelta(days=3)).date()
        assert {store.partition_name(old_day), store.partition_name(ten_day),
                store.partition_name(ahead)} <= partition_names(db)
        assert db.execute("SELECT count(*) AS n FROM events_default WHERE event_id = ANY(%s)",
                          ([ancient["id"], free_old["id"]],)).fetchone()["n"] == 0
        remaining = {r["event_id"] for r in db.execute("SELECT event_id FROM events WHERE domain_id = ANY(%s)",
                                                       ([free_domain["id"], trial_domain["id"]],))}
        # trial keeps 3 days: its 10-day-old event is purged; free (60 days here) keeps both
        assert remaining == {ancient["id"], free_old["id"], trial_new["id"]}

        # Back to 30 days: the 35-day-old partition is dropped whole.
        events.retention = Retention(30 * DAY, {"trial": 3 * DAY})
        report = events.maintain()
        assert store.partition_name(old_day) in report["dropped"]
        assert store.partition_name(old_day) not in partition_names(db)
        remaining = {r["event_id"] for r in db.execute("SELECT event_id FROM events WHERE domain_id = ANY(%s)",
                                                       ([free_domain["id"], trial_domain["id"]],))}
        assert remaining == {free_old["id"], trial_new["id"]}
        assert events.maintain() == {"created": [], "dropped": [], "deleted": 0}  # idempotent
    finally:
        events.retention = saved
        events._maintaining.release()


def test_missing_partition_is_created_on_write(services, domain, db):
    """An event whose day has no partition is kept in the default partition, and recording it
    makes the process create that day's partition in the background and move the row there."""
    ts = time.time() + 10 * DAY
    name = store.partition_name(datetime.fromtimestamp(ts, UTC).date())
    assert name not in partition_names(db)
    data = record(services, domain, "accepted", ts=ts)

    def moved():
        if name not in partition_names(db):
            services.events._last_attempt = -1e9  # let the next write trigger again if this one was busy
            record(services, domain, "accepted", ts=ts)
            return False
        return db.execute(f"SELECT count(*) AS n FROM {name} WHERE event_id = %s", (data["id"],)).fetchone()["n"]

    wait_until(moved, 15, 0.2)
    assert db.execute("SELECT count(*) AS n FROM events_default WHERE event_id = %s", (data["id"],)).fetchone()["n"] == 0


def test_write_while_its_partition_is_created_waits_and_lands_there(services, domain, db):
    """A write for a day whose partition is being created (the default partition still holds that day
    when the write starts) waits for the new partition instead of failing its whole transaction:
    Postgres routes the row to the default partition, then rechecks that partition's (now narrower)
    constraint once it gets the lock."""
    ts = time.time() + 13 * DAY
    day = datetime.fromtimestamp(ts, UTC).date()
    outcome: dict = {}

    def write() -> None:
        try:
            outcome["data"] = record(services, domain, "accepted", ts=ts)
        except Exception as exc:  # the assertion below shows it
            outcome["error"] = exc

    def waiting_on_a_lock() -> int:
        return db.execute("SELECT count(*) AS n FROM pg_stat_activity WHERE datname = current_database()"
                          " AND wait_event_type = 'Lock'").fetchone()["n"]

    assert services.events._maintaining.acquire(timeout=30)  # no background maintenance meanwhile
    try:
        with services.db.transaction() as maintainer:
            store.create_partition(maintainer, day)
            writer = threading.Thread(target=write)
            writer.start()
            wait_until(waiting_on_a_lock, 10, 0.02)
            maintainer.commit()
        writer.join(15)
    finally:
        services.events._maintaining.release()
    assert "error" not in outcome, outcome.get("error")
    assert db.execute(f"SELECT count(*) AS n FROM {store.partition_name(day)} WHERE event_id = %s",
                      (outcome["data"]["id"],)).fetchone()["n"] == 1


def test_official_mailgun_sdk_reads_events_stats_and_tags(settings, services, domain, api_key):
    from mailgun.client import Client

    from tests.support.events import AppServer

    accepted = record(services, domain, "accepted", tags=["sdk"], method="http")
    record(services, domain, "delivered", tags=["sdk"], method="http")
    with AppServer(create_app(settings, services)) as srv:
        client = Client(auth=("api", api_key), api_url=srv.url)
        events = client.events.get(domain=domain["name"], filters={"event": "accepted OR rejected"})
        assert events.status_code == 200 and [e["id"] for e in events.json()["items"]] == [accepted["id"]]
        stats = client.stats_total.get(domain=domain["name"],
                                       filters={"event": ["accepted", "delivered"], "duration": "1d"}).json()
        assert sum(b["accepted"]["outgoing"] for b in stats["stats"]) == 1
        assert sum(b["delivered"]["http"] for b in stats["stats"]) == 1
        tags = client.tags.get(domain=domain["name"]).json()
        assert [t["tag"] for t in tags["items"]] == ["sdk"]


def test_old_hours_become_days_and_old_days_months_with_the_same_totals(client, services, api_key, domain, db):
    def at(day: datetime, hour: int) -> float:
        return day.replace(hour=hour, minute=7, second=0, microsecond=0).timestamp()

    recent_old = datetime.now(UTC) - timedelta(days=70)  # past the 2 months of hourly buckets
    a_year_ago = (datetime.now(UTC) - timedelta(days=430)).replace(day=1)  # past the year of daily ones
    for hour in (1, 5, 23):
        record(services, domain, "accepted", method="http", tags=["old"], ts=at(recent_old, hour))
    record(services, domain, "delivered", method="http", ts=at(recent_old, 5))
    for day, hour in ((3, 10), (3, 14), (20, 9)):
        record(services, domain, "accepted", method="smtp", ts=at(a_year_ago.replace(day=day), hour))
    services.stats.fold()

    def served(start: datetime, end: datetime, resolution: str, tag: str = "") -> list[tuple]:
        path = f"/v3/{domain['name']}/tags/{tag}/stats" if tag else f"/v3/{domain['name']}/stats/total"
        resp = client.simulate_get(path, headers=basic(api_key), query_string=urlencode(
            [("event", "accepted"), ("event", "delivered"), ("start", str(int(start.timestamp()))),
             ("end", str(int(end.timestamp()))), ("resolution", resolution)]))
        assert resp.status_code == 200, resp.text
        return [(b["time"], b["accepted"]["total"], b["delivered"]["total"]) for b in resp.json["stats"]
                if b["accepted"]["total"] or b["delivered"]["total"]]

    day_start = recent_old.replace(hour=0, minute=0, second=0, microsecond=0)
    month_start = a_year_ago.replace(hour=0, minute=0, second=0, microsecond=0)
    month_end = (month_start + timedelta(days=32)).replace(day=1) - timedelta(seconds=1)
    queries = [(day_start, day_start + timedelta(hours=23, minutes=59), "day", ""),
               (day_start, day_start + timedelta(hours=23, minutes=59), "day", "old"),
               (month_start, month_end, "month", "")]
    before = [served(*q) for q in queries]
    assert [sum(n for _, n, _ in rows) for rows in before] == [3, 3, 3]

    def rows_of(start, end) -> int:
        return db.execute("SELECT count(*) AS n FROM event_stats_hourly WHERE domain_id = %s AND hour >= %s"
                          " AND hour < %s", (domain["id"], start, end)).fetchone()["n"]

    assert rows_of(day_start, day_start + timedelta(days=1)) == 2 * 3 + 1  # per hour: total and tag rows
    report = services.stats.coarsen()
    assert report["merged into days"] >= 4 and report["merged into months"] >= 1
    assert [served(*q) for q in queries] == before  # day and month totals unchanged
    assert rows_of(day_start, day_start + timedelta(days=1)) == 3  # accepted, accepted/old, delivered
    assert rows_of(month_start, month_end) == 1
    hours = db.execute("SELECT DISTINCT hour FROM event_stats_hourly WHERE domain_id = %s AND hour < %s",
                       (domain["id"], day_start + timedelta(days=1))).fetchall()
    assert {r["hour"].astimezone(UTC) for r in hours} == {day_start, month_start}
    assert services.stats.coarsen() == {"merged into days": 0, "merged into months": 0}  # idempotent
