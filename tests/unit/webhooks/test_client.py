"""The dispatcher's HTTP client against a real local server: keep-alive reuse, the SSRF guard at dial
for host names (its resolver) and literal addresses, redirects not followed, the reply excerpt."""

from __future__ import annotations

import asyncio

from aiohttp import web

from envoi.webhooks import ssrf
from envoi.webhooks.client import Client

LOOPBACK = ssrf.Allow.parse(["127.0.0.0/8", "::1/128"])


async def serve(app: web.Application) -> tuple[web.AppRunner, int]:
    runner = web.AppRunner(app)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    return runner, site._server.sockets[0].getsockname()[1]


def app_counting(peers: set, seen: list) -> web.Application:
    async def ok(request: web.Request) -> web.Response:
        peers.add(request.transport.get_extra_info("peername"))
        seen.append(await request.read())
        return web.Response(text="x" * 3000)

    async def moved(request: web.Request) -> web.Response:
        seen.append(await request.read())
        raise web.HTTPFound("/ok")

    app = web.Application()
    app.add_routes([web.post("/ok", ok), web.post("/moved", moved)])
    return app


def test_requests_reuse_keep_alive_connections_and_redirects_are_not_followed():
    async def main():
        peers, seen = set(), []
        runner, port = await serve(app_counting(peers, seen))
        try:
            async with Client(LOOPBACK, 5, 100) as http:
                for _ in range(20):
                    response = await http.post(f"http://127.0.0.1:{port}/ok", b"{}")
                    assert response.status == 200 and response.excerpt == "x" * 1024
                assert len(peers) == 1  # one connection for 20 sequential requests
                results = await asyncio.gather(*(http.post(f"http://127.0.0.1:{port}/ok", b"{}") for _ in range(30)))
                assert {r.status for r in results} == {200} and len(peers) <= 31
                moved = await http.post(f"http://127.0.0.1:{port}/moved", b"{}")
                assert moved.status == 302 and len(seen) == 51  # the target of the redirect was not asked
        finally:
            await runner.cleanup()

    asyncio.run(main())


def test_host_names_are_vetted_by_the_resolver_and_literals_before_the_request():
    async def main():
        peers, seen = set(), []
        runner, port = await serve(app_counting(peers, seen))
        try:
            async with Client(LOOPBACK, 5, 10) as allowed:
                assert (await allowed.post(f"http://localhost:{port}/ok", b"{}")).status == 200
            async with Client(ssrf.Allow.parse([]), 5, 10) as strict:
                named = await strict.post(f"http://localhost:{port}/ok", b"{}")
                literal = await strict.post(f"http://127.0.0.1:{port}/ok", b"{}")
                mapped = await strict.post(f"http://[::ffff:127.0.0.1]:{port}/ok", b"{}")
            assert named.status is None and named.error.startswith("refused: url host localhost resolves to a private")
            assert literal.status is None and literal.error.startswith("refused")
            assert mapped.status is None and mapped.error.startswith("refused")
            assert len(seen) == 1  # only the allowed request arrived
        finally:
            await runner.cleanup()

    asyncio.run(main())


def test_a_silent_endpoint_times_out_and_a_callers_cancel_still_cancels():
    """A request to an endpoint that accepts and never answers ends as a timeout result after about the
    timeout, the others meanwhile answered at once; a request the caller cancels (a stopping dispatcher)
    raises CancelledError rather than becoming a result."""
    async def main():
        peers, seen = set(), []
        runner, port = await serve(app_counting(peers, seen))
        silent = await asyncio.start_server(lambda r, w: asyncio.sleep(30), "127.0.0.1", 0)
        dead = silent.sockets[0].getsockname()[1]
        try:
            async with Client(LOOPBACK, 0.4, 10) as http:
                loop = asyncio.get_running_loop()
                started = loop.time()
                slow = [asyncio.create_task(http.post(f"http://127.0.0.1:{dead}/hook", b"{}")) for _ in range(3)]
                fast = await http.post(f"http://127.0.0.1:{port}/ok", b"{}")
                assert fast.status == 200 and loop.time() - started < 0.3
                for response in await asyncio.gather(*slow):
                    assert response.status is None and response.error == "timeout after 0.4 s"
                assert 0.35 <= loop.time() - started < 1.5
                cancelled = asyncio.create_task(http.post(f"http://127.0.0.1:{dead}/hook", b"{}"))
                await asyncio.sleep(0.1)
                cancelled.cancel()
                try:
                    await cancelled
                    raise AssertionError("a caller's cancel was swallowed")
                except asyncio.CancelledError:
                    pass
                again = await http.post(f"http://127.0.0.1:{port}/ok", b"{}")  # nothing left behind
                assert again.status == 200
        finally:
            silent.close()
            await runner.cleanup()

    asyncio.run(main())


def test_a_burst_of_requests_opens_connections_a_few_at_a_time_not_past_the_listen_backlog():
    """300 requests at once to one endpoint whose listen backlog is 48: opened all at once (as before),
    the accept queue overflowed, the dropped SYNs were retried after 1 s and 3 s, and every tenant of
    that host waited that long (the fairness stall of bench/webhook_dispatch.py). Now at most OPENING
    connections per endpoint are opening (no answer yet) at a time: none waits for a retried SYN."""
    async def main():
        peers: set = set()

        async def ok(request: web.Request) -> web.Response:
            peers.add(request.transport.get_extra_info("peername"))
            await request.read()
            return web.Response(text="ok")

        app = web.Application()
        app.add_routes([web.post("/ok", ok)])
        runner = web.AppRunner(app)
        await runner.setup()
        site = web.TCPSite(runner, "127.0.0.1", 0, backlog=48)
        await site.start()
        port = site._server.sockets[0].getsockname()[1]
        try:
            async with Client(LOOPBACK, 10, 512) as http:
                results = await asyncio.gather(*(http.post(f"http://127.0.0.1:{port}/ok", b"{}") for _ in range(300)))
                assert {r.status for r in results} == {200}
                # A dropped SYN is retried after 1 s at the earliest: no request took that long.
                assert max(r.latency_ms for r in results) < 1000, sorted(r.latency_ms for r in results)[-5:]
                assert not http.connector.permits  # every opening slot given back
        finally:
            await runner.cleanup()
        assert len(peers) <= 300

    asyncio.run(main())
