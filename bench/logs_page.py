"""The dashboard's logs page over the events benchmark data (bench/events_query.py's database).

Each request is a signed-in GET /dashboard/logs through the falcon app in-process (falcon's test
client: the session cookie resolved by the gate, the account's domain list, the events search, the
Jinja page, the security headers; no socket), with the filters people use most:

  latest              no filter: the newest 100 events of the domain (the page as it opens)
  by recipient        recipient=<addr>
  by message id       message-id=<id>
  delivered in a day  event=delivered, begin/end one day (the date boxes), oldest first
  by tag              tags=<a tag the domain uses>
  by subject word     subject=shipped
  next page           the page's own "Next" link (the service's paging token)

Apart from those (not in the "typical" total): a tag the domain never used. No index serves tags,
from, subject or size, so a filter that matches nothing reads every event of the domain within
retention (≈ 10,000 rows here, interleaved with 999 other domains') before it can answer "none".

And, in the same run, the events API's queries behind `latest` and the unused tag (Events.search_json,
no HTTP), as the reference: the difference is the page's own cost. Users are made (by invitation, as in
production) for --accounts bench accounts the first time and reused afterwards.

Usage: .venv/bin/python bench/logs_page.py [--requests 300] [--accounts 1000]
       .venv/bin/python bench/logs_page.py --load 10000000   # (re)build the data set first
"""

from __future__ import annotations

import argparse
import html
import os
import random
import re
import secrets
import sys
import time
from datetime import timedelta

sys.path.insert(0, os.path.join(os.path.dirname(__file__), ".."))
sys.path.insert(0, os.path.dirname(__file__))

from events_query import DSN, load, pct  # noqa: E402
from falcon import testing  # noqa: E402

from envoi import runtime  # noqa: E402
from envoi.accounts import sessions  # noqa: E402
from envoi.api.app import create_app  # noqa: E402
from envoi.infra.settings import Settings  # noqa: E402

PASSWORD = "bench logs page password"
NEXT = re.compile(r'<a href="([^"]+)" rel="next">')


