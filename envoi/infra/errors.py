"""The one base class of the errors envoi's packages raise to a caller, and how an edge renders them.

Each package has its own `errors.py` deriving from EnvoiError; a class says once what it means at
each edge: the HTTP status (the body is Mailgun's {"message": ...}) and the SMTP reply code with its
enhanced status code (RFC 3463). The edges map by class (api/errors.py, the SMTP servers), so a
package raises its own errors and never translates another's.
"""

from __future__ import annotations

import re
from typing import ClassVar

SMTP_TEXT_LIMIT = 400  # a reply line stays well under SMTP's 512-octet limit


class EnvoiError(Exception):
    """Refused: nothing was done. `message` is the text the caller sees (HTTP and SMTP)."""

    http_status: ClassVar[int] = 400
    smtp_code: ClassVar[int] = 550
    smtp_enhanced: ClassVar[str] = "5.6.0"
    #: Seconds the caller should wait before retrying (a Retry-After header); None = no header.
    retry_after: ClassVar[int | None] = None
    #: SMTP's wording, where it differs from the HTTP message; None = the same text.
    smtp_message: ClassVar[str | None] = None
    #: The edge logs it: it points at an outage or at a check missing before the database.
    logged: ClassVar[bool] = False
    message: str = ""

    def __init__(self, message: str | None = None, *, detail: str | None = None):
        """message: what the caller is told (the class's own when None); detail: str(error), for logs
        and the CLI, when it must not reach the caller (a driver's text)."""
        if message is not None:
            self.message = message
        elif not self.message:
            raise TypeError(f"{type(self).__name__} needs a message")
        super().__init__(detail if detail is not None else self.message)

    def smtp_reply(self) -> str:
        """The full SMTP reply line, e.g. "550 5.7.1 Domain not found: example.com"."""
        text = re.sub(r"[\r\n]+", " ", self.smtp_message or self.message)[:SMTP_TEXT_LIMIT]
        return f"{self.smtp_code} {self.smtp_enhanced} {text}"


class TemporaryFailure(EnvoiError):
    """Nothing is wrong with the request: the service cannot take it now, the caller may retry
    (Mailgun's SDKs retry 503s; an SMTP client queues on 4xx)."""

    http_status = 503
    smtp_code = 451
    smtp_enhanced = "4.3.0"
    retry_after = 5
    logged = True


class ServiceUnavailable(TemporaryFailure):
    """The database is not answering (down, restarting, stuck, out of connections): the caller is told
    the same fixed text whatever the cause; the cause is the detail."""

    message = "Service temporarily unavailable: the database is not answering, please retry later"
    smtp_message = "Queue temporarily unavailable: the database is not answering, please try again later"

    def __init__(self, detail: str = ""):
        super().__init__(detail=detail)
