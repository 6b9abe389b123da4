"""Tracking render cost per recipient at accept: this checkout's envoi.mta.tracking against a reference
commit's, in the same process, on the same drafts.

    .venv/bin/python bench/tracking_render.py [--reference c87224b] [--rounds 5] [--recipients 1000]
    .venv/bin/python bench/tracking_render.py --http [--rounds 3]   # POST /v3/{domain}/messages, time to 200
    .venv/bin/python bench/tracking_render.py --single [--rounds 7] [--messages 2000]   # µs per message

Three 1,000-recipient sends of a 10-link HTML body (+ a text part with a link) with open, click and
unsubscribe tracking on (footer, List-Unsubscribe, %unsubscribe_url% in the body):
  batch  — recipient-variables: compose() makes one copy per recipient (%recipient.name% filled in);
  shared — one copy addressed to all 1,000 (tracking splits it into one copy per recipient);
  e2e    — the batch of bench/relay_vs_postfix.py --webhooks (~5 KB text + its 10-link HTML, %recipient.name%
           in both; every copy filled in by compose from one template, which tracking renders once).
The reference module is read with `git show REF:envoi/mta/tracking.py` and imported beside the current
one; rounds alternate between the two so machine noise hits both alike. No database: the domain's
tracking settings come from a stub of settings_for() (both versions read them through it). Times are
CPU time of this process (time.process_time): the machine is shared, and wall time mostly measures others.

--single: what the end-to-end benchmark's urlencoded path sends with --webhooks (bench/relay_vs_postfix.py):
single-recipient messages, each its own Message-ID, a ~5 KB text part and the 10-link HTML body of
relay_vs_postfix_lib.html_body(), a tag; open, click and unsubscribe on. Each message is composed once and
rendered by both modules (rounds interleaved), CPU µs per message: the tracking share of one accept.

--http: the batch send as a request to the API app in process (falcon's test client: form parsing,
compose, tracking, the accept transaction in a throwaway Postgres database, no network), wall time to
the 200, with the reference module's renderer and the current one in turn, and with tracking off.
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import secrets
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "bench"))
from bench_domain import verified_domain  # noqa: E402

from envoi.mta import tracking as current  # noqa: E402
from envoi.mta.compose import compose  # noqa: E402

SETTINGS = {"domain_id": 1, "open": True, "click": "yes", "unsubscribe": True, "html_footer": "", "text_footer": ""}
DOMAIN = {"id": 1, "account_id": 1, "name": "bench.example.test", "web_prefix": "email", "web_scheme": "https"}


def load_reference(ref: str):
    source = subprocess.run(["git", "-C", str(ROOT), "show", f"{ref}:envoi/mta/tracking.py"], check=True,
                            capture_output=True, text=True).stdout
    path = Path(tempfile.mkdtemp()) / "tracking_reference.py"
    path.write_text(source)
    spec = importlib.util.spec_from_file_location("tracking_reference", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def tracker(module, key: bytes):
    class Bench(module.Tracking):
        def settings_for(self, domain_id, conn=None):
            return SETTINGS

    kwargs = {"host_mode": "domain"} if "host_mode" in module.Tracking.__init__.__code__.co_varnames else {}
    return Bench(None, None, key, "http://127.0.0.1:8025", **kwargs)


def html_body() -> str:
    links = "".join(f'<p>Item {i}: <a href="https://shop.example/products/{i}?utm_source=mail&amp;ref=%recipient.id%">'
                    f"product {i}</a> — a short description of the product goes here.</p>" for i in range(9))
    return (f"<html><head><title>News</title></head><body><h1>Hello %recipient.name%</h1>{links}"
            '<p><a href="mailto:help@shop.example">mail us</a> or <a href="#top">back up</a></p>'
            '<p><a href="%unsubscribe_url%">unsubscribe</a></p></body></html>')


def drafts(n: int) -> dict:
    to = [f"person{i}@dest.test" for i in range(n)]
    fields = {"from": ["shop@bench.example.test"], "to": [", ".join(to)], "subject": ["News for %recipient.name%"],
              "text": ["Hello %recipient.name%, see https://shop.example/news today."], "html": [html_body()]}
    batch = compose("bench.example.test", {**fields, "recipient-variables": [json.dumps(
        {a: {"name": f"Person {i}", "id": i} for i, a in enumerate(to)})]}, [], [])
    shared = compose("bench.example.test", fields, [], [])
    # The end-to-end benchmark's batch (relay_vs_postfix_lib.inject_batch with --webhooks): ~5 KB of text and
    # its 10-link HTML body, %recipient.name% in both (compose fills each copy from one template of its body).
    from relay_vs_postfix_lib import html_body as bench_html

    line = "Hello %recipient.name%, thank you for your order. Your parcel is on its way.\r\n"
    e2e = compose("bench.example.test", {
        "from": ["Bench <bench@bench.example.test>"], "to": [",".join(to)], "subject": ["Your order, %recipient.name%"],
        "text": [line * (5000 // len(line) + 1)], "html": [bench_html("%recipient.name%")], "o:tag": ["bench"],
        "recipient-variables": [json.dumps({a: {"name": f"Customer {i}", "id": i} for i, a in enumerate(to)})]},
        [], [])
    return {"batch": batch, "shared": shared, "e2e": e2e}


def single(args, key: bytes) -> None:
    from relay_vs_postfix_lib import html_body as bench_html  # the end-to-end benchmark's own body

    text = "Thank you for your order. Your parcel is on its way and will arrive soon.\r\n" * 66  # as wrk_messages.lua
    fields = {"from": ["Bench <bench@bench.example.test>"], "to": ["someone@dest.test"], "subject": ["Your order"],
              "text": [text], "html": [bench_html()], "o:tag": ["bench"]}
    messages = [compose("bench.example.test", fields, [], []) for _ in range(args.messages)]
    modules = {"reference": tracker(load_reference(args.reference), key), "current": tracker(current, key)}
    times: dict = {name: [] for name in modules}
    for _ in range(args.rounds):
        for name, t in modules.items():
            start = time.process_time()
            for draft in messages:
                t.render(DOMAIN, draft)
            times[name].append((time.process_time() - start) * 1e6 / args.messages)
    print(f"tracking render of one single-recipient message (the urlencoded path of relay_vs_postfix.py --webhooks:"
          f" ~5 KB text + 10-link HTML, open + click + unsubscribe on), {args.messages} messages; best / median of"
          f" {args.rounds} rounds, CPU µs per message:")
    ref, cur = times["reference"], times["current"]
    print(f"  reference {args.reference}: {min(ref):.1f} / {statistics.median(ref):.1f}   current: {min(cur):.1f} /"
          f" {statistics.median(cur):.1f}   ratio {statistics.median(ref) / statistics.median(cur):.2f}x")


def http(args, key: bytes) -> None:
    import base64
    import uuid
    from urllib.parse import urlencode

    import psycopg
    import redis
    from falcon import testing

    from envoi import runtime
    from envoi.api.app import create_app
    from envoi.infra.migrate import ensure_database, migrate
    from envoi.infra.settings import Settings

    pg = "postgresql://postgres@127.0.0.1:5432/postgres"
    name = f"envoi_bench_{uuid.uuid4().hex[:8]}"
    dsn = psycopg.conninfo.make_conninfo(pg, dbname=name)
    ensure_database(dsn)
    migrate(dsn)
    redis_url = next(f"redis://127.0.0.1:6379/{n}" for n in range(15, 0, -1)
                     if redis.Redis(db=n).set("envoi:test:claim", "1", nx=True, ex=3600))
    settings = Settings(database_url=dsn, redis_url=redis_url, secret_key=key, lookup_key=secrets.token_bytes(32))
    svc = runtime.build(settings, pool_size=4)
    try:
        acct, dom = verified_domain(svc.accounts, "bench.example.test")
        _, secret = svc.accounts.create_key(acct["id"], "admin")
        for kind in ("open", "click", "unsubscribe"):
            svc.tracking.update_settings(dom, kind, {"active": "yes"})
        client = testing.TestClient(create_app(settings, svc))
        auth = {"Authorization": "Basic " + base64.b64encode(f"api:{secret}".encode()).decode(),
                "Content-Type": "application/x-www-form-urlencoded"}
        to = [f"person{i}@dest.test" for i in range(args.recipients)]
        form = {"from": f"shop@{dom['name']}", "to": ", ".join(to), "subject": "News for %recipient.name%",
                "text": "Hello %recipient.name%, see https://shop.example/news today.", "html": html_body(),
                "recipient-variables": json.dumps({a: {"name": f"Person {i}", "id": i} for i, a in enumerate(to)})}
        reference = tracker(load_reference(args.reference), key)
        reference.settings_for = svc.tracking.settings_for
        renderers = svc.intake.renderers
        variants = {"reference": (renderers[0], reference.render), "current": renderers,
                    "tracking off": renderers}
        times: dict = {v: [] for v in variants}
        for _ in range(args.rounds):
            for variant, chain in variants.items():
                svc.intake.renderers = tuple(chain)
                body = urlencode(dict(form, **({"o:tracking": "no"} if variant == "tracking off" else {})))
                start = time.perf_counter()
                resp = client.simulate_post(f"/v3/{dom['name']}/messages", body=body, headers=auth)
                times[variant].append(time.perf_counter() - start)
                assert resp.status_code == 200, resp.text
        print(f"POST /v3/{{domain}}/messages, {args.recipients}-recipient batch (recipient-variables), 10-link HTML,"
              f" open + click + unsubscribe on: wall time to 200, best / median of {args.rounds}:")
        for variant, values in times.items():
            print(f"  {variant:12}  {min(values):.2f} s / {statistics.median(values):.2f} s")
    finally:
        svc.close()
        redis.Redis.from_url(redis_url).flushdb()
        with psycopg.connect(pg, autocommit=True) as c:
            c.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--reference", default="c87224b", help="git revision of the module to compare against")
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--recipients", type=int, default=1000)
    parser.add_argument("--http", action="store_true", help="time the send API end to end instead")
    parser.add_argument("--single", action="store_true", help="single-recipient messages, µs per message")
    parser.add_argument("--messages", type=int, default=2000, help="--single: messages per round")
    args = parser.parse_args()
    key = secrets.token_bytes(32)
    if args.http:
        http(args, key)
        return
    if args.single:
        single(args, key)
        return
    modules = {"reference": tracker(load_reference(args.reference), key), "current": tracker(current, key)}
    sends = drafts(args.recipients)
    times: dict = {(name, kind): [] for name in modules for kind in sends}
    for _ in range(args.rounds):
        for kind, draft in sends.items():
            for name, t in modules.items():
                start = time.process_time()
                out = t.render(DOMAIN, draft)
                times[(name, kind)].append(time.process_time() - start)
                assert len(out.copies) == args.recipients, (name, kind, len(out.copies))
    print(f"tracking render, {args.recipients} recipients, 10 links (9 tracked + mailto + #anchor), open + click +"
          f" unsubscribe on; best / median of {args.rounds} rounds, ms per recipient:")
    for kind in sends:
        ref = [s * 1000 / args.recipients for s in times[("reference", kind)]]
        cur = [s * 1000 / args.recipients for s in times[("current", kind)]]
        print(f"  {kind:6}  reference {args.reference}: {min(ref):.3f} / {statistics.median(ref):.3f}   "
              f"current: {min(cur):.3f} / {statistics.median(cur):.3f}   "
              f"ratio {statistics.median(ref) / statistics.median(cur):.1f}x")


if __name__ == "__main__":
    main()
