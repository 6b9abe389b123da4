"""Stored templates, Mailgun's templates API: domain templates (/v3/{domain}/templates) and account
templates (/v4/templates), each with up to MAX_VERSIONS versions, one of them active.

A scope is (account_id, domain_id): domain_id None is the account's own templates. Replies are
Mailgun's shapes (docs/templates.md)."""

from __future__ import annotations

import json
import re
from datetime import UTC, datetime
from urllib.parse import urlencode

from envoi.infra.db import Database
from envoi.templates import render, store
from envoi.templates.errors import Conflict, InvalidInput, NotFound

MAX_TEMPLATES = 100  # per domain (and per account for account templates), as Mailgun
MAX_VERSIONS = 10  # per template, as Mailgun
MAX_CONTENT = 100 * 1024  # bytes of one version's template, as Mailgun (100 KB)
MAX_DESCRIPTION = 1024
MAX_COMMENT = 1024
DEFAULT_LIMIT, MAX_LIMIT = 10, 100
DEFAULT_TAG = "initial"
ENGINE = "handlebars"
NAME = re.compile(r"^[a-z0-9._~-]{1,255}$")  # Mailgun: alphanumerics and .-_~, stored lower case
PAGES = ("first", "last", "next", "prev")
_CONTROL = re.compile(r"[\x00-\x08\x0a-\x1f\x7f]")  # never in a header (TAB is white space)
Scope = tuple[int, int | None]  # (account_id, domain_id or None for account templates)


def rfc2822(dt: datetime) -> str:
    return dt.astimezone(UTC).strftime("%a, %d %b %Y %H:%M:%S UTC")


def _last(fields: dict[str, list[str]], name: str) -> str | None:
    values = fields.get(name)
    return values[-1] if values else None


def _name(value: str | None, what: str = "name") -> str:
    if value is None or not value.strip():
        raise InvalidInput(f"Missing mandatory parameter: {what}")
    value = value.strip().lower()
    if not NAME.match(value):
        raise InvalidInput(f"{what} is not valid: use up to 255 letters, digits and . - _ ~")
    return value


def _text(value: str | None, what: str, limit: int) -> str:
    value = value or ""
    if "\x00" in value:
        raise InvalidInput(f"{what} contains a NUL character")
    if len(value.encode("utf-8", "surrogatepass")) > limit:
        raise InvalidInput(f"{what} is too long (at most {limit} bytes)")
    return value


def _engine(value: str | None) -> None:
    if value and value.strip().lower() != ENGINE:
        raise InvalidInput(f"engine '{value.strip()[:50]}' is not supported: use {ENGINE}")


def _content(value: str | None) -> str:
    if value is None or value == "":
        raise InvalidInput("Missing mandatory parameter: template")
    value = _text(value, "template", MAX_CONTENT)
    render.check(value)
    return value


def _headers(value: str | None) -> dict | None:
    if value is None or value == "":
        return None
    try:
        parsed = json.loads(value)
    except ValueError as ex:
        raise InvalidInput("headers is not valid JSON") from ex
    if not isinstance(parsed, dict) or not all(isinstance(v, str) for v in parsed.values()):
        raise InvalidInput("headers must be a JSON object of strings (From, Subject, Reply-To)")
    if any(_CONTROL.search(f"{k}{v}") for k, v in parsed.items()):
        raise InvalidInput("headers must not contain control characters (CR, LF, NUL)")
    return parsed


def _yes(value: str | None) -> bool:
    return (value or "").strip().lower() in ("yes", "true", "1")


def template_json(row: dict) -> dict:
    return {"name": row["name"], "description": row["description"], "createdAt": rfc2822(row["created_at"]),
            "createdBy": row["created_by"], "id": str(row["id"])}


def version_json(row: dict, content: bool = True) -> dict:
    out = {"tag": row["tag"], "engine": row["engine"], "comment": row["comment"], "active": row["active"],
           "createdAt": rfc2822(row["created_at"]), "id": str(row["id"])}
    if content:
        out["template"] = row["template"]
        if row["headers"] is not None:
            out["headers"] = row["headers"]
    return out


