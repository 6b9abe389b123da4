"""Mailing lists as Mailgun documents them (/v3/lists): lists, members, bulk uploads, paging, and the
members a send to a list goes to.

A list belongs to an account; its address is on one of the account's domains, so no two accounts can
hold the same list address, and every read and write is scoped by the account (another account's list
is "not found"). Member names and vars are refused when they carry a control character in the name
(a name may be substituted into a header); vars are a JSON object of at most MAX_VARS_BYTES.
"""

from __future__ import annotations

import csv
import io
import json
import re
from datetime import UTC, datetime
from email.utils import parseaddr
from urllib.parse import urlencode

from envoi.infra.cache import TTLCache
from envoi.infra.db import Connection, Database, IntegrityError
from envoi.lists import store
from envoi.lists.errors import AlreadyExists, InvalidInput, ListNotFound, MemberNotFound

ACCESS_LEVELS = ("readonly", "members", "everyone")
REPLY_PREFERENCES = ("list", "sender")
DEFAULT_LIMIT = 100
MAX_LISTS_LIMIT = 1000
MAX_MEMBERS_LIMIT = 100  # Mailgun: "Max is 100"
MAX_BULK = 1000  # members per members.json / members.csv call (Mailgun's limit)
MAX_CSV_BYTES = 25 * 1024 * 1024
MAX_VARS_BYTES = 16 * 1024  # a member's vars, as JSON (Mailgun is silent; bounds what one send holds)
MAX_TEXT = 1024  # list name and description, member name
ADDRESS = re.compile(r"^[^@\s<>(),;:\"\[\]\\\x00-\x1f\x7f]{1,64}@[A-Za-z0-9](?:[A-Za-z0-9.-]{0,251}[A-Za-z0-9])?$")
_CONTROL = re.compile(r"[\x00-\x1f\x7f\ud800-\udfff]")
_SURROGATE = re.compile("[\ud800-\udfff]")
YES = {"yes", "true", "1", "on"}
NO = {"no", "false", "0", "off"}


def rfc2822(dt: datetime) -> str:
    return dt.astimezone(UTC).strftime("%a, %d %b %Y %H:%M:%S -0000")


def list_json(row: dict) -> dict:
    return {"address": row["address"], "name": row["name"], "description": row["description"],
            "access_level": row["access_level"], "reply_preference": row["reply_preference"],
            "created_at": rfc2822(row["created_at"]), "members_count": row["members_count"]}


def member_json(row: dict) -> dict:
    return {"address": row["address"], "name": row["name"], "vars": row["vars"], "subscribed": row["subscribed"]}


def address_of(value, what: str = "address") -> str:
    """A bare, lower-cased address; 'Name <a@b>' gives a@b. InvalidInput if it is not one."""
    text = str(value or "").strip()
    if not text:
        raise InvalidInput(f"{what} parameter is missing")
    if "<" in text:
        text = parseaddr(text)[1]
    if not ADDRESS.match(text):
        raise InvalidInput(f"{what} '{str(value)[:254]}' is not a valid email address")
    return text.lower()


def _name_in(value) -> str:
    """The display name of 'Name <a@b>', if any."""
    text = str(value or "")
    return parseaddr(text)[0] if "<" in text else ""


def boolean(value, what: str, default: bool | None = None) -> bool | None:
    if value is None or value == "":
        return default
    if isinstance(value, bool):
        return value
    text = str(value).strip().lower()
    if text in YES:
        return True
    if text in NO:
        return False
    raise InvalidInput(f"{what} must be yes or no (or true or false)")


def text_field(value, what: str) -> str:
    text = "" if value is None else str(value)
    if len(text) > MAX_TEXT:
        raise InvalidInput(f"{what} is too long (at most {MAX_TEXT} characters)")
    if _CONTROL.search(text):
        raise InvalidInput(f"{what} contains a control character (CR, LF or NUL are not allowed)")
    return text


