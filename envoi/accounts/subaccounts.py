"""Subaccounts (Mailgun's /v5/accounts/subaccounts) and custom monthly sending limits.

A subaccount is an account of its own (its own domains, keys, events, suppressions, stats: every query
is scoped by account, so tenant isolation holds for it unchanged) with a parent. The parent lists,
creates, disables and enables its subaccounts, caps their monthly volume, and acts for them with
X-Mailgun-On-Behalf-Of (Accounts.act_for). A subaccount has no subaccounts of its own.

A disabled subaccount still reads and manages everything; it cannot send (Accounts.ensure_may_send).
A custom monthly limit is enforced at accept by billing's quota check from the caller's principal (no
database read per message); every change here bumps the key generation so each process rereads it.
"""

from __future__ import annotations

from envoi.accounts import store
from envoi.accounts.audit import Audit
from envoi.accounts.errors import Forbidden, InvalidInput, NotFound
from envoi.infra.db import Database

MAX_NAME = 100
ACCOUNT_LIMIT_MINIMUM = 1000  # Mailgun: "The limit parameter minumum is 1000" (the account's own limit)
PERIOD = "1m"  # Mailgun's period of a custom monthly limit


def status(row: dict) -> str:
    """Mailgun's subaccount status: open, disabled or closed."""
    if row["state"] == "closed":
        return "closed"
    return "disabled" if row["disabled_at"] is not None else "open"


def shape(row: dict) -> dict:
    return {"id": str(row["id"]), "name": row["name"], "status": status(row),
            "created_at": row["created_at"].strftime("%a, %d %b %Y %H:%M:%S GMT")}


class Subaccounts:
    def __init__(self, db: Database, accounts, audit: Audit):
        self.db = db
        self.accounts = accounts  # envoi.accounts.service.Accounts: cached principals reread changes
        self.audit = audit

    def _parent(self, conn, account_id: int) -> dict:
        """The caller's account, which must not itself be a subaccount."""
        row = store.get_account(conn, account_id)
        if row is None:
            raise NotFound("Not Found")
        if row["parent_id"] is not None:
            raise Forbidden("A subaccount cannot have subaccounts")
        return row

    def _own(self, conn, parent_id: int, sub_id: str) -> dict:
        """The parent's subaccount SUB_ID; another account's (or none) is the same 404."""
        row = store.subaccount(conn, parent_id, int(sub_id)) if sub_id.isdigit() and len(sub_id) < 19 else None
        if row is None:
            raise NotFound("Not Found")
        return row

    def create(self, parent_id: int, name: str, *, actor: str = "api", ip: str | None = None) -> dict:
        name = (name or "").strip()
        if not name:
            raise InvalidInput("name parameter is missing")
        if len(name) > MAX_NAME:
            raise InvalidInput(f"name must be at most {MAX_NAME} characters")
        with self.db.transaction() as conn:
            self._parent(conn, parent_id)
            row = store.insert_subaccount(conn, parent_id, name)
            self.audit.record(parent_id, actor, "subaccount.create", str(row["id"]), ip=ip, conn=conn,
                              details={"name": name})
        return {"subaccount": shape(row)}

    def list(self, parent_id: int, params: dict) -> dict:
        try:
            limit = int(params.get("limit") or 10)
            skip = int(params.get("skip") or 0)
        except ValueError as ex:
            raise InvalidInput("limit and skip must be integers") from ex
        if not 1 <= limit <= 1000 or skip < 0:
            raise InvalidInput("limit must be between 1 and 1000 and skip at least 0")
        sort = (params.get("sort") or "asc").lower()
        if sort not in ("asc", "desc"):
            raise InvalidInput("sort must be asc or desc")
        flags = {k: _flag(k, params.get(k)) for k in ("enabled", "closed")}
        with self.db.transaction() as conn:
            total, rows = store.list_subaccounts(conn, parent_id, name=params.get("filter"), descending=sort == "desc",
                                                 limit=limit, skip=skip, **flags)
        return {"subaccounts": [shape(r) for r in rows], "total": total}

    def get(self, parent_id: int, sub_id: str) -> dict:
        with self.db.transaction() as conn:
            return {"subaccount": shape(self._own(conn, parent_id, sub_id))}

    def set_enabled(self, parent_id: int, sub_id: str, enabled: bool, *, actor: str = "api",
                    ip: str | None = None) -> dict:
        with self.db.transaction() as conn:
            row = self._own(conn, parent_id, sub_id)
            if (row["disabled_at"] is None) == enabled:
                raise InvalidInput(f"Subaccount is already {'enabled' if enabled else 'disabled'}")
            row = store.set_disabled(conn, parent_id, row["id"], not enabled)
            self.audit.record(parent_id, actor, "subaccount.enable" if enabled else "subaccount.disable",
                              str(row["id"]), ip=ip, conn=conn)
        self.accounts.account_changed()  # its keys and the parent's On-Behalf-Of see it at once
        return {"subaccount": shape(row)}

    # custom monthly sending limits ------------------------------------------------------------
    def limit_of(self, account_id: int, parent_id: int | None = None, sub_id: str | None = None) -> tuple[int, int]:
        """(account id, its custom monthly limit): the caller's own, or its subaccount SUB_ID's.
        NotFound without one (Mailgun: "No threshold for account")."""
        with self.db.transaction() as conn:
            row = self._own(conn, parent_id, sub_id) if sub_id is not None else store.get_account(conn, account_id)
        if row is None or row["monthly_limit"] is None:
            raise NotFound("No threshold for account")
        return row["id"], row["monthly_limit"]

    def set_limit(self, account_id: int, raw: str | None, *, sub_id: str | None = None, actor: str = "api",
                  ip: str | None = None) -> dict:
        """Set (raw: the limit) or remove (raw None) the custom monthly limit of the caller's account or of
        its subaccount SUB_ID. A subaccount's own limit is its parent's to set."""
        limit = None
        if raw is not None:
            if not raw.strip().isdigit() or len(raw.strip()) > 9:
                raise InvalidInput("limit must be a positive integer")
            limit = int(raw)
            minimum = 1 if sub_id is not None else ACCOUNT_LIMIT_MINIMUM
            if limit < minimum:
                raise InvalidInput(f"The limit parameter minimum is {minimum}")
        with self.db.transaction() as conn:
            if sub_id is not None:
                target = self._own(conn, account_id, sub_id)["id"]
            else:
                own = store.get_account(conn, account_id)
                if own is None:
                    raise NotFound("Not Found")
                if own["parent_id"] is not None:
                    raise Forbidden("A subaccount's sending limit is set by its parent account")
                target = account_id
            store.set_monthly_limit(conn, target, limit)
            self.audit.record(account_id, actor, "account.monthly_limit", str(target), ip=ip, conn=conn,
                              details={"limit": limit})
        self.accounts.account_changed()
        return {"success": True}


def _flag(name: str, raw: str | None) -> bool | None:
    if raw is None or raw == "":
        return None
    if raw.lower() in ("true", "1", "yes"):
        return True
    if raw.lower() in ("false", "0", "no"):
        return False
    raise InvalidInput(f"{name} must be true or false")
