"""Mailgun's analytics APIs through the official SDK (mailgun.client.Client): metrics (both sources
agree with each other and with the events), usage, logs, account tags, /v3/stats/filter, aggregates;
Mailgun-style 400s; tenant isolation."""

from __future__ import annotations

import time
from datetime import UTC, datetime

import pytest
import requests
from mailgun.client import Client

from envoi.api.app import create_app
from envoi.events.analytics import Filter, Query, floor
from tests.conftest import basic
from tests.support.events import AppServer, record

DAY = 86400
IPHONE = {"client-type": "mobile browser", "client-os": "iOS", "device-type": "mobile", "client-name": "Mobile Safari",
          "user-agent": "iPhone", "bot": ""}
DESKTOP = dict(IPHONE, **{"device-type": "desktop", "client-os": "Windows", "client-type": "browser"})


@pytest.fixture
def sdk(settings, services, api_key):
    with AppServer(create_app(settings, services)) as srv:
        yield Client(auth=("api", api_key), api_url=srv.url), srv


def _sum(items, metric):
    return sum(i["metrics"][metric] for i in items)


def _db_counts(db, domain_ids, since, *, tag=None):
    rows = db.execute("SELECT event, count(*) AS n FROM events WHERE domain_id = ANY(%s) AND ts >= %s"
                      + (" AND %s = ANY(tags)" if tag else "") + " GROUP BY event",
                      (domain_ids, since, tag) if tag else (domain_ids, since)).fetchall()
    return {r["event"]: r["n"] for r in rows}


def _populate(services, domain, other, now):
    """Events on two of the account's domains, over two days, with tags; and one of another account."""
    yesterday = now - DAY
    for ts, tags in ((yesterday, ["spring"]), (now, ["spring"]), (now, ["summer", "spring"]), (now, [])):
        rcpt = f"r{int(ts) % 1000}-{len(tags)}@gmail.com"
        for event, extra in (("accepted", {"method": "http"}), ("delivered", {"method": "http"})):
            record(services, domain, event, recipient=rcpt, tags=tags, ts=ts, message_id=f"{rcpt}-m", **extra)
    record(services, domain, "opened", recipient="a@gmail.com", tags=["spring"], message_id="m1", ts=now,
           client_info=IPHONE, geolocation={"country": "Unknown"})
    record(services, domain, "opened", recipient="a@gmail.com", tags=["spring"], message_id="m1", ts=now,
           client_info=IPHONE, geolocation={"country": "Unknown"})
    record(services, domain, "clicked", recipient="b@dest.test", tags=["summer"], message_id="m2", ts=now,
           client_info=DESKTOP)
    record(services, domain, "failed", severity="permanent", reason="bounce", recipient="c@dest.test", ts=now)
    record(services, domain, "failed", severity="permanent", reason="suppress-bounce", recipient="d@dest.test", ts=now)
    record(services, domain, "failed", severity="temporary", reason="generic", ts=now,
           delivery_status={"code": 421, "bounce-class": "spam-block"})
    record(services, other, "accepted", method="smtp", tags=["spring"], ts=now)
    record(services, other, "delivered", method="smtp", ts=now)


