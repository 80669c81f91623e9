"""Refuse an oversized request body from its headers, before anything reads it.

CsrfViewMiddleware reads `request.POST` for portal forms, which parses a multipart
body and spools its files to disk; a size check inside the view comes too late.
This middleware runs its `process_view` before CSRF's: an upload view names its size
rule with `upload_size_check`, every other view gets DATA_UPLOAD_MAX_MEMORY_SIZE.

Under WSGI a body without Content-Length is never read by Django (its stream is
limited to the declared length), so a chunked body is refused with 411 instead of
being silently dropped.
"""

from collections.abc import Callable

from django.conf import settings
from django.http import HttpResponse, JsonResponse
from django.shortcuts import render

from marketplace.errors import ApplicationError, PayloadTooLargeError, error_body, is_machine_path

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


class LengthRequiredError(ApplicationError):
    status = 411
    default_code = "length_required"


class RequestBodyLimitMiddleware:
    """Answers 413 (411 for a body of unknown length) without touching the body."""

    def __init__(self, get_response):
        self.get_response = get_response

    def __call__(self, request):
        return self.get_response(request)

    def process_view(self, request, view_func, view_args, view_kwargs):
        if request.method not in _METHODS_WITH_BODY:
            return None
        check = _upload_size_check(view_func) or _general_size_check
        try:
            declared = self._declared_length(request)
            if declared is not None:
                check(declared_bytes=declared)
        except ApplicationError as exc:
            return self._refuse(request, exc)
        return None

    @staticmethod
    def _declared_length(request) -> int | None:
        raw = request.META.get("CONTENT_LENGTH")
        if raw:
            try:
                return int(raw)
            except ValueError:
                raise LengthRequiredError("Content-Length must be a number.") from None
        if request.META.get("HTTP_TRANSFER_ENCODING"):
            raise LengthRequiredError("Send a Content-Length; chunked bodies are not accepted.")
        return None  # no body at all

    @staticmethod
    def _refuse(request, exc: ApplicationError) -> HttpResponse:
        # The server discards the unread body (gunicorn and runserver drain it unparsed).
        if is_machine_path(request.path):
            return JsonResponse(error_body(exc.code, exc.message, exc.fields), status=exc.status)
        context = {"status": exc.status, "message": exc.message}
        return render(request, "errors/error.html", context, status=exc.status)
