"""The `envoi` command: run the region's processes and administer accounts, domains and keys.

Settings are read from the environment here, once, and passed down.
"""

from __future__ import annotations

import asyncio
import dataclasses
import functools
import json
import logging
import os
import signal
import sys

import click

from envoi.infra.settings import REGIONS, Settings, SettingsError


def _settings() -> Settings:
    return Settings.from_env()


#: `envoi --help` lists the commands in two sections: the long-running processes a region runs, and
#: the operator's administration commands (one group per noun). A command in neither shows under
#: "Other commands" (a test keeps that section empty).
PROCESSES = ("api", "tracking", "relay", "smtp", "inbound", "webhooks", "worker", "scheduler", "up", "sink")
ADMINISTRATION = ("migrate", "accounts", "domains", "keys", "credentials", "ips", "privacy", "logs", "users",
                  "billing", "encryption", "tls", "doctor")


METRICS_BIND_HELP = ("Serve /metrics on HOST:PORT (e.g. a private address Prometheus scrapes); "
                     "replaces --metrics-port.")


def _user_error(ex: Exception) -> str | None:
    """The one line to print for an error the operator can act on (bad input, something missing, the
    database down), or None for a bug (which keeps its traceback). The CLI's only translation."""
    from envoi.infra.db import NoConnection, is_unavailable
    from envoi.infra.errors import EnvoiError

    if isinstance(ex, SettingsError):
        return str(ex)
    if is_unavailable(ex):
        # psycopg's messages run over several lines (server address, hints): the first says what failed.
        first = next((line.strip() for line in str(ex).splitlines() if line.strip()), type(ex).__name__)
        why = " (envoi -v logs why)" if isinstance(ex, NoConnection) else ""
        return f"database unavailable: {first}{why}"
    if isinstance(ex, EnvoiError):
        return ex.message
    return None


class _Main(click.Group):
    """Every command's known errors end it with one clear line (click prints "Error: ..." and exits 1)
    instead of a traceback; `--help` groups the commands into processes and administration."""

    def invoke(self, ctx: click.Context):
        try:
            return super().invoke(ctx)
        except Exception as ex:
            message = _user_error(ex)
            if message is None:
                raise
            raise click.ClickException(message) from None

    def list_commands(self, ctx: click.Context) -> list[str]:
        order = {name: i for i, name in enumerate(PROCESSES + ADMINISTRATION)}
        return sorted(self.commands, key=lambda name: (order.get(name, len(order)), name))

    def format_commands(self, ctx: click.Context, formatter: click.HelpFormatter) -> None:
        commands = [(name, command) for name in self.list_commands(ctx)
                    if (command := self.get_command(ctx, name)) is not None and not command.hidden]
        limit = formatter.width - 4 - max((len(name) for name, _ in commands), default=0)  # one line each
        sections: dict[str, list[tuple[str, str]]] = {"Processes": [], "Administration": [], "Other commands": []}
        for name, command in commands:
            section = "Processes" if name in PROCESSES else "Administration" if name in ADMINISTRATION \
                else "Other commands"
            sections[section].append((name, command.get_short_help_str(limit)))
        for title, rows in sections.items():
            if rows:
                with formatter.section(title):
                    formatter.write_dl(rows)


def _use_region(region: str | None) -> None:
    """Choose the region (--region over ENVOI_REGION) and, when nothing names a database for it, reach the
    region's running `envoi up` stack: it writes its settings to var/<region>/stack.env (ENVOI_DEV_VAR
    overrides var) and removes them when it stops. Variables already set keep their value."""
    from envoi.dev.up import running_stack_env

    if region is not None:
        os.environ["ENVOI_REGION"] = region
    region = os.environ.get("ENVOI_REGION", "eu").lower()
    if region not in REGIONS or os.environ.get(f"ENVOI_DATABASE_URL_{region.upper()}") \
            or os.environ.get("DATABASE_URL"):
        return
    for name, value in running_stack_env(os.environ.get("ENVOI_DEV_VAR", "var"), region).items():
        os.environ.setdefault(name, value)


def _services(pool_size: int = 4):
    from envoi import runtime

    services = runtime.build(_settings(), pool_size=pool_size)
    # Closed when the command ends, error or not (a pool left to the garbage collector warns).
    click.get_current_context().call_on_close(services.close)
    return services