def test_metrics_through_the_sdk_agree_with_the_events_both_ways(sdk, services, account, domain, db):
    client, _ = sdk
    second = services.accounts.add_domain(account["id"], f"two-{domain['name']}", dkim_key_size=1024, verified=True)
    stranger = services.accounts.create_account("stranger")
    foreign = services.accounts.add_domain(stranger["id"], f"foreign-{domain['name']}", dkim_key_size=1024,
                                           verified=True)
    now = time.time()
    _populate(services, domain, second, now)
    record(services, foreign, "delivered", method="http", tags=["spring"], ts=now)  # never counted for us
    since = floor(datetime.fromtimestamp(now - DAY, UTC), "day")
    ours = _db_counts(db, [domain["id"], second["id"]], since)
    metrics = ["accepted_count", "delivered_count", "opened_count", "clicked_count", "failed_count",
               "permanent_failed_count", "temporary_failed_count", "esp_block_count", "hard_bounces_count",
               "suppressed_bounces_count", "bounced_count", "delivered_http_count", "delivered_smtp_count"]

    def query(**extra):
        body = {"duration": "2d", "resolution": "day", "metrics": metrics, "include_aggregates": True,
                "end": datetime.fromtimestamp(now, UTC).strftime("%a, %d %b %Y %H:%M:%S +0000"), **extra}
        resp = client.analytics_metrics.create(data=body)
        assert resp.status_code == 200, resp.text
        return resp.json()

    by_time = query(dimensions=["time"])
    assert by_time["dimensions"] == ["time"] and by_time["resolution"] == "day"
    assert by_time["start"].endswith("00:00:00 +0000")
    assert len(by_time["items"]) == 3  # the day before yesterday, yesterday, today: empty buckets at zero
    assert [i["dimensions"][0]["dimension"] for i in by_time["items"]] == ["time"] * 3
    expected = {"accepted_count": ours["accepted"], "delivered_count": ours["delivered"],
                "opened_count": ours["opened"], "clicked_count": ours["clicked"], "failed_count": ours["failed"]}
    assert {m: _sum(by_time["items"], m) for m in expected} == expected
    assert {m: by_time["aggregates"]["metrics"][m] for m in expected} == expected
    agg = by_time["aggregates"]["metrics"]
    assert (agg["permanent_failed_count"], agg["temporary_failed_count"], agg["esp_block_count"]) == (2, 1, 1)
    assert (agg["hard_bounces_count"], agg["suppressed_bounces_count"], agg["bounced_count"]) == (1, 1, 1)
    assert (agg["delivered_http_count"], agg["delivered_smtp_count"]) == (4, 1)
    today = datetime.fromtimestamp(now, UTC).strftime("%a, %d %b %Y 00:00:00 +0000")
    [today_item] = [i for i in by_time["items"] if i["dimensions"][0]["value"] == today]
    assert today_item["metrics"]["accepted_count"] == db.execute(
        "SELECT count(*) AS n FROM events WHERE domain_id = ANY(%s) AND event = 'accepted' AND ts >= %s",
        ([domain["id"], second["id"]], floor(datetime.fromtimestamp(now, UTC), "day"))).fetchone()["n"]

    by_domain = query(dimensions=["domain"])
    values = {i["dimensions"][0]["value"]: i["metrics"] for i in by_domain["items"]}
    assert set(values) == {domain["name"], second["name"]}  # the other account's domain is not there
    for d in (domain, second):
        assert values[d["name"]]["accepted_count"] == _db_counts(db, [d["id"]], since).get("accepted", 0)

    by_tag = query(dimensions=["tag"])
    tags = {i["dimensions"][0]["value"]: i["metrics"] for i in by_tag["items"]}
    for tag in ("spring", "summer"):
        counted = _db_counts(db, [domain["id"], second["id"]], since, tag=tag)
        assert tags[tag]["accepted_count"] == counted.get("accepted", 0)
        assert tags[tag]["opened_count"] == counted.get("opened", 0)
    assert tags["spring"]["accepted_count"] == 4  # 3 on the first domain + 1 on the second

    # a filter on one domain and one tag
    one = query(dimensions=["time"], filter={"AND": [
        {"attribute": "domain", "comparator": "=", "values": [{"label": domain["name"], "value": domain["name"]}]},
        {"attribute": "tag", "comparator": "=", "values": [{"label": "spring", "value": "spring"}]}]})
    assert one["aggregates"]["metrics"]["accepted_count"] == 3
    # naming another account's domain counts nothing
    none = query(filter={"AND": [{"attribute": "domain", "comparator": "=",
                                  "values": [{"label": "x", "value": foreign["name"]}]}]})
    assert none["items"] == [] and none["aggregates"]["metrics"]["delivered_count"] == 0

    # the events-table source (a dimension the rollup lacks) counts the same as the rollup
    by_rcpt = query(dimensions=["recipient_domain"])
    assert {m: by_rcpt["aggregates"]["metrics"][m] for m in expected} == expected
    providers = {i["dimensions"][0]["value"] for i in query(dimensions=["recipient_provider"])["items"]}
    assert "Gmail" in providers
    analytics = services.analytics
    q = Query(since, datetime.now(UTC), "day", ["time", "tag"], [], [Filter("domain", "=", (domain["name"],))])
    rolled, _, source1 = analytics.groups(account["id"], q)
    scanned, _, source2 = analytics.groups(account["id"], q, source="events")
    assert (source1, source2) == ("rollup", "events") and rolled == scanned

    # unique opens: two opens of one message by one recipient
    uniq = query(dimensions=["device"], metrics=["opened_count", "unique_opened_count", "clicked_count",
                                                 "unique_opened_rate"])
    devices = {i["dimensions"][0]["value"]: i["metrics"] for i in uniq["items"]}
    assert devices["mobile"]["opened_count"] == 2 and devices["mobile"]["unique_opened_count"] == 1
    assert devices["desktop"]["clicked_count"] == 1
    assert uniq["aggregates"]["metrics"]["unique_opened_count"] == 1
    assert uniq["pagination"] == {"sort": "device:asc", "skip": 0, "limit": 1500, "total": len(uniq["items"])}


