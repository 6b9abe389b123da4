"""HTTP Basic auth with `api:KEY`, resolved to a Principal. Keys are bound to their region."""

from __future__ import annotations

import base64
import binascii

import falcon

from envoi.accounts.service import key_region
from envoi.api import roles
from envoi.api.errors import ApiError, unauthorized

PUBLIC = "public"
SESSION = "session"  # a dashboard page: envoi.api.dashboard.gate signs it in with the session cookie
OPERATOR = "operator"
CUSTOMER = "customer"  # any customer key, within what its role allows (envoi/api/roles.py)
ON_BEHALF_OF = "X-Mailgun-On-Behalf-Of"  # Mailgun's header: a parent account's key acts for a subaccount


class AuthMiddleware:
    def __init__(self, accounts, region: str, region_urls: dict[str, str]):
        self.accounts = accounts
        self.region = region
        self.region_urls = region_urls

    def process_resource(self, req: falcon.Request, resp, resource, params) -> None:
        if resource is None:
            return
        needs = getattr(resource, "auth", CUSTOMER)
        if needs in (PUBLIC, SESSION):
            return
        secret = _basic_password(req.get_header("Authorization"))
        if not secret:
            raise unauthorized()
        region = key_region(secret)
        if region and region != self.region:
            url = self.region_urls.get(region, f"the {region.upper()} region's API")
            raise unauthorized(
                f"This API key belongs to the {region.upper()} region; send this request to {url} instead"
            )
        principal = self.accounts.authenticate_key(secret)
        if principal is None:
            raise unauthorized()
        if needs == OPERATOR and not principal.is_operator:
            raise unauthorized()
        if needs == CUSTOMER and principal.is_operator and not getattr(resource, "operator_too", False):
            raise unauthorized("Operator keys cannot act for a customer")
        behalf = req.get_header(ON_BEHALF_OF)
        if behalf is not None:
            # A parent's key acting for one of its own subaccounts, with the key's role: from here on the
            # request is the subaccount's (its domains, events, keys...). Anyone else's id: 403 Forbidden.
            principal = self.accounts.act_for(principal, behalf.strip())
        if not principal.is_operator:
            if not roles.allows(principal.role, resource, req.method):
                raise unauthorized()
            _within_scope(principal, params)
        req.context.principal = principal


def _within_scope(principal, params: dict) -> None:
    """A key scoped to one domain acts on that domain only: another domain is a 404 (as another tenant's
    would be), an account-wide resource is refused."""
    if principal.domain is None:
        return
    if "domain" not in params:
        raise unauthorized("This API key is limited to one domain")
    if params["domain"].strip().lower().rstrip(".") != principal.domain:
        raise ApiError(404, f"Domain not found: {params['domain']}")


def _basic_password(header: str | None) -> str | None:
    if not header or not header.lower().startswith("basic "):
        return None
    try:
        decoded = base64.b64decode(header[6:].strip(), validate=True).decode()
    except (binascii.Error, UnicodeDecodeError):
        return None
    user, sep, password = decoded.partition(":")
    return password if sep and user == "api" else None
