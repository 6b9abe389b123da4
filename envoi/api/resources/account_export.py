"""GET /v1/account/export: the caller's whole account as a JSON-lines archive (envoi.privacy.archive),
streamed in batches. Admin keys only (the `export_account` action); recorded in the audit log."""

from __future__ import annotations

import falcon

from envoi.accounts import roles


class AccountExport:
    def __init__(self, privacy, audit, client_address):
        self.privacy = privacy
        self.audit = audit
        self.client_address = client_address

    def on_get(self, req: falcon.Request, resp: falcon.Response) -> None:
        principal = req.context.principal
        roles.require(principal.role, "export_account")
        account_id = principal.account_id
        self.audit.record(account_id, f"key:{principal.key_id}", "account.exported", ip=self.client_address(req))
        resp.content_type = "application/x-ndjson"
        resp.downloadable_as = f"envoi-account-{account_id}.jsonl"
        resp.stream = (line.encode() for line in self.privacy.export_account(account_id))
