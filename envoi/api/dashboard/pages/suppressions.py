"""Suppressions: each domain's bounces, unsubscribes, complaints and whitelists, browsed with the
service's own paging, searched by prefix, added to, removed from, imported (CSV upload, with progress
from static/suppressions.js) and exported (a streamed CSV). The same service as /v3/{d}/{kind}."""

from __future__ import annotations

import csv
import io
from collections.abc import Iterator
from urllib.parse import urlencode

import falcon

from envoi.api.auth import SESSION
from envoi.api.dashboard.gate import PREFIX
from envoi.api.dashboard.pages.common import domain_names, done_notice
from envoi.api.dashboard.templating import render
from envoi.suppression.errors import InvalidInput, SuppressionError
from envoi.suppression.service import KINDS

PAGE_SIZE = 50
#: The columns of each list, in the API's item keys; the CSV export uses them, and the import reads them back.
COLUMNS = {
    "bounces": ("address", "code", "error", "created_at"),
    "unsubscribes": ("address", "tags", "created_at"),
    "complaints": ("address", "created_at"),
    "whitelists": ("address", "domain", "reason", "created_at"),
}
DONE = {"added": "The entry was added.", "deleted": "The entry was removed."}
FORMULA_STARTS = ("=", "+", "-", "@", "\t", "\r")


def csv_cell(value) -> str:
    """A value safe to open in a spreadsheet: one that would start a formula gets a leading quote."""
    text = ";".join(value) if isinstance(value, list) else "" if value is None else str(value)
    return "'" + text if text.startswith(FORMULA_STARTS) else text


def row_of(kind: str, item: dict) -> dict:
    """An API item as the page's and the CSV's columns."""
    if kind == "whitelists":
        return {"address": item["value"] if item["type"] == "address" else "",
                "domain": item["value"] if item["type"] == "domain" else "",
                "reason": item["reason"], "created_at": item["createdAt"]}
    return {column: item[column] for column in COLUMNS[kind]}


def csv_lines(kind: str, items) -> Iterator[bytes]:
    buffer = io.StringIO()
    writer = csv.writer(buffer)
    writer.writerow(COLUMNS[kind])
    for n, item in enumerate(items, 1):
        row = row_of(kind, item)
        writer.writerow([csv_cell(row[c]) for c in COLUMNS[kind]])
        if n % 500 == 0:
            yield buffer.getvalue().encode()
            buffer.seek(0)
            buffer.truncate()
    yield buffer.getvalue().encode()


class _Base:
    auth, reads, writes = SESSION, "manage_suppressions", "manage_suppressions"

    def __init__(self, accounts, suppressions):
        self.accounts = accounts
        self.suppressions = suppressions

    def _choice(self, req: falcon.Request, values: dict) -> tuple[list[str], dict | None, str]:
        """(the account's domain names, the chosen domain row or None, the chosen kind). Another
        account's domain is a 404 (NotFound)."""
        names = domain_names(self.accounts, req)
        name = (values.get("domain") or "").strip() or (names[0] if names else "")
        kind = values.get("kind") if values.get("kind") in KINDS else KINDS[0]
        row = self.accounts.get_domain(name, req.context.user.account_id) if name else None
        return names, row, kind

    def _render(self, req, resp, names, row, kind, *, status: int = 200, error: str | None = None,
                notice: str = "", imported: dict | None = None) -> None:
        term = (req.get_param("term") or "").strip()
        which = req.get_param("page") or "first"
        items, links = [], {}
        if row is not None:
            query = {"limit": str(PAGE_SIZE), "page": which, "term": term,
                     "address": req.get_param("address") or ""}
            try:
                items = self.suppressions.page(row, kind, query)["items"]
            except SuppressionError as ex:
                error, status = ex.message, ex.http_status
            links = self._links(row["name"], kind, term, which, items)
        render(req, resp, "suppressions.html", status=status, domains=names,
               domain=row["name"] if row else "", kind=kind, kinds=KINDS, term=term,
               rows=[row_of(kind, i) for i in items], columns=COLUMNS[kind], links=links,
               error=error, notice=notice or done_notice(req, DONE), imported=imported)

    @staticmethod
    def _links(domain: str, kind: str, term: str, which: str, items: list[dict]) -> dict:
        def url(**extra) -> str:
            return f"{PREFIX}/suppressions?" + urlencode({"domain": domain, "kind": kind, "term": term, **extra})

        if not items:
            return {"first": url()} if which != "first" else {}
        key = "value" if kind == "whitelists" else "address"
        links = {"first": url(), "last": url(page="last")}
        if which != "first":
            links["previous"] = url(page="previous", address=items[0][key])
        if len(items) == PAGE_SIZE or which in ("previous", "prev", "last"):
            links["next"] = url(page="next", address=items[-1][key])
        return links

    def _back(self, row: dict, kind: str, done: str) -> falcon.HTTPSeeOther:
        return falcon.HTTPSeeOther(f"{PREFIX}/suppressions?" + urlencode({"domain": row["name"], "kind": kind,
                                                                           "done": done}))


