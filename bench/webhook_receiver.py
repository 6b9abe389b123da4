"""A fast webhook receiver for bench/webhook_dispatch.py, in its own process (aiohttp server).

    python bench/webhook_receiver.py PORT SLOW_PORT KEYS_JSON

Verifies every Mailgun signature with the account's key (KEYS_JSON: {"account id": "key"}; the bench's
event-data carries "account"; real events are checked with the key under "*"), answers 200 at once on /hook, after 5 s on /slow (served on SLOW_PORT as well: another endpoint host
for the dispatcher's per-endpoint caps), and counts: GET /stats
gives received, distinct event ids, invalid signatures and the commit->received latency (now minus the
event-data's "timestamp", set by the bench when it commits the row) p50/p99 of /hook since POST /reset,
and this receiver's own event-loop stalls over 50 ms (the five longest) since then.
"""

from __future__ import annotations

import asyncio
import hashlib
import hmac
import json
import sys
import time

from aiohttp import web


def main() -> None:
    port, slow_port, keys = int(sys.argv[1]), int(sys.argv[2]), json.loads(open(sys.argv[3]).read())  # noqa: SIM115
    state = {"received": 0, "invalid": 0, "ids": set(), "latencies": [], "slow": 0, "stalls": []}

    async def hook(request: web.Request) -> web.Response:
        body = await request.read()
        now = time.time()
        data = json.loads(body)
        sig, event = data["signature"], data["event-data"]
        # Real events (bench/relay_vs_postfix.py --webhooks) carry no "account": one key, under "*".
        key = (keys.get(str(event.get("account"))) or keys["*"]).encode()
        expected = hmac.new(key, (sig["timestamp"] + sig["token"]).encode(), hashlib.sha256).hexdigest()
        if not hmac.compare_digest(expected, sig["signature"]):
            state["invalid"] += 1
        if request.path == "/slow":
            state["slow"] += 1
            await asyncio.sleep(5)
            return web.Response(text="ok")
        state["received"] += 1
        state["ids"].add(event["id"])
        state["latencies"].append(now - event["timestamp"])
        return web.Response(text="ok")

    async def stats(request: web.Request) -> web.Response:
        lat = sorted(state["latencies"])

        def pct(p: float) -> float | None:
            return lat[min(len(lat) - 1, int(round(p / 100 * (len(lat) - 1))))] if lat else None

        return web.json_response({"received": state["received"], "distinct": len(state["ids"]),
                                  "invalid": state["invalid"], "slow": state["slow"], "n": len(lat),
                                  "p50": pct(50), "p99": pct(99), "max": lat[-1] if lat else None,
                                  "stalls": sorted(state["stalls"], reverse=True)[:5]})

    async def reset(request: web.Request) -> web.Response:
        state["latencies"], state["stalls"] = [], []
        return web.Response(text="ok")

    async def lag() -> None:
        """This receiver's own event-loop stalls over 50 ms (its answers wait too: counted as latency)."""
        while True:
            started = time.monotonic()
            await asyncio.sleep(0.01)
            if (late := time.monotonic() - started - 0.01) > 0.05:
                state["stalls"].append(round(late, 3))

    app = web.Application()
    app.add_routes([web.post("/hook", hook), web.post("/slow", hook), web.get("/stats", stats),
                    web.post("/reset", reset)])
    async def serve() -> None:
        runner = web.AppRunner(app, access_log=None)
        await runner.setup()
        for p in (port, slow_port):
            await web.TCPSite(runner, "127.0.0.1", p).start()
        await lag()

    asyncio.run(serve())


if __name__ == "__main__":
    main()
