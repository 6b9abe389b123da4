"""Address validation rate: single validations over HTTP and bulk validation through an RQ worker.

DNS is the test server (tests/support/dns_server.py) on loopback with DOMAINS domains (MX, null MX, no
MX; plus disposable and role addresses), so the figures measure Envoi, not the internet:

  single, cached DNS  GET /v4/address/validate through the falcon app in process (auth, routing, JSON
                      included; no socket), one thread, every domain already in the resolver's cache
  single, cold DNS    the same for addresses at domains not asked before (one loopback DNS round trip)
  bulk                POST a CSV of BULK addresses, one in-process RQ worker (SimpleWorker) runs the
                      batches (ENVOI_VALIDATION_BATCH, default 200) until the job is `uploaded`

Usage: .venv/bin/python bench/validation_rate.py [--single 5000] [--bulk 20000] [--domains 500]
"""

from __future__ import annotations

import argparse
import base64
import dataclasses
import os
import secrets
import sys
import time
import uuid

import psycopg
import redis

sys.path.insert(0, os.path.join(os.path.dirname(__file__), ".."))

from falcon import testing  # noqa: E402

from envoi import runtime  # noqa: E402
from envoi.api.app import create_app  # noqa: E402
from envoi.infra.migrate import ensure_database, migrate  # noqa: E402
from envoi.infra.settings import Settings  # noqa: E402
from envoi.validation import jobs as validation_jobs  # noqa: E402
from envoi.webhooks import jobs as webhook_jobs  # noqa: E402
from tests.support.dns_server import DnsServer  # noqa: E402

PG = "postgresql://postgres@127.0.0.1:5432/postgres"


def free_redis() -> str:
    for n in range(15, 0, -1):
        conn = redis.Redis(db=n)
        if conn.dbsize() == 0 and conn.set("envoi:test:claim", "1", nx=True, ex=3600):
            return f"redis://127.0.0.1:6379/{n}"
    raise SystemExit("no free Redis db")


def addresses(n: int, domains: int, prefix: str = "d") -> list[str]:
    kinds = ["user{i}@{d}", "admin@{d}", "user{i}@mailinator.com", "user{i}@{d}", "user{i}@{d}"]
    # kind by i % 5, domain by i // 5: every kind of address meets every kind of domain
    return [kinds[i % len(kinds)].format(i=i, d=f"{prefix}{i // len(kinds) % domains}.bench.test") for i in range(n)]


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--single", type=int, default=5000)
    parser.add_argument("--bulk", type=int, default=20000)
    parser.add_argument("--domains", type=int, default=500)
    args = parser.parse_args()

    name = f"envoi_bench_{uuid.uuid4().hex[:8]}"
    dsn = psycopg.conninfo.make_conninfo(PG, dbname=name)
    ensure_database(dsn)
    migrate(dsn)
    redis_url = free_redis()
    with DnsServer() as dns:
        for prefix in ("d", "c"):
            for i in range(args.domains):
                domain = f"{prefix}{i}.bench.test"
                if i % 10 == 7:
                    dns.add(domain, "MX", "0 .")  # null MX
                elif i % 10 == 8:
                    dns.add(domain, "A", "127.0.0.1")  # implicit MX
                elif i % 10 != 9:  # ...9: no such domain
                    dns.add(domain, "MX", f"10 mx.{domain}.")
        settings = Settings(database_url=dsn, redis_url=redis_url, secret_key=secrets.token_bytes(32))
        settings = dataclasses.replace(settings, dns_resolver=("127.0.0.1", dns.port))
        svc = runtime.build(settings, pool_size=4)
        try:
            account = svc.accounts.create_account("bench")
            _, key = svc.accounts.create_key(account["id"], "admin")
            auth = {"Authorization": "Basic " + base64.b64encode(f"api:{key}".encode()).decode()}
            client = testing.TestClient(create_app(settings, svc))

            def run_single(batch: list[str]) -> float:
                started = time.perf_counter()
                for address in batch:
                    resp = client.simulate_get("/v4/address/validate", params={"address": address}, headers=auth)
                    assert resp.status_code == 200, resp.text
                return len(batch) / (time.perf_counter() - started)

            cold = run_single([f"user{i}@c{i}.bench.test" for i in range(args.domains)])  # each domain new
            warm_set = addresses(args.single, args.domains)
            svc.validation.validate_many(warm_set)  # every domain in the cache
            warm = run_single(warm_set)
            print(f"single, cached DNS: {warm:,.0f} validations/s ({args.single} addresses, one thread)")
            print(f"single, cold DNS:   {cold:,.0f} validations/s ({args.domains} new domains, loopback DNS)")

            csv_data = ("email\n" + "\n".join(addresses(args.bulk, args.domains, prefix="d"))).encode()
            validation_jobs.configure(svc.validation)
            worker = webhook_jobs.worker(svc.webhooks, webhook_jobs.worker_connection(redis_url),
                                         (validation_jobs.QUEUE,))
            started = time.perf_counter()
            svc.validation.create_job(account["id"], "bench", csv_data)
            uploaded = time.perf_counter()
            worker.work(burst=True, logging_level="WARNING")
            done = time.perf_counter()
            job = svc.validation.job(account["id"], "bench")
            assert job["status"] == "uploaded" and job["records_processed"] == args.bulk, job
            print(f"bulk: {args.bulk} addresses, upload {uploaded - started:.2f} s, worker {done - uploaded:.2f} s"
                  f" = {args.bulk / (done - uploaded):,.0f} validations/s (one RQ worker, batches of"
                  f" {settings.validation_batch}); summary {job['summary']['result']}")
        finally:
            svc.close()
            redis.Redis.from_url(redis_url).flushdb()
            with psycopg.connect(PG, autocommit=True) as conn:
                conn.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


if __name__ == "__main__":
    main()
