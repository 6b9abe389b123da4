"""`envoi inbound`: the inbound MX: asynchronous bounces (DSN), feedback-loop complaints (ARF), and mail
for the accounts' receiving domains, handed to their routes."""

from __future__ import annotations

import click


@click.command("inbound", short_help="The inbound MX: bounces, complaints, and mail for routes.")
@click.option("--bind", default=None, help="Listen address [ENVOI_INBOUND_BIND, 127.0.0.1].")
@click.option("--port", type=int, default=None, help="Listen port [ENVOI_INBOUND_PORT, 2526; 25 in production].")
@click.option("--metrics-port", default=0, type=int, help="Serve /metrics on ENVOI_METRICS_HOST:PORT (0: off).")
@click.option("--metrics-bind", default="", help="Serve /metrics on HOST:PORT (replaces --metrics-port).")
def inbound(bind: str | None, port: int | None, metrics_port: int, metrics_bind: str) -> None:
    """Receive DSNs at VERP bounce addresses and ARF reports at the FBL addresses (recording events), and
    mail for the receiving domains, applying their account's routes (/v3/routes)."""
    import asyncio
    import logging
    import signal

    from envoi import runtime
    from envoi.infra import health as health_infra
    from envoi.infra import heap
    from envoi.infra.settings import Settings

    if not logging.getLogger().isEnabledFor(logging.DEBUG):
        logging.getLogger("mail.log").setLevel(logging.WARNING)  # aiosmtpd logs every command at INFO
    settings = Settings.from_env()
    runtime.check_sealing_keys(settings)
    services = runtime.build(settings, pool_size=6)
    server = runtime.build_inbound(services, host=bind, port=port)
    health = health_infra.for_settings(settings)
    if address := settings.metrics_address(metrics_bind, metrics_port):
        services.metrics.serve(address, health)

    def ready() -> None:
        health.mark_started()
        click.echo(f"inbound: region {settings.region}, listening on {server.host}:{server.port} "
                   f"(VERP bounce+…@, FBL {', '.join(settings.fbl_addresses)}, postmaster@, routed receiving domains)")

    async def run() -> None:
        stop = asyncio.Event()
        loop = asyncio.get_running_loop()

        def stopping() -> None:
            health.mark_stopping()
            stop.set()

        for sig in (signal.SIGINT, signal.SIGTERM):
            loop.add_signal_handler(sig, stopping)
        await server.serve(stop, on_ready=ready)

    heap.settle_heap()  # started: the heap out of the cyclic collector (envoi.infra.heap)
    try:
        asyncio.run(run())
    finally:
        services.close()


COMMANDS: list = [inbound]  # click commands/groups added to `envoi`