@click.group(cls=_Main)
@click.version_option(package_name="envoi", prog_name="envoi", message="%(prog)s %(version)s")
@click.option("-v", "--verbose", is_flag=True, help="Log debug output.")
@click.option("--region", type=click.Choice(REGIONS), default=None,
              help="The region to act on [ENVOI_REGION, eu]: its settings, or its running `envoi up` stack.")
@click.pass_context
def main(ctx: click.Context, verbose: bool, region: str | None) -> None:
    """Envoi: a self-hosted transactional email platform with a Mailgun-compatible API."""
    if ctx.invoked_subcommand not in ("up", "sink"):
        _use_region(region)
    from envoi.infra import log_format
    from envoi.infra.settings import SettingsError
    from envoi.infra.settings import log_format as chosen_format

    try:
        fmt = chosen_format(os.environ)
    except SettingsError as ex:
        raise click.ClickException(str(ex)) from None
    log_format.configure(logging.DEBUG if verbose else logging.INFO, fmt, ctx.invoked_subcommand or "envoi")
    if ctx.invoked_subcommand in ADMINISTRATION and not verbose:
        # The pool logs every failed connection attempt: an admin command reports the outage once.
        pool_log = logging.getLogger("psycopg.pool")
        ctx.call_on_close(functools.partial(pool_log.setLevel, pool_log.level))
        pool_log.setLevel(logging.ERROR)


@main.command()
def migrate() -> None:
    """Apply database migrations (idempotent)."""
    from envoi.infra.migrate import ensure_database
    from envoi.infra.migrate import migrate as run

    settings = _settings()
    # Straight to Postgres: the migration lock is a session-level advisory lock (not through a pooler).
    dsn = settings.database_direct_url or settings.database_url
    ensure_database(dsn)
    applied = run(dsn, settings.secret_key, settings.region, key_id=settings.secret_key_id,
                  previous_keys=settings.previous_secret_keys, lookup_key=settings.lookup_key)
    click.echo(f"applied: {', '.join(applied)}" if applied else "database is up to date")


@main.command()
@click.option("--bind", default="127.0.0.1:8025", show_default=True, help="Listen host:port.")
@click.option("--workers", default=2, show_default=True, type=int, help="Worker processes.")
@click.option("--threads", default=16, show_default=True, type=int,
              help="Threads per worker; a live event stream holds one (at most ENVOI_STREAM_MAX_CLIENTS).")
@click.option("--access-log/--no-access-log", default=False, show_default=True,
              help="Log every request (client address, path with the domain) to stdout.")
@click.option("--metrics-port", default=0, type=int,
              help="Serve /metrics (all workers summed) on ENVOI_METRICS_HOST:PORT, a private listener apart "
                   "from --bind (which never serves it); 0: off.")
@click.option("--metrics-bind", default="", help=METRICS_BIND_HELP)
def api(bind: str, workers: int, threads: int, access_log: bool, metrics_port: int, metrics_bind: str) -> None:
    """Serve the HTTP API with granian (or gunicorn: ENVOI_API_SERVER=gunicorn)."""
    _gunicorn(bind, workers, threads, access_log, "envoi.wsgi:get_app()", [], metrics_bind, metrics_port)


@main.command()
@click.option("--bind", default="0.0.0.0:443", show_default=True, help="Listen host:port.")
@click.option("--workers", default=2, show_default=True, type=int, help="Worker processes.")
@click.option("--threads", default=16, show_default=True, type=int, help="Threads per worker.")
@click.option("--access-log/--no-access-log", default=False, show_default=True, help="Log every request.")
@click.option("--metrics-port", default=0, type=int,
              help="Serve /metrics (all workers summed) on ENVOI_METRICS_HOST:PORT; 0: off.")
@click.option("--metrics-bind", default="", help=METRICS_BIND_HELP)
def tracking(bind: str, workers: int, threads: int, access_log: bool, metrics_port: int, metrics_bind: str) -> None:
    """Serve the tracking links (/o /c /u /l) on the domains' tracking hosts (email.<domain> CNAMEs).

    HTTPS with ENVOI_TRACKING_TLS_CERT/KEY (and per-host certificates from ENVOI_TRACKING_TLS_DIR,
    chosen by SNI), plain HTTP without. Which account a hit belongs to is decided by its signed token,
    never by the Host it came in on."""
    settings = _settings()
    tls = ["--certfile", settings.tracking_tls_cert, "--keyfile", settings.tracking_tls_key] \
        if settings.tracking_tls_cert else []
    for path in filter(None, (settings.tracking_tls_cert, settings.tracking_tls_key)):
        if not os.path.isfile(path):
            raise click.ClickException(f"tracking TLS file {path} does not exist")
    _gunicorn(bind, workers, threads, access_log, "envoi.wsgi:get_tracking_app()", tls, metrics_bind, metrics_port)


