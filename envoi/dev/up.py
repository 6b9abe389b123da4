"""`envoi up`: a whole region on one machine, with all outbound mail routed to the dev sink."""

from __future__ import annotations

import base64
import os
import secrets
import sys
import urllib.request
from dataclasses import dataclass
from pathlib import Path

from envoi.dev import stack
from envoi.infra.migrate import ensure_database, migrate
from envoi.infra.settings import Settings

DEMO_DOMAIN = "demo.envoi.test"
DEMO_ADMIN = f"admin@{DEMO_DOMAIN}"
DEMO_OPERATOR = "operator@envoi.test"


def _secret_key(var: Path, name: str = "secret.key") -> str:
    path = var / name
    if not path.exists():
        path.write_text(base64.b64encode(secrets.token_bytes(32)).decode())
        path.chmod(0o600)
    return path.read_text().strip()


def _port_open(port: int) -> bool:
    import socket

    try:
        with socket.create_connection(("127.0.0.1", port), timeout=1):
            return True
    except OSError:
        return False


def _http_ok(url: str) -> bool:
    try:
        with urllib.request.urlopen(url, timeout=1) as resp:
            return resp.status == 200
    except OSError:
        return False


def _demo(settings: Settings, var: Path) -> dict:
    """Create (or find again) the demo account, domain, API key and SMTP login."""
    from envoi import runtime
    from envoi.accounts.errors import NotFound

    env_file = var / "demo.env"
    previous = _read_env(env_file)
    services = runtime.build(settings, pool_size=2)
    try:
        key = previous.get("ENVOI_API_KEY")
        principal = services.accounts.authenticate_key(key) if key else None
        try:
            domain = services.accounts.get_domain(DEMO_DOMAIN)
        except NotFound:
            domain = None
        if principal is None or domain is None or domain["account_id"] != principal.account_id:
            account = services.accounts.create_account("demo")
            if domain is not None:
                services.accounts.delete_domain(domain["account_id"], DEMO_DOMAIN)
            # Verified at once: its DNS is this machine's and every message goes to the dev sink.
            domain = services.accounts.add_domain(account["id"], DEMO_DOMAIN, verified=True)
            _, key = services.accounts.create_key(account["id"], "admin", description="envoi up demo")
            password = secrets.token_urlsafe(12)[:16]
            services.accounts.create_credential(account["id"], DEMO_DOMAIN, f"postmaster@{DEMO_DOMAIN}", password)
        else:
            password = previous.get("ENVOI_SMTP_PASSWORD", "")
            if domain["state"] == "unverified":
                services.accounts.set_domain_state(domain["id"], "active")
        people = _demo_people(services, domain["account_id"], previous)
        return {"ENVOI_API_KEY": key, "ENVOI_DOMAIN": DEMO_DOMAIN, "ENVOI_SMTP_USER": f"postmaster@{DEMO_DOMAIN}",
                "ENVOI_SMTP_PASSWORD": password, "ENVOI_ACCOUNT_ID": str(domain["account_id"]), **people}
    finally:
        services.close()


def _demo_people(services, account_id: int, previous: dict) -> dict:
    """The dashboard's demo sign-ins: an admin of the demo account and a platform operator. A password
    kept in var/<region>/demo.env is reused; a lost one is replaced (the person stays, their sessions end)."""
    people = {}
    for prefix, email, account in (("ENVOI_DASHBOARD", DEMO_ADMIN, account_id), ("ENVOI_OPERATOR", DEMO_OPERATOR, None)):
        password = previous.get(f"{prefix}_PASSWORD") or secrets.token_urlsafe(12)
        existing = next((u for u in services.users.list_users(account) if u["email"] == email), None)
        if existing is None:
            if account is None:
                services.users.create_operator(email, password, actor="envoi up")
            else:
                _, token = services.users.invite(account, email, "admin", actor="envoi up")
                services.users.accept_invitation(token, password)
        elif not previous.get(f"{prefix}_PASSWORD"):
            services.users.set_password(existing, password, actor="envoi up")
        people |= {f"{prefix}_EMAIL": email, f"{prefix}_PASSWORD": password}
    return people


