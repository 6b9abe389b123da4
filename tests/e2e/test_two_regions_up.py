"""`envoi up` twice, side by side: an EU and a US stack on one machine, each with its own database,
Redis, ports, sink and var/<region>/ files; the admin CLI reaches each without any variable set."""

from __future__ import annotations

import base64
import json
import os
import signal
import smtplib
import ssl
import subprocess
import sys
import time
import urllib.parse
import urllib.request
import uuid
from pathlib import Path

import psycopg
import pytest
import redis

from tests.support.processes import ROOT, Proc, envoi, free_port
from tests.support.region_routing import drop_database, free_redis_url
from tests.support.relay import wait_until

pytestmark = pytest.mark.e2e
REGIONS = ("eu", "us")
PORTS = ("api", "smtp", "smtps", "inbound", "relay-metrics", "sink-smtp", "sink-http")


def read_env(path) -> dict:
    return dict(line.split("=", 1) for line in path.read_text().splitlines() if "=" in line)


def bare_env(**extra) -> dict:
    """The environment with nothing of Envoi's: no ENVOI_* and no database or Redis URL."""
    env = {k: v for k, v in os.environ.items()
           if not k.startswith("ENVOI_") and k not in ("DATABASE_URL", "REDIS_URL")}
    return {**env, "PYTHONPATH": str(ROOT), "PYTHONUNBUFFERED": "1", **extra}


@pytest.fixture(scope="module")
def stacks(tmp_path_factory):
    """Both regions' `envoi up`, on free ports, their stores on the test servers (fresh ones)."""
    var = tmp_path_factory.mktemp("two-regions")
    stores = {r: (f"postgresql://postgres@127.0.0.1:5432/envoi_up_{r}_{uuid.uuid4().hex[:6]}", free_redis_url())
              for r in REGIONS}
    procs = []
    try:
        for region in ("us", "eu"):  # EU second: it learns the US stack's addresses from its stack.env
            dsn, redis_url = stores[region]
            ports = {name: free_port() for name in PORTS}
            argv = envoi("up", "--region", region, "--var", str(var / "var"),
                         *(arg for name, port in ports.items() for arg in (f"--{name}-port", str(port))))
            env = bare_env(**{f"ENVOI_DATABASE_URL_{region.upper()}": dsn,
                              f"ENVOI_REDIS_URL_{region.upper()}": redis_url})
            proc = Proc(f"up-{region}", argv, env, var)
            procs.append(proc)
            stack_env = var / "var" / region / "stack.env"
            proc.wait_ready(lambda f=stack_env: f.exists(), timeout=120)
        yield {"var": var, "stores": stores,
               "demo": {r: read_env(var / "var" / r / "demo.env") for r in REGIONS}}
    finally:
        left = [pid for proc in reversed(procs) for pid in stop_all(proc)]
        for dsn, redis_url in stores.values():
            redis.Redis.from_url(redis_url).flushdb()
            drop_database(dsn)
    assert not left, f"envoi up left processes running after Ctrl-C: {left}"


def stop_all(proc: Proc) -> list[str]:
    """Stop an `envoi up` as Ctrl-C would; the processes it left behind (killed here), if any."""
    children = subprocess.run(["pgrep", "-P", str(proc.popen.pid)], capture_output=True, text=True).stdout.split()
    proc.popen.send_signal(signal.SIGINT)
    proc.popen.wait(60)
    time.sleep(0.5)
    left = []
    for pid in children:
        try:
            if b"envoi" in Path(f"/proc/{pid}/cmdline").read_bytes():
                left.append(pid)
                os.kill(int(pid), signal.SIGKILL)
        except OSError:
            pass  # gone
    return left


def send(demo: dict, subject: str) -> str:
    body = urllib.parse.urlencode({"from": f"Demo <hello@{demo['ENVOI_DOMAIN']}>", "to": "someone@example.test",
                                   "subject": subject, "text": "Which region am I?"}).encode()
    auth = base64.b64encode(f"api:{demo['ENVOI_API_KEY']}".encode()).decode()
    request = urllib.request.Request(f"{demo['ENVOI_API_URL']}/v3/{demo['ENVOI_DOMAIN']}/messages", data=body,
                                     headers={"Authorization": f"Basic {auth}"})
    with urllib.request.urlopen(request, timeout=30) as resp:
        return json.load(resp)["id"].strip("<>")


