"""Expansion of a send to a mailing list: members accepted per second, API (compose) and SMTP (raw MIME).

    .venv/bin/python bench/list_expansion.py [--members 10000] [--rounds 3]

A private database (dropped after) and Redis db; one account, domain and list of N members with a
name and two vars each; then, per round, one send to the list through the API's path (compose with
the list's expansion, then intake.accept: one members query, one transaction) and one through the
SMTP path (a caller-built MIME expanded by intake). No relay runs: this measures accepting, which is
what the caller waits for. Prints the accept time and members/s of each round.
"""

from __future__ import annotations

import argparse
import functools
import os
import secrets
import sys
import time
import uuid
from pathlib import Path

from bench_domain import verified_domain

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from envoi import runtime  # noqa: E402
from envoi.accounts.service import Principal  # noqa: E402
from envoi.infra.db import connect  # noqa: E402
from envoi.infra.migrate import ensure_database, migrate  # noqa: E402
from envoi.infra.settings import Settings  # noqa: E402
from envoi.mta.compose import compose, from_mime  # noqa: E402

PG_ADMIN = os.environ.get("ENVOI_BENCH_PG", "postgresql://postgres@127.0.0.1:5432/postgres")
REDIS_URL = os.environ.get("ENVOI_BENCH_REDIS", "redis://127.0.0.1:6379/14")
TEXT = ("Hello %recipient.name%,\n\nyour plan is %recipient.plan% and you joined in %recipient.year%.\n"
        + "A line of the newsletter that is the same for every member of the list.\n" * 40
        + "Leave this list: %mailing_list_unsubscribe_url%\n")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--members", type=int, default=10_000)
    parser.add_argument("--rounds", type=int, default=3)
    args = parser.parse_args()
    name = f"envoi_bench_lists_{uuid.uuid4().hex[:8]}"
    dsn = PG_ADMIN.rsplit("/", 1)[0] + f"/{name}"
    ensure_database(dsn)
    migrate(dsn)
    services = runtime.build(Settings(region="eu", database_url=dsn, redis_url=REDIS_URL,
                                      secret_key=secrets.token_bytes(32), public_url="http://127.0.0.1:8025"))
    try:
        run(services, args.members, args.rounds)
    finally:
        services.close()
        with connect(PG_ADMIN) as conn:
            conn.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


def run(services, members: int, rounds: int) -> None:
    account, domain = verified_domain(services.accounts, "lists.bench.test")
    address = f"news@{domain['name']}"
    services.lists.create(account["id"], {"address": address})
    for start in range(0, members, 1000):
        services.lists.add_members_json(account["id"], address, [
            {"address": f"m{i:06d}@dest.test", "name": f"Member {i}", "vars": {"plan": "pro", "year": 2000 + i % 25}}
            for i in range(start, min(start + 1000, members))], None)
    principal = Principal(None, account["id"], "admin")
    row = services.intake.domain_for(principal, domain["name"])
    fields = {"from": [f"news@{domain['name']}"], "to": [address], "subject": ["News for %recipient.name%"],
              "text": [TEXT]}
    mime = (f"From: news@{domain['name']}\r\nTo: {address}\r\nSubject: News for %recipient.name%\r\n"
            "MIME-Version: 1.0\r\nContent-Type: text/plain; charset=utf-8\r\n\r\n"
            + TEXT.replace("\n", "\r\n")).encode()
    print(f"{members:,} members, a {len(TEXT):,}-character text body")
    for n in range(1, rounds + 1):
        started = time.perf_counter()
        draft = compose(domain["name"], fields, [], [], lists=functools.partial(services.list_expander.expansions, row))
        services.intake.accept(principal, row, draft)
        api = time.perf_counter() - started
        started = time.perf_counter()
        services.intake.accept(principal, row, from_mime(domain["name"], mime, [address], {}, method="smtp"))
        smtp = time.perf_counter() - started
        print(f"round {n}: API {api:.2f} s ({members / api:,.0f} members/s), SMTP {smtp:.2f} s"
              f" ({members / smtp:,.0f} members/s)")
        with services.db.transaction() as conn:  # keep the next round's queue as empty as this one's
            conn.execute("DELETE FROM messages WHERE domain_id = %s", (domain["id"],))


if __name__ == "__main__":
    main()
