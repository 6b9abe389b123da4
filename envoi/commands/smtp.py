"""`envoi smtp`: SMTP submission (587 STARTTLS, 465 implicit TLS), one or several server processes."""

from __future__ import annotations

import click


@click.command("smtp", short_help="Run SMTP submission (587 STARTTLS, 465 implicit TLS).")
@click.option("--bind", default=None, help="Listen address [ENVOI_SMTP_BIND, 127.0.0.1].")
@click.option("--port", type=int, default=None,
              help="STARTTLS submission port [ENVOI_SMTP_SUBMISSION_PORT, 587; --dev 2587]; 0 disables.")
@click.option("--smtps-port", type=int, default=None,
              help="Implicit-TLS port [ENVOI_SMTPS_PORT, 465; --dev 2465]; 0 disables.")
@click.option("--dev", is_flag=True, help="Use the dev ports 2587/2465 (a dev certificate is made if none is set).")
@click.option("--cert", default=None, help="PEM certificate chain [ENVOI_TLS_CERT].")
@click.option("--key", default=None, help="PEM private key [ENVOI_TLS_KEY].")
@click.option("--var", "var_dir", default="var", show_default=True,
              help="Where a self-signed dev certificate is kept when no certificate is configured.")
@click.option("--metrics-port", default=0, type=int,
              help="Serve /metrics on ENVOI_METRICS_HOST:PORT (0: off); with --processes N, all of them summed.")
@click.option("--metrics-bind", default="", help="Serve /metrics on HOST:PORT (replaces --metrics-port).")
@click.option("--processes", default=1, show_default=True, type=int,
              help="Server processes sharing the ports (SO_REUSEPORT), e.g. one per core.")
def smtp(bind, port, smtps_port, dev, cert, key, var_dir, metrics_port, metrics_bind, processes) -> None:
    """Run SMTP submission: 587 with STARTTLS and 465 with implicit TLS, AUTH with domain credentials."""
    import logging
    import os
    import signal
    import sys

    from envoi.infra import metrics_dir

    if processes > 1:  # each server process writes its metrics where the parent sums them
        metrics_dir.use()
    from envoi import runtime
    from envoi.infra.metrics import serve_directory
    from envoi.infra.settings import Settings
    from envoi.mta.submission.tls import dev_certificate

    if not logging.getLogger().isEnabledFor(logging.DEBUG):
        logging.getLogger("mail.log").setLevel(logging.WARNING)  # aiosmtpd logs every command (addresses) at INFO
    settings = Settings.from_env()
    metrics_at = settings.metrics_address(metrics_bind, metrics_port)
    cert, key = cert or settings.tls_cert, key or settings.tls_key
    if bool(cert) != bool(key):
        raise click.UsageError("set both a certificate and its key (--cert/--key or ENVOI_TLS_CERT/ENVOI_TLS_KEY)")
    if not cert:
        cert, key = dev_certificate(var_dir, settings.smtp_hostname or settings.helo_name)
        click.echo(f"smtp: no certificate configured; using the self-signed dev certificate {cert}")
    port = port if port is not None else (2587 if dev else settings.smtp_submission_port)
    smtps_port = smtps_port if smtps_port is not None else (2465 if dev else settings.smtps_port)
    bind = bind or settings.smtp_bind
    runtime.check_sealing_keys(settings)  # a connection opened and closed: nothing left across the fork
    if processes <= 1:
        _serve_smtp(settings, bind, port, smtps_port, cert, key, metrics_at, reuse_port=False)
        return
    # Fork before anything opens a pool, a socket or a thread; each child is a whole server, binding its
    # own SO_REUSEPORT sockets on the same ports, so a replacement for a dead one binds them as it did.
    from envoi.infra import process_group

    group = process_group.Group("smtp")
    served: list = []  # the parent's metrics listener, which a replacement child inherits: closed there

    def child() -> int:
        for server in served:
            server.socket.close()
        try:
            _serve_smtp(settings, bind, port, smtps_port, cert, key, 0, reuse_port=True)
            return 0
        except BaseException:
            logging.getLogger("envoi.smtp").exception("smtp: server process failed")
            return 1
        finally:
            sys.stdout.flush()

    for _ in range(processes):
        group.fork(child)
    if metrics_at:  # after the first forks: no thread is copied into those
        from envoi.infra import health
        from envoi.infra.metrics import GroupCollector

        # A dead child is forked again while this thread runs: the fork waits until it is not answering.
        served.append(serve_directory(metrics_at, os.environ[metrics_dir.VARIABLE],
                                      health.for_settings(settings, started=True, children=group.check),
                                      group=GroupCollector("smtp", group.status), guard=group.fork_lock))
    group.forward_signals(signal.SIGINT, signal.SIGTERM, signal.SIGHUP, mapping={signal.SIGINT: signal.SIGTERM})
    failed = group.wait_forked()
    group.close()
    metrics_dir.release()
    sys.exit(1 if failed else 0)


