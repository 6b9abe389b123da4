"""Read Mailgun-style form bodies (urlencoded or multipart) into fields and uploads."""

from __future__ import annotations

from urllib.parse import parse_qs

import falcon

from envoi.api.errors import ApiError
from envoi.api.params import check_fields
from envoi.mta.compose import Upload

MAX_REQUEST_BYTES = int(52.4 * 1024 * 1024)


def read_form(req: falcon.Request) -> tuple[dict[str, list[str]], dict[str, list[Upload]]]:
    """Return (fields, files by field name). Repeated fields keep every value, in order."""
    if req.content_length and req.content_length > MAX_REQUEST_BYTES:
        raise ApiError(413, "request size exceeds 52.4MiB limit")
    content_type = (req.content_type or "").lower()
    fields: dict[str, list[str]] = {}
    files: dict[str, list[Upload]] = {}
    if content_type.startswith("multipart/form-data"):
        try:
            form = req.get_media()
            for part in form:
                if part.filename is not None or part.name in ("attachment", "inline", "message", "file"):
                    data = part.stream.read()
                    files.setdefault(part.name, []).append(
                        Upload(part.filename or None, part.content_type or "application/octet-stream", data)
                    )
                else:
                    fields.setdefault(part.name, []).append(part.get_text() or "")
        except falcon.MediaMalformedError as ex:
            raise ApiError(400, f"malformed multipart body: {ex.description or ex}") from ex
        except falcon.HTTPError as ex:
            if ex.status_code == 413:
                raise ApiError(413, "request size exceeds 52.4MiB limit") from ex
            raise ApiError(400, ex.description or ex.title) from ex
    elif content_type.startswith("application/x-www-form-urlencoded") or not content_type:
        body = req.bounded_stream.read(MAX_REQUEST_BYTES + 1)
        if len(body) > MAX_REQUEST_BYTES:
            raise ApiError(413, "request size exceeds 52.4MiB limit")
        try:
            fields = parse_qs(body.decode("utf-8"), keep_blank_values=True, strict_parsing=False)
        except UnicodeDecodeError as ex:
            raise ApiError(400, "request body is not valid UTF-8") from ex
    else:
        raise ApiError(400, f"unsupported content type {req.content_type}; use multipart/form-data or urlencoded")
    check_fields(fields)
    return fields, files


def configure(app: falcon.App) -> None:
    handler = app.req_options.media_handlers[falcon.MEDIA_MULTIPART]
    handler.parse_options.max_body_part_count = 4000  # up to 1,000 recipients and attachments
    handler.parse_options.max_body_part_buffer_size = 30 * 1024 * 1024