def _gunicorn(bind: str, workers: int, threads: int, access_log: bool, app: str, extra: list[str],
              metrics_bind: str, metrics_port: int) -> None:
    """Serve `app` with the HTTP server ENVOI_API_SERVER names (granian unless gunicorn; gunicorn for
    `envoi tracking` with per-host certificates)."""
    from envoi.billing import plans
    from envoi.infra import metrics_dir

    # Refuse to start (one line, exit 1) before gunicorn's workers would fail one by one: bad settings, a
    # plans file that cannot be used, stores stamped with another region, data sealed under a key not given.
    settings = _settings()
    plans.load(settings.billing_plans)
    # prometheus-client's multiprocess mode: every worker writes its metrics under this directory
    # (the library reads the variable when first imported, so it is chosen before anything imports it).
    metrics_dir.use()
    from envoi import runtime
    from envoi.gunicorn_conf import METRICS_BIND, PROCESS

    runtime.check_stores(settings)
    runtime.check_sealing_keys(settings)
    process = "tracking" if "tracking" in app else "api"
    os.environ[PROCESS] = process
    metrics_address = settings.metrics_address(metrics_bind, metrics_port)
    # Granian cannot choose a certificate by SNI: per-host certificates keep `envoi tracking` on gunicorn.
    sni = bool(settings.tracking_tls_dir) and "--certfile" in extra
    if settings.api_server == "granian" and not sni:
        _granian(settings, bind, workers, threads, access_log, app, extra, metrics_address)
        return
    os.environ[METRICS_BIND] = metrics_address  # served by gunicorn's master (envoi.gunicorn_conf)
    # Off by default: a request log is personal data (addresses, customers' domains) kept wherever
    # stdout goes, and formatting it was ~6% of the API's CPU per send. Events are the audit trail.
    argv = [sys.executable, "-m", "gunicorn", "--bind", bind, "--workers", str(workers), "--threads",
            str(threads), "--worker-class", "gthread", "--log-level", "warning", "-c", "python:envoi.gunicorn_conf",
            *(["--access-logfile", "-"] if access_log else []), *extra, app]
    os.execv(sys.executable, argv)


def _granian(settings, bind: str, workers: int, threads: int, access_log: bool, app: str, extra: list[str],
             metrics_address: str) -> None:
    from envoi.granian_server import serve_app
    from envoi.infra import health
    from envoi.infra.metrics import parse_bind

    host, port = parse_bind(bind)
    tls = (settings.tracking_tls_cert, settings.tracking_tls_key or settings.tracking_tls_cert) if extra else None
    target = "envoi.granian_server:tracking" if "tracking" in app else "envoi.granian_server:api"
    serve_app(target, host, port, workers, threads, access_log, metrics_address,
              lambda children: health.for_settings(settings, started=True, children=children), tls)


@main.command()
@click.option("--metrics-port", default=9125, show_default=True, type=int,
              help="Serve /metrics on ENVOI_METRICS_HOST:PORT (127.0.0.1); 0 disables it.")
@click.option("--metrics-bind", default="", help=METRICS_BIND_HELP)
def relay(metrics_port: int, metrics_bind: str) -> None:
    """Run the delivery engine: due recipients -> DKIM -> MX -> SMTP."""
    from envoi import runtime
    from envoi.infra import aio, heap

    runtime.check_sealing_keys(_settings())
    from envoi.infra import health as health_infra

    services = _services(pool_size=6)
    health = health_infra.for_settings(services.settings)
    if address := services.settings.metrics_address(metrics_bind, metrics_port):
        services.metrics.serve(address, health)
    engine = runtime.build_relay(services)

    def stop() -> None:
        health.mark_stopping()
        engine.stop()
        services.doorbell.ring_now()  # ends the idle wait on Redis now rather than at its timeout

    async def run() -> None:
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGINT, signal.SIGTERM):
            loop.add_signal_handler(sig, stop)
        loop.add_signal_handler(signal.SIGHUP, engine.reload_shaping)  # sessions open stay open
        health.mark_started()
        await engine.run()

    click.echo(f"relay: region {services.settings.region}, delivering"
               + (f" via {services.settings.smtp_route[0]}:{services.settings.smtp_route[1]}"
                  if services.settings.smtp_route else " to MX hosts"))
    heap.settle_heap()  # started: the heap out of the cyclic collector (envoi.infra.heap)
    aio.run(run())
    services.close()


