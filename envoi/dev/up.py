"""`envoi up`: a whole region on one machine, with all outbound mail routed to the dev sink."""

from __future__ import annotations

import base64
import os
import secrets
import sys
import urllib.request
from pathlib import Path

from envoi.dev import stack
from envoi.infra.migrate import ensure_database, migrate
from envoi.infra.settings import Settings

DEMO_DOMAIN = "demo.envoi.test"
DEMO_ADMIN = f"admin@{DEMO_DOMAIN}"
DEMO_OPERATOR = "operator@envoi.test"
SMTP_DEV_PORT, SMTPS_DEV_PORT = 2587, 2465  # `envoi smtp --dev`


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
    kept in var/demo.env is reused; a lost one is replaced (the person stays, their sessions end)."""
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


def run_up(var_dir: str, *, api_port: int, sink_smtp_port: int, sink_http_port: int) -> int:
    var = Path(var_dir).resolve()
    var.mkdir(parents=True, exist_ok=True)
    sup = stack.Supervisor()
    try:
        pg = stack.postgres_service(var, os.environ)
        rd = stack.redis_service(var, os.environ)
        for service in (pg, rd):
            if service.process is not None:
                sup.adopt(service.name, service.process)
        api_url = f"http://127.0.0.1:{api_port}"
        sink_url = f"http://127.0.0.1:{sink_http_port}"
        env = {
            "ENVOI_REGION": os.environ.get("ENVOI_REGION", "eu"),
            "DATABASE_URL": pg.url,
            "REDIS_URL": rd.url,
            "ENVOI_SECRET_KEY": _secret_key(var),
            "ENVOI_LOOKUP_KEY": _secret_key(var, "lookup.key"),
            "ENVOI_PUBLIC_URL": api_url,
            "ENVOI_SMTP_ROUTE": f"127.0.0.1:{sink_smtp_port}",
            # Dev only: webhooks may reach receivers on this machine (the SSRF guard refuses loopback).
            "ENVOI_WEBHOOK_ALLOW": os.environ.get("ENVOI_WEBHOOK_ALLOW", "127.0.0.0/8,::1/128"),
        }
        settings = Settings.from_env(env)
        ensure_database(settings.database_url)
        migrate(settings.database_url, settings.secret_key, settings.lookup_key)
        demo = _demo(settings, var)

        envoi = [sys.executable, "-m", "envoi.cli"]
        sup.start("sink", envoi + ["sink", "--smtp", f"127.0.0.1:{sink_smtp_port}",
                                   "--http", f"127.0.0.1:{sink_http_port}"],
                  env=env, ready=lambda: _http_ok(f"{sink_url}/stats"))
        sup.start("api", envoi + ["api", "--bind", f"127.0.0.1:{api_port}", "--access-log"], env=env,
                  ready=lambda: _http_ok(f"{api_url}/healthz"))
        sup.start("relay", envoi + ["relay"], env=env)
        sup.start("scheduler", envoi + ["scheduler"], env=env)
        sup.start("worker", envoi + ["worker", "--processes", "2"], env=env)  # webhooks
        sup.start("inbound", envoi + ["inbound", "--port", "2526", "--metrics-port", "0"], env=env)  # DSN/ARF
        # SMTP submission on the dev ports, with a self-signed certificate made under var/.
        sup.start("smtp", envoi + ["smtp", "--dev", "--bind", "127.0.0.1", "--var", str(var)], env=env,
                  ready=lambda: _port_open(SMTP_DEV_PORT))

        values = {"ENVOI_API_URL": api_url, **demo, "ENVOI_SINK_URL": sink_url,
                  "ENVOI_SMTP_HOST": "127.0.0.1", "ENVOI_SMTP_PORT": str(SMTP_DEV_PORT)}
        (var / "demo.env").write_text("".join(f"{k}={v}\n" for k, v in values.items()))
        print(_banner(values), flush=True)
        return sup.wait()
    except KeyboardInterrupt:
        return 0
    finally:
        sup.stop()


def _banner(v: dict) -> str:
    curl = (f"curl -s --user 'api:{v['ENVOI_API_KEY']}' {v['ENVOI_API_URL']}/v3/{v['ENVOI_DOMAIN']}/messages "
            f"-F from='Demo <hello@{v['ENVOI_DOMAIN']}>' -F to=someone@example.test "
            f"-F subject='Hello from Envoi' -F text='It works.'")
    return "\n".join([
        "",
        f"Envoi is up (region {os.environ.get('ENVOI_REGION', 'eu')}). Everything it sends lands in the dev sink.",
        f"  API       {v['ENVOI_API_URL']}   key {v['ENVOI_API_KEY']}",
        f"  domain    {v['ENVOI_DOMAIN']}",
        f"  dashboard {v['ENVOI_API_URL']}/dashboard   sign in as {v['ENVOI_DASHBOARD_EMAIL']}"
        f"  password {v['ENVOI_DASHBOARD_PASSWORD']}",
        f"            operator {v['ENVOI_OPERATOR_EMAIL']}  password {v['ENVOI_OPERATOR_PASSWORD']}",
        f"  dev sink  {v['ENVOI_SINK_URL']}  (received mail; JSON at /messages)",
        f"  SMTP      {v['ENVOI_SMTP_HOST']}:{v['ENVOI_SMTP_PORT']} (STARTTLS), :{SMTPS_DEV_PORT} (TLS)"
        f"   login {v['ENVOI_SMTP_USER']}  password {v['ENVOI_SMTP_PASSWORD']}",
        "  settings  var/demo.env",
        "",
        "Send a message:",
        f"  {curl}",
        "See it:",
        f"  curl -s {v['ENVOI_SINK_URL']}/messages | python3 -m json.tool | head -40",
        f"  curl -s --user 'api:{v['ENVOI_API_KEY']}' {v['ENVOI_API_URL']}/v3/{v['ENVOI_DOMAIN']}/events",
        "",
        "Ctrl-C stops everything.",
    ])