class SuppressionsPage(_Base):
    """/dashboard/suppressions?domain=&kind=&term=&page=&address="""

    def on_get(self, req: falcon.Request, resp: falcon.Response) -> None:
        names, row, kind = self._choice(req, req.params)
        self._render(req, resp, names, row, kind)

    def on_post_add(self, req: falcon.Request, resp: falcon.Response) -> None:
        names, row, kind = self._choice(req, req.context.form)
        if row is None:
            raise falcon.HTTPSeeOther(f"{PREFIX}/suppressions")
        fields = {k: v for k, v in req.context.form_lists.items() if k not in ("csrf_token", "domain", "kind")}
        if "domain_value" in fields:  # a whitelisted domain (the form's `domain` is the sending domain)
            fields["domain"] = fields.pop("domain_value")
        if "tags" in fields:
            fields["tags"] = [t.strip() for v in fields["tags"] for t in v.split(",") if t.strip()]
        try:
            self.suppressions.add(row, kind, fields)
        except SuppressionError as ex:
            self._render(req, resp, names, row, kind, status=ex.http_status, error=ex.message)
            return
        raise self._back(row, kind, "added")

    def on_post_delete(self, req: falcon.Request, resp: falcon.Response) -> None:
        _, row, kind = self._choice(req, req.context.form)
        if row is None:
            raise falcon.HTTPSeeOther(f"{PREFIX}/suppressions")
        self.suppressions.delete(row, kind, req.context.form.get("value", ""))
        raise self._back(row, kind, "deleted")

    def on_post_import(self, req: falcon.Request, resp: falcon.Response) -> None:
        """A CSV upload. From suppressions.js (Accept: application/json) the answer is JSON for the
        progress panel; from the plain form, the page with the result."""
        names, row, kind = self._choice(req, req.context.form)
        wants_json = "application/json" in (req.get_header("Accept") or "")
        uploads = req.context.files.get("file") or []
        try:
            if row is None:
                raise InvalidInput("Add a domain first")
            if not uploads or uploads[0].size == 0:
                raise InvalidInput("Choose a CSV file to import")
            result = self.suppressions.import_csv(row, kind, uploads[0].data)
        except SuppressionError as ex:
            if wants_json:
                resp.status, resp.media = falcon.code_to_http_status(ex.http_status), {"error": ex.message}
                return
            self._render(req, resp, names, row, kind, status=ex.http_status, error=ex.message)
            return
        message = f"Imported {result['count']} entries into {kind}."
        if wants_json:
            resp.media = {"count": result["count"], "message": message}
            return
        self._render(req, resp, names, row, kind, notice=message, imported=result)

    def on_get_export(self, req: falcon.Request, resp: falcon.Response) -> None:
        """The whole list as CSV, streamed a page at a time."""
        _, row, kind = self._choice(req, req.params)
        if row is None:
            raise falcon.HTTPSeeOther(f"{PREFIX}/suppressions")
        resp.content_type = "text/csv; charset=utf-8"
        resp.set_header("Content-Disposition", f'attachment; filename="{row["name"]}-{kind}.csv"')
        resp.stream = csv_lines(kind, self.suppressions.export(row, kind))
