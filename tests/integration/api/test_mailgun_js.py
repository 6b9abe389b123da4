"""Issue 17: every family through Mailgun's official JavaScript SDK (mailgun.js, pinned in
tests/sdk_js/package.json). tests/sdk_js/families.js calls the real API over HTTP; this test checks
what the calls did: the message at the sink, the domain rows, the webhook and subaccount rows, the 400."""

from __future__ import annotations

import dataclasses
import json
import os
import shutil
import subprocess
import uuid
from pathlib import Path

import pytest

from envoi.api.app import create_app
from envoi.webhooks.service import Webhooks
from tests.support.events import AppServer
from tests.support.relay import wait_until

SDK_DIR = Path(__file__).resolve().parents[2] / "sdk_js"


@pytest.fixture(scope="session")
def node_modules() -> Path:
    """mailgun.js installed from the lock file; `npm ci` once when missing (needs the npm registry)."""
    node, npm = shutil.which("node"), shutil.which("npm")
    if not node or not npm:
        pytest.fail("node and npm are needed for the mailgun.js tests: ./dev test installs Debian's nodejs and npm")
    if not (SDK_DIR / "node_modules" / "mailgun.js").is_dir():
        done = subprocess.run([npm, "ci", "--no-audit", "--no-fund", "--prefix", str(SDK_DIR)],
                              capture_output=True, text=True, timeout=300)
        if done.returncode:
            pytest.fail(f"`npm ci --prefix tests/sdk_js` failed (offline? no npm registry?):\n{done.stderr[-2000:]}")
    return SDK_DIR / "node_modules"


@pytest.fixture
def app_server(settings, services):
    # the webhook created points at loopback, which the SSRF guard refuses unless allowed
    allowing = Webhooks(settings.replace(webhook_allow=("127.0.0.0/8",)), services.db, services.sealer)
    with AppServer(create_app(settings, dataclasses.replace(services, webhooks=allowing))) as srv:
        yield srv


def run_families(node_modules, env: dict) -> tuple[int, dict, str]:
    done = subprocess.run(["node", str(SDK_DIR / "families.js")], capture_output=True, text=True, timeout=60,
                          cwd=SDK_DIR, env={**os.environ, **env})
    lines = [json.loads(line) for line in done.stdout.splitlines() if line.startswith("{")]
    return done.returncode, {line["call"]: line for line in lines}, done.stdout + done.stderr


def test_every_family_through_mailgun_js(node_modules, app_server, account, api_key, domain, db, sink, relay):
    tag = uuid.uuid4().hex[:8]
    message_id, to = f"js-{tag}@shop.example", f"js-{tag}@dest.test"
    fresh, gone = f"js-{tag}.example.test", f"js-gone-{tag}.example.test"
    hook, subaccount = f"http://127.0.0.1:9/mailgun-js/{tag}", f"js-sub-{tag}"
    rc, calls, output = run_families(node_modules, {
        "MG_URL": app_server.url, "MG_KEY": api_key, "MG_DOMAIN": domain["name"], "MG_TO": to,
        "MG_MESSAGE_ID": message_id, "MG_NEW_DOMAIN": fresh, "MG_GONE_DOMAIN": gone, "MG_WEBHOOK_URL": hook,
        "MG_SUBACCOUNT": subaccount})
    assert rc == 0, output
    assert all(line["ok"] or line.get("expected") == line["status"] for line in calls.values()), output

    # messages: accepted with the caller's Message-Id, which is what reached the sink
    assert calls["messages.create"]["result"] == {"status": 200, "id": f"<{message_id}>",
                                                  "message": "Queued. Thank you."}
    [arrived] = wait_until(lambda: sink.messages(to=to))
    assert f"Message-ID: <{message_id}>" in arrived["data"] and "Subject: Through mailgun.js" in arrived["data"]
    row = db.execute("SELECT id, tags FROM messages WHERE domain_id = %s AND message_id = %s",
                     (domain["id"], message_id)).fetchone()
    assert row is not None and row["tags"] == ["js-sdk"]
    assert [e["event"] for e in calls["events.get"]["result"]["items"]] == ["accepted"]
    unknown = calls["events.get(unknown filter)"]
    assert unknown["status"] == 400 and "colour" in json.dumps(unknown)

    # domains: the kept one carries what was changed; the deleted one is gone
    kept = db.execute("SELECT * FROM domains WHERE account_id = %s AND name = %s", (account["id"], fresh)).fetchone()
    assert kept is not None
    assert (kept["spam_action"], kept["wildcard"], kept["web_scheme"]) == ("block", True, "https")
    assert (kept["require_tls"], kept["skip_verification"]) == (True, False)
    assert kept["web_prefix"] == "links" and kept["dkim_selector"] == "js2026"
    assert calls["domains.updateDKIMAuthority"]["result"]["changed"] is False  # a top domain signs as itself
    assert calls["domains.getConnection"]["result"] == {"connection": {"require_tls": True, "skip_verification": False}}
    assert calls["domains.get"]["result"]["name"] == fresh
    assert fresh in [d["name"] for d in calls["domains.list"]["result"]]
    assert calls["domains.get(to delete)"]["result"]["name"] == gone
    assert db.execute("SELECT 1 FROM domains WHERE name = %s", (gone,)).fetchone() is None
    assert calls["domains.get(deleted)"]["status"] == 404

    # domain webhook stored; subaccount made and left disabled
    hooks = db.execute("SELECT event_type, url FROM webhooks WHERE domain_id = %s", (domain["id"],)).fetchall()
    assert {"event_type": "delivered", "url": hook} in hooks
    assert calls["webhooks.get"]["result"]["url"] == hook
    sub = db.execute("SELECT id, parent_id, disabled_at FROM accounts WHERE name = %s", (subaccount,)).fetchone()
    assert sub is not None and sub["parent_id"] == account["id"] and sub["disabled_at"] is not None
    assert str(sub["id"]) == str(calls["subaccounts.get"]["result"]["subaccount"]["id"])

    # analytics answered in the SDK's shapes; errors are Mailgun's statuses
    logged = calls["logs.list"]["result"]["items"]
    assert [(i["event"], i["message"]["headers"]["message-id"]) for i in logged] == [("accepted", message_id)]
    assert calls["metrics.getAccount"]["result"]["aggregates"]["metrics"]["accepted_count"] == 1  # its domain's
    assert calls["metrics.getAccount(unknown metric)"]["status"] == 400
    assert calls["domains.list(wrong key)"]["status"] == 401
