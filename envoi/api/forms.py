"""Read Mailgun-style form bodies (urlencoded or multipart) into fields and uploads."""

from __future__ import annotations

import codecs
import io
import tempfile
from urllib.parse import unquote_to_bytes

import falcon

from envoi.api import form_parts
from envoi.api.errors import ApiError
from envoi.api.params import check_fields
from envoi.infra import memory
from envoi.mta.compose import Upload

MAX_REQUEST_BYTES = int(52.4 * 1024 * 1024)
SPOOL_BYTES = 256 * 1024  # an upload past this waits on disk, not in the worker's memory, until composed
LARGE_REQUEST_BYTES = 1024 * 1024
# A multipart body up to this size is read whole and split in memory (envoi.api.form_parts); its
# uploads stay in memory, as a spooled file under SPOOL_BYTES does.
SPLIT_BYTES = SPOOL_BYTES
#: False makes read_form() parse every multipart body with falcon (the equality tests compare both).
FAST_MULTIPART = True
CHUNK = 64 * 1024
# PERF: undocumented but kept for pickle's protocol 0 since Python 2 (the escapes of bytes literals).
_escape_decode = codecs.escape_decode


def _spool(stream, limit: int | None = None) -> tuple[tempfile.SpooledTemporaryFile, int]:
    # Closed (and its unlinked file freed) when the request drops the Upload.
    spooled = tempfile.SpooledTemporaryFile(max_size=SPOOL_BYTES)  # noqa: SIM115
    size = 0
    while chunk := stream.read(CHUNK):
        size += len(chunk)
        if limit is not None and size > limit:
            raise ApiError(413, "request size exceeds 52.4MiB limit")
        spooled.write(chunk)
    spooled.seek(0)
    return spooled, size


def _read_all(stream) -> bytearray:
    """The body in small reads: one large read makes the server (gunicorn) buffer it twice or more."""
    body = bytearray()
    while chunk := stream.read(CHUNK):
        body += chunk
        if len(body) > MAX_REQUEST_BYTES:
            raise ApiError(413, "request size exceeds 52.4MiB limit")
    return body


def _parse_urlencoded(pairs: list[bytes]) -> dict[str, list[str]]:
    """parse_qs(keep_blank_values=True) for a body of up to 52 MB, holding about two copies of one
    field at a time: parse_qs keeps several copies of the whole body, and unquoting a percent-encoded
    field splits it into one object per escape (~30x its size)."""
    fields: dict[str, list[str]] = {}
    for i in range(len(pairs)):
        pair, pairs[i] = pairs[i], b""
        if not pair:
            continue
        name, _, value = pair.partition(b"=")
        del pair
        fields.setdefault(_unquote(name), []).append(_unquote(value))
    return fields


def _unquote_bytes(raw: bytes) -> bytes:
    """unquote_to_bytes in C: with every original backslash doubled, %XX is a Python \\xXX escape, and
    codecs.escape_decode decodes that in one pass (a 5 KB text with its spaces as %20: 1.1 ms with
    unquote_to_bytes' Python loop, 24 us through quoted-printable with a separate check for invalid
    escapes, 16 us so). escape_decode refuses a \\x not followed by two hex digits (ValueError): an
    invalid escape, which urllib keeps as it is, takes its slow path."""
    try:
        return _escape_decode(raw.replace(b"\\", b"\\\\").replace(b"%", b"\\x"))[0]
    except ValueError:
        return unquote_to_bytes(raw)  # it looks escapes up in a dict: bytes, not bytearray


def _unquote(raw: bytes) -> str:
    raw = raw.replace(b"+", b" ")
    if b"%" not in raw:
        return raw.decode("utf-8", "replace")
    out = bytearray()
    start = 0
    while start < len(raw):
        end = min(start + CHUNK, len(raw))
        cut = raw.rfind(b"%", max(start + 1, end - 2), end)  # do not split a %XX escape
        if cut != -1 and end < len(raw):
            end = cut
        out += _unquote_bytes(bytes(raw[start:end]))
        start = end
    del raw
    return out.decode("utf-8", "replace")


def _chunked(req: falcon.Request) -> bool:
    """A body sent with Transfer-Encoding: chunked has no Content-Length; the server (granian or gunicorn)
    de-chunks it, and falcon's bounded stream would read it as empty."""
    return req.content_length is None and "chunked" in (req.get_header("Transfer-Encoding") or "").lower()


def _declared_type(part) -> str:
    """The part's own Content-Type, or "" when it has none: falcon then reports RFC 7578's default
    text/plain, and compose types the attachment from its file name instead (as Mailgun does; an SDK
    uploading a file often sends no type)."""
    headers = getattr(part, "_headers", None)  # falcon keeps the raw part headers only here
    if isinstance(headers, dict) and b"content-type" not in headers:
        return ""
    return part.content_type or ""


