"""Egress selection cost: choose() calls per second (the relay calls it once per delivery, in its
event loop), and how long one background refresh of the inventory takes at a given size.

    .venv/bin/python bench/ips_egress.py [--ips 256] [--domains 2000] [--seconds 2]

Uses a throw-away database on DATABASE_URL's server (default postgres@127.0.0.1), dropped afterwards.
"""

from __future__ import annotations

import argparse
import base64
import os
import secrets
import time
import uuid

import psycopg

from envoi import runtime
from envoi.infra.migrate import ensure_database, migrate
from envoi.infra.settings import Settings


def rate(fn, seconds: float) -> float:
    fn()
    n, start = 0, time.perf_counter()
    while (elapsed := time.perf_counter() - start) < seconds:
        for _ in range(100):
            fn()
        n += 100
    return n / elapsed


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--ips", type=int, default=256)
    parser.add_argument("--domains", type=int, default=2000)
    parser.add_argument("--seconds", type=float, default=2.0)
    args = parser.parse_args()
    # A throwaway database: any key will do when none is given.
    base = Settings.from_env({"ENVOI_SECRET_KEY": base64.b64encode(secrets.token_bytes(32)).decode(),
                              "ENVOI_LOOKUP_KEY": base64.b64encode(secrets.token_bytes(32)).decode(), **os.environ})
    name = f"envoi_bench_{uuid.uuid4().hex[:8]}"
    dsn = psycopg.conninfo.make_conninfo(base.database_url, dbname=name)
    ensure_database(dsn)
    try:
        migrate(dsn)
        settings = base.replace(database_url=dsn, relay_host="bench-host")
        services = runtime.build(settings, pool_size=2)
        ips = services.ips
        account = services.accounts.create_account("bench")
        with services.db.transaction() as conn:  # many domains, cheaply (no DKIM key generation)
            conn.execute(
                "INSERT INTO domains (account_id, name, dkim_selector, dkim_private_key, dkim_public_key,"
                " dkim_key_size) SELECT %s, 'd' || g || '.bench.test', 's', '\\x00', 'x', 1024"
                " FROM generate_series(1, %s) g", (account["id"], args.domains))
            domains = conn.execute("SELECT * FROM domains ORDER BY id").fetchall()
        addresses = [f"10.{n // 65536 % 256}.{n // 256 % 256}.{n % 256}" for n in range(1, args.ips + 1)]
        half = len(addresses) // 2
        for n, address in enumerate(addresses):
            ips.add_ip("bench", address, host="bench-host", helo=f"o{n}.bench.test", dedicated=n < half)
        dedicated = domains[0]
        ips.add_domain_ip("bench", dedicated, addresses[0])
        pool = ips.create_pool("bench", "pool", ips=addresses[1:9])
        pooled = domains[1]
        ips.link_pool("bench", pooled, pool["id"])
        warm = domains[2]
        ips.add_domain_ip("bench", warm, addresses[9])
        ips.add_domain_ip("bench", warm, addresses[10])
        ips.start_warmup("bench", addresses[9], "30x100000000")
        ips.start_warmup("bench", addresses[10], "30x100000000")
        for n, domain in enumerate(domains[3:half]):  # the rest of the dedicated IPs, one per domain
            ips.add_domain_ip("bench", domain, addresses[11 + n % (half - 11)])
        view = ips.egress_view(host="bench-host", policy="overflow", refresh=3600, default_helo="x")
        started = time.perf_counter()
        view.sync()
        first_sync = time.perf_counter() - started
        started = time.perf_counter()
        for _ in range(5):
            view.sync()
        sync = (time.perf_counter() - started) / 5
        msg = {"account_id": account["id"], "options": {}}
        plain = domains[-1]
        print(f"inventory: {args.ips} IPs ({half} dedicated), {args.domains} domains")
        print(f"refresh (one background sync): first {first_sync * 1000:.1f} ms, then {sync * 1000:.1f} ms")
        for label, domain in [("dedicated IP", dedicated), ("pool of 8", pooled), ("shared pool", plain),
                              ("2 warming IPs (quota)", warm)]:
            view._quota = {k: 10**9 for k in view._quota}  # never run dry during the timing
            per_s = rate(lambda d=domain: view.choose(msg, d), args.seconds)
            print(f"choose() {label:24} {per_s:>12,.0f}/s  {1e6 / per_s:6.2f} µs")
        services.close()
    finally:
        with psycopg.connect(psycopg.conninfo.make_conninfo(base.database_url, dbname="postgres"),
                             autocommit=True) as conn:
            conn.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


if __name__ == "__main__":
    main()
