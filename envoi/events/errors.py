"""Errors of the events package (queries, stats, the live stream); the edges render them by class
(see envoi.infra.errors)."""

from envoi.infra.errors import EnvoiError, TemporaryFailure


class EventsError(EnvoiError):
    """Base class."""


class EventQueryError(EventsError):
    """A malformed events query (bad date, limit, filter, page token or Last-Event-ID)."""

    http_status = 400


class TooManyStreams(EventsError):
    """This process already serves as many live streams as it may."""

    http_status = 429
    smtp_code, smtp_enhanced = 451, "4.3.2"
    retry_after = 5


class StreamUnavailable(EventsError, TemporaryFailure):
    """Redis cannot be reached: the live stream is down (the events API still works)."""

    logged = False  # Redis's outage is logged where it is noticed