def test_metrics_paging_sorting_and_rates(sdk, services, domain):
    client, _ = sdk
    now = time.time()
    for i, tag in enumerate(("a", "b", "c")):
        for _ in range(i + 1):
            record(services, domain, "delivered", method="http", tags=[tag], ts=now)
        record(services, domain, "opened", tags=[tag], ts=now)
    body = {"duration": "1d", "dimensions": ["tag"], "metrics": ["delivered_count", "opened_rate"],
            "pagination": {"sort": "delivered_count:desc", "limit": 2, "skip": 0}}
    first = client.analytics_metrics.create(data=body).json()
    assert [i["dimensions"][0]["value"] for i in first["items"]] == ["c", "b"]
    assert first["pagination"]["total"] == 3 and first["items"][0]["metrics"]["opened_rate"] == "33.33"
    body["pagination"]["skip"] = 2
    assert [i["dimensions"][0]["value"] for i in client.analytics_metrics.create(data=body).json()["items"]] == ["a"]


@pytest.mark.parametrize(("body", "message"), [
    ({"metrics": ["bogus_count"]}, "'bogus_count' is not a valid metric"),
    ({"metrics": []}, "metrics is required"),
    ({"metrics": ["delivered_count"], "dimensions": ["planet"]}, "'planet' is not a valid dimension"),
    ({"metrics": ["delivered_count"], "dimensions": ["ip_pool"]}, "do not record the sending IP pool"),
    ({"metrics": ["rate_limit_count"]}, "not computed by Envoi"),
    ({"metrics": ["delivered_count"], "resolution": "week"}, "resolution must be one of"),
    ({"metrics": ["delivered_count"], "start": "yesterday"}, "Invalid format for parameter start"),
    ({"metrics": ["delivered_count"], "duration": "3y"}, "not a valid duration"),
    ({"metrics": ["delivered_count"], "filter": {"AND": [{"attribute": "colour", "comparator": "=",
                                                          "values": [{"value": "x"}]}]}},
     "'colour' is not a valid filter attribute"),
    ({"metrics": ["delivered_count"], "filter": {"AND": [{"attribute": "tag", "comparator": "~",
                                                          "values": [{"value": "x"}]}]}},
     "'~' is not a valid comparator"),
    ({"metrics": ["delivered_count"], "filter": {"OR": []}}, "filter must be an object"),
    ({"metrics": ["delivered_count"], "pagination": {"limit": 0}}, "pagination.limit must be between"),
    ({"metrics": ["delivered_count"], "pagination": {"sort": "colour:asc"}}, "cannot sort by"),
    ({"metrics": ["delivered_count"], "dimensions": ["time"], "resolution": "hour", "duration": "400d"}, "more than"),
])
def test_metrics_bad_input_is_a_mailgun_400(client, api_key, body, message):
    resp = client.simulate_post("/v1/analytics/metrics", json=body, headers=basic(api_key))
    assert resp.status_code == 400 and message in resp.json["message"], resp.text


def test_metrics_body_must_be_json(client, api_key):
    resp = client.simulate_post("/v1/analytics/metrics", body="metrics=x", headers={
        **basic(api_key), "Content-Type": "application/x-www-form-urlencoded"})
    assert resp.status_code == 400 and resp.json == {"message": "request body is not valid JSON"}


