"""What each API key role may do, by class of resource: one table, checked by AuthMiddleware.

Roles are Mailgun's /v1/keys roles. A resource declares its class with a `key_access` attribute:
SENDING (sends messages), KEYS (manages API keys), QUERY (Mailgun's analytics APIs, whose POST is a
read: the query travels as a JSON body) or, by default, ACCOUNT (everything else)."""

from __future__ import annotations

SENDING = "sending"
KEYS = "keys"
ACCOUNT = "account"
QUERY = "query"

READS = frozenset({"GET", "HEAD", "OPTIONS"})
ANY = frozenset({"GET", "HEAD", "OPTIONS", "POST", "PUT", "PATCH", "DELETE"})

#: role -> resource class -> the methods it may use there (a class not listed: none).
ALLOWED: dict[str, dict[str, frozenset[str]]] = {
    "admin": {SENDING: ANY, ACCOUNT: ANY, KEYS: ANY, QUERY: ANY},
    "developer": {SENDING: ANY, ACCOUNT: ANY, QUERY: ANY},  # everything but managing keys
    # read-only: logs, events, stats, suppressions, domains; analytics queries (POST), not tag edits
    "basic": {ACCOUNT: READS, QUERY: READS | {"POST"}},
    "sending": {SENDING: ANY},  # /messages and /messages.mime only
}
ROLES = tuple(ALLOWED)


def allows(role: str, resource, method: str) -> bool:
    return method in ALLOWED.get(role, {}).get(getattr(resource, "key_access", ACCOUNT), frozenset())
