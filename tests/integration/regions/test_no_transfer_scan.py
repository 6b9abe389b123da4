"""Proof by scan that the EU and US regions never mix (issue 15, item 3).

Both regions run at once, each on its own Postgres database, Redis db number, secret key and processes
(`envoi api`, `relay`, `smtp`, `worker`; tests/support/regions.py). The same workload runs in each, with
data recognisable per region (a token in every name, address, subject and body; ids from the region's
own offset): CLI-made account, domain, keys and SMTP login; sends through the API (form, a batch with
recipient-variables, .mime), SMTP submission; a webhook delivered to a receiver; an open and a click on
the tracking endpoint; bounce, unsubscribe and complaint suppressions and a suppressed send; a user
invited who signs in to the dashboard; billing on, so usage is counted; the audit entries all that makes.

Then every column of every table of each region's database and every key and value of its Redis db is
read: none holds the other region's account id (or any of its ids), addresses, domain, subjects or body
content; and each region's own stores DO hold its own, so the scan cannot pass by reading nothing.
"""

from __future__ import annotations

import email
import email.policy
import hashlib
import json
import re
import smtplib
from dataclasses import dataclass, field
from urllib.parse import urlsplit

import pytest
import redis
from click.testing import CliRunner

from envoi.cli import main as envoi_cli
from tests.support.localstripe import card_payment_method
from tests.support.regions import (
    Region,
    World,
    dumps,
    id_pattern,
    redis_entries,
    request,
    scan_postgres,
    scan_postgres_bytes,
    scan_redis,
)
from tests.support.relay import wait_until
from tests.support.webhook_receiver import mailgun_verify

PASSWORD = "region-pass-42"
USER_PASSWORD = "correct horse battery region"

#: Tables each region's workload must have written its own data to (the scan's non-vacuity check).
OWN_TABLES = {
    "accounts", "domains", "api_keys", "smtp_credentials", "messages", "recipients", "events",
    "webhooks", "webhook_deliveries", "webhook_attempts", "suppress_bounces", "suppress_unsubscribes",
    "suppress_complaints", "users", "user_invitations", "user_sessions", "audit_log", "webhook_signing_keys",
    "stripe_events",
}


@dataclass
class Workload:
    """What one region's workload made: the needles the other region's stores must never hold."""
    region: Region
    account_id: int = 0
    domain_id: int = 0
    domain: str = ""
    key: str = ""
    signing_key: str = ""
    message_ids: list[str] = field(default_factory=list)
    addresses: dict[str, str] = field(default_factory=dict)
    subjects: list[str] = field(default_factory=list)
    bodies: list[str] = field(default_factory=list)
    user_email: str = ""
    stripe: list[str] = field(default_factory=list)  # its Stripe customer, subscription and event ids
    tracking_links: list[str] = field(default_factory=list)  # the click and open links of a message

    def needles(self) -> list[str]:
        return [self.region.token, str(self.account_id), str(self.domain_id), self.domain,
                *self.message_ids, *self.addresses.values(), *self.subjects, *self.bodies, self.user_email,
                *self.stripe, *self.hashed(), f"envoi:{self.region.name}:"]  # a Redis key of this region's

    def hashed(self) -> list[str]:
        """The login throttles' keys name a person by a hash of the email or SMTP login: an identity too."""
        return [hashlib.sha256(login.encode()).hexdigest()[:24] for login in (self.user_email, f"app@{self.domain}")]


def cli(region: Region, *args: str) -> str:
    result = CliRunner().invoke(envoi_cli, list(args), env=region.env(), catch_exceptions=False)
    assert result.exit_code == 0, result.output
    return result.output


def api(workload: Workload, method: str, path: str, **form):
    return request(method, workload.region.api_url + path, key=workload.key, form=form or None)


def accepted(response) -> str:
    status, _, body = response
    assert status == 200, body
    return json.loads(body)["id"].strip("<>")