def test_usage_metrics(sdk, services, domain):
    client, _ = sdk
    now = time.time()
    for _ in range(3):
        record(services, domain, "accepted", method="http", ts=now)
    body = {"duration": "1d", "dimensions": ["time"], "metrics": ["processed_count", "seed_test_count"],
            "include_aggregates": True}
    resp = client.analytics_usage_metrics.create(data=body)
    assert resp.status_code == 200, resp.text
    got = resp.json()
    assert got["aggregates"]["metrics"] == {"processed_count": 3, "seed_test_count": 0}
    assert _sum(got["items"], "processed_count") == 3
    bad = client.analytics_usage_metrics.create(data=dict(body, metrics=["email_validation_count"]))
    assert bad.status_code == 400 and "not metered" in bad.json()["message"]


def test_logs_api_reads_the_events_store_with_filters_and_pages(sdk, services, account, domain):
    client, _ = sdk
    second = services.accounts.add_domain(account["id"], f"logs-{domain['name']}", dkim_key_size=1024, verified=True)
    stranger = services.accounts.create_account("stranger")
    foreign = services.accounts.add_domain(stranger["id"], f"f-{domain['name']}", dkim_key_size=1024, verified=True)
    base = time.time() - 60
    ids = [record(services, d, "delivered", method="http", tags=["t"] if i % 2 else [], ts=base + i,
                  recipient=f"u{i}@gmail.com")["id"]
           for i, d in enumerate([domain, second, domain, second, domain])]
    record(services, foreign, "delivered", ts=base + 1)
    record(services, domain, "failed", severity="permanent", reason="bounce", ts=base + 10)

    def logs(**body):
        resp = client.analytics_logs.create(data={"start": datetime.fromtimestamp(base - 1, UTC).strftime(
            "%a, %d %b %Y %H:%M:%S +0000"), **body})
        assert resp.status_code == 200, resp.text
        return resp.json()

    everything = logs(events=["delivered"], pagination={"sort": "timestamp:asc", "limit": 2}, include_totals=True)
    assert [i["id"] for i in everything["items"]] == ids[:2]
    assert everything["pagination"]["total"] == 5 and everything["aggregates"]["all"] == 5
    first = everything["items"][0]
    assert first["domain"] == {"name": domain["name"]} and first["@timestamp"].endswith("Z")
    assert first["event"] == "delivered" and first["recipient"] == "u0@gmail.com"
    seen = [i["id"] for i in everything["items"]]
    token = everything["pagination"]["next"]
    while True:
        page = logs(events=["delivered"], pagination={"sort": "timestamp:asc", "limit": 2, "token": token})
        if not page["items"]:
            break
        seen += [i["id"] for i in page["items"]]
        token = page["pagination"]["next"]
    assert seen == ids  # every event once, in order; never the other account's
    back = logs(events=["delivered"], pagination={"sort": "timestamp:asc", "limit": 2,
                                                  "token": page_prev(client, base)})
    assert [i["id"] for i in back["items"]] == ids[2:4]
    # the same events as GET /v3/{domain}/events
    mine = logs(filter={"AND": [{"attribute": "domain", "comparator": "=", "values": [{"value": domain["name"]}]}]},
                events=["delivered"], pagination={"sort": "timestamp:asc"})
    v3 = client.events.get(domain=domain["name"], filters={"event": "delivered", "ascending": "yes",
                                                           "begin": str(base - 1)}).json()
    assert [i["id"] for i in mine["items"]] == [i["id"] for i in v3["items"]] == ids[0::2]
    tagged = logs(filter={"AND": [{"attribute": "tag", "comparator": "=", "values": [{"value": "t"}]}]})
    assert sorted(i["id"] for i in tagged["items"]) == sorted([ids[1], ids[3]])
    # mailgun.js sends its dates as 'Wed, 03 Dec 2025 00:00:00 -0000' and an absent end as ''
    js = client.analytics_logs.create(data={
        "start": datetime.fromtimestamp(base - 1, UTC).strftime("%a, %d %b %Y %H:%M:%S -0000"), "end": "",
        "events": ["delivered"], "pagination": {"sort": "timestamp:asc"}})
    assert [i["id"] for i in js.json()["items"]] == ids
    failed = logs(metric_events=["permanent_failed_count"])
    assert [i["event"] for i in failed["items"]] == ["failed"]
    bad = client.analytics_logs.create(data={"filter": {"AND": [{"attribute": "planet", "comparator": "=",
                                                                 "values": [{"value": "x"}]}]}})
    assert bad.status_code == 400 and "'planet' is not a valid filter attribute" in bad.json()["message"]
    bad = client.analytics_logs.create(data={"pagination": {"token": "!!"}})
    assert bad.status_code == 400 and bad.json()["message"] == "invalid pagination token"