def _read_env(path: Path) -> dict:
    if not path.exists():
        return {}
    pairs = (line.split("=", 1) for line in path.read_text().splitlines() if "=" in line)
    return {k.strip(): v.strip() for k, v in pairs}


@dataclass(frozen=True)
class Ports:
    """Every port one region's `envoi up` listens on (127.0.0.1), private Postgres and Redis included."""
    api: int
    smtp: int
    smtps: int
    inbound: int
    relay_metrics: int
    sink_smtp: int
    sink_http: int
    postgres: int
    redis: int


#: Each region's defaults: two regions side by side never collide (US is EU + 100; Postgres and Redis too).
REGION_PORTS = {
    "eu": Ports(api=8025, smtp=2587, smtps=2465, inbound=2526, relay_metrics=9125, sink_smtp=2525, sink_http=8026,
                postgres=55432, redis=56379),
    "us": Ports(api=8125, smtp=2687, smtps=2565, inbound=2626, relay_metrics=9225, sink_smtp=2625, sink_http=8126,
                postgres=55532, redis=56479),
}
READY_TIMEOUT = 90  # seconds a process may take to listen: two regions booting on a busy laptop are slow
STACK_ENV = "stack.env"  # what the CLI reads to reach a running stack (envoi.cli)
_OLD_LAYOUT = ("pg", "redis", "secret.key", "demo.env", "smtp-dev-cert.pem", "smtp-dev-key.pem")


def region_dir(var_root: str | Path, region: str) -> Path:
    return Path(var_root).resolve() / region


def _move_old_layout(var_root: Path) -> None:
    """Before two regions, the one region's files sat in var/ itself: they are the EU region's."""
    eu = var_root / "eu"
    if eu.exists() or not any((var_root / name).exists() for name in _OLD_LAYOUT):
        return
    eu.mkdir(parents=True)
    for name in _OLD_LAYOUT:
        if (var_root / name).exists():
            (var_root / name).rename(eu / name)
    print(f"envoi up: moved the EU region's files from {var_root} to {eu}", flush=True)


def _routing_secret(var_root: Path) -> str:
    """Shared by the regions of this machine (the peer lookups of envoi.accounts.routing)."""
    path = var_root / "routing.secret"
    if not path.exists():
        path.write_text(secrets.token_urlsafe(32))
        path.chmod(0o600)
    return path.read_text().strip()


def running_stack_env(var_root: str | Path, region: str) -> dict:
    """What `envoi up` of `region` wrote for the CLI under var/<region>/, while that stack runs ({} else)."""
    values = _read_env(region_dir(var_root, region) / STACK_ENV)
    try:
        os.kill(int(values.get("ENVOI_UP_PID", "")), 0)
    except (ValueError, ProcessLookupError, PermissionError):
        return {}  # no stack, or one that died without cleaning up
    return values


def run_regions(var_dir: str, regions: list[str]) -> int:
    """`envoi up --regions eu,us`: one `envoi up --region R` per region, side by side, stopped together. One
    after the other: starting both at once doubles the wait on a small machine, and the second learns the
    first's addresses from its stack.env."""
    sup = stack.Supervisor(grace=60)  # each region stops its own processes first
    try:
        for region in regions:
            sup.start(f"up-{region}", [sys.executable, "-m", "envoi.cli", "up", "--region", region, "--var", var_dir],
                      ready=lambda r=region: bool(running_stack_env(var_dir, r)), timeout=300)
        return sup.wait()
    except KeyboardInterrupt:
        return 0
    finally:
        sup.stop()