@main.command(short_help="Run periodic jobs: purges, partition upkeep, sweepers.")
@click.option("--once", is_flag=True, help="Run every task once and exit.")
@click.option("--metrics-port", default=0, type=int,
              help="Serve /metrics (task runs, last successes) on ENVOI_METRICS_HOST:PORT; 0: off.")
@click.option("--metrics-bind", default="", help=METRICS_BIND_HELP)
def scheduler(once: bool, metrics_port: int, metrics_bind: str) -> None:
    """Run periodic jobs: retention purges, partition upkeep, sweepers."""
    import time

    from envoi import runtime
    from envoi.infra import heap

    runtime.check_sealing_keys(_settings())
    from envoi.infra import health as health_infra

    services = _services(pool_size=2)
    health = health_infra.for_settings(services.settings)
    if address := services.settings.metrics_address(metrics_bind, metrics_port):
        services.metrics.serve(address, health)
    tasks = runtime.periodic_tasks(services)
    due = {task.name: 0.0 for task in tasks}
    log = logging.getLogger("envoi.scheduler")
    stopping = []

    def on_term(*_) -> None:
        # A task still running 1.5 s later is interrupted (its transaction rolls back; every task is
        # idempotent and runs again at the next start), so the scheduler is gone within 2 s.
        stopping.append(1)
        health.mark_stopping()
        signal.setitimer(signal.ITIMER_REAL, 1.5)

    def on_alarm(*_) -> None:
        raise SystemExit(0)

    signal.signal(signal.SIGTERM, on_term)
    signal.signal(signal.SIGALRM, on_alarm)
    heap.settle_heap()
    health.mark_started()
    try:
        while not stopping:
            now = time.monotonic()
            for task in tasks:
                if due[task.name] <= now:
                    try:
                        result = task.run()
                        log.info("%s: %s", task.name, result)
                        services.metrics.task_runs.labels(task.name, "success").inc()
                        services.metrics.task_last_success.labels(task.name).set(time.time())
                    except Exception:  # one failing job must not stop the others
                        log.exception("%s failed", task.name)
                        services.metrics.task_runs.labels(task.name, "error").inc()
                    due[task.name] = now + task.every_seconds
            if once:
                break
            time.sleep(1)
    except KeyboardInterrupt:
        pass
    finally:
        signal.setitimer(signal.ITIMER_REAL, 0)
        services.close()


@main.command(short_help="Run the dev sink: a catch-all MX keeping what it receives.")
@click.option("--smtp", "smtp_addr", default="127.0.0.1:2525", show_default=True, help="SMTP listen host:port")
@click.option("--http", "http_addr", default="127.0.0.1:8026", show_default=True, help="web/JSON host:port")
def sink(smtp_addr: str, http_addr: str) -> None:
    """Run the dev sink: a catch-all MX that keeps what it receives (JSON at /messages)."""
    from envoi.dev.sink import serve

    smtp_host, _, smtp_port = smtp_addr.rpartition(":")
    http_host, _, http_port = http_addr.rpartition(":")
    serve(smtp_host, int(smtp_port), http_host, int(http_port))


_PORT_OPTIONS = (("api", "the HTTP API"), ("smtp", "SMTP submission, STARTTLS"), ("smtps", "SMTP submission, implicit TLS"),
                 ("inbound", "bounce/FBL listener"), ("relay-metrics", "the relay's /metrics"),
                 ("sink-smtp", "the dev sink's SMTP"), ("sink-http", "the dev sink's web/JSON"),
                 ("postgres", "the private Postgres"), ("redis", "the private Redis"))


def _port_options(fn):
    for name, what in reversed(_PORT_OPTIONS):
        fn = click.option(f"--{name}-port", type=int, default=None, help=f"Port of {what} (default per region).")(fn)
    return fn


