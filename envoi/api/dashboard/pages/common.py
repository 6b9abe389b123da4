"""What several pages share: the account's domains and the one a page is looking at."""

from __future__ import annotations

import falcon

MAX_DOMAINS_LISTED = 1000


def domain_names(accounts, req: falcon.Request) -> list[str]:
    """The account's domain names, for the pages' domain picker."""
    _, rows = accounts.list_domains(req.context.user.account_id, limit=MAX_DOMAINS_LISTED)
    return [d["name"] for d in rows]


def chosen_domain(accounts, req: falcon.Request, *, default_first: bool = True) -> tuple[list[str], dict | None]:
    """(the account's domain names, the domain named by ?domain= or the first one). Another account's
    domain is a 404 (NotFound), as in the API."""
    names = domain_names(accounts, req)
    name = (req.get_param("domain") or "").strip()
    if not name:
        if not default_first or not names:
            return names, None
        name = names[0]
    return names, accounts.get_domain(name, req.context.user.account_id)


def done_notice(req: falcon.Request, texts: dict[str, str]) -> str:
    """The fixed confirmation a page shows after a redirect, chosen by ?done=<code> (never text from the URL)."""
    return texts.get(req.get_param("done") or "", "")