def drive(world: World, region: Region) -> Workload:
    """The whole workload of one region, every feature once; returns what it made."""
    tok = region.token
    w = Workload(region)
    inbox = f"inbox.{tok}.test"
    w.addresses = {name: f"{name}.{tok}@{inbox}" for name in
                   ("reader", "ann", "bob", "mime", "smtp", "bounced", "unsub", "complainer")}
    services = region.services

    # Account, domain, keys and SMTP login made with the CLI, as an operator would.
    w.account_id = json.loads(cli(region, "accounts", "create", f"acct-{tok}", "--plan", "free"))["id"]
    w.domain = f"mail.{tok}.test"
    cli(region, "domains", "add", str(w.account_id), w.domain, "--key-size", "1024", "--verified")
    w.domain_id = _domain_id(region, w.domain)
    w.key = json.loads(cli(region, "keys", "create", str(w.account_id), "--description", f"key {tok}"))["secret"]
    cli(region, "credentials", "create", str(w.account_id), w.domain, "app", "--password", PASSWORD)

    # Webhook for deliveries, to the shared receiver under this region's path.
    status, _, body = request("GET", f"{region.api_url}/v5/accounts/http_signing_key", key=w.key)
    assert status == 200, body
    w.signing_key = json.loads(body)["http_signing_key"]
    status, _, body = api(w, "POST", f"/v3/domains/{w.domain}/webhooks", id="delivered",
                          url=world.receiver.url(f"/{tok}/delivered"))
    assert status == 200, body

    # Suppressions: one of each list.
    for kind, fields in (("bounces", {"address": w.addresses["bounced"], "code": "550",
                                      "error": f"mailbox gone {tok}"}),
                         ("unsubscribes", {"address": w.addresses["unsub"], "tag": "*"}),
                         ("complaints", {"address": w.addresses["complainer"]})):
        status, _, body = api(w, "POST", f"/v3/{w.domain}/{kind}", **fields)
        assert status == 200, (kind, body)

    # Sends through the API: form fields with tracking, a batch, a whole MIME message, a suppressed one.
    sender = f"Sender {tok} <hello@{w.domain}>"
    w.subjects = [f"Form {tok}", f"Batch {tok}", f"Mime {tok}", f"Smtp {tok}", f"Suppressed {tok}"]
    w.bodies = [f"formbody-{tok}", f"batchbody-{tok}", f"mimebody-{tok}", f"smtpbody-{tok}"]
    html = (f'<html><body><p>{w.bodies[0]}</p><a href="https://shop.{tok}.test/item">buy</a></body></html>')
    w.message_ids.append(accepted(api(w, "POST", f"/v3/{w.domain}/messages", **{
        "from": sender, "to": w.addresses["reader"], "subject": w.subjects[0], "text": w.bodies[0], "html": html,
        "o:tracking": "yes", "o:tracking-opens": "yes", "o:tracking-clicks": "yes"})))
    batch_vars = {w.addresses["ann"]: {"first": f"Ann-{tok}"}, w.addresses["bob"]: {"first": f"Bob-{tok}"}}
    w.message_ids.append(accepted(api(w, "POST", f"/v3/{w.domain}/messages", **{
        "from": sender, "to": [w.addresses["ann"], w.addresses["bob"]], "subject": w.subjects[1],
        "text": f"Hello %recipient.first% {w.bodies[1]}", "recipient-variables": json.dumps(batch_vars)})))
    mime = (f"From: {sender}\r\nTo: {w.addresses['mime']}\r\nSubject: {w.subjects[2]}\r\nMIME-Version: 1.0\r\n"
            f"Content-Type: text/plain; charset=utf-8\r\n\r\n{w.bodies[2]}\r\n")
    w.message_ids.append(accepted(api(w, "POST", f"/v3/{w.domain}/messages.mime", to=w.addresses["mime"],
                                      message=mime)))
    w.message_ids.append(accepted(api(w, "POST", f"/v3/{w.domain}/messages", **{
        "from": sender, "to": w.addresses["bounced"], "subject": w.subjects[4], "text": f"never {tok}"})))

    # SMTP submission to this region's `envoi smtp`.
    with smtplib.SMTP("127.0.0.1", region.smtp_port, timeout=15, local_hostname=f"app.{tok}.test") as smtp:
        smtp.starttls(context=world.smtp_client_tls)
        smtp.login(f"app@{w.domain}", PASSWORD)
        refused = smtp.sendmail(f"app@{w.domain}", [w.addresses["smtp"]], (
            f"From: App <app@{w.domain}>\r\nTo: {w.addresses['smtp']}\r\nSubject: {w.subjects[3]}\r\n"
            f"MIME-Version: 1.0\r\nContent-Type: text/plain; charset=utf-8\r\n\r\n{w.bodies[3]}\r\n").encode())
        assert refused == {}
    # A wrong SMTP password (counted in Redis under a hash of the login).
    with smtplib.SMTP("127.0.0.1", region.smtp_port, timeout=15) as smtp:
        smtp.starttls(context=world.smtp_client_tls)
        with pytest.raises(smtplib.SMTPAuthenticationError):
            smtp.login(f"app@{w.domain}", "not-the-password")
    w.message_ids.append(_message_id_of(region, w.subjects[3]))

    # A person invited into the account, who joins and signs in to the dashboard over HTTP.
    w.user_email = f"owner.{tok}@people.{tok}.test"
    _, token = services.users.invite(w.account_id, w.user_email, "admin", actor=f"operator-{tok}")
    status, _, body = request("POST", f"{region.api_url}/dashboard/join", form={"token": token,
                                                                               "password": USER_PASSWORD})
    assert status in (200, 303), body
    status, headers, body = request("POST", f"{region.api_url}/dashboard/login",
                                    form={"email": w.user_email, "password": USER_PASSWORD},
                                    headers={"User-Agent": f"Browser {tok}"})
    assert status == 303, body
    cookie = headers["set-cookie"].split(";", 1)[0]
    status, headers, body = request("GET", f"{region.api_url}/dashboard", cookie=cookie)
    if status == 303 and headers["location"].startswith("/dashboard/") and "login" not in headers["location"]:
        status, _, body = request("GET", region.api_url + headers["location"], cookie=cookie)
    assert status == 200 and w.user_email.encode() in body, body[:500]
    # A wrong dashboard password (counted in Redis under a hash of the email).
    status, _, _ = request("POST", f"{region.api_url}/dashboard/login",
                           form={"email": w.user_email, "password": "not-the-password"})
    assert status == 401
    # A second key, revoked with the CLI (every process of the region hears of it through Redis).
    spare = json.loads(cli(region, "keys", "create", str(w.account_id), "--description", f"spare {tok}"))["id"]
    cli(region, "keys", "revoke", "--", spare)  # "--": a random key id may begin with "-"
    return w