def page_prev(client, base):
    """The `previous` token of the page holding the 3rd and 4th delivered events."""
    start = datetime.fromtimestamp(base - 1, UTC).strftime("%a, %d %b %Y %H:%M:%S +0000")
    page = client.analytics_logs.create(data={"start": start, "events": ["delivered"],
                                              "pagination": {"sort": "timestamp:asc", "limit": 2}}).json()
    page = client.analytics_logs.create(data={"start": start, "events": ["delivered"], "pagination": {
        "sort": "timestamp:asc", "limit": 2, "token": page["pagination"]["next"]}}).json()
    page = client.analytics_logs.create(data={"start": start, "events": ["delivered"], "pagination": {
        "sort": "timestamp:asc", "limit": 2, "token": page["pagination"]["next"]}}).json()
    return page["pagination"]["previous"]


def test_account_tags_through_the_sdk_match_the_domain_tags(sdk, services, account, domain, api_key, db):
    client, srv = sdk
    second = services.accounts.add_domain(account["id"], f"tags-{domain['name']}", dkim_key_size=1024, verified=True)
    record(services, domain, "accepted", tags=["alpha", "beta"], ts=time.time() - 3600)
    record(services, second, "accepted", tags=["alpha"])
    record(services, second, "delivered", method="http", tags=["alpha"])
    services.stats.fold()
    listed = client.analytics_tags.create(data={"pagination": {"sort": "tag:asc", "limit": 10, "include_total": True},
                                                "include_metrics": True}).json()
    assert [i["tag"] for i in listed["items"]] == ["alpha", "beta"]
    alpha = listed["items"][0]
    assert alpha["account_id"] == str(account["id"]) and alpha["metrics"]["accepted_count"] == 2
    assert alpha["metrics"]["delivered_count"] == 1 and listed["pagination"]["total"] == 2
    assert client.analytics_tags.create(data={"tag": "be"}).json()["items"][0]["tag"] == "beta"

    # another account never sees or changes these
    stranger = services.accounts.create_account("stranger")
    _, key = services.accounts.create_key(stranger["id"], "admin")
    other = Client(auth=("api", key), api_url=srv.url)
    assert other.analytics_tags.create(data={}).json()["items"] == []
    assert other.analytics_tags.delete(data={"tag": "alpha"}).status_code == 404
    assert other.analytics_tags.update(data={"tag": "alpha", "description": "x"}).status_code == 404
    resp = client.analytics_tags.update(data={"tag": "alpha", "description": "Signup button"})
    assert resp.status_code == 200 and resp.json() == {"message": "Tag updated"}
    for d in (domain, second):  # the same tag as /v3/{domain}/tags shows it
        assert client.tags.get(domain=d["name"], tag_name="alpha").json()["description"] == "Signup button"
    assert client.analytics_tags_limits.get().json() == {"limit": 5000, "count": 2, "limit_reached": False}
    assert client.analytics_tags.update(data={"tag": "nope", "description": "x"}).status_code == 404

    # curl's form body and query parameter are read too
    resp = requests.put(f"{srv.url}/v1/analytics/tags", data={"tag": "beta", "description": "B"},
                        headers=basic(api_key), timeout=10)
    assert resp.status_code == 200 and client.tags.get(domain=domain["name"], tag_name="beta").json()[
        "description"] == "B"
    resp = client.analytics_tags.delete(data={"tag": "alpha"})
    assert resp.status_code == 200 and resp.json() == {"message": "Tag deleted"}
    assert db.execute("SELECT count(*) AS n FROM event_tags WHERE account_id = %s AND tag = 'alpha'",
                      (account["id"],)).fetchone()["n"] == 0
    assert client.tags.get(domain=second["name"], tag_name="alpha").status_code == 404
    assert client.analytics_tags.delete(data={"tag": "alpha"}).status_code == 404
    assert requests.delete(f"{srv.url}/v1/analytics/tags?tag=nope", headers=basic(api_key),
                           timeout=10).status_code == 404
    # mailgun.js (14.0.1) sends its DELETE's JSON body labelled application/x-www-form-urlencoded
    resp = requests.delete(f"{srv.url}/v1/analytics/tags", data='{"tag":"beta"}', timeout=10, headers={
        **basic(api_key), "Content-Type": "application/x-www-form-urlencoded"})
    assert resp.status_code == 200 and resp.json() == {"message": "Tag deleted"}


