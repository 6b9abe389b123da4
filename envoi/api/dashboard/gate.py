"""PageGate: the middleware every dashboard request passes.

A page resource says who may see it (`audience`: anyone, customers, operators or
any signed-in person) and, for customers,
which permission its reads and its writes need (`reads`, `writes`: actions of envoi.accounts.roles).
The gate resolves the session cookie, sends strangers to the login page, refuses a role that lacks the
permission, and for every unsafe method checks that the request comes from the dashboard itself (Origin
/ Sec-Fetch-Site) and carries the session's CSRF token. It reads the form once for the page
(`req.context.form`, `req.context.files`), and sets the security headers of every page response.
"""

from __future__ import annotations

from dataclasses import dataclass
from urllib.parse import quote, urlsplit

import falcon

from envoi.accounts import roles, sessions
from envoi.api.auth import SESSION
from envoi.api.dashboard import security
from envoi.api.dashboard.templating import render
from envoi.api.errors import ApiError
from envoi.api.forms import read_form

PREFIX = "/dashboard"


ANYONE = "anyone"        # login, invitation: no session needed
CUSTOMER = "customer"    # a user of an account
OPERATOR = "operator"    # a platform admin
SIGNED_IN = "signed-in"  # anybody with a session, customer or operator (their own account page)
READS = frozenset({"GET", "HEAD", "OPTIONS"})


@dataclass(frozen=True)
class PageUser:
    """The signed-in person. `account_id` None = an operator. Doubles as the request's principal, so
    the API's domain scoping (envoi.api.scope) works the same for pages."""
    id: int
    account_id: int | None
    email: str
    role: str

    @property
    def is_operator(self) -> bool:
        return self.account_id is None

    def may(self, action: str) -> bool:
        return not self.is_operator and roles.allowed(self.role, action)


class PageGate:
    def __init__(self, sessions_store: sessions.Sessions):
        self.sessions = sessions_store

    def process_request(self, req: falcon.Request, resp: falcon.Response) -> None:
        if req.path == PREFIX or req.path.startswith(PREFIX + "/"):
            req.context.render_error = render_error  # errors of pages are pages (envoi.api.errors)

    def process_resource(self, req: falcon.Request, resp: falcon.Response, resource, params) -> None:
        if resource is None or getattr(resource, "auth", None) != SESSION:
            return
        token = _session_cookie(req)
        session = self.sessions.resolve(token) if token else None
        user = None
        if session is not None:
            user = PageUser(session["user_id"], session["account_id"], session["email"], session["role"])
            req.context.user = req.context.principal = user
            req.context.session_token = token
            req.context.csrf_token = sessions.csrf_token(token)
        unsafe = req.method not in READS
        if unsafe:
            _require_same_origin(req)
        audience = getattr(resource, "audience", CUSTOMER)
        if audience != ANYONE:
            if user is None:
                if unsafe:
                    raise ApiError(401, "Your session has ended; sign in again")
                raise falcon.HTTPSeeOther(f"{PREFIX}/login?next={quote(req.relative_uri, safe='')}")
            if audience == OPERATOR and not user.is_operator:
                raise ApiError(404, "Page not found")
            if audience == CUSTOMER:
                if user.is_operator:
                    raise ApiError(404, "Operators have no account pages; see the operator pages")
                action = getattr(resource, "writes" if unsafe else "reads", None)
                if action is not None:
                    roles.require(user.role, action)
        if unsafe:
            fields, files = read_form(req)
            req.context.form = {name: values[-1] for name, values in fields.items()}
            req.context.form_lists, req.context.files = fields, files
            if user is not None and not sessions.verify_csrf(
                    token, req.context.form.get("csrf_token") or req.get_header("X-CSRF-Token")):
                raise ApiError(403, "The form has expired or did not come from this dashboard; reload the page")

    def process_response(self, req: falcon.Request, resp: falcon.Response, resource, req_succeeded: bool) -> None:
        if getattr(req.context, "render_error", None) is not None and getattr(resource, "auth", SESSION) == SESSION:
            security.apply(resp, getattr(req.context, "content_policy", security.PAGE_POLICY))


def _session_cookie(req: falcon.Request) -> str | None:
    values = req.get_cookie_values(sessions.COOKIE_NAME)
    return values[0] if values else None


def _require_same_origin(req: falcon.Request) -> None:
    """A state change must come from a page of this dashboard: browsers send Sec-Fetch-Site and Origin
    with every POST, so a cross-site form or script is refused here even before the CSRF token."""
    site = req.get_header("Sec-Fetch-Site")
    if site is not None and site not in ("same-origin", "none"):
        raise ApiError(403, "Cross-site requests are refused")
    origin = req.get_header("Origin")
    if origin is not None and urlsplit(origin).netloc.lower() != (req.get_header("Host") or "").lower():
        raise ApiError(403, "Cross-site requests are refused")  # includes "null" (sandboxed frames)


def safe_next(value: str | None) -> str:
    """Where to go after signing in: a dashboard path only (never another site: no open redirect)."""
    if value and value.startswith(PREFIX + "/") and not value.startswith("//") and "\\" not in value:
        parts = urlsplit(value)
        if not parts.scheme and not parts.netloc:
            return value
    return PREFIX


def render_error(req: falcon.Request, resp: falcon.Response, exception: falcon.HTTPError) -> None:
    message = getattr(exception, "message", None) or exception.description or exception.title
    render(req, resp, "error.html", status=exception.status_code, message=message, status_code=exception.status_code)