def _domain_id(region: Region, name: str) -> int:
    with region.services.db.transaction() as conn:
        return conn.execute("SELECT id FROM domains WHERE name = %s", (name,)).fetchone()["id"]


def _message_id_of(region: Region, subject: str) -> str:
    def find():
        with region.services.db.transaction() as conn:
            row = conn.execute("SELECT message_id FROM messages WHERE headers->>'subject' = %s", (subject,)).fetchone()
        return row and row["message_id"]
    return wait_until(find, timeout=10).strip("<>")


def events(region: Region, account_id: int) -> list[dict]:
    with region.services.db.transaction() as conn:
        return conn.execute("SELECT event, message_id, data FROM events WHERE account_id = %s ORDER BY id",
                            (account_id,)).fetchall()


def settle(world: World, w: Workload) -> None:
    """Wait for this region's mail at the sink and its webhooks; click and open; check usage and audit."""
    region, tok = w.region, w.region.token
    delivered_to = [w.addresses[n] for n in ("reader", "ann", "bob", "mime", "smtp")]
    got = wait_until(lambda: (m := {r: world.sink.messages(to=r) for r in delivered_to}) and all(m.values()) and m,
                     timeout=30)
    for address, messages in got.items():
        assert len(messages) == 1, address  # delivered once, by this region's relay alone
        assert tok in messages[0]["data"] and world_other(world, region).token not in messages[0]["data"]
    assert not world.sink.messages(to=w.addresses["bounced"])
    ann = email.message_from_string(got[w.addresses["ann"]][0]["data"], policy=email.policy.default)
    assert f"Hello Ann-{tok}" in ann.get_body(("plain",)).get_content()

    # Tracking: the open pixel and the click link of the form message, on this region's endpoint.
    reader = email.message_from_string(got[w.addresses["reader"]][0]["data"], policy=email.policy.default)
    html = reader.get_body(("html",)).get_content()
    base = re.escape(region.api_url)
    [click] = re.findall(rf'href="({base}/c/[^"]+)"', html)
    [pixel] = re.findall(rf'src="({base}/o/[^"]+)"', html)
    w.tracking_links = [click, pixel]
    agent = {"User-Agent": f"Mozilla/5.0 Reader-{tok}"}
    status, headers, _ = request("GET", click, headers=agent)
    assert status == 302 and headers["location"] == f"https://shop.{tok}.test/item"
    status, headers, _ = request("GET", pixel, headers=agent)
    assert status == 200 and headers["content-type"] == "image/gif"

    def recorded():
        kinds = [e["event"] for e in events(region, w.account_id)]
        return (kinds.count("delivered") == 5 and "opened" in kinds and "clicked" in kinds
                and "failed" in kinds and kinds)
    kinds = wait_until(recorded, timeout=20)
    assert kinds.count("accepted") == 6
    [failed] = [e for e in events(region, w.account_id) if e["event"] == "failed"]
    assert failed["data"]["reason"] == "suppress-bounce"

    # Webhooks: the receiver got this region's delivered events, signed with this region's key.
    hooks = wait_until(lambda: (h := world.receiver.got(f"/{tok}/delivered")) and len(h) >= 5 and h, timeout=30)
    for hook in hooks:
        sig = hook["payload"]["signature"]
        assert mailgun_verify(w.signing_key, sig["timestamp"], sig["token"], sig["signature"])
        assert hook["payload"]["event-data"]["recipient"] in delivered_to
        assert world_other(world, region).token not in json.dumps(hook["payload"])
    # Billing on: usage counted, in Postgres (the rollups) and in the quota counters (Redis).
    assert wait_until(lambda: region.services.usage.day(w.account_id) >= 6, timeout=10)
    assert region.services.quota.used(w.account_id) == (6, 6)
    # Audit: the keys made and revoked, the invitation, the join and the sign-in are on the record.
    actions = {entry["action"] for entry in region.services.audit.list(w.account_id)}
    assert actions >= {"key.create", "key.revoke", "user.invited", "user.created", "session.created"}, actions