def vars_field(value) -> dict:
    if value is None or value == "":
        return {}
    if isinstance(value, str):
        try:
            value = json.loads(value)
        except ValueError as ex:
            raise InvalidInput("vars is not a valid JSON object") from ex
    if not isinstance(value, dict):
        raise InvalidInput("vars must be a JSON object")
    text = json.dumps(value, ensure_ascii=False)
    if len(text.encode("utf-8", "surrogatepass")) > MAX_VARS_BYTES:
        raise InvalidInput(f"vars is too large (at most {MAX_VARS_BYTES} bytes as JSON)")
    if "\\u0000" in text or _SURROGATE.search(text):  # Postgres cannot store either in jsonb
        raise InvalidInput("vars contains a NUL character or an invalid (surrogate) code point")
    return value


def _choice(value, what: str, choices: tuple[str, ...], default: str | None) -> str | None:
    if value is None or value == "":
        return default
    text = str(value).strip().lower()
    if text == "read-only":
        text = "readonly"
    if text not in choices:
        raise InvalidInput(f"{what} must be one of: {', '.join(choices)}")
    return text


def _limit(value, default: int, most: int) -> int:
    if value in (None, ""):
        return default
    try:
        n = int(value)
    except (TypeError, ValueError) as ex:
        raise InvalidInput("limit must be a number") from ex
    if n < 1:
        raise InvalidInput("limit must be a positive number")
    return min(n, most)


def _skip(value) -> int:
    try:
        n = int(value or 0)
    except (TypeError, ValueError) as ex:
        raise InvalidInput("skip must be a number") from ex
    if n < 0:
        raise InvalidInput("skip must not be negative")
    return n


