"""The one error contract: `{"error": {"code", "message", "fields"}}`.

Services raise `ApplicationError` (or a subclass with its HTTP status); the API's
exception handler and the Django error views below render every error, Django's and
DRF's included, in that shape.
"""

from __future__ import annotations

from django.core.exceptions import PermissionDenied as DjangoPermissionDenied
from django.core.exceptions import RequestDataTooBig
from django.core.exceptions import ValidationError as DjangoValidationError
from django.http import Http404, JsonResponse
from rest_framework import exceptions as drf
from rest_framework.response import Response


class ApplicationError(Exception):
    """A failure a user can act on: a stable code, a sentence, and per-field details."""

    status = 400
    default_code = "bad_request"

    def __init__(self, message: str, *, code: str | None = None, fields: dict | None = None):
        super().__init__(message)
        self.code = code or self.default_code
        self.message = message
        self.fields = fields or {}


class NotFoundError(ApplicationError):
    status = 404
    default_code = "not_found"


class PermissionDeniedError(ApplicationError):
    status = 403
    default_code = "permission_denied"


class ConflictError(ApplicationError):
    """The object is in a state that does not allow this operation."""

    status = 409
    default_code = "invalid_state"


class InvalidInputError(ApplicationError):
    status = 422
    default_code = "validation_error"


class PayloadTooLargeError(ApplicationError):
    status = 413
    default_code = "payload_too_large"


class LengthRequiredError(ApplicationError):
    """A body of unknown or unreadable length (chunked, or a non-numeric Content-Length)."""

    status = 411
    default_code = "length_required"


class RateLimitedError(ApplicationError):
    status = 429
    default_code = "rate_limited"

    def __init__(self, message: str, *, retry_after: int, **kwargs):
        super().__init__(message, **kwargs)
        self.retry_after = retry_after


def error_body(code: str, message: str, fields: dict | None = None) -> dict:
    return {"error": {"code": code, "message": message, "fields": fields or {}}}


def _flatten_detail(detail) -> dict:
    """DRF validation details → {field: [messages]} with plain strings."""
    if isinstance(detail, dict):
        return {
            key: [str(m) for m in value] if isinstance(value, list) else _flatten_detail(value)
            for key, value in detail.items()
        }
    if isinstance(detail, list):
        return {"non_field_errors": [str(m) for m in detail]}
    return {"non_field_errors": [str(detail)]}


_DRF_CODES: dict[type, tuple[int, str]] = {
    drf.NotAuthenticated: (401, "not_authenticated"),
    drf.AuthenticationFailed: (401, "authentication_failed"),
    drf.PermissionDenied: (403, "permission_denied"),
    drf.NotFound: (404, "not_found"),
    drf.MethodNotAllowed: (405, "method_not_allowed"),
    drf.NotAcceptable: (406, "not_acceptable"),
    drf.UnsupportedMediaType: (415, "unsupported_media_type"),
    drf.ParseError: (400, "malformed_request"),
    drf.Throttled: (429, "rate_limited"),
    drf.ValidationError: (422, "validation_error"),
}


def api_exception_handler(exc, context) -> Response | None:
    """DRF's EXCEPTION_HANDLER: every API error leaves in the one shape."""
    if isinstance(exc, ApplicationError):
        response = Response(error_body(exc.code, exc.message, exc.fields), status=exc.status)
        retry_after = getattr(exc, "retry_after", None)
        if retry_after is not None:  # 429 and 503s that know when to come back
            response["Retry-After"] = str(retry_after)
        return response
    if isinstance(exc, RequestDataTooBig):
        return Response(error_body("payload_too_large", str(exc)), status=413)
    if isinstance(exc, DjangoValidationError):
        fields = exc.message_dict if hasattr(exc, "error_dict") else {}
        message = "; ".join(exc.messages)
        return Response(error_body("validation_error", message, fields), status=422)
    if isinstance(exc, Http404):
        exc = drf.NotFound()
    elif isinstance(exc, DjangoPermissionDenied):
        exc = drf.PermissionDenied()

    # Imported here: rest_framework.views loads the authentication classes, which
    # import services that import this module.
    from rest_framework.views import exception_handler as drf_exception_handler

    response = drf_exception_handler(exc, context)
    if response is None:
        return None  # an unexpected error: Django's 500 handler renders it
    status, code = next(
        ((s, c) for cls, (s, c) in _DRF_CODES.items() if isinstance(exc, cls)),
        (response.status_code, "error"),
    )
    if isinstance(exc, drf.ValidationError):
        fields = _flatten_detail(exc.detail)
        message = "The request has invalid fields."
        if list(fields) == ["non_field_errors"]:
            message = " ".join(fields["non_field_errors"])
    else:
        fields = {}
        message = str(exc.detail)
    response.data = error_body(code, message, fields)
    response.status_code = status
    return response


# --- Django error views (handler400/403/404/500): JSON for machine paths, HTML else.

_MACHINE_PREFIXES = ("/api/", "/v1/", "/healthz")


def is_machine_path(path: str) -> bool:
    return path.startswith(_MACHINE_PREFIXES)


def html_or_json_error(request, status: int, code: str, message: str, fields=None):
    """The error in the contract's JSON on a machine path, else the HTML error page."""
    if is_machine_path(request.path):
        return JsonResponse(error_body(code, message, fields), status=status)
    from django.shortcuts import render

    return render(
        request, "errors/error.html", {"status": status, "message": message}, status=status
    )


def bad_request(request, exception=None):
    return html_or_json_error(request, 400, "bad_request", "The request could not be understood.")


def permission_denied(request, exception=None):
    return html_or_json_error(
        request, 403, "permission_denied", "You do not have permission to do this."
    )


def csrf_failure(request, reason=""):
    """CSRF_FAILURE_VIEW: a refused form post, in the error contract on machine paths."""
    return html_or_json_error(
        request, 403, "csrf_failed", "The form expired or came from elsewhere; reload and retry."
    )


def page_not_found(request, exception=None):
    return html_or_json_error(request, 404, "not_found", "Nothing was found at this address.")


def server_error(request):
    return html_or_json_error(
        request, 500, "internal_error", "Something went wrong on our side; it has been logged."
    )