def run_up(var_dir: str, *, region: str = "eu", ports: Ports | None = None) -> int:
    ports = ports or REGION_PORTS[region]
    var_root = Path(var_dir).resolve()
    var_root.mkdir(parents=True, exist_ok=True)
    _move_old_layout(var_root)
    var = region_dir(var_root, region)
    var.mkdir(parents=True, exist_ok=True)
    if running := running_stack_env(var_root, region):
        print(f"envoi up: the {region.upper()} region is already running here (pid {running['ENVOI_UP_PID']}, "
              f"{running.get('ENVOI_PUBLIC_URL')}); start the other region with --region", file=sys.stderr)
        return 1
    stack_env = var / STACK_ENV
    sup = stack.Supervisor()
    try:
        up = region.upper()
        database = os.environ.get(f"ENVOI_DATABASE_URL_{up}") or (
            os.environ.get("DATABASE_URL") and stack.region_database_url(os.environ["DATABASE_URL"], region))
        redis_url = os.environ.get(f"ENVOI_REDIS_URL_{up}") or (
            os.environ.get("REDIS_URL") and stack.region_redis_url(os.environ["REDIS_URL"], region))
        if database:
            stack.create_database_if_reachable(database)  # US's database beside EU's on a shared server
        pg = stack.postgres_service(var, {"DATABASE_URL": database} if database else {}, ports.postgres,
                                    dbname="envoi" if region == "eu" else f"envoi_{region}")
        rd = stack.redis_service(var, {"REDIS_URL": redis_url} if redis_url else {}, ports.redis)
        for service in (pg, rd):
            if service.process is not None:
                sup.adopt(service.name, service.process)
        api_url = f"http://127.0.0.1:{ports.api}"
        sink_url = f"http://127.0.0.1:{ports.sink_http}"
        urls, smtp_hosts = {}, {}
        for other, defaults in REGION_PORTS.items():  # the other region: as its running stack wrote, or defaults
            peer = {} if other == region else running_stack_env(var_root, other)
            mine = ports if other == region else defaults
            urls[other] = peer.get("ENVOI_PUBLIC_URL", f"http://127.0.0.1:{mine.api}")
            smtp_hosts[other] = peer.get("ENVOI_SMTP_HOST_PORT", f"127.0.0.1:{mine.smtp}")
        env = {
            "ENVOI_REGION": region,
            f"ENVOI_DATABASE_URL_{up}": pg.url,
            f"ENVOI_REDIS_URL_{up}": rd.url,
            "ENVOI_SECRET_KEY": _secret_key(var),
            "ENVOI_LOOKUP_KEY": _secret_key(var, "lookup.key"),
            "ENVOI_PUBLIC_URL": api_url,
            # No tracking CNAMEs on a laptop: links clicked in the dev sink reach this stack's API.
            "ENVOI_TRACKING_HOST_MODE": "public_url",
            "ENVOI_OTHER_REGION_URLS": ",".join(f"{r}={u}" for r, u in urls.items()),
            "ENVOI_REGION_SMTP_HOSTS": ",".join(f"{r}={h}" for r, h in smtp_hosts.items()),
            "ENVOI_ROUTING_SECRET": _routing_secret(var_root),
            "ENVOI_SMTP_ROUTE": f"127.0.0.1:{ports.sink_smtp}",
            # Dev only: webhooks may reach receivers on this machine (the SSRF guard refuses loopback).
            "ENVOI_WEBHOOK_ALLOW": os.environ.get("ENVOI_WEBHOOK_ALLOW", "127.0.0.0/8,::1/128"),
        }
        settings = Settings.from_env(env)
        ensure_database(settings.database_url)
        migrate(settings.database_url, settings.secret_key, settings.region, key_id=settings.secret_key_id,
                previous_keys=settings.previous_secret_keys, lookup_key=settings.lookup_key)
        demo = _demo(settings, var)

        envoi = [sys.executable, "-m", "envoi.cli"]
        sup.start("sink", envoi + ["sink", "--smtp", f"127.0.0.1:{ports.sink_smtp}",
                                   "--http", f"127.0.0.1:{ports.sink_http}"],
                  env=env, ready=lambda: _http_ok(f"{sink_url}/stats"), timeout=READY_TIMEOUT)
        sup.start("api", envoi + ["api", "--bind", f"127.0.0.1:{ports.api}", "--access-log"], env=env,
                  ready=lambda: _http_ok(f"{api_url}/healthz"), timeout=READY_TIMEOUT)
        sup.start("relay", envoi + ["relay", "--metrics-port", str(ports.relay_metrics)], env=env)
        sup.start("scheduler", envoi + ["scheduler"], env=env)
        sup.start("worker", envoi + ["worker", "--processes", "1"], env=env)  # RQ: bulk address validation
        sup.start("webhooks", envoi + ["webhooks", "dispatch", "--processes", "1"], env=env)
        sup.start("inbound", envoi + ["inbound", "--port", str(ports.inbound), "--metrics-port", "0"], env=env)
        # SMTP submission on the dev ports, with a self-signed certificate made under var/<region>/.
        sup.start("smtp", envoi + ["smtp", "--dev", "--bind", "127.0.0.1", "--port", str(ports.smtp),
                                   "--smtps-port", str(ports.smtps), "--var", str(var)], env=env,
                  ready=lambda: _port_open(ports.smtp), timeout=READY_TIMEOUT)

        values = {"ENVOI_API_URL": api_url, **demo, "ENVOI_SINK_URL": sink_url,
                  "ENVOI_SMTP_HOST": "127.0.0.1", "ENVOI_SMTP_PORT": str(ports.smtp)}
        (var / "demo.env").write_text("".join(f"{k}={v}\n" for k, v in values.items()))
        # For the CLI (`envoi --region R accounts list`): this stack's stores and key, while it runs.
        cli = {**env, "ENVOI_SMTP_HOST_PORT": f"127.0.0.1:{ports.smtp}", "ENVOI_UP_PID": str(os.getpid())}
        stack_env.write_text("".join(f"{k}={v}\n" for k, v in cli.items()))
        stack_env.chmod(0o600)
        print(_banner(values, region, ports, var), flush=True)
        return sup.wait()
    except KeyboardInterrupt:
        return 0
    finally:
        stack_env.unlink(missing_ok=True)
        sup.stop()


