"""`envoi worker`: webhook delivery (RQ workers and the outbox dispatcher) and bulk address validation."""

from __future__ import annotations

import click


@click.command("worker", short_help="Deliver webhooks and run bulk address validations (RQ workers).")
@click.option("--processes", default=6, show_default=True, type=int,
              help="RQ worker processes for the webhook queue (keep above ENVOI_WEBHOOK_PER_ACCOUNT "
                   "so one slow tenant can never hold every worker).")
@click.option("--no-dispatch", is_flag=True, help="Only run jobs; another process runs the dispatcher.")
@click.option("--burst", is_flag=True, help="Exit when nothing is due (dispatch and run rounds until then).")
@click.option("--metrics-port", default=0, type=int,
              help="Serve /metrics on 127.0.0.1:PORT (each extra process on the next port); 0: off.")
def worker(processes: int, no_dispatch: bool, burst: bool, metrics_port: int) -> None:
    """Run RQ workers delivering webhooks, plus the dispatcher that feeds them from the Postgres outbox.

    The dispatcher leases due outbox rows (at most ENVOI_WEBHOOK_PER_ENDPOINT in flight per host and
    ENVOI_WEBHOOK_PER_ACCOUNT per account) and
    enqueues one job each; it also re-enqueues rows whose job was lost (Redis flushed, worker killed).
    The same workers run bulk address validation batches (queue envoi-validation).
    """
    import subprocess
    import sys
    import threading

    from envoi import runtime
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
    if metrics_port:
        services.metrics.serve(metrics_port)
    children = []
    for n in range(1, processes):
        argv = [sys.executable, "-m", "envoi.cli", "worker", "--processes", "1", "--no-dispatch"]
        argv += ["--burst"] if burst else []
        argv += ["--metrics-port", str(metrics_port + n)] if metrics_port else []
        children.append(subprocess.Popen(argv))
    dispatcher = None
    if not no_dispatch:
        dispatcher = jobs.Dispatcher(services.webhooks, connection)
        if not burst:
            threading.Thread(target=dispatcher.run, kwargs={"on_backlog": services.metrics.webhook_backlog.set},
                             name="webhook-dispatcher", daemon=True).start()
    click.echo(f"worker: region {settings.region}, queue {services.webhooks.queue_name}, "
               f"{processes} process(es){'' if no_dispatch else ' + dispatcher'}")
    try:
        if burst:
            # Until nothing is due: dispatch a round (fairness caps apply), run it, repeat.
            while True:
                dispatched = dispatcher.run_once() if dispatcher is not None else 0
                jobs.worker(services.webhooks, connection, queues).work(burst=True, logging_level="WARNING")
                if not dispatched:
                    break
        else:
            jobs.worker(services.webhooks, connection, queues).work(logging_level="INFO", with_scheduler=False)
    finally:
        if dispatcher is not None:
            dispatcher.stop()
        for child in children:
            child.terminate()
        for child in children:
            child.wait(timeout=30)
        services.close()


COMMANDS: list = [worker]  # click commands/groups added to `envoi`