def test_stats_filter_by_domain_grouped_by_tag(sdk, services, account, domain):
    client, _ = sdk
    second = services.accounts.add_domain(account["id"], f"sf-{domain['name']}", dkim_key_size=1024, verified=True)
    record(services, domain, "accepted", method="http", tags=["x"])
    record(services, domain, "accepted", method="http", tags=["y"])
    record(services, domain, "delivered", method="smtp", tags=["x"])
    record(services, second, "accepted", method="http", tags=["x"])
    resp = client.stats_filter.get(filters={"event": ["accepted", "delivered"], "filter": f"domain:{domain['name']}",
                                            "group": "tag", "duration": "1d"})
    assert resp.status_code == 200, resp.text
    got = resp.json()
    assert got["type"] == {"key": "tag"}
    totals = {}
    for entry in got["stats"]:
        totals.setdefault(entry["tag"], [0, 0])
        totals[entry["tag"]][0] += entry["accepted"]["outgoing"]
        totals[entry["tag"]][1] += entry["delivered"]["smtp"]
    assert totals == {"x": [1, 1], "y": [1, 0]}
    everything = client.stats_filter.get(filters={"event": "accepted", "duration": "1d"}).json()
    assert sum(e["accepted"]["total"] for e in everything["stats"]) == 3
    bad = client.stats_filter.get(filters={"event": "accepted", "group": "planet"})
    assert bad.status_code == 400 and "group must be one of" in bad.json()["message"]


def test_aggregates_of_tracking_data(sdk, services, domain, api_key):
    client, srv = sdk
    record(services, domain, "accepted", method="http", recipient="a@gmail.com", tags=["promo"])
    record(services, domain, "delivered", method="http", recipient="a@gmail.com", tags=["promo"])
    for _ in range(2):
        record(services, domain, "opened", recipient="a@gmail.com", message_id="m1", tags=["promo"],
               client_info=IPHONE, geolocation={"country": "Unknown"})
    record(services, domain, "clicked", recipient="b@dest.test", message_id="m2", client_info=DESKTOP)
    devices = requests.get(f"{srv.url}/v3/{domain['name']}/aggregates/devices", headers=basic(api_key),
                           timeout=10).json()
    assert devices == {"devices": {
        "desktop": {"clicked": 1, "complained": 0, "opened": 0, "unique_clicked": 1, "unique_opened": 0,
                    "unsubscribed": 0},
        "mobile": {"clicked": 0, "complained": 0, "opened": 2, "unique_clicked": 0, "unique_opened": 1,
                   "unsubscribed": 0}}}
    providers = requests.get(f"{srv.url}/v3/{domain['name']}/aggregates/providers", headers=basic(api_key),
                             timeout=10).json()["providers"]
    assert providers["gmail.com"]["accepted"] == 1 and providers["gmail.com"]["unique_opened"] == 1
    countries = requests.get(f"{srv.url}/v3/{domain['name']}/aggregates/countries", headers=basic(api_key),
                             timeout=10).json()["countries"]
    assert countries["unknown"]["opened"] == 2  # no GeoIP source: honest "unknown"
    tagged = client.tags_stats_aggregates_devices.get(domain=domain["name"], tag_name="promo").json()
    assert tagged == {"devices": {"mobile": {"clicked": 0, "complained": 0, "opened": 2, "unique_clicked": 0,
                                             "unique_opened": 1, "unsubscribed": 0}}, "tag": "promo"}
    assert requests.get(f"{srv.url}/v3/{domain['name']}/aggregates/planets", headers=basic(api_key),
                        timeout=10).status_code == 404


