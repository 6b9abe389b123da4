"""Stored templates: /v3/{domain}/templates (domain templates) and /v4/templates (account templates),
with their versions (Mailgun's templates API; envoi.templates.service does the work)."""

from __future__ import annotations

import falcon

from envoi.api.forms import read_form
from envoi.api.scope import DomainScoped


class TemplateResource(DomainScoped):
    """One resource for both levels: {domain} in the URI makes it the domain's templates, its absence
    the account's. Another tenant's domain is a 404 (DomainScoped), another tenant's template never
    found (every query carries the caller's account)."""

    def __init__(self, accounts, templates):
        super().__init__(accounts)
        self.templates = templates

    def _scope(self, req: falcon.Request, domain: str | None) -> tuple[int, int | None]:
        account_id = req.context.principal.account_id
        return account_id, (self.domain(req, domain)["id"] if domain is not None else None)

    @staticmethod
    def _url(req: falcon.Request) -> str:
        return f"{req.prefix}{req.path}"

    @staticmethod
    def _params(req: falcon.Request, *names: str) -> dict:
        return {k: req.get_param(k) for k in names if req.get_param(k) is not None}

    # /templates
    def on_get(self, req, resp, domain: str | None = None) -> None:
        resp.media = self.templates.page(self._scope(req, domain), self._params(req, "limit", "page", "p"),
                                         self._url(req))

    def on_post(self, req, resp, domain: str | None = None) -> None:
        scope = self._scope(req, domain)
        fields, _ = read_form(req)
        resp.media = self.templates.create(scope, fields)

    def on_delete(self, req, resp, domain: str | None = None) -> None:
        resp.media = self.templates.delete_all(self._scope(req, domain))

    # /templates/{name}
    def on_get_item(self, req, resp, name: str, domain: str | None = None) -> None:
        active = (req.get_param("active") or "").lower() in ("yes", "true")
        resp.media = self.templates.get(self._scope(req, domain), name, active)

    def on_put_item(self, req, resp, name: str, domain: str | None = None) -> None:
        scope = self._scope(req, domain)
        fields, _ = read_form(req)
        resp.media = self.templates.update(scope, name, fields)

    def on_delete_item(self, req, resp, name: str, domain: str | None = None) -> None:
        resp.media = self.templates.delete(self._scope(req, domain), name)

    # /templates/{name}/versions
    def on_get_versions(self, req, resp, name: str, domain: str | None = None) -> None:
        resp.media = self.templates.versions(self._scope(req, domain), name,
                                             self._params(req, "limit", "page", "p"), self._url(req))

    def on_post_versions(self, req, resp, name: str, domain: str | None = None) -> None:
        scope = self._scope(req, domain)
        fields, _ = read_form(req)
        resp.media = self.templates.create_version(scope, name, fields)

    # /templates/{name}/versions/{tag}
    def on_get_version(self, req, resp, name: str, tag: str, domain: str | None = None) -> None:
        resp.media = self.templates.get_version(self._scope(req, domain), name, tag)

    def on_put_version(self, req, resp, name: str, tag: str, domain: str | None = None) -> None:
        scope = self._scope(req, domain)
        fields, _ = read_form(req)
        resp.media = self.templates.update_version(scope, name, tag, fields)

    def on_delete_version(self, req, resp, name: str, tag: str, domain: str | None = None) -> None:
        resp.media = self.templates.delete_version(self._scope(req, domain), name, tag)

    # /templates/{name}/versions/{tag}/copy/{new_tag}
    def on_put_copy(self, req, resp, name: str, tag: str, new_tag: str, domain: str | None = None) -> None:
        scope = self._scope(req, domain)
        # The SDKs send the copy with no body at all (and then a text/plain type): nothing to read.
        fields = read_form(req)[0] if req.content_length else {}
        resp.media = self.templates.copy_version(scope, name, tag, new_tag, fields)
