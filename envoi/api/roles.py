"""What each API key role may do, by class of resource: one table, checked by AuthMiddleware.

Roles are Mailgun's /v1/keys roles. A resource declares its class with a `key_access` attribute:
SENDING (sends messages), KEYS (manages API keys) or, by default, ACCOUNT (everything else)."""

from __future__ import annotations

SENDING = "sending"
KEYS = "keys"
ACCOUNT = "account"

READS = frozenset({"GET", "HEAD", "OPTIONS"})
ANY = frozenset({"GET", "HEAD", "OPTIONS", "POST", "PUT", "PATCH", "DELETE"})

#: role -> resource class -> the methods it may use there (a class not listed: none).
ALLOWED: dict[str, dict[str, frozenset[str]]] = {
    "admin": {SENDING: ANY, ACCOUNT: ANY, KEYS: ANY},
    "developer": {SENDING: ANY, ACCOUNT: ANY},  # everything but managing keys
    "basic": {ACCOUNT: READS},  # read-only: logs, events, stats, suppressions, domains
    "sending": {SENDING: ANY},  # /messages and /messages.mime only
}
ROLES = tuple(ALLOWED)


def allows(role: str, resource, method: str) -> bool:
    return method in ALLOWED.get(role, {}).get(getattr(resource, "key_access", ACCOUNT), frozenset())
