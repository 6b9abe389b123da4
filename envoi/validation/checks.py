"""What an address says about itself, without the network: role mailboxes, disposable domains, and a
suggestion for a mistyped popular domain."""

from __future__ import annotations

import functools

from disposable_email_domains import blocklist as _DISPOSABLE

#: Local parts that name a function, not a person (Mailgun flags these as role addresses): RFC 2142's
#: mailbox names plus the ones lists and sign-up forms commonly see.
ROLE_LOCAL_PARTS = frozenset(["abuse", "admin", "administrator", "billing", "careers", "compliance", "contact", "customercare", "customerservice", "devnull", "dns", "enquiries", "enquiry", "feedback", "ftp", "hello", "help", "helpdesk", "hostmaster", "hr", "info", "inoc", "ispfeedback", "ispsupport", "jobs", "list", "list-request", "mail", "mailer-daemon", "maildaemon", "marketing", "media", "news", "newsletter", "no-reply", "noc", "noreply", "nobody", "null", "office", "orders", "phish", "phishing", "postmaster", "press", "privacy", "registrar", "remove", "root", "sales", "security", "service", "spam", "support", "sysadmin", "tech", "team", "undisclosed-recipients", "unsubscribe", "usenet", "uucp", "webmaster", "www"])

#: The mailbox providers most addresses are at: a domain one or two typing slips from one of these (and
#: not one of them) gets `did_you_mean`.
POPULAR_DOMAINS = (
    "gmail.com", "googlemail.com", "yahoo.com", "yahoo.co.uk", "yahoo.fr", "ymail.com", "hotmail.com",
    "hotmail.co.uk", "hotmail.fr", "outlook.com", "live.com", "msn.com", "icloud.com", "me.com", "mac.com",
    "aol.com", "protonmail.com", "proton.me", "gmx.com", "gmx.de", "gmx.net", "web.de", "t-online.de",
    "orange.fr", "free.fr", "laposte.net", "libero.it", "yandex.ru", "mail.ru", "qq.com", "163.com",
    "comcast.net", "verizon.net", "att.net", "sbcglobal.net", "btinternet.com", "zoho.com", "fastmail.com",
)
_POPULAR = frozenset(POPULAR_DOMAINS)


def is_role(local_part: str) -> bool:
    base = local_part.lower().split("+", 1)[0]
    return base in ROLE_LOCAL_PARTS


def is_disposable(domain: str) -> bool:
    """The domain or a parent of it is on the disposable-email-domains list (maintained on PyPI)."""
    labels = domain.lower().rstrip(".").split(".")
    return any(".".join(labels[i:]) in _DISPOSABLE for i in range(len(labels) - 1))


@functools.lru_cache(maxsize=4096)
def suggest_domain(domain: str) -> str | None:
    """The popular domain this one is most likely a typo of (gmial.com -> gmail.com), or None."""
    domain = domain.lower()
    if domain in _POPULAR:
        return None
    allowed = 1 if len(domain) < 8 else 2
    best, best_distance = None, allowed + 1
    for candidate in POPULAR_DOMAINS:
        if abs(len(candidate) - len(domain)) > allowed:
            continue
        distance = _distance(domain, candidate, best_distance)
        if distance < best_distance:
            best, best_distance = candidate, distance
    return best


def _distance(a: str, b: str, limit: int) -> int:
    """Optimal string alignment distance (insertions, deletions, substitutions, adjacent swaps), giving
    up at `limit`."""
    previous2: list[int] = []
    previous = list(range(len(b) + 1))
    for i in range(1, len(a) + 1):
        current = [i] + [0] * len(b)
        for j in range(1, len(b) + 1):
            cost = a[i - 1] != b[j - 1]
            current[j] = min(previous[j] + 1, current[j - 1] + 1, previous[j - 1] + cost)
            if i > 1 and j > 1 and a[i - 1] == b[j - 2] and a[i - 2] == b[j - 1]:
                current[j] = min(current[j], previous2[j - 2] + 1)
        if min(current) >= limit:
            return limit
        previous2, previous = previous, current
    return previous[-1]