class MailingLists:
    def __init__(self, db: Database, public_url: str):
        self.db = db
        self.public_url = public_url.rstrip("/")
        # PERF: a send asks whether any of its recipients is a list; the account's list addresses are
        # cached briefly (this process forgets them on every change; others see one within the ttl).
        self._addresses = TTLCache(ttl=5.0)

    # lists --------------------------------------------------------------------------------------
    def create(self, account_id: int, fields: dict) -> dict:
        address = address_of(fields.get("address"))
        row = {"address": address, "name": text_field(fields.get("name"), "name"),
               "description": text_field(fields.get("description"), "description"),
               "access_level": _choice(fields.get("access_level"), "access_level", ACCESS_LEVELS, "readonly"),
               "reply_preference": _choice(fields.get("reply_preference"), "reply_preference", REPLY_PREFERENCES,
                                           "list")}
        domain_name = address.rpartition("@")[2]
        try:
            with self.db.transaction() as conn:
                domain = store.account_domain(conn, account_id, domain_name)
                if domain is None:
                    raise InvalidInput(f"Domain not found: {domain_name}; a mailing list's address must be on"
                                       " one of the account's domains")
                store.insert_list(conn, account_id, domain["id"], row)
                created = store.get_list(conn, account_id, address)
        except IntegrityError as ex:
            raise AlreadyExists(f"Duplicate object: mailing list {address} already exists") from ex
        self._addresses.forget(account_id)
        return {"list": list_json(created), "message": "Mailing list has been created"}

    def _list(self, conn: Connection, account_id: int, address: str, *, for_update: bool = False) -> dict:
        row = store.get_list(conn, account_id, (address or "").strip().lower(), for_update=for_update)
        if row is None:
            raise ListNotFound(f"Mailing list {address} not found")
        return row

    def get(self, account_id: int, address: str) -> dict:
        with self.db.transaction() as conn:
            return {"list": list_json(self._list(conn, account_id, address))}

    def list(self, account_id: int, params: dict) -> dict:
        """GET /v3/lists: limit, skip, address (exact)."""
        limit = _limit(params.get("limit"), DEFAULT_LIMIT, MAX_LISTS_LIMIT)
        skip = _skip(params.get("skip"))
        address = (params.get("address") or "").strip().lower() or None
        with self.db.transaction() as conn:
            total = store.count_lists(conn, account_id, address)
            rows = store.lists_by_skip(conn, account_id, address, limit, skip)
        return {"total_count": total, "items": [list_json(r) for r in rows]}

    def pages(self, account_id: int, params: dict) -> dict:
        """GET /v3/lists/pages: page first|last|next|prev around the `address` pivot, limit."""
        limit = _limit(params.get("limit"), DEFAULT_LIMIT, MAX_LISTS_LIMIT)
        page, pivot = _page(params)
        with self.db.transaction() as conn:
            rows = store.lists_by_pivot(conn, account_id, pivot, limit, descending=page in ("prev", "last"))
        return {"items": [list_json(r) for r in rows],
                "paging": self._paging("/v3/lists/pages", rows, limit, {})}

    def update(self, account_id: int, address: str, fields: dict) -> dict:
        columns: dict = {}
        if fields.get("address"):
            columns["address"] = address_of(fields["address"])
        for name in ("name", "description"):
            if name in fields:
                columns[name] = text_field(fields[name], name)
        if fields.get("access_level"):
            columns["access_level"] = _choice(fields["access_level"], "access_level", ACCESS_LEVELS, None)
        if fields.get("reply_preference"):
            columns["reply_preference"] = _choice(fields["reply_preference"], "reply_preference",
                                                  REPLY_PREFERENCES, None)
        try:
            with self.db.transaction() as conn:
                row = self._list(conn, account_id, address, for_update=True)
                if "address" in columns and columns["address"] != row["address"]:
                    domain_name = columns["address"].rpartition("@")[2]
                    domain = store.account_domain(conn, account_id, domain_name)
                    if domain is None:
                        raise InvalidInput(f"Domain not found: {domain_name}; a mailing list's address must be"
                                           " on one of the account's domains")
                    columns["domain_id"] = domain["id"]
                if columns:
                    store.update_list(conn, row["id"], columns)
                updated = store.get_list(conn, account_id, columns.get("address", row["address"]))
        except IntegrityError as ex:
            raise AlreadyExists(f"Duplicate object: mailing list {columns.get('address')} already exists") from ex
        self._addresses.forget(account_id)
        return {"list": list_json(updated), "message": "Mailing list has been updated"}

    def delete(self, account_id: int, address: str) -> dict:
        with self.db.transaction() as conn:
            row = self._list(conn, account_id, address, for_update=True)
            store.delete_list(conn, row["id"])
        self._addresses.forget(account_id)
        return {"address": row["address"], "message": "Mailing list has been removed"}

    # members ------------------------------------------------------------------------------------
    def members(self, account_id: int, address: str, params: dict) -> dict:
        """GET /v3/lists/{address}/members: subscribed, limit (at most 100), skip."""
        limit = _limit(params.get("limit"), DEFAULT_LIMIT, MAX_MEMBERS_LIMIT)
        skip = _skip(params.get("skip"))
        subscribed = boolean(params.get("subscribed"), "subscribed")
        with self.db.transaction() as conn:
            row = self._list(conn, account_id, address)
            total = store.count_members(conn, row["id"], subscribed)
            rows = store.members_by_skip(conn, row["id"], subscribed, limit, skip)
        return {"total_count": total, "items": [member_json(r) for r in rows]}

    def member_pages(self, account_id: int, address: str, params: dict) -> dict:
        limit = _limit(params.get("limit"), DEFAULT_LIMIT, MAX_MEMBERS_LIMIT)
        subscribed = boolean(params.get("subscribed"), "subscribed")
        page, pivot = _page(params)
        with self.db.transaction() as conn:
            row = self._list(conn, account_id, address)
            rows = store.members_by_pivot(conn, row["id"], subscribed, pivot, limit,
                                          descending=page in ("prev", "last"))
        extra = {} if subscribed is None else {"subscribed": "yes" if subscribed else "no"}
        return {"items": [member_json(r) for r in rows],
                "paging": self._paging(f"/v3/lists/{row['address']}/members/pages", rows, limit, extra)}

    def member(self, account_id: int, address: str, member: str) -> dict:
        with self.db.transaction() as conn:
            row = self._list(conn, account_id, address)
            found = store.get_member(conn, row["id"], member.strip().lower())
        if found is None:
            raise MemberNotFound(f"Member {member} of mailing list {row['address']} not found")
        return {"member": member_json(found)}

    def add_member(self, account_id: int, address: str, fields: dict) -> dict:
        member = _member(fields, default_subscribed=True)
        upsert = boolean(fields.get("upsert"), "upsert", False)
        with self.db.transaction() as conn:
            row = self._list(conn, account_id, address, for_update=True)
            if store.upsert_members(conn, row["id"], account_id, [member], update=upsert) == 0:
                raise AlreadyExists(f"Address already exists '{member['address']}'")
            found = store.get_member(conn, row["id"], member["address"])
        return {"member": member_json(found), "message": "Mailing list member has been created"}

    def update_member(self, account_id: int, address: str, member: str, fields: dict) -> dict:
        columns: dict = {}
        if fields.get("address"):
            columns["address"] = address_of(fields["address"])
        if "name" in fields:
            columns["name"] = text_field(fields["name"], "name")
        if "vars" in fields:
            columns["vars"] = vars_field(fields["vars"])
        if fields.get("subscribed") not in (None, ""):
            columns["subscribed"] = boolean(fields["subscribed"], "subscribed")
        member = member.strip().lower()
        try:
            with self.db.transaction() as conn:
                row = self._list(conn, account_id, address, for_update=True)
                if store.get_member(conn, row["id"], member) is None:
                    raise MemberNotFound(f"Member {member} of mailing list {row['address']} not found")
                if columns:
                    store.update_member(conn, row["id"], member, columns)
                found = store.get_member(conn, row["id"], columns.get("address", member))
        except IntegrityError as ex:
            raise AlreadyExists(f"Address already exists '{columns.get('address')}'") from ex
        return {"member": member_json(found), "message": "Mailing list member has been updated"}

    def delete_member(self, account_id: int, address: str, member: str) -> dict:
        member = member.strip().lower()
        with self.db.transaction() as conn:
            row = self._list(conn, account_id, address, for_update=True)
            if store.delete_member(conn, row["id"], member) == 0:
                raise MemberNotFound(f"Member {member} of mailing list {row['address']} not found")
        return {"member": {"address": member}, "message": "Mailing list member has been deleted"}

    def add_members_json(self, account_id: int, address: str, members_json, upsert_value) -> dict:
        """POST members.json: `members` is a JSON array of addresses or of member objects."""
        if members_json in (None, ""):
            raise InvalidInput("members parameter is missing")
        if isinstance(members_json, str):
            try:
                members_json = json.loads(members_json)
            except ValueError as ex:
                raise InvalidInput("members is not a valid JSON array") from ex
        if not isinstance(members_json, list):
            raise InvalidInput("members must be a JSON array")
        members = [_member(m if isinstance(m, dict) else {"address": m}, default_subscribed=True)
                   for m in members_json]
        return self._bulk(account_id, address, members, boolean(upsert_value, "upsert", False))

    def add_members_csv(self, account_id: int, address: str, data: bytes, fields: dict) -> dict:
        """POST members.csv: a CSV file (header row naming `address`, and optionally `name`, `vars`,
        `subscribed`; or one address per line); `subscribed` and `upsert` form fields apply to all."""
        if len(data) > MAX_CSV_BYTES:
            raise InvalidInput(f"the CSV file is too large (at most {MAX_CSV_BYTES} bytes)")
        try:
            text = data.decode("utf-8-sig")
        except UnicodeDecodeError as ex:
            raise InvalidInput("the CSV file is not UTF-8 text") from ex
        rows = [r for r in csv.reader(io.StringIO(text)) if any(c.strip() for c in r)]
        default_subscribed = boolean(fields.get("subscribed"), "subscribed", True)
        members = []
        if rows and "address" in [c.strip().lower() for c in rows[0]]:
            header = [c.strip().lower() for c in rows[0]]
            for r in rows[1:]:
                entry = dict(zip(header, r, strict=False))
                members.append(_member({k: entry.get(k) for k in ("address", "name", "vars", "subscribed")},
                                       default_subscribed=default_subscribed))
                if len(members) > MAX_BULK:
                    break
        else:
            for r in rows:
                members.append(_member({"address": r[0], "name": r[1] if len(r) > 1 else ""},
                                       default_subscribed=default_subscribed))
                if len(members) > MAX_BULK:
                    break
        return self._bulk(account_id, address, members, boolean(fields.get("upsert"), "upsert", False))

    def _bulk(self, account_id: int, address: str, members: list[dict], upsert: bool) -> dict:
        if not members:
            raise InvalidInput("members is empty: nothing to add")
        if len(members) > MAX_BULK:
            raise InvalidInput(f"Too many members: at most {MAX_BULK} can be added per call")
        unique = list({m["address"]: m for m in members}.values())  # the last entry for an address wins
        with self.db.transaction() as conn:
            row = self._list(conn, account_id, address, for_update=True)
            store.upsert_members(conn, row["id"], account_id, unique, update=upsert)
            updated = store.get_list(conn, account_id, row["address"])
        return {"list": list_json(updated), "message": "Mailing list has been updated"}

    # sending ------------------------------------------------------------------------------------
    def lists_among(self, account_id: int, addresses) -> dict[str, int]:
        """Which of these addresses are lists of the account: {address: list id} (cached)."""
        mine = self._addresses.get(account_id, lambda: self._read_addresses(account_id))
        if not mine:
            return {}
        return {a.lower(): mine[a.lower()] for a in addresses if a.lower() in mine}

    def _read_addresses(self, account_id: int) -> dict[str, int]:
        with self.db.transaction() as conn:
            return store.account_list_addresses(conn, account_id)

    def recipients(self, account_id: int, address: str) -> tuple[dict, list[dict]]:
        """The list and its subscribed members (address, name, vars), in one transaction, for a send."""
        with self.db.transaction() as conn:
            row = self._list(conn, account_id, address)
            return row, store.subscribed_members(conn, row["id"])

    def unsubscribe(self, conn: Connection, account_id: int, list_address: str, member: str) -> bool:
        """A member's unsubscribe link: that member, of that list only, becomes unsubscribed (in the
        caller's transaction, beside its event)."""
        return store.unsubscribe(conn, account_id, list_address, member.lower()) > 0

    def may_post(self, account_id: int, list_address: str, sender: str) -> bool:
        """Access level for mail arriving from outside (inbound): readonly lists take none, members
        lists only their members', everyone lists anyone's. API and SMTP sends by the account itself
        are always allowed (Mailgun: the API key owner may always send). No such list: nobody."""
        with self.db.transaction() as conn:
            row = store.get_list(conn, account_id, (list_address or "").strip().lower())
            if row is None:
                return False
            if row["access_level"] == "everyone":
                return True
            if row["access_level"] == "readonly":
                return False
            return store.get_member(conn, row["id"], sender.strip().lower()) is not None

    def member_addresses(self, account_id: int, address: str) -> list[str]:
        """Every member's address: what a validation of the list checks (`/v3/lists/{address}/validate`
        hands these to the address validator's bulk job)."""
        with self.db.transaction() as conn:
            return store.all_member_addresses(conn, self._list(conn, account_id, address)["id"])

    # paging -------------------------------------------------------------------------------------
    def _paging(self, path: str, rows: list[dict], limit: int, extra: dict) -> dict:
        def url(page: str, pivot: str | None = None) -> str:
            query = {"page": page, **({"address": pivot} if pivot is not None else {}), "limit": limit, **extra}
            return f"{self.public_url}{path}?{urlencode(query)}"

        first, last = (rows[0]["address"], rows[-1]["address"]) if rows else ("", "")
        return {"first": url("first"), "last": url("last"), "next": url("next", last),
                "previous": url("prev", first)}


def _page(params: dict) -> tuple[str, str | None]:
    page = (params.get("page") or "first").strip().lower()
    if page == "previous":
        page = "prev"
    if page not in ("first", "last", "next", "prev"):
        raise InvalidInput("page must be one of: first, last, next, prev")
    pivot = (params.get("address") or params.get("p") or "").strip().lower() or None
    if page in ("first", "last"):
        pivot = None
    elif pivot is None and page == "prev":
        return "first", None  # nothing before the start: the first page
    return page, pivot


def _member(fields: dict, *, default_subscribed: bool) -> dict:
    raw = fields.get("address")
    address = address_of(raw)
    name = fields.get("name")
    if name in (None, ""):
        name = _name_in(raw)
    return {"address": address, "name": text_field(name, "name"), "vars": vars_field(fields.get("vars")),
            "subscribed": boolean(fields.get("subscribed"), "subscribed", default_subscribed)}