def sink_text(demo: dict) -> str:
    with urllib.request.urlopen(f"{demo['ENVOI_SINK_URL']}/messages", timeout=10) as resp:
        return resp.read().decode()


def cli(stacks, *args: str) -> subprocess.CompletedProcess:
    """`envoi ARGS` from the directory holding var/, with no Envoi variable set."""
    return subprocess.run([sys.executable, "-m", "envoi.cli", *args], cwd=stacks["var"], env=bare_env(),
                          capture_output=True, text=True, timeout=60)


def test_each_region_sends_into_its_own_sink_and_database_only(stacks):
    demo = stacks["demo"]
    assert demo["eu"]["ENVOI_API_KEY"].startswith("key-eu-") and demo["us"]["ENVOI_API_KEY"].startswith("key-us-")
    assert len({demo[r][k] for r in REGIONS for k in ("ENVOI_API_URL", "ENVOI_SINK_URL", "ENVOI_SMTP_PORT")}) == 6
    subjects = {r: f"from {r} {uuid.uuid4().hex[:8]}" for r in REGIONS}
    ids = {r: send(demo[r], subjects[r]) for r in REGIONS}
    for region, other in (("eu", "us"), ("us", "eu")):
        wait_until(lambda r=region: subjects[r] in sink_text(demo[r]), timeout=60)
        assert subjects[other] not in sink_text(demo[region])
        with psycopg.connect(stacks["stores"][region][0]) as conn:
            held = {row[0] for row in conn.execute("SELECT message_id FROM messages")}
            stamp = conn.execute("SELECT region FROM region_stamp").fetchone()[0]
        assert ids[region] in held and ids[other] not in held and stamp == region
        assert redis.Redis.from_url(stacks["stores"][region][1]).get("envoi:region") == region.encode()


def test_the_admin_cli_reaches_each_running_region_without_variables(stacks):
    name = f"us-only-{uuid.uuid4().hex[:6]}"
    created = cli(stacks, "--region", "us", "accounts", "create", name)
    assert created.returncode == 0, created.stderr
    assert json.loads(created.stdout)["region"] == "us"
    listed = {r: cli(stacks, "--region", r, "accounts", "list") for r in REGIONS}
    assert all(p.returncode == 0 for p in listed.values()), {r: p.stderr for r, p in listed.items()}
    assert name in listed["us"].stdout and name not in listed["eu"].stdout
    assert "\tdemo\teu\t" in listed["eu"].stdout and "\tdemo\tus\t" in listed["us"].stdout
    default = cli(stacks, "accounts", "list")  # no --region, no ENVOI_REGION: EU
    assert default.returncode == 0 and default.stdout == listed["eu"].stdout


def test_an_smtp_login_of_the_us_stack_is_sent_there_by_the_eu_stack(stacks):
    demo = stacks["demo"]
    login = f"us-only-{uuid.uuid4().hex[:6]}"
    made = cli(stacks, "--region", "us", "credentials", "create", demo["us"]["ENVOI_ACCOUNT_ID"],
               demo["us"]["ENVOI_DOMAIN"], login, "--password", "us-only-password")
    assert made.returncode == 0, made.stderr
    ctx = ssl.create_default_context()
    ctx.check_hostname, ctx.verify_mode = False, ssl.CERT_NONE  # the stacks' dev certificates
    with smtplib.SMTP("127.0.0.1", int(demo["eu"]["ENVOI_SMTP_PORT"]), timeout=30) as client:
        client.starttls(context=ctx)
        with pytest.raises(smtplib.SMTPAuthenticationError) as refused:
            client.login(f"{login}@{demo['us']['ENVOI_DOMAIN']}", "us-only-password")
    assert refused.value.smtp_code == 535
    assert refused.value.smtp_error.decode() == (
        f"5.7.8 This SMTP login belongs to the US region: connect to 127.0.0.1:{demo['us']['ENVOI_SMTP_PORT']} instead")