def _serve_smtp(settings, bind: str, port: int, smtps_port: int, cert: str, key: str, metrics_at: str | int, *,
                reuse_port: bool) -> None:
    import asyncio
    import logging
    import signal
    import ssl

    from envoi import runtime
    from envoi.infra import aio, heap
    from envoi.infra import health as health_infra
    from envoi.infra.crypto import certificate_expiry
    from envoi.mta.submission.server import SubmissionServer
    from envoi.mta.submission.tls import server_context

    log = logging.getLogger("envoi.smtp")
    services = runtime.build(settings, pool_size=10)  # the commit stage, AUTH threads, stats folding
    submission = runtime.build_submission(services)
    _raise_fd_limit(settings.smtp_max_connections + 256)  # each connection is a descriptor; leave room
    services.metrics.certificate_expiry.labels("smtp").set(certificate_expiry(cert))
    health = health_infra.for_settings(settings)
    if metrics_at:
        services.metrics.serve(metrics_at, health)
    context = server_context(cert, key)
    server = SubmissionServer(submission, context, host=bind,
                              port=port or None, smtps_port=smtps_port or None, reuse_port=reuse_port)

    def reload_certificate() -> None:
        """SIGHUP: the certificate files are read again into the same context, so new TLS sessions get
        the new certificate and sessions already open keep theirs (nothing is dropped)."""
        try:
            context.load_cert_chain(str(cert), str(key))
            services.metrics.certificate_expiry.labels("smtp").set(certificate_expiry(cert))
        except (OSError, ssl.SSLError, ValueError) as ex:
            log.error("smtp: reloading the TLS certificate %s failed, the previous one stays: %s", cert, ex)
        else:
            log.warning("smtp: TLS certificate reloaded from %s", cert)

    def stop() -> None:
        health.mark_stopping()
        server.request_stop()

    def ready() -> None:
        health.mark_started()
        click.echo(f"smtp: region {settings.region}, listening: "
                   + ", ".join(f"{name} {bind}:{p}" for name, p in server.ports.items()))

    async def run() -> None:
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGINT, signal.SIGTERM):
            loop.add_signal_handler(sig, stop)
        loop.add_signal_handler(signal.SIGHUP, reload_certificate)
        await server.serve(on_ready=ready)

    heap.settle_heap()  # started: the heap out of the cyclic collector (envoi.infra.heap)
    try:
        aio.run(run())
    finally:
        submission.close()
        services.close()


def _raise_fd_limit(wanted: int) -> None:
    """Lift the soft open-files limit (often 1024) toward `wanted`, as far as the hard limit allows."""
    import logging
    import resource

    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    target = wanted if hard == resource.RLIM_INFINITY else min(wanted, hard)
    if soft != resource.RLIM_INFINITY and soft < target:
        resource.setrlimit(resource.RLIMIT_NOFILE, (target, hard))
    if target < wanted:
        logging.getLogger("envoi.smtp").warning(
            "smtp: open-files limit %d is below ENVOI_SMTP_MAX_CONNECTIONS + 256 (%d)", target, wanted)


COMMANDS: list = [smtp]  # click commands/groups added to `envoi`