@main.command(short_help="Start a whole dev region (or two side by side), all mail routed to the dev sink.")
@click.option("--var", "var_dir", default="var", show_default=True,
              help="Where private state lives: one directory per region, var/eu and var/us.")
@click.option("--region", type=click.Choice(REGIONS), default=None,
              help="The region to start [ENVOI_REGION, eu]; a second `envoi up --region us` runs beside the first.")
@click.option("--regions", default=None, help="Several regions side by side in one command, e.g. eu,us.")
@_port_options
def up(var_dir: str, region: str | None, regions: str | None, **ports) -> None:
    """Start a whole region for development, with all mail routed to the dev sink. Each region has its own
    Postgres database, Redis, ports and var/<region>/ files; the default ports never collide (EU: API 8025,
    SMTP 2587/2465, sink 2525/8026, inbound 2526, metrics 9125, Postgres 55432, Redis 56379; US: each + 100)."""
    from envoi.dev.up import REGION_PORTS, run_regions, run_up

    given = {name.removesuffix("_port"): value for name, value in ports.items() if value is not None}
    if regions is not None:
        chosen = [r.strip().lower() for r in regions.split(",") if r.strip()]
        if region or given or not chosen or any(r not in REGIONS for r in chosen) or len(set(chosen)) != len(chosen):
            raise click.UsageError(f"--regions takes distinct regions among {', '.join(REGIONS)} (e.g. eu,us), "
                                   "without --region or port options (each region uses its default ports)")
        sys.exit(run_regions(var_dir, chosen))
    region = region or os.environ.get("ENVOI_REGION", "eu").lower()
    if region not in REGIONS:
        raise click.UsageError(f"ENVOI_REGION must be one of {', '.join(REGIONS)}")
    sys.exit(run_up(var_dir, region=region, ports=dataclasses.replace(REGION_PORTS[region], **given)))


# administration -------------------------------------------------------------------------------
@main.group()
def accounts() -> None:
    """Manage accounts."""


@accounts.command("create")
@click.argument("name")
@click.option("--plan", default="free", show_default=True, help="Billing plan of the account.")
def accounts_create(name: str, plan: str) -> None:
    """Create an account called NAME in this region; prints its id as JSON."""
    row = _services().accounts.create_account(name, plan)
    click.echo(json.dumps({"id": row["id"], "name": row["name"], "region": row["region"]}))


@accounts.command("list")
@click.option("--state", type=click.Choice(["active", "suspended", "restricted", "closed"]), default=None,
              help="Only the accounts in this state.")
def accounts_list(state: str | None) -> None:
    """List the region's accounts: id, name, region, plan, state, domains, users, recipients accepted in
    the last 30 days, and the suspension reason."""
    for row in _services().accounts.list_accounts(state):
        click.echo(f"{row['id']}\t{row['name']}\t{row['region']}\t{row['plan']}\t{row['state']}\t"
                   f"{row['domains']}\t{row['users']}\t{row['accepted_30d']}\t{row['state_reason']}")


@accounts.command("suspend")
@click.argument("account_id", type=int)
@click.option("--reason", required=True, help="Why: shown to the account's users in the dashboard.")
def accounts_suspend(account_id: int, reason: str) -> None:
    """Stop ACCOUNT_ID sending (API 403, SMTP 550 5.7.1) at once in every process; its keys still read and
    its users still sign in. Mail it already queued is delivered."""
    row = _services().accounts.suspend(account_id, reason, actor="cli")
    click.echo(json.dumps({"id": row["id"], "state": row["state"], "reason": row["state_reason"]}))


@accounts.command("reinstate")
@click.argument("account_id", type=int)
def accounts_reinstate(account_id: int) -> None:
    """Let a suspended ACCOUNT_ID send again."""
    row = _services().accounts.reinstate(account_id, actor="cli")
    click.echo(json.dumps({"id": row["id"], "state": row["state"]}))