def subscribe(world: World, w: Workload) -> None:
    """A paid plan through the shared Stripe account: the region's customer, subscription and invoice."""
    billing = w.region.services.billing
    row = billing.start_subscription(w.account_id, "basic", card_payment_method(billing))
    customer = row["stripe_customer_id"]
    world.stripe.webhooks.wait_for("invoice.payment_succeeded", lambda e: e["data"]["object"].get("customer") == customer)
    w.stripe = [customer, row["stripe_subscription_id"]]


def deliver_stripe_webhooks(world: World, workloads: dict[str, Workload]) -> None:
    """Stripe sends every event of the account to every endpoint: each region's hears of both customers."""
    with world.stripe.webhooks.lock:
        received = list(world.stripe.webhooks.received)
    hooks = []  # those about the two regions' customers (localstripe is the session's: others' are older)
    for w in workloads.values():
        mine = [h for h in received if w.stripe[0] in (h.event["data"]["object"].get("customer"),
                                                       h.event["data"]["object"].get("id"))]
        assert len(mine) >= 2, [h.type for h in mine]
        w.stripe += [h.event["id"] for h in mine]
        hooks += mine
    for region in world.regions():
        for hook in hooks:
            status, _, body = request("POST", f"{region.api_url}/v1/billing/stripe/webhook", raw=hook.body, headers={
                "Content-Type": "application/json", "Stripe-Signature": hook.signature})
            assert status == 200, body


def misdirect(world: World, w: Workload) -> None:
    """The outside world gets regions wrong: the region's API key, a send and its tracking links sent to
    the other region are refused there (the key's refusal names the right base URL), keeping nothing."""
    other, tok = world_other(world, w.region), w.region.token
    status, _, body = request("POST", f"{other.api_url}/v3/{w.domain}/messages", key=w.key, form={
        "from": f"hello@{w.domain}", "to": w.addresses["reader"], "subject": f"Misrouted {tok}",
        "text": f"misrouted-{tok}"})
    assert status == 401 and w.region.settings.region_urls[w.region.name].encode() in body, body
    for link in w.tracking_links:
        path = urlsplit(link).path
        status, _, _ = request("GET", other.api_url + path, headers={"User-Agent": f"Misrouted {tok}"})
        assert 400 <= status < 500, (path, status)


def world_other(world: World, region: Region) -> Region:
    return world.us if region is world.eu else world.eu


