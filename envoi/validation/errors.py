"""Errors of address validation, mapped to HTTP once in envoi/api/errors.py (by http_status)."""

from __future__ import annotations

from envoi.infra.errors import EnvoiError


class ValidationError(EnvoiError):
    """A validation request refused: nothing was validated or stored."""

    http_status = 400


class AddressMissing(ValidationError):
    message = "address parameter is missing"


class AddressTooLong(ValidationError):
    message = "address parameter is too long: at most 512 characters"


class TooManyValidations(ValidationError):
    """Mailgun caps the validations running at once per account and answers 429 above it."""

    http_status = 429
    retry_after = 1
    message = "Too many concurrent validation requests, please wait and try again"


class JobNotFound(ValidationError):
    http_status = 404
    message = "bulk validation job not found"


class JobExists(ValidationError):
    message = "a bulk validation job with this list id already exists"


class TooManyJobs(ValidationError):
    """Mailgun runs at most 5 bulk jobs of an account in parallel and answers 400 above it."""

    message = "too many bulk validation jobs in progress (at most 5 in parallel)"


class ListIdInvalid(ValidationError):
    message = "list id must be 1 to 255 characters without '@' or '/'"


class FileInvalid(ValidationError):
    """The upload is missing, too large, not CSV (or gzipped CSV) in UTF-8, or has no email column."""


class DownloadNotFound(ValidationError):
    http_status = 404
    message = "download link not found or expired"