def _shown(path: Path) -> str:
    try:
        return str(path.relative_to(Path.cwd()))
    except ValueError:
        return str(path)


def _banner(v: dict, region: str = "eu", ports: Ports = REGION_PORTS["eu"], var: Path = Path("var/eu")) -> str:
    curl = (f"curl -s --user 'api:{v['ENVOI_API_KEY']}' {v['ENVOI_API_URL']}/v3/{v['ENVOI_DOMAIN']}/messages "
            f"-F from='Demo <hello@{v['ENVOI_DOMAIN']}>' -F to=someone@example.test "
            f"-F subject='Hello from Envoi' -F text='It works.'")
    return "\n".join([
        "",
        f"Envoi is up (region {region.upper()}). Everything it sends lands in the dev sink.",
        f"  API       {v['ENVOI_API_URL']}   key {v['ENVOI_API_KEY']}",
        f"  domain    {v['ENVOI_DOMAIN']}",
        f"  dashboard {v['ENVOI_API_URL']}/dashboard   sign in as {v['ENVOI_DASHBOARD_EMAIL']}"
        f"  password {v['ENVOI_DASHBOARD_PASSWORD']}",
        f"            operator {v['ENVOI_OPERATOR_EMAIL']}  password {v['ENVOI_OPERATOR_PASSWORD']}",
        f"  dev sink  {v['ENVOI_SINK_URL']}  (received mail; JSON at /messages)",
        f"  SMTP      {v['ENVOI_SMTP_HOST']}:{v['ENVOI_SMTP_PORT']} (STARTTLS), :{ports.smtps} (TLS)"
        f"   login {v['ENVOI_SMTP_USER']}  password {v['ENVOI_SMTP_PASSWORD']}",
        f"  settings  {_shown(var / 'demo.env')}   admin CLI: envoi --region {region} accounts list",
        "",
        "Send a message:",
        f"  {curl}",
        "See it:",
        f"  curl -s {v['ENVOI_SINK_URL']}/messages | python3 -m json.tool | head -40",
        f"  curl -s --user 'api:{v['ENVOI_API_KEY']}' {v['ENVOI_API_URL']}/v3/{v['ENVOI_DOMAIN']}/events",
        "",
        "Ctrl-C stops everything.",
    ])