@pytest.fixture(scope="module")
def workloads(two_regions):
    world = two_regions
    made = {}
    for region in world.regions():
        try:
            made[region.name] = drive(world, region)
        except BaseException:
            print(region.logs())
            raise
    try:
        for region in world.regions():
            settle(world, made[region.name])
            misdirect(world, made[region.name])
            subscribe(world, made[region.name])
        deliver_stripe_webhooks(world, made)
    except BaseException:
        print(world.eu.logs(), world.us.logs())
        raise
    return made


@pytest.mark.parametrize(("source", "other"), [("eu", "us"), ("us", "eu")])
def test_no_row_or_key_of_one_region_is_in_the_other(two_regions, workloads, source, other):
    world: World = two_regions
    regions = {"eu": world.eu, "us": world.us}
    mine, theirs = regions[source], regions[other]
    needles, ids = workloads[source].needles(), id_pattern(source)

    # The scan reads what it should: the region's own stores hold its data, in every feature's table.
    own_rows, tables = scan_postgres(mine.database_url, needles, ids)
    own_tables = {hit.where.split(".", 1)[0] for hit in own_rows}
    assert tables > 30 and own_tables >= OWN_TABLES, sorted(OWN_TABLES - own_tables)
    # (Addresses only ever suppressed are sealed, found by their keyed hash: looked for as such below.)
    sealed_only = ("unsub", "complainer")
    for needle in (str(workloads[source].account_id), workloads[source].domain, *workloads[source].subjects,
                   *(a for n, a in workloads[source].addresses.items() if n not in sealed_only),
                   workloads[source].user_email):
        assert any(hit.needle == needle for hit in own_rows), f"{needle} not found in {source}'s own database"
    vault = mine.services.suppressions.vault
    hashes = [vault.lookup(workloads[source].addresses[n]).hex() for n in ("bounced", *sealed_only)]
    own_hashes = scan_postgres_bytes(mine.database_url, hashes)
    assert {hit.needle for hit in own_hashes} == set(hashes), dumps(own_hashes)
    their_hashes = scan_postgres_bytes(theirs.database_url, hashes)
    assert their_hashes == [], dumps(their_hashes)
    own_keys, keys = scan_redis(mine.redis_url, needles, ids)
    assert keys > 0 and any(f"quota:{workloads[source].account_id}:" in h.where for h in own_keys), dumps(own_keys)
    for needle in (*workloads[source].hashed(), workloads[source].subjects[0], workloads[source].addresses["reader"],
                   f"envoi:{source}:keys:revoked"):
        assert any(needle in (h.needle, h.where.rsplit(" ", 1)[-1]) for h in own_keys), f"{needle} not in Redis"

    # The other region's stores hold none of it.
    leaked_rows, other_tables = scan_postgres(theirs.database_url, needles, ids)
    assert other_tables == tables and leaked_rows == [], dumps(leaked_rows)
    leaked_keys, other_keys = scan_redis(theirs.redis_url, needles, ids)
    assert other_keys > 0 and leaked_keys == [], dumps(leaked_keys)
    # And its own Redis keys all name its own region.
    foreign = [key for key, _ in redis_entries(theirs.redis_url) if re.match(r"envoi:(eu|us):", key)
               and not key.startswith(f"envoi:{other}:")]
    assert foreign == []


def test_a_login_of_the_other_region_is_routed_and_leaves_nothing(two_regions, workloads):
    world: World = two_regions
    leaked = []
    for w in workloads.values():
        other = world_other(world, w.region)
        status, _, body = request("POST", f"{other.api_url}/dashboard/login",
                                  form={"email": w.user_email, "password": USER_PASSWORD})
        assert status == 401
        assert f"in the {w.region.name.upper()} region" in body.decode()  # routed: the answer names the home region
        with smtplib.SMTP("127.0.0.1", other.smtp_port, timeout=15) as smtp:
            smtp.starttls(context=world.smtp_client_tls)
            with pytest.raises(smtplib.SMTPAuthenticationError) as refused:
                smtp.login(f"app@{w.domain}", PASSWORD)
        assert f"belongs to the {w.region.name.upper()} region" in refused.value.smtp_error.decode()
        hits, _ = scan_redis(other.redis_url, w.hashed(), None)
        leaked += hits
        # Leave the other region as the scan test expects it, whatever the order the tests run in.
        conn = redis.Redis.from_url(other.redis_url)
        for hit in hits:
            conn.delete(hit.where.removeprefix("redis key ").removeprefix("redis value of "))
    assert leaked == [], dumps(leaked)
