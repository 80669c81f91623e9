"""Who and what every log line is about: request id, user id, job id.

A request (RequestContextMiddleware) or a Celery task (signals in marketplace/celery.py)
binds its ids in context variables; a log record factory (installed when the marketplace
app is ready) copies them onto every record created meanwhile, from any module, whatever
handler writes it; `JsonFormatter` writes one JSON object a
line in production (settings.production). X-Request-ID is honoured when it looks like an
id (letters, digits, `._-`, at most 128) and echoed on the response; otherwise one is
generated.
"""

import contextvars
import json
import logging
import re
import time
import uuid
from datetime import UTC, datetime

from asgiref.sync import iscoroutinefunction, markcoroutinefunction
from django.utils.functional import empty

REQUEST_ID_HEADER = "X-Request-ID"
_SAFE_REQUEST_ID = re.compile(r"^[A-Za-z0-9._-]{1,128}$")
CONTEXT_FIELDS = ("request_id", "user_id", "job_id", "task_id", "task_name")

_context: contextvars.ContextVar[dict[str, str] | None] = contextvars.ContextVar(
    "niche_log_context", default=None
)
_current_request: contextvars.ContextVar[object | None] = contextvars.ContextVar(
    "niche_log_request", default=None
)

request_logger = logging.getLogger("niche.request")


def bind(**fields: str | None) -> contextvars.Token:
    """Add ids to the current context; `reset(token)` restores what was there before."""
    merged = dict(_context.get() or {})
    merged.update({k: str(v) for k, v in fields.items() if v not in (None, "")})
    return _context.set(merged)


def reset(token: contextvars.Token) -> None:
    _context.reset(token)


def current() -> dict[str, str]:
    """The ids bound now, the signed-in user's included once authentication has run."""
    fields = dict(_context.get() or {})
    user_id = _authenticated_user_id(_current_request.get())
    if user_id is not None:
        fields["user_id"] = user_id
    return fields


def _authenticated_user_id(request) -> str | None:
    """The request's user id, only when already loaded: a log filter must never run a
    query (the query would log, and the filter would run again)."""
    if request is None:
        return None
    user = request.__dict__.get("user")
    wrapped = getattr(user, "_wrapped", user)  # a SimpleLazyObject not yet evaluated
    if wrapped is None or wrapped is empty:
        return None
    if getattr(wrapped, "is_authenticated", False) and getattr(wrapped, "pk", None) is not None:
        return str(wrapped.pk)
    return None


_installed = False


def install_record_factory() -> None:
    """Every record gets the bound ids as attributes (idempotent). A factory rather than a
    handler filter: it reaches every handler, pytest's capture and Celery's included."""
    global _installed
    if _installed:
        return
    previous = logging.getLogRecordFactory()

    def factory(*args, **kwargs) -> logging.LogRecord:
        record = previous(*args, **kwargs)
        for name, value in current().items():
            setattr(record, name, value)
        return record

    logging.setLogRecordFactory(factory)
    _installed = True


class JsonFormatter(logging.Formatter):
    """One JSON object a line: time, level, logger, message, the context ids, exception."""

    def format(self, record: logging.LogRecord) -> str:
        entry = {
            "time": datetime.fromtimestamp(record.created, UTC).isoformat(timespec="milliseconds"),
            "level": record.levelname,
            "logger": record.name,
            "message": record.getMessage(),
        }
        for name in CONTEXT_FIELDS:
            value = getattr(record, name, None)
            if value is not None:
                entry[name] = value
        for name in ("method", "path", "status", "duration_ms"):
            if hasattr(record, name):
                entry[name] = getattr(record, name)
        if record.exc_info:
            entry["exception"] = self.formatException(record.exc_info)
        return json.dumps(entry, default=str)


def request_id_from(header_value: str | None) -> str:
    if header_value and _SAFE_REQUEST_ID.match(header_value):
        return header_value
    return uuid.uuid4().hex


class RequestContextMiddleware:
    """Binds the request id (and the user, once known) for every line the request logs,
    echoes X-Request-ID and writes one access line per request."""

    sync_capable = async_capable = True

    def __init__(self, get_response):
        self.get_response = get_response
        self.is_async = iscoroutinefunction(get_response)
        if self.is_async:
            markcoroutinefunction(self)

    def __call__(self, request):
        if self.is_async:
            return self._acall(request)
        request_id, tokens, started = self._begin(request)
        try:
            response = self.get_response(request)
            return self._end(request, response, request_id, started)
        finally:
            self._reset(tokens)

    async def _acall(self, request):
        request_id, tokens, started = self._begin(request)
        try:
            response = await self.get_response(request)
            return self._end(request, response, request_id, started)
        finally:
            self._reset(tokens)

    @staticmethod
    def _begin(request):
        request_id = request_id_from(request.headers.get(REQUEST_ID_HEADER))
        request.request_id = request_id
        tokens = (bind(request_id=request_id), _current_request.set(request))
        return request_id, tokens, time.perf_counter()

    @staticmethod
    def _end(request, response, request_id: str, started: float):
        response[REQUEST_ID_HEADER] = request_id
        request_logger.info(
            "%s %s %s",
            request.method,
            request.path,
            response.status_code,
            extra={
                "method": request.method,
                "path": request.path,
                "status": response.status_code,
                "duration_ms": round((time.perf_counter() - started) * 1000, 1),
            },
        )
        return response

    @staticmethod
    def _reset(tokens) -> None:
        token, request_token = tokens
        _current_request.reset(request_token)
        reset(token)