def _is_upload(part) -> bool:
    """A file part: it has a file name, or its field is one Mailgun reads as a file even without one."""
    return part.filename is not None or part.name in ("attachment", "inline", "message", "file")


def _read_parts(parts: list, fields: dict[str, list[str]], files: dict[str, list[Upload]]) -> None:
    """read_form's loop for parts split in memory: an upload keeps its bytes (no spooled file)."""
    for part in parts:
        if _is_upload(part):
            data = part.stream.getvalue()
            files.setdefault(part.name, []).append(Upload(part.filename or None, _declared_type(part), data, len(data)))
        else:
            fields.setdefault(part.name, []).append(_text(part) or "")


def _text(part) -> str | None:
    """part.get_text(): a part without a Content-Type is text/plain in the default charset (RFC 7578), which
    falcon decodes after parsing its default type's header; decoded directly here, falcon's call otherwise
    (or when the bytes do not decode: it raises its own refusal)."""
    if b"content-type" not in part._headers and part._parse_options.default_charset == "utf-8":
        try:
            return part.stream.getvalue().decode()
        except UnicodeDecodeError:
            pass
    return part.get_text()


def read_form(req: falcon.Request) -> tuple[dict[str, list[str]], dict[str, list[Upload]]]:
    """Return (fields, files by field name). Repeated fields keep every value, in order."""
    if req.content_length and req.content_length > MAX_REQUEST_BYTES:
        raise ApiError(413, "request size exceeds 52.4MiB limit")
    content_type = (req.content_type or "").lower()
    fields: dict[str, list[str]] = {}
    files: dict[str, list[Upload]] = {}
    if content_type.startswith("multipart/form-data"):
        try:
            handler = req.options.media_handlers[falcon.MEDIA_MULTIPART]
            if _chunked(req):  # falcon's multipart parser needs the length: spool the body first
                body, size = _spool(req.stream, MAX_REQUEST_BYTES)
                form = handler.deserialize(body, req.content_type, size)
            elif FAST_MULTIPART and req.content_length is not None and req.content_length <= SPLIT_BYTES:
                whole = bytes(_read_all(req.bounded_stream))
                form = handler.deserialize(io.BytesIO(whole), req.content_type, len(whole))  # checks the boundary
                boundary = getattr(form, "_boundary", None)
                parts = form_parts.split(whole, boundary, handler.parse_options) if isinstance(boundary, bytes) else None
                if parts is not None:
                    _read_parts(parts, fields, files)
                    form = ()
            else:
                form = req.get_media()
            for part in form:
                if _is_upload(part):
                    spooled, size = _spool(part.stream)
                    files.setdefault(part.name, []).append(Upload(part.filename or None, _declared_type(part), spooled, size))
                else:
                    fields.setdefault(part.name, []).append(part.get_text() or "")
        except falcon.MediaMalformedError as ex:
            raise ApiError(400, f"malformed multipart body: {ex.description or ex}") from ex
        except falcon.HTTPError as ex:
            if ex.status_code == 413:
                raise ApiError(413, "request size exceeds 52.4MiB limit") from ex
            raise ApiError(400, ex.description or ex.title) from ex
    elif content_type.startswith("application/x-www-form-urlencoded") or not content_type:
        body = _read_all(req.stream if _chunked(req) else req.bounded_stream)
        if req.content_length is not None and len(body) < req.content_length:
            # The client went away mid-body: both servers hand over what came and then the end. A form has
            # no terminator, so what came would parse as a shorter message (its text cut) and be sent.
            # (A multipart body ends with its closing boundary; JSON does not parse when cut.)
            raise ApiError(400, "the request body ended before its Content-Length")
        pairs = body.split(b"&")
        del body  # one copy of a large body at a time
        fields = _parse_urlencoded(pairs)
    else:
        raise ApiError(400, f"unsupported content type {req.content_type}; use multipart/form-data or urlencoded")
    check_fields(fields)
    return fields, files


class ReleaseMemory:
    """Middleware: after a large request, give the memory its body and message took back to the OS."""

    def process_response(self, req: falcon.Request, resp, resource, req_succeeded: bool) -> None:
        if req.method in ("POST", "PUT", "PATCH") and (req.content_length or LARGE_REQUEST_BYTES) >= LARGE_REQUEST_BYTES:
            memory.trim()


def configure(app: falcon.App) -> None:
    handler = app.req_options.media_handlers[falcon.MEDIA_MULTIPART]
    handler.parse_options.max_body_part_count = 4000  # up to 1,000 recipients and attachments
    handler.parse_options.max_body_part_buffer_size = 30 * 1024 * 1024
