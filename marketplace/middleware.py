"""Refuse an oversized request body from its headers, before anything reads it.

CsrfViewMiddleware reads `request.POST` for portal forms, which parses a multipart
body and spools its files to disk; a size check inside the view comes too late.
This middleware runs its `process_view` before CSRF's: an upload view names its size
rule with `upload_size_check`, every other view gets DATA_UPLOAD_MAX_MEMORY_SIZE.

Under WSGI a body without Content-Length is never read by Django (its stream is
limited to the declared length), so a chunked body is refused with 411 instead of
being silently dropped. Under ASGI Django spools the whole body before any middleware
runs, so `AsgiBodyLimit` applies the same rule in front of the ASGI application.
"""

import json
from collections.abc import Callable

from asgiref.sync import iscoroutinefunction, markcoroutinefunction
from django.conf import settings
from django.http import HttpResponse
from django.urls import Resolver404, resolve
from django.utils.html import escape

from marketplace.errors import (
    ApplicationError,
    LengthRequiredError,
    PayloadTooLargeError,
    error_body,
    html_or_json_error,
    is_machine_path,
)

UploadSizeCheck = Callable[..., None]
_METHODS_WITH_BODY = {"POST", "PUT", "PATCH", "DELETE"}


def checks_upload_size(check: UploadSizeCheck):
    """Mark a function view as an upload endpoint whose size rule is `check`.

    `check(declared_bytes=...)` raises an ApplicationError (413) when the body is
    too large. Class-based views set `upload_size_check = staticmethod(check)` instead.
    """

    def mark(view):
        view.upload_size_check = check
        return view

    return mark


def _upload_size_check(view_func) -> UploadSizeCheck | None:
    check = getattr(view_func, "upload_size_check", None)
    if check is None:
        check = getattr(getattr(view_func, "view_class", None), "upload_size_check", None)
    return check


def _general_size_check(*, declared_bytes: int) -> None:
    limit = settings.DATA_UPLOAD_MAX_MEMORY_SIZE
    if limit is not None and declared_bytes > limit:
        raise PayloadTooLargeError(
            f"The request body is {declared_bytes:,} bytes; the limit is {limit:,} bytes."
        )


def body_refusal(
    *, method: str, view_func, content_length: str | None, transfer_encoding: str | None
) -> ApplicationError | None:
    """Why this request's body must be refused unread (413 or 411), or None."""
    if method not in _METHODS_WITH_BODY:
        return None
    check = _upload_size_check(view_func) or _general_size_check
    try:
        if content_length:
            try:
                declared = int(content_length)
            except ValueError:
                raise LengthRequiredError("Content-Length must be a number.") from None
            check(declared_bytes=declared)
        elif transfer_encoding:
            raise LengthRequiredError("Send a Content-Length; chunked bodies are not accepted.")
    except ApplicationError as exc:
        return exc
    return None


class RequestBodyLimitMiddleware:
    """Answers 413 (411 for a body of unknown length) without touching the body. Under
    ASGI, AsgiBodyLimit (below) refuses the same requests before Django reads them, so
    in async mode this middleware only passes requests on."""

    sync_capable = async_capable = True

    def __init__(self, get_response):
        self.get_response = get_response
        if iscoroutinefunction(get_response):
            markcoroutinefunction(self)
            self.process_view = self._aprocess_view  # no thread hop per request

    def __call__(self, request):
        return self.get_response(request)

    async def _aprocess_view(self, request, view_func, view_args, view_kwargs):
        return None

    def process_view(self, request, view_func, view_args, view_kwargs):
        refusal = body_refusal(
            method=request.method,
            view_func=view_func,
            content_length=request.META.get("CONTENT_LENGTH"),
            transfer_encoding=request.META.get("HTTP_TRANSFER_ENCODING"),
        )
        return None if refusal is None else self._refuse(request, refusal)

    @staticmethod
    def _refuse(request, exc: ApplicationError) -> HttpResponse:
        # The server discards the unread body (gunicorn and runserver drain it unparsed).
        return html_or_json_error(request, exc.status, exc.code, exc.message, exc.fields)


class AsgiBodyLimit:
    """The same refusal in front of Django's ASGI handler, which reads and spools the
    whole body before any middleware runs. The body is never received."""

    def __init__(self, app):
        self.app = app

    async def __call__(self, scope, receive, send):
        if scope["type"] == "http":
            refusal = self._refusal(scope)
            if refusal is not None:
                await self._send_refusal(scope["path"], refusal, send)
                return
        await self.app(scope, receive, send)

    @staticmethod
    def _refusal(scope) -> ApplicationError | None:
        headers = {k.decode("latin-1").lower(): v.decode("latin-1") for k, v in scope["headers"]}
        try:
            view_func = resolve(scope["path"]).func
        except Resolver404:
            view_func = None
        return body_refusal(
            method=scope["method"],
            view_func=view_func,
            content_length=headers.get("content-length"),
            transfer_encoding=headers.get("transfer-encoding"),
        )

    @staticmethod
    async def _send_refusal(path: str, exc: ApplicationError, send) -> None:
        if is_machine_path(path):
            body = json.dumps(error_body(exc.code, exc.message, exc.fields)).encode()
            content_type = b"application/json"
        else:
            body = f"<!doctype html><title>{exc.status}</title><p>{escape(exc.message)}</p>"
            body, content_type = body.encode(), b"text/html; charset=utf-8"
        headers = [(b"content-type", content_type), (b"content-length", str(len(body)).encode())]
        await send({"type": "http.response.start", "status": exc.status, "headers": headers})
        await send({"type": "http.response.body", "body": body})