def _paging(url: str, limit: int, first_key: str | None, last_key: str | None, pivot: str | None) -> dict:
    def link(**params) -> str:
        return f"{url}?{urlencode({**params, 'limit': limit})}"
    return {"first": link(page="first"), "last": link(page="last"),
            "next": link(page="next", p=last_key or pivot or ""),
            "previous": link(page="prev", p=first_key or pivot or "")}


def _page_params(params: dict) -> tuple[int, str, str | None]:
    try:
        limit = int(params.get("limit") or DEFAULT_LIMIT)
    except ValueError as ex:
        raise InvalidInput("limit must be a number") from ex
    if not 1 <= limit <= MAX_LIMIT:
        raise InvalidInput(f"limit must be between 1 and {MAX_LIMIT}")
    page = (params.get("page") or "first").lower()
    if page not in PAGES:
        raise InvalidInput("page must be one of first, last, next, prev")
    return limit, page, params.get("p") or None


class Templates:
    def __init__(self, db: Database):
        self.db = db

    # templates ------------------------------------------------------------------------------------
    def create(self, scope: Scope, fields: dict[str, list[str]], created_by: str = "") -> dict:
        name = _name(_last(fields, "name"))
        description = _text(_last(fields, "description"), "description", MAX_DESCRIPTION)
        content = _last(fields, "template")
        _engine(_last(fields, "engine"))
        version = None
        if content is not None:
            version = (_content(content), _name(_last(fields, "tag") or DEFAULT_TAG, "tag"),
                       _text(_last(fields, "comment"), "comment", MAX_COMMENT), _headers(_last(fields, "headers")))
        with self.db.transaction() as conn:
            store.lock_scope(conn, *scope)
            if store.count(conn, *scope) >= MAX_TEMPLATES:
                raise InvalidInput(f"template limit reached: at most {MAX_TEMPLATES} templates")
            row = store.insert(conn, *scope, name, description, created_by)
            if row is None:
                raise Conflict(f"template with name '{name}' already exists")
            out = template_json(row)
            if version is not None:
                content, tag, comment, headers = version
                out["version"] = version_json(store.insert_version(conn, row, tag, content, comment, headers, True))
        return {"message": "template has been stored", "template": out}

    def page(self, scope: Scope, params: dict, url: str) -> dict:
        limit, page, pivot = _page_params(params)
        with self.db.transaction() as conn:
            rows = store.page(conn, *scope, limit, page, pivot)
        items = [template_json(r) for r in rows]
        return {"items": items, "paging": _paging(url, limit, rows[0]["name"] if rows else None,
                                                  rows[-1]["name"] if rows else None, pivot)}

    def _template(self, conn, scope: Scope, name: str, lock: bool = False) -> dict:
        row = store.find(conn, *scope, (name or "").lower(), lock=lock)
        if row is None:
            raise NotFound("template not found")
        return row

    def get(self, scope: Scope, name: str, active: bool = False) -> dict:
        with self.db.transaction() as conn:
            row = self._template(conn, scope, name)
            out = template_json(row)
            if active and (version := store.version(conn, row["id"], None)) is not None:
                out["version"] = version_json(version)
        return {"template": out}

    def update(self, scope: Scope, name: str, fields: dict[str, list[str]]) -> dict:
        description = _last(fields, "description")
        if description is None:
            raise InvalidInput("Missing mandatory parameter: description")
        with self.db.transaction() as conn:
            row = self._template(conn, scope, name, lock=True)
            store.set_description(conn, row["id"], _text(description, "description", MAX_DESCRIPTION))
        return {"message": "template has been updated", "template": {"name": row["name"]}}

    def delete(self, scope: Scope, name: str) -> dict:
        with self.db.transaction() as conn:
            row = self._template(conn, scope, name, lock=True)
            store.delete(conn, row["id"])
        return {"message": "template has been deleted", "template": {"name": row["name"]}}

    def delete_all(self, scope: Scope) -> dict:
        with self.db.transaction() as conn:
            store.delete_all(conn, *scope)
        return {"message": "templates have been deleted"}

    # versions -------------------------------------------------------------------------------------
    def create_version(self, scope: Scope, name: str, fields: dict[str, list[str]]) -> dict:
        content = _content(_last(fields, "template"))
        _engine(_last(fields, "engine"))
        tag = _name(_last(fields, "tag"), "tag")
        comment = _text(_last(fields, "comment"), "comment", MAX_COMMENT)
        headers = _headers(_last(fields, "headers"))
        with self.db.transaction() as conn:
            row = self._template(conn, scope, name, lock=True)
            count = store.version_count(conn, row["id"])
            if count >= MAX_VERSIONS:
                raise InvalidInput(f"version limit reached: at most {MAX_VERSIONS} versions per template")
            # The first version is active whatever `active` says (a send needs one); later ones on request.
            active = count == 0 or _yes(_last(fields, "active"))
            version = store.insert_version(conn, row, tag, content, comment, headers, active)
            if version is None:
                raise Conflict(f"version with tag '{tag}' already exists")
        return {"message": "new version of the template has been stored",
                "template": {**template_json(row), "version": version_json(version)}}

    def versions(self, scope: Scope, name: str, params: dict, url: str) -> dict:
        limit, page, pivot = _page_params(params)
        with self.db.transaction() as conn:
            row = self._template(conn, scope, name)
            rows = store.versions_page(conn, row["id"], limit, page, pivot)
        return {"template": {**template_json(row), "versions": [version_json(v, content=False) for v in rows]},
                "paging": _paging(url, limit, rows[0]["tag"] if rows else None, rows[-1]["tag"] if rows else None,
                                  pivot)}

    def _version(self, conn, template: dict, tag: str) -> dict:
        version = store.version(conn, template["id"], (tag or "").lower())
        if version is None:
            raise NotFound("version not found")
        return version

    def get_version(self, scope: Scope, name: str, tag: str) -> dict:
        with self.db.transaction() as conn:
            row = self._template(conn, scope, name)
            version = self._version(conn, row, tag)
        return {"template": {**template_json(row), "version": version_json(version)}}

    def update_version(self, scope: Scope, name: str, tag: str, fields: dict[str, list[str]]) -> dict:
        changes: dict = {}
        if (content := _last(fields, "template")) is not None:
            changes["template"] = _content(content)
        if (comment := _last(fields, "comment")) is not None:
            changes["comment"] = _text(comment, "comment", MAX_COMMENT)
        if (headers := _last(fields, "headers")) is not None:
            changes["headers"] = _headers(headers)
        activate = _yes(_last(fields, "active"))
        with self.db.transaction() as conn:
            row = self._template(conn, scope, name, lock=True)
            version = self._version(conn, row, tag)
            if activate and not version["active"]:
                store.deactivate(conn, row["id"])
                changes["active"] = True
            store.update_version(conn, version["id"], changes)
        return {"message": "version has been updated", "template": {"name": row["name"],
                                                                    "version": {"tag": version["tag"]}}}

    def delete_version(self, scope: Scope, name: str, tag: str) -> dict:
        with self.db.transaction() as conn:
            row = self._template(conn, scope, name, lock=True)
            version = self._version(conn, row, tag)
            store.delete_version(conn, version["id"])
        return {"message": "version has been deleted", "template": {"name": row["name"],
                                                                    "version": {"tag": version["tag"]}}}

    def copy_version(self, scope: Scope, name: str, tag: str, new_tag: str, fields: dict[str, list[str]]) -> dict:
        new_tag = _name(new_tag, "new_tag")
        comment = _last(fields, "comment")
        with self.db.transaction() as conn:
            row = self._template(conn, scope, name, lock=True)
            source = self._version(conn, row, tag)
            if store.version_count(conn, row["id"]) >= MAX_VERSIONS:
                raise InvalidInput(f"version limit reached: at most {MAX_VERSIONS} versions per template")
            copied = store.insert_version(conn, row, new_tag, source["template"],
                                          _text(comment, "comment", MAX_COMMENT) if comment is not None
                                          else source["comment"], source["headers"], False)
            if copied is None:
                raise Conflict(f"version with tag '{new_tag}' already exists")
        return {"message": "version has been copied", "version": version_json(copied),
                "template": {**template_json(row), "version": version_json(copied)}}

    # sending --------------------------------------------------------------------------------------
    def for_send(self, account_id: int, domain_id: int, name: str, tag: str | None) -> dict | None:
        """The version a send renders (domain template first, then the account's), or None."""
        with self.db.transaction() as conn:
            return store.for_send(conn, account_id, domain_id, name.strip().lower(),
                                  tag.strip().lower() if tag else None)
