"""What every domain-scoped resource shares: {domain} resolved within the caller's account (another
tenant's domain is a 404, never a 403 that would confirm it exists), and query parameters as lists."""

from __future__ import annotations

import falcon


def query_params(req: falcon.Request) -> dict[str, list[str]]:
    """Query parameters as lists, without splitting values on commas (filters may contain them)."""
    out: dict[str, list[str]] = {}
    for key, value in req.params.items():
        out[key] = list(value) if isinstance(value, list) else [value]
    return out


class DomainScoped:
    """Resolves {domain} within the caller's account; another tenant's domain is a 404."""

    def __init__(self, accounts):
        self.accounts = accounts

    def domain(self, req: falcon.Request, name: str) -> dict:
        return self.accounts.get_domain(name, req.context.principal.account_id)
