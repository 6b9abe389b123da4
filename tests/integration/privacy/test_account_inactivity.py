"""Inactive accounts: a sign-in or a send marks the day; after the inactivity period a warning goes out
through Envoi itself (to the sink), and 30 days later (a test clock) the account is purged unless it came
back."""

from __future__ import annotations

import email
import email.policy
import logging
import time
import uuid
from datetime import date, timedelta

from envoi.privacy.inactivity import Inactivity
from tests.support.dashboard import PASSWORD
from tests.support.delivery import send

DAY = 86400.0
YEARS_3 = 1095 * DAY


def inactivity(services, sender: str) -> Inactivity:
    return Inactivity(services.db, services.accounts, services.intake, services.storage, services.purge,
                      after=YEARS_3, notice=30 * DAY, sender=sender, public_url=services.settings.public_url)


def backdated_account(services, db, days: int) -> tuple[dict, str]:
    """An account with an admin at dest.test (routed to the sink) whose last activity was `days` ago."""
    account = services.accounts.create_account(f"idle-{uuid.uuid4().hex[:6]}")
    admin = f"admin-{uuid.uuid4().hex[:6]}@dest.test"
    _, token = services.users.invite(account["id"], admin, "admin", actor="test")
    services.users.accept_invitation(token, PASSWORD)
    db.execute("UPDATE accounts SET last_active_on = current_date - %s WHERE id = %s", (days, account["id"]))
    return account, admin


def last_active(db, account_id):
    return db.execute("SELECT last_active_on, inactivity_warned_at FROM accounts WHERE id = %s",
                      (account_id,)).fetchone()


def test_a_sign_in_or_a_send_marks_the_day_once(services, db, account, domain):
    db.execute("UPDATE accounts SET last_active_on = current_date - 10 WHERE id = %s", (account["id"],))
    send(services, account["id"], domain, "someone@dest.test")
    assert last_active(db, account["id"])["last_active_on"] == date.today()
    # later sends today write nothing: the row's xmin (its last writer) stays
    xmin = db.execute("SELECT xmin::text AS x FROM accounts WHERE id = %s", (account["id"],)).fetchone()["x"]
    for _ in range(3):
        send(services, account["id"], domain, "someone@dest.test")
    assert db.execute("SELECT xmin::text AS x FROM accounts WHERE id = %s", (account["id"],)).fetchone()["x"] == xmin
    db.execute("UPDATE recipients SET status = 'failed' WHERE account_id = %s", (account["id"],))
    # a sign-in marks it too
    idle, admin = backdated_account(services, db, 100)
    services.users.login(admin, PASSWORD)
    assert last_active(db, idle["id"])["last_active_on"] == date.today()


def test_inactive_accounts_are_warned_by_mail_then_purged_unless_they_come_back(services, db, domain, relay, sink):
    sweep = inactivity(services, f"notices@{domain['name']}")  # the platform's sender: a verified domain
    idle, idle_admin = backdated_account(services, db, 1096)
    back, back_admin = backdated_account(services, db, 1100)
    recent, _ = backdated_account(services, db, 1000)
    now = time.time()

    result = sweep.sweep(now=now)
    assert set(result["warned"]) >= {idle["id"], back["id"]} and recent["id"] not in result["warned"]
    assert result["purged"] == []
    # the warning went out through Envoi (intake, relay) to each account's admin
    # (the shared sink may also hold mail other tests left queued: only these admins' mail counts)
    admins = (idle_admin, back_admin)
    deadline = time.monotonic() + 30
    while len(ours := [m for m in sink.messages() if m["rcpt_tos"][0] in admins]) < 2 and time.monotonic() < deadline:
        time.sleep(0.1)
    by_rcpt = {m["rcpt_tos"][0]: email.message_from_string(m["data"], policy=email.policy.default) for m in ours}
    warning = by_rcpt[idle_admin]
    assert warning["From"] == f"notices@{domain['name']}"
    assert idle["name"] in warning["Subject"]
    deadline = (date.today() + timedelta(days=30)).isoformat()
    assert deadline in warning.get_content() and "sign in" in warning.get_content()
    assert back_admin in by_rcpt
    assert sweep.sweep(now=now + DAY)["warned"] == []  # warned once

    # one of them comes back: a sign-in clears the warning
    services.users.login(back_admin, PASSWORD)
    assert last_active(db, back["id"])["inactivity_warned_at"] is None

    # 29 days after the warning: nothing purged; 30 days after: the idle one is, the other stays
    assert sweep.sweep(now=now + 29 * DAY)["purged"] == []
    assert db.execute("SELECT 1 FROM accounts WHERE id = %s", (idle["id"],)).fetchone()
    assert sweep.sweep(now=now + 30 * DAY + 1)["purged"] == [idle["id"]]
    assert db.execute("SELECT 1 FROM accounts WHERE id = %s", (idle["id"],)).fetchone() is None
    assert db.execute("SELECT count(*) AS n FROM users WHERE email = %s", (idle_admin,)).fetchone()["n"] == 0
    assert db.execute("SELECT state FROM accounts WHERE id = %s", (back["id"],)).fetchone()["state"] == "active"
    assert db.execute("SELECT state FROM accounts WHERE id = %s", (recent["id"],)).fetchone()["state"] == "active"
    [record] = db.execute("SELECT actor, details FROM audit_log WHERE action = 'account.purged'"
                          " AND details->>'account_id' = %s", (str(idle["id"]),))
    assert record["actor"] == "inactivity"


def test_without_a_platform_sender_nobody_is_warned_nor_purged(services, db, caplog):
    idle, _ = backdated_account(services, db, 1200)
    with caplog.at_level(logging.WARNING, logger="envoi.privacy"):
        result = inactivity(services, "").sweep(now=time.time() + 60 * DAY)
    assert idle["id"] not in result["warned"] and idle["id"] not in result["purged"]
    assert "ENVOI_PLATFORM_SENDER is not set" in caplog.text
    assert last_active(db, idle["id"])["inactivity_warned_at"] is None
    with caplog.at_level(logging.WARNING, logger="envoi.privacy"):
        inactivity(services, "notices@not-a-domain-here.test").sweep(now=time.time())
    assert "not a verified domain of this region" in caplog.text
    assert last_active(db, idle["id"])["inactivity_warned_at"] is None