@accounts.command("close")
@click.argument("account_id", type=int)
@click.option("--yes", is_flag=True, help="Confirm: closing is final.")
def accounts_close(account_id: int, yes: bool) -> None:
    """Close ACCOUNT_ID for good (the customer deleted it): its keys, SMTP logins and users stop working at
    once and its mail still waiting is cancelled. Its data is purged ENVOI_ACCOUNT_PURGE_DELAY later."""
    if not yes:
        raise click.UsageError("closing an account is final: pass --yes")
    row = _services().privacy.close_account(account_id, actor="cli")
    click.echo(json.dumps({"id": row["id"], "state": row["state"], "closed_at": row["closed_at"].isoformat(),
                           "cancelled_recipients": row["cancelled_recipients"]}))


@main.group()
def domains() -> None:
    """Manage sending domains."""


@domains.command("add")
@click.argument("account_id", type=int)
@click.argument("name")
@click.option("--selector", default=None, help="DKIM selector (default: envoi)")
@click.option("--key-size", default=2048, show_default=True, type=int, help="RSA DKIM key bits: 1024, 2048 or 4096.")
@click.option("--verified", is_flag=True, help="The operator vouches for the domain: it may send at once.")
def domains_add(account_id: int, name: str, selector: str | None, key_size: int, verified: bool) -> None:
    """Add the sending domain NAME to account ACCOUNT_ID and print the DNS records to publish."""
    services = _services()
    row = services.accounts.add_domain(account_id, name, dkim_selector=selector, dkim_key_size=key_size,
                                       verified=verified)
    then = "" if row["state"] == "active" else f", then run `envoi domains verify {row['name']}`"
    click.echo(f"domain {row['name']} added to account {account_id} ({row['state']}); publish these records{then}:")
    records = _domain_records(services, row)
    for rec in records["sending_dns_records"] + records["receiving_dns_records"]:
        click.echo(f"  {rec['record_type']:5} {rec['name']}  {rec.get('priority', '')} {rec['value']}")


@domains.command("verify")
@click.argument("name")
@click.option("--account", "account_id", type=int, default=None, help="The account holding it (default: any).")
@click.option("--trust", is_flag=True, help="Mark it verified without a DNS lookup (the operator vouches).")
def domains_verify(name: str, account_id: int | None, trust: bool) -> None:
    """Look the domain's SPF and DKIM records up in DNS; when found, the domain may send to anyone."""
    services = _services()
    row = services.accounts.get_domain(name, account_id)
    row, records = services.accounts.verify_domain(row["account_id"], name, _domain_records(services, row),
                                                   services.settings.dns_resolver, trust=trust)
    for rec in records["sending_dns_records"] + records["receiving_dns_records"]:
        click.echo(f"  {rec['valid']:8} {rec['record_type']:5} {rec['name']}")
    click.echo(f"domain {row['name']} (account {row['account_id']}): {row['state']}")
    if row["state"] != "active":
        sys.exit(1)


@domains.command("list")
@click.option("--account-id", type=int, required=True, help="The account whose domains to list.")
def domains_list(account_id: int) -> None:
    """List an account's sending domains: name, state, creation time."""
    services = _services()
    services.accounts.get_account(account_id)  # a missing account is an error, not an empty list
    _, rows = services.accounts.list_domains(account_id, limit=2**31 - 1)
    for row in rows:
        click.echo(f"{row['name']}\t{row['state']}\t{row['created_at']:%Y-%m-%d %H:%M}")


@domains.command("remove")
@click.argument("name")
@click.option("--account-id", type=int, required=True, help="The account holding the domain.")
@click.confirmation_option(prompt="Remove the domain with its SMTP logins and domain keys?")
def domains_remove(name: str, account_id: int) -> None:
    """Remove the sending domain NAME: its SMTP logins and domain-scoped keys stop working at once."""
    _services().accounts.delete_domain(account_id, name)
    click.echo(f"domain {name} removed from account {account_id}")


def _domain_records(services, row: dict) -> dict:
    from envoi.accounts.service import dns_targets

    return services.accounts.domain_records(row, dns_targets(services.settings))


@main.group()
def keys() -> None:
    """Manage API keys (the secret is shown once)."""


@keys.command("create")
@click.argument("account_id", type=int, required=False)
@click.option("--role", type=click.Choice(["admin", "developer", "sending", "basic", "operator"]), default="admin",
              show_default=True, help="admin: the whole account; developer: all but keys; basic: read-only; "
              "sending: one domain's sends; operator: no account, runs the platform (IPs).")
