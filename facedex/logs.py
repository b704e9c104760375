"""Logging for every service: plain text for people, or one JSON object per line for collectors.

Every line logged while a request is served carries that request's id (a contextvar set by
``facedex.http.RequestIdMiddleware``), so one request can be followed through every service it crossed.
"""

from __future__ import annotations

import logging
import re
import sys
import uuid
from contextvars import ContextVar, Token
from datetime import UTC, datetime

import orjson

REQUEST_ID_HEADER = "X-Request-Id"
REQUEST_ID_MAX_LEN = 64
_REQUEST_ID = re.compile(r"[\x21-\x7e]{1,%d}" % REQUEST_ID_MAX_LEN)  # printable ASCII, no spaces: safe in logs
_request_id: ContextVar[str] = ContextVar("facedex_request_id", default="")

access_log = logging.getLogger("facedex.access")


def current_request_id() -> str:
    """The id of the request being served in this context ("" outside a request)."""
    return _request_id.get()


def set_request_id(request_id: str) -> Token[str]:
    return _request_id.set(request_id)


def reset_request_id(token: Token[str]) -> None:
    _request_id.reset(token)


def accepted_request_id(value: str | None) -> str:
    """The client's id if it is short and printable, else a new one (a bad id is replaced, never refused)."""
    if value is not None and _REQUEST_ID.fullmatch(value):
        return value
    return uuid.uuid4().hex


class RequestIdFilter(logging.Filter):
    """Stamps each record with the current request id (``request_id``; ``request_tag`` for text lines)."""

    def filter(self, record: logging.LogRecord) -> bool:
        request_id = getattr(record, "request_id", None) or current_request_id()
        if request_id:
            record.request_id = request_id
        record.request_tag = f" [{request_id}]" if request_id else ""
        return True


class JsonFormatter(logging.Formatter):
    def __init__(self, service: str) -> None:
        super().__init__()
        self.service = service

    def format(self, record: logging.LogRecord) -> str:
        entry: dict[str, object] = {
            "time": datetime.fromtimestamp(record.created, UTC).isoformat(timespec="milliseconds"),
            "level": record.levelname.lower(),
            "service": self.service,
            "logger": record.name,
            "message": record.getMessage(),
        }
        for key in ("request_id", "method", "path", "route", "status", "duration_ms"):
            if hasattr(record, key):
                entry[key] = getattr(record, key)
        if record.exc_info:
            entry["exception"] = self.formatException(record.exc_info)
        return orjson.dumps(entry).decode()


def setup_logging(service: str, fmt: str = "text", level: str = "INFO") -> None:
    handler = logging.StreamHandler(sys.stderr)
    handler.addFilter(RequestIdFilter())
    if fmt == "json":
        handler.setFormatter(JsonFormatter(service))
    else:
        handler.setFormatter(logging.Formatter(f"%(asctime)s %(levelname)s {service} %(name)s%(request_tag)s: %(message)s"))
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(level.upper())
    for name in ("uvicorn", "uvicorn.error", "uvicorn.access"):
        logging.getLogger(name).handlers[:] = []
        logging.getLogger(name).propagate = True
    logging.getLogger("uvicorn.access").setLevel("WARNING")  # replaced by facedex.access (with request ids)
    for name in ("httpx", "httpcore"):  # a line per outgoing call would double the log; the callee logs its access
        logging.getLogger(name).setLevel("WARNING")
