"""Who may do what: the one permission table of account users (Mailgun's roles), used by the API and
the dashboard alike. An action missing from a role's set is refused; an unknown role may do nothing."""

from __future__ import annotations

from envoi.accounts.errors import Forbidden

ACTIONS = frozenset({
    "send", "read_logs", "read_stats", "manage_domains", "manage_keys", "manage_users", "manage_billing",
    "manage_webhooks", "manage_suppressions", "read_audit_log", "export_account",
})

#: Mailgun's semantics: admin everything; developer everything but users and billing; support reads logs
#: and manages suppressions; analyst reads logs and stats only; billing only billing.
PERMISSIONS: dict[str, frozenset[str]] = {
    "admin": ACTIONS,
    "developer": ACTIONS - {"manage_users", "manage_billing", "read_audit_log", "export_account"},
    "support": frozenset({"read_logs", "read_stats", "manage_suppressions"}),
    "analyst": frozenset({"read_logs", "read_stats"}),
    "billing": frozenset({"manage_billing"}),
}

ROLES = tuple(PERMISSIONS)


def allowed(role: str, action: str) -> bool:
    if action not in ACTIONS:
        raise ValueError(f"unknown action: {action}")  # a typo must not silently deny (or allow)
    return action in PERMISSIONS.get(role, frozenset())


def require(role: str, action: str) -> None:
    """Raise Forbidden unless `role` may do `action`."""
    if not allowed(role, action):
        raise Forbidden(f"Your role may not {action.replace('_', ' ')}")