@click.option("--domain", default=None, help="Limit the key to this domain (a sending key needs one).")
@click.option("--description", default="", help="A note to recognise the key by.")
def keys_create(account_id: int | None, role: str, domain: str | None, description: str) -> None:
    """Create an API key for account ACCOUNT_ID (none for an operator key); prints the secret once."""
    key, secret = _services().accounts.create_key(account_id, role, domain, description)
    click.echo(json.dumps({"id": key["id"], "role": key["role"], "secret": secret}))


@keys.command("list")
@click.option("--account-id", type=int, default=None, help="The account whose keys to list (default: the operator keys).")
def keys_list(account_id: int | None) -> None:
    """List API keys: id, role, domain, last 4 characters, description (never the secret)."""
    services = _services()
    if account_id is not None:
        services.accounts.get_account(account_id)
    for row in services.accounts.list_keys(account_id):
        click.echo(f"{row['id']}\t{row['role']}\t{row['domain_name'] or '-'}\t...{row['hint']}\t{row['description']}")


@keys.command("revoke")
@click.argument("key_id")
def keys_revoke(key_id: str) -> None:
    """Revoke the API key KEY_ID: every process refuses it from the next request on."""
    _services().accounts.delete_key(None, key_id)
    click.echo(f"key {key_id} revoked")


@main.group()
def credentials() -> None:
    """Manage SMTP credentials."""


@credentials.command("create")
@click.argument("account_id", type=int)
@click.argument("domain")
@click.argument("login")
@click.password_option(help="The SMTP password (5 to 32 characters); asked for when not given.")
def credentials_create(account_id: int, domain: str, login: str, password: str) -> None:
    """Create the SMTP login LOGIN (an address at DOMAIN) for account ACCOUNT_ID."""
    row = _services().accounts.create_credential(account_id, domain, login, password)
    click.echo(f"created SMTP login {row['login']}")


@credentials.command("list")
@click.option("--account-id", type=int, required=True, help="The account holding the domain.")
@click.option("--domain", required=True, help="The sending domain whose SMTP logins to list.")
def credentials_list(account_id: int, domain: str) -> None:
    """List a domain's SMTP logins and when each was created."""
    for row in _services().accounts.list_credentials(account_id, domain):
        click.echo(f"{row['login']}\t{row['created_at']:%Y-%m-%d %H:%M}")


@credentials.command("delete")
@click.argument("login")
@click.option("--account-id", type=int, required=True, help="The account holding the domain.")
@click.option("--domain", required=True, help="The sending domain of the login.")
def credentials_delete(login: str, account_id: int, domain: str) -> None:
    """Delete the SMTP login LOGIN (an address at the domain, or its local part)."""
    _services().accounts.delete_credential(account_id, domain, login)
    click.echo(f"deleted SMTP login {login if '@' in login else f'{login}@{domain}'}")


@main.group(short_help="Data-subject requests: export or erase an address.")
def privacy() -> None:
    """Data-subject requests: export or erase everything held about an address."""


@privacy.command("export")
@click.argument("account_id", type=int)
@click.argument("address")
def privacy_export(account_id: int, address: str) -> None:
    """Print as JSON everything account ACCOUNT_ID holds about ADDRESS."""
    click.echo(json.dumps(_services().privacy.export(account_id, address), indent=2, default=str))


@privacy.command("erase")
@click.argument("account_id", type=int)
@click.argument("address")
@click.confirmation_option(prompt="Erase this address's messages, events and webhook payloads?")
def privacy_erase(account_id: int, address: str) -> None:
    """Erase ADDRESS from account ACCOUNT_ID's messages, events and webhook payloads."""
    click.echo(json.dumps(_services().privacy.erase(account_id, address), indent=2))


def _register_commands() -> None:
    from envoi.commands import (
        billing,
        bounces,
        dkim,
        doctor,
        encryption,
        ips,
        lifecycle,
        logs,
        smtp,
        stripe_billing,
        tls,
        users,
        webhooks,
    )

    for module in (smtp, bounces, webhooks, ips, logs, users, billing, stripe_billing, encryption, tls, doctor):
        for command in module.COMMANDS:
            main.add_command(command)
    for command in dkim.DOMAIN_COMMANDS:
        domains.add_command(command)
    for command in lifecycle.ACCOUNT_COMMANDS:
        accounts.add_command(command)


_register_commands()

if __name__ == "__main__":
    main()
