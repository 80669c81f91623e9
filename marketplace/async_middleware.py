"""Django's middleware, run on the event loop where a hook cannot block.

Under ASGI, Django runs each old-style middleware hook (process_request,
process_response, process_view) in a thread and comes back: for the site's eleven such
middleware that was 28 thread hops per request, about a third of a gateway call's CPU.
Most of these hooks only read headers and cookies and set headers, so here they run
inline on the loop. A hook that can touch the database or the disk still hops to a
thread, decided per request:

- the session is saved (SessionMiddleware.process_response: modified, not empty, not 5xx);
- messages are stored (MessageMiddleware: the storage was read or written to, so it may
  load or write the session);
- CSRF reads a form body (CsrfViewMiddleware.process_view on a form or multipart POST:
  request.POST parses it, maybe spooling files to disk).

If a hook that runs inline ever touched the database, Django would raise
SynchronousOnlyOperation (it refuses queries on the event loop): a loud error, never a
blocked loop.

settings.MIDDLEWARE names Django's classes (so Django's deploy checks, which look for
those names, still check the site); `AsgiHandler`, the ASGI application
(marketplace/asgi.py), loads each one's twin from TWINS instead. Under WSGI and in the
test client nothing changes.
"""

from __future__ import annotations

from asgiref.sync import iscoroutinefunction, sync_to_async
from csp.middleware import CSPMiddleware as _CSPMiddleware
from django.conf import settings
from django.contrib.auth.middleware import AuthenticationMiddleware as _AuthenticationMiddleware
from django.contrib.messages.middleware import MessageMiddleware as _MessageMiddleware
from django.contrib.sessions.middleware import SessionMiddleware as _SessionMiddleware
from django.core.handlers.asgi import ASGIHandler
from django.middleware.clickjacking import XFrameOptionsMiddleware as _XFrameOptionsMiddleware
from django.middleware.common import CommonMiddleware as _CommonMiddleware
from django.middleware.csrf import CsrfViewMiddleware as _CsrfViewMiddleware
from django.middleware.security import SecurityMiddleware as _SecurityMiddleware

FORM_TYPES = ("application/x-www-form-urlencoded", "multipart/form-data")


class InlineHooks:
    """A MiddlewareMixin whose hooks run on the event loop unless `request_blocks` or
    `response_blocks` says this request's hook may do I/O."""

    def request_blocks(self, request) -> bool:
        return False

    def response_blocks(self, request, response) -> bool:
        return False

    async def __acall__(self, request):
        response = None
        if hasattr(self, "process_request"):
            if self.request_blocks(request):
                response = await sync_to_async(self.process_request, thread_sensitive=True)(request)
            else:
                response = self.process_request(request)
        response = response or await self.get_response(request)
        if hasattr(self, "process_response"):
            if self.response_blocks(request, response):
                response = await sync_to_async(self.process_response, thread_sensitive=True)(
                    request, response
                )
            else:
                response = self.process_response(request, response)
        return response


class SecurityMiddleware(InlineHooks, _SecurityMiddleware):
    pass


class CSPMiddleware(InlineHooks, _CSPMiddleware):
    pass


class CommonMiddleware(InlineHooks, _CommonMiddleware):
    pass


class AuthenticationMiddleware(InlineHooks, _AuthenticationMiddleware):
    """Sets the lazy request.user and request.auser: nothing is read until a view asks."""


class XFrameOptionsMiddleware(InlineHooks, _XFrameOptionsMiddleware):
    pass


class SessionMiddleware(InlineHooks, _SessionMiddleware):
    """process_request makes a lazy store; process_response writes only when saving."""

    def response_blocks(self, request, response) -> bool:
        session = getattr(request, "session", None)
        if session is None:
            return False
        saves = session.modified or settings.SESSION_SAVE_EVERY_REQUEST
        return saves and not session.is_empty() and response.status_code < 500


class MessageMiddleware(InlineHooks, _MessageMiddleware):
    """Messages untouched by the view need no storage (and no session) at all."""

    def response_blocks(self, request, response) -> bool:
        storage = getattr(request, "_messages", None)
        return storage is not None and bool(
            storage.used or storage.added_new or storage._queued_messages
        )


class CsrfViewMiddleware(InlineHooks, _CsrfViewMiddleware):
    """The token check reads headers and cookies, except for a form body."""

    def __init__(self, get_response):
        super().__init__(get_response)
        if iscoroutinefunction(self):  # async mode (MiddlewareMixin marked it so)
            self.process_view = self._aprocess_view

    async def _aprocess_view(self, request, callback, callback_args, callback_kwargs):
        reads_form = request.method == "POST" and request.content_type in FORM_TYPES
        check = _CsrfViewMiddleware.process_view.__get__(self)
        if reads_form:
            return await sync_to_async(check, thread_sensitive=True)(
                request, callback, callback_args, callback_kwargs
            )
        return check(request, callback, callback_args, callback_kwargs)


TWINS = {
    "django.middleware.security.SecurityMiddleware": SecurityMiddleware,
    "csp.middleware.CSPMiddleware": CSPMiddleware,
    "django.contrib.sessions.middleware.SessionMiddleware": SessionMiddleware,
    "django.middleware.common.CommonMiddleware": CommonMiddleware,
    "django.middleware.csrf.CsrfViewMiddleware": CsrfViewMiddleware,
    "django.contrib.auth.middleware.AuthenticationMiddleware": AuthenticationMiddleware,
    "django.contrib.messages.middleware.MessageMiddleware": MessageMiddleware,
    "django.middleware.clickjacking.XFrameOptionsMiddleware": XFrameOptionsMiddleware,
}


def _twin_path(path: str) -> str:
    twin = TWINS.get(path)
    return path if twin is None else f"{__name__}.{twin.__name__}"


class AsgiHandler(ASGIHandler):
    """Django's ASGI handler, with each middleware of settings.MIDDLEWARE that has a twin
    here loaded as that twin (in the same place in the chain)."""

    def load_middleware(self, is_async=False):
        names = list(settings.MIDDLEWARE)
        settings.MIDDLEWARE = [_twin_path(path) for path in names]
        try:
            super().load_middleware(is_async=is_async)
        finally:
            settings.MIDDLEWARE = names
