"""Plan limits on what an account may have: domains, users, dedicated IPs.

The accounts and ips packages enforce them but know nothing of plans (billing sits above them): they ask a
PlanLimits, which envoi/runtime.py wires in with billing on (envoi.billing.limits.PlanFeatureLimits, from
the plans file) and leaves out with billing off (nothing is limited then). The check runs in the
transaction that adds, after locking the account's row, so two concurrent adds cannot both take the last
place; a refusal (PlanLimitReached, HTTP 403) changes nothing.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Protocol

from envoi.accounts.errors import PlanLimitReached

DOMAINS = "domains"
USERS = "users"
DEDICATED_IPS = "dedicated IPs"

#: How many the account has of each feature (it is what an add would exceed).
COUNTS = {
    DOMAINS: "SELECT count(*) AS n FROM domains WHERE account_id = %s",
    # Users and the invitations still pending: each invitation becomes a user when accepted.
    USERS: "SELECT (SELECT count(*) FROM users WHERE account_id = %(a)s) + (SELECT count(*) FROM user_invitations"
           " WHERE account_id = %(a)s AND accepted_at IS NULL AND expires_at > now()) AS n",
    DEDICATED_IPS: "SELECT count(*) AS n FROM ips WHERE account_id = %s",
}


@dataclass(frozen=True)
class Limit:
    most: int   # how many the plan allows; 0: the feature is not on the plan
    plan: str   # the plan's title, named in the refusal


class PlanLimits(Protocol):
    def limit(self, plan: str | None, feature: str) -> Limit | None:
        """The plan's limit on FEATURE (DOMAINS, USERS, DEDICATED_IPS); None: no limit."""


def refusal(feature: str, limit: Limit, have: int) -> str:
    if limit.most == 0:
        return (f"{feature[0].upper()}{feature[1:]} are not part of the {limit.plan} plan: move the account to a"
                f" plan with {feature} first")
    noun = feature if limit.most != 1 else feature.rstrip("s")
    return (f"Plan limit reached: the {limit.plan} plan allows {limit.most:,} {noun} and the account has"
            f" {have:,}; move the account to a larger plan (or remove one) first")


def enforce(conn, limits: PlanLimits | None, account_id: int, feature: str) -> None:
    """Refuse (PlanLimitReached) one more FEATURE for the account past its plan's limit. Locks the
    account's row until the caller's transaction ends. No-op without limits (billing off) or for an
    unknown account (the caller says NotFound)."""
    if limits is None:
        return
    row = conn.execute("SELECT plan FROM accounts WHERE id = %s FOR UPDATE", (account_id,)).fetchone()
    limit = row and limits.limit(row["plan"], feature)
    if not limit:
        return
    sql = COUNTS[feature]
    have = conn.execute(sql, {"a": account_id} if "%(a)s" in sql else (account_id,)).fetchone()["n"]
    if have >= limit.most:
        raise PlanLimitReached(refusal(feature, limit, have))
