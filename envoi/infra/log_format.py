"""Structured logs (ENVOI_LOG_FORMAT=json): one JSON object per line, so a log pipeline can follow one
message across processes by its message_id (accepted by the API or SMTP, delivered by a relay)."""

from __future__ import annotations

import json
import logging
import os
import time


class JsonFormatter(logging.Formatter):
    """ts (UTC, ISO 8601 with ms), level, process (the envoi command: api, relay, ...), pid, region,
    logger, message; message_id when the call passed extra={"message_id": ...}; exc on an exception."""

    def __init__(self, process: str, region: str | None = None):
        super().__init__()
        self.process = process
        self.region = region if region is not None else os.environ.get("ENVOI_REGION", "eu")

    def format(self, record: logging.LogRecord) -> str:
        ts = time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(record.created)) + f".{int(record.msecs):03d}Z"
        entry = {"ts": ts, "level": record.levelname.lower(), "process": self.process, "pid": record.process,
                 "region": self.region, "logger": record.name, "message": record.getMessage()}
        message_id = getattr(record, "message_id", None)
        if message_id:
            entry["message_id"] = str(message_id).strip("<>")
        if record.exc_info:
            entry["exc"] = self.formatException(record.exc_info)
        return json.dumps(entry, ensure_ascii=False, default=str)


def configure(level: int, fmt: str, process: str) -> None:
    """The root logger's one stderr handler, as text or JSON."""
    handler = logging.StreamHandler()
    if fmt == "json":
        handler.setFormatter(JsonFormatter(process))
    else:
        handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(name)s: %(message)s"))
    logging.basicConfig(level=level, handlers=[handler])
