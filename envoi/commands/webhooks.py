"""`envoi webhooks dispatch`: the asyncio webhook dispatcher; `envoi worker`: RQ workers (bulk address
validation, and any webhook job left queued by a version before the dispatcher)."""

from __future__ import annotations

import click


@click.command("worker", short_help="Run RQ jobs: bulk address validations (webhooks: `envoi webhooks dispatch`).")
@click.option("--processes", default=2, show_default=True, type=int, help="RQ worker processes.")
@click.option("--no-dispatch", is_flag=True, hidden=True, help="Ignored (webhooks have their own dispatcher now).")
@click.option("--burst", is_flag=True, help="Exit when no job is queued.")
@click.option("--metrics-port", default=0, type=int,
              help="Serve /metrics of all the processes (summed) on ENVOI_METRICS_HOST:PORT; 0: off.")
@click.option("--metrics-bind", default="", help="Serve /metrics on HOST:PORT (replaces --metrics-port).")
def worker(processes: int, no_dispatch: bool, burst: bool, metrics_port: int, metrics_bind: str) -> None:
    """Run RQ workers: bulk address validation batches (queue envoi-validation). They also drain the
    webhook RQ queue of versions before `envoi webhooks dispatch` (each such job re-checks its row)."""
    import signal
    import sys

    from envoi.infra import metrics_dir

    if processes > 1:  # the extra processes write their metrics where this one sums them
        metrics_dir.use()
    from envoi import runtime
    from envoi.infra import health, heap, process_group
    from envoi.infra import redis as redis_infra
    from envoi.infra.settings import Settings
    from envoi.validation import jobs as validation_jobs
    from envoi.webhooks import jobs

    settings = Settings.from_env()
    runtime.check_sealing_keys(settings)
    services = runtime.build(settings, pool_size=3)
    # No socket timeout: RQ blocks on BLPOP for longer than the API client's 5 s. redis+sentinel:// URLs
    # follow a failover like every other client (infra.redis.client).
    connection = redis_infra.client(settings.redis_url, socket_timeout=None)
    validation_jobs.configure(services.validation)
    queues = (validation_jobs.QUEUE,)
    group = process_group.Group("worker", restart=not burst)  # --burst: children end on their own
    for _ in range(1, processes):
        argv = [sys.executable, "-m", "envoi.cli", "worker", "--processes", "1"]
        argv += ["--burst"] if burst else []
        group.start([*argv, "--metrics-port", "0"])
    group.supervise()
    readiness = health.for_settings(settings, children=group.check if processes > 1 else None)
    if address := settings.metrics_address(metrics_bind, metrics_port):
        services.metrics.serve(address, readiness, _collector(group) if processes > 1 else None)
    click.echo(f"worker: region {settings.region}, RQ queues {', '.join(queues)}, {processes} process(es)")
    rq_worker = jobs.worker(services.webhooks, connection, queues)

    def forward_stop() -> None:  # children stop (and hand their jobs back) alongside this process
        readiness.mark_stopping()
        group.signal(signal.SIGTERM)
    rq_worker.on_stop = forward_stop
    heap.settle_heap()  # started: the heap out of the cyclic collector (envoi.infra.heap)
    readiness.mark_started()
    try:
        rq_worker.work(burst=burst, logging_level="WARNING" if burst else "INFO", with_scheduler=False)
    finally:
        # Each child hands its job back within ~1 s; one that does not answer is killed, so the group
        # is gone within 2 s (a killed child's job is queued again by the scheduler's stalled-job sweep).
        group.stop(timeout=1.8)
        group.close()
        services.close()
        if processes > 1:  # the group's parent; its children (--processes 1) leave the directory alone
            metrics_dir.release()


@click.group("webhooks", short_help="Webhook delivery: the dispatcher.")
def webhooks() -> None:
    """Webhook delivery."""


@webhooks.command("dispatch")
@click.option("--processes", default=2, show_default=True, type=int,
              help="Dispatcher processes (each an asyncio loop with up to ENVOI_WEBHOOK_INFLIGHT requests in flight).")
@click.option("--burst", is_flag=True, help="Exit when nothing is due (and nothing in flight).")
@click.option("--metrics-port", default=0, type=int,
              help="Serve /metrics of all the processes (summed) on ENVOI_METRICS_HOST:PORT; 0: off.")
@click.option("--metrics-bind", default="", help="Serve /metrics on HOST:PORT (replaces --metrics-port).")
@click.option("--child", is_flag=True, hidden=True, help="A process started by another (does not measure the backlog).")
def dispatch(processes: int, burst: bool, metrics_port: int, metrics_bind: str, child: bool) -> None:
    """Deliver webhooks from the Postgres outbox: claim due rows in batches (fair across accounts, at most
    ENVOI_WEBHOOK_PER_ENDPOINT in flight per endpoint host and ENVOI_WEBHOOK_PER_ACCOUNT per account, over all
    processes), POST them concurrently over keep-alive connections, write the results in batches. A killed
    process's rows are taken again when their lease (ENVOI_WEBHOOK_LEASE) runs out."""
    import asyncio
    import signal
    import sys

    from envoi.infra import metrics_dir

    if processes > 1:  # the extra processes write their metrics where this one sums them
        metrics_dir.use()
    from envoi import runtime
    from envoi.infra import aio, health, heap, process_group
    from envoi.infra.settings import Settings
    from envoi.webhooks.dispatch import Dispatcher

    settings = Settings.from_env()
    runtime.check_sealing_keys(settings)
    services = runtime.build(settings, pool_size=3)
    group = process_group.Group("webhooks-dispatch", restart=not burst)
    for _ in range(1, processes):
        argv = [sys.executable, "-m", "envoi.cli", "webhooks", "dispatch", "--processes", "1", "--child"]
        argv += ["--burst"] if burst else []
        group.start([*argv, "--metrics-port", "0"])
    group.supervise()
    readiness = health.for_settings(settings, children=group.check if processes > 1 else None)
    if address := settings.metrics_address(metrics_bind, metrics_port):
        services.metrics.serve(address, readiness, _collector(group) if processes > 1 else None)
    dispatcher = Dispatcher(services.webhooks, services.metrics, stats=not child)
    if not child:
        click.echo(f"webhooks dispatch: region {settings.region}, {processes} process(es), up to "
                   f"{dispatcher.inflight_max} in flight each")

    async def main() -> None:
        if burst:
            await dispatcher.drain()
            return
        stop = asyncio.Event()
        loop = asyncio.get_running_loop()

        def stopping() -> None:
            readiness.mark_stopping()
            group.mark_stopping()  # a child that exits now (its own SIGTERM) is not replaced
            stop.set()

        for sig in (signal.SIGINT, signal.SIGTERM):
            loop.add_signal_handler(sig, stopping)
        readiness.mark_started()
        await dispatcher.run(stop)

    heap.settle_heap()  # its stalls were full collections of this heap (envoi.infra.heap)
    try:
        aio.run(main())
    finally:
        group.stop(timeout=30)
        group.close()
        services.close()
        if processes > 1:
            metrics_dir.release()


def _collector(group):
    """The group's children metrics, on its parent's /metrics."""
    from envoi.infra.metrics import GroupCollector

    return GroupCollector(group.name, group.status)


COMMANDS: list = [worker, webhooks]  # click commands/groups added to `envoi`
