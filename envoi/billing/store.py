"""The SQL of billing: accounts' Stripe columns, processed Stripe events, overage pushes."""

from __future__ import annotations

from datetime import datetime


def account_for_update(conn, account_id: int) -> dict | None:
    return conn.execute("SELECT * FROM accounts WHERE id = %s FOR UPDATE", (account_id,)).fetchone()


def account_by_customer(conn, customer: str) -> dict | None:
    return conn.execute("SELECT * FROM accounts WHERE stripe_customer_id = %s FOR UPDATE", (customer,)).fetchone()


def update_account(conn, account_id: int, **columns) -> None:
    names = ", ".join(f"{name} = %s" for name in columns)
    conn.execute(f"UPDATE accounts SET {names} WHERE id = %s", (*columns.values(), account_id))


def record_event(conn, event_id: str, type_: str, created: int, account_id: int | None) -> bool:
    """True the first time an event id is seen; False for a redelivery."""
    row = conn.execute("INSERT INTO stripe_events (id, type, created, account_id) VALUES (%s, %s, %s, %s)"
                       " ON CONFLICT (id) DO NOTHING RETURNING id", (event_id, type_, created, account_id)).fetchone()
    return row is not None


def overage_pushes(conn, account_id: int, period_start: datetime) -> list[dict]:
    return conn.execute("SELECT * FROM billing_overage_pushes WHERE account_id = %s AND period_start = %s"
                        " ORDER BY cumulative_units", (account_id, period_start)).fetchall()


def insert_overage_intent(conn, key: str, account_id: int, period_start: datetime, cumulative: int,
                          units: int, amount: int) -> None:
    conn.execute("INSERT INTO billing_overage_pushes (idempotency_key, account_id, period_start,"
                 " cumulative_units, units, amount) VALUES (%s, %s, %s, %s, %s, %s)",
                 (key, account_id, period_start, cumulative, units, amount))


def confirm_overage(conn, key: str, item_id: str) -> None:
    conn.execute("UPDATE billing_overage_pushes SET stripe_item_id = %s WHERE idempotency_key = %s", (item_id, key))


def unconfirmed_overage(conn, account_id: int) -> list[dict]:
    return conn.execute("SELECT * FROM billing_overage_pushes WHERE account_id = %s AND stripe_item_id IS NULL"
                        " ORDER BY cumulative_units", (account_id,)).fetchall()


def accounts_past_grace(conn, now: datetime) -> list[dict]:
    return conn.execute("SELECT id, grace_until FROM accounts WHERE billing_status = 'past_due'"
                        " AND grace_until <= %s AND state = 'active'", (now,)).fetchall()


def accounts_paid_but_suspended(conn, reason_prefix: str) -> list[dict]:
    return conn.execute("SELECT id FROM accounts WHERE billing_status IN ('active', 'none', 'canceled')"
                        " AND state = 'suspended' AND state_reason LIKE %s", (reason_prefix + "%",)).fetchall()


def accounts_with_due_downgrade(conn, now: datetime) -> list[dict]:
    return conn.execute("SELECT id FROM accounts WHERE pending_plan IS NOT NULL AND billing_period_end <= %s",
                        (now,)).fetchall()


def accounts_with_overage_plans(conn, plan_names: list[str]) -> list[dict]:
    return conn.execute("SELECT id FROM accounts WHERE plan = ANY(%s) AND stripe_subscription_id IS NOT NULL"
                        " AND state <> 'closed'", (plan_names,)).fetchall()


def stripe_customers(conn) -> list[int]:
    return [r["id"] for r in conn.execute("SELECT id FROM accounts WHERE stripe_customer_id IS NOT NULL ORDER BY id")]