def users(services, domains: list[dict]) -> dict[int, str]:
    """domain id -> a session token of an analyst of its account (made once, then signed in again)."""
    tokens = {}
    for domain in domains:
        email = f"bench-logs-{domain['account_id']}@bench.test"
        with services.db.transaction() as conn:
            known = conn.execute("SELECT 1 FROM users WHERE email = %s", (email,)).fetchone()
        if not known:  # first run: invite them as production does
            _, invitation = services.users.invite(domain["account_id"], email, "analyst", actor="bench")
            services.users.accept_invitation(invitation, PASSWORD)
        tokens[domain["id"]] = services.users.login(email, PASSWORD, ip="127.0.0.1")[1]
    return tokens


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--requests", type=int, default=300, help="timed requests per case")
    parser.add_argument("--accounts", type=int, default=1000, help="bench accounts (one domain each) to sign in to")
    parser.add_argument("--load", type=int, metavar="EVENTS", help="build the data set first (events_query's load)")
    parser.add_argument("--domains", type=int, default=1000, help="with --load: domains to spread events over")
    args = parser.parse_args()
    if args.load:
        print(f"loading {args.load:,} events across {args.domains} domains into {DSN} ...", flush=True)
        info = load(DSN, args.load, args.domains)
        print(f"load: rows {info['rows_s']:.0f} s, indexes {info['index_s']:.0f} s, vacuum {info['vacuum_s']:.0f} s,"
              f" size {info['size']}", flush=True)

    settings = Settings(database_url=DSN, redis_url=os.environ.get("ENVOI_BENCH_REDIS", "redis://127.0.0.1:6379/0"),
                        secret_key=secrets.token_bytes(32), lookup_key=secrets.token_bytes(32),
                        public_url="http://127.0.0.1:8025")
    services = runtime.build(settings, pool_size=4)
    with services.db.transaction() as conn:
        total = conn.execute("SELECT count(*) AS n FROM events").fetchone()["n"]
        domains = conn.execute("SELECT id, account_id, name FROM domains WHERE name LIKE 'd%%.bench' ORDER BY id"
                               " LIMIT %s", (args.accounts,)).fetchall()
        samples = {d["id"]: conn.execute("SELECT recipient, message_id, tags, ts FROM events WHERE domain_id = %s AND event = 'delivered'"
                                          " ORDER BY id LIMIT 20", (d["id"],)).fetchall() for d in domains}
    domains = [d for d in domains if samples[d["id"]]]
    tokens = users(services, domains)
    client = testing.TestClient(create_app(settings, services))
    print(f"{total:,} events; {len(domains)} domains (one account each) signed in; {args.requests} requests per case",
          flush=True)
    random.seed(11)

    def pick() -> tuple[dict, dict]:
        domain = random.choice(domains)
        return domain, random.choice(samples[domain["id"]])

    def page(domain: dict, **params):
        resp = client.simulate_get("/dashboard/logs", params={"domain": domain["name"], **params},
                                   cookies={sessions.COOKIE_NAME: tokens[domain["id"]]})
        assert resp.status_code == 200, resp.text[:500]
        return resp

    def latest():
        domain, _ = pick()
        assert 'data-event-id="' in page(domain).text

    def by_recipient():
        domain, s = pick()
        assert 'data-event-id="' in page(domain, recipient=s["recipient"]).text

    def delivered_in_a_day():
        domain, s = pick()
        day = s["ts"].replace(hour=0, minute=0, second=0, microsecond=0)
        fmt = "%Y-%m-%dT%H:%M"
        resp = page(domain, event="delivered", begin=day.strftime(fmt), end=(day + timedelta(days=1)).strftime(fmt),
                    ascending="yes")
        assert 'data-event-id="' in resp.text

    def by_message_id():
        domain, s = pick()
        assert 'data-event-id="' in page(domain, **{"message-id": s["message_id"]}).text

    def by_tag():
        domain, s = pick()
        assert 'data-event-id="' in page(domain, tags=s["tags"][0]).text

    def by_subject_word():
        domain, _ = pick()
        assert 'data-event-id="' in page(domain, subject="shipped").text

    def unused(tags: list[str]) -> str:
        return "receipt" if "newsletter" in tags else "newsletter"

    def unused_tag():
        domain, s = pick()
        assert 'data-event-id="' not in page(domain, tags=unused(s["tags"])).text

    first_pages = {}

    def next_page():
        domain, _ = pick()
        if domain["id"] not in first_pages:  # the link as the first page shows it (not timed)
            url = html.unescape(NEXT.search(page(domain).text).group(1))
            first_pages[domain["id"]] = url
        path, _, query = first_pages[domain["id"]].partition("?")
        t = time.perf_counter()
        resp = client.simulate_get(path, query_string=query, cookies={sessions.COOKIE_NAME: tokens[domain["id"]]})
        elapsed = (time.perf_counter() - t) * 1000
        assert resp.status_code == 200 and 'data-event-id="' in resp.text
        return elapsed

    def api_latest():
        domain, _ = pick()
        assert not services.events.search_json(domain, {}).startswith('{"items":[]')

    def api_unused_tag():
        domain, s = pick()
        assert services.events.search_json(domain, {"tags": [unused(s["tags"])]}).startswith('{"items":[]')

    def timed(fn, n: int) -> list[float]:
        out = []
        for _ in range(n):
            t = time.perf_counter()
            inner = fn()
            out.append(inner if inner is not None else (time.perf_counter() - t) * 1000)
        return out

    typical = (("latest (no filter, 100 newest)", latest), ("by recipient", by_recipient),
               ("by message id", by_message_id), ("delivered in a day (date boxes, oldest first)", delivered_in_a_day),
               ("by tag", by_tag), ("by subject word", by_subject_word), ("next page (paging token)", next_page))
    apart = (("a tag the domain never used (reads all its events)", unused_tag),
             ("reference: the events API's query of `latest` (search_json, no HTTP)", api_latest),
             ("reference: the events API's query of the unused tag", api_unused_tag))
    cases = {}
    for name, fn in (*typical, *apart):
        timed(fn, 10)  # warm-up
        cases[name] = timed(fn, args.requests)
    everything = [v for name, _ in typical for v in cases[name]]
    print()
    print("| logs page request | p50 ms | p99 ms | max ms |")
    print("| --- | --- | --- | --- |")
    for name, _ in typical:
        values = cases[name]
        print(f"| {name} | {pct(values, 50):.1f} | {pct(values, 99):.1f} | {max(values):.1f} |")
    print(f"| **all of the above ({len(everything)} requests)** | {pct(everything, 50):.1f} | "
          f"{pct(everything, 99):.1f} | {max(everything):.1f} |")
    for name, _ in apart:
        values = cases[name]
        print(f"| {name} | {pct(values, 50):.1f} | {pct(values, 99):.1f} | {max(values):.1f} |")
    services.close()


if __name__ == "__main__":
    main()
