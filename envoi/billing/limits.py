"""The plans' feature limits (max_domains, max_users, dedicated_ips) as the accounts and ips packages ask
for them (envoi.accounts.limits.PlanLimits). Wired in envoi/runtime.py with billing on only."""

from __future__ import annotations

from envoi.accounts.limits import DEDICATED_IPS, DOMAINS, USERS, Limit
from envoi.billing.plans import Plans


class PlanFeatureLimits:
    def __init__(self, plans: Plans):
        self.plans = plans

    def limit(self, plan: str | None, feature: str) -> Limit | None:
        """An account on a plan the file no longer has is held to the default plan's terms (Plans.get)."""
        terms = self.plans.get(plan)
        if feature == DOMAINS:
            most = terms.max_domains
        elif feature == USERS:
            most = terms.max_users
        elif feature == DEDICATED_IPS:
            most = None if terms.dedicated_ips else 0
        else:
            raise ValueError(f"unknown plan feature {feature!r}")
        return None if most is None else Limit(most, terms.title)