def test_a_read_only_key_may_query_but_not_edit_tags(client, services, account, domain):
    record(services, domain, "accepted", method="http", tags=["ro"])
    _, basic_key = services.accounts.create_key(account["id"], "basic")
    _, sending_key = services.accounts.create_key(account["id"], "sending", domain=domain["name"])
    body = {"duration": "1d", "metrics": ["accepted_count"], "include_aggregates": True}
    resp = client.simulate_post("/v1/analytics/metrics", json=body, headers=basic(basic_key))
    assert resp.status_code == 200 and resp.json["aggregates"]["metrics"]["accepted_count"] == 1
    assert client.simulate_post("/v1/analytics/logs", json={}, headers=basic(basic_key)).status_code == 200
    listed = client.simulate_post("/v1/analytics/tags", json={}, headers=basic(basic_key))
    assert [t["tag"] for t in listed.json["items"]] == ["ro"]
    for method in (client.simulate_put, client.simulate_delete):
        assert method("/v1/analytics/tags", json={"tag": "ro", "description": "x"},
                      headers=basic(basic_key)).status_code in (401, 403)
    assert client.simulate_post("/v1/analytics/metrics", json=body, headers=basic(sending_key)).status_code in (
        401, 403)
    assert services.analytics.tag_limits(account["id"])["count"] == 1  # nothing was deleted


def test_filter_comparators_on_both_sources(client, services, account, domain, api_key):
    now = time.time()
    for rcpt, tags, ip in (("a@gmail.com", ["news"], "127.0.0.2"), ("b@yahoo.com", ["promo"], "127.0.0.3"),
                           ("c@dest.test", ["news", "promo"], "127.0.0.2"), ("d@dest.test", [], "127.0.0.3")):
        record(services, domain, "delivered", method="smtp", recipient=rcpt, tags=tags, ts=now,
               envelope={"sending-ip": ip})

    def total(*predicates, dimensions=()):
        body = {"duration": "1d", "metrics": ["delivered_count"], "include_aggregates": True,
                "dimensions": list(dimensions),
                "filter": {"AND": [{"attribute": a, "comparator": c, "values": [{"label": v, "value": v} for v in vs]}
                                   for a, c, vs in predicates]}}
        resp = client.simulate_post("/v1/analytics/metrics", json=body, headers=basic(api_key))
        assert resp.status_code == 200, resp.text
        return resp.json["aggregates"]["metrics"]["delivered_count"], {
            i["dimensions"][0]["value"]: i["metrics"]["delivered_count"] for i in resp.json["items"]} if dimensions else {}

    assert total(("ip", "=", ["127.0.0.2"]))[0] == 2
    assert total(("ip", "!=", ["127.0.0.2"]))[0] == 2
    assert total(("recipient_domain", "contains", ["mail"]))[0] == 1  # gmail.com
    assert total(("recipient_provider", "=", ["Gmail", "Yahoo"]))[0] == 2
    assert total(("recipient_domain", "not contains", ["dest"]), ("ip", "=", ["127.0.0.3"]))[0] == 1
    # tags: one tag from the rollups, several or a negation from the events; each message once
    assert total(("tag", "=", ["news"]))[0] == 2
    assert total(("tag", "=", ["news", "promo"]))[0] == 3
    assert total(("tag", "!=", ["news"]))[0] == 2  # b (promo) and d (untagged)
    assert total(("tag", "contains", ["pro"]))[0] == 2
    # with tag as a dimension, a filter keeps only the tags it names
    assert total(("tag", "!=", ["news"]), dimensions=["tag"])[1] == {"promo": 2}
    assert total(("domain", "contains", [domain["name"][:5]]), dimensions=["ip"])[1] == {
        "127.0.0.2": 2, "127.0.0.3": 2}
