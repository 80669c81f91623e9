"""The ASGI application loads Django's middleware as their event-loop twins, and the site
still works through it: headers, CSRF, log-in (a session saved), messages (stored in
the session and shown once), and an API call that hops to no thread for middleware."""

import asyncio
from http.cookies import SimpleCookie
from urllib.parse import urlencode

import pytest
from asgiref.sync import async_to_sync
from django.conf import settings

from accounts.services import api_key_create
from marketplace import async_middleware
from tests.conftest import make_user

pytestmark = pytest.mark.django_db(transaction=True)


class AsgiClient:
    """Requests straight into an ASGI application, keeping cookies like a browser."""

    def __init__(self, app):
        self.app = app
        self.cookies: dict[str, str] = {}

    def request(self, method: str, path: str, *, body: bytes = b"", headers=()):
        async def run():
            sent = []
            delivered = False

            async def receive():
                nonlocal delivered
                if not delivered:
                    delivered = True
                    return {"type": "http.request", "body": body, "more_body": False}
                await asyncio.Event().wait()  # the client stays connected

            async def send(message):
                sent.append(message)

            cookie = "; ".join(f"{k}={v}" for k, v in self.cookies.items())
            raw = [(b"host", b"testserver"), (b"content-length", str(len(body)).encode())]
            raw += [(b"cookie", cookie.encode())] if cookie else []
            raw += [(k.lower().encode(), v.encode()) for k, v in headers]
            scope = {
                "type": "http", "asgi": {"version": "3.0"}, "http_version": "1.1",
                "method": method, "scheme": "http", "path": path, "raw_path": path.encode(),
                "query_string": b"", "root_path": "", "headers": raw,
                "client": ("127.0.0.1", 40000), "server": ("testserver", 80),
            }  # fmt: skip
            await self.app(scope, receive, send)
            return sent

        sent = async_to_sync(run)()
        start = sent[0]
        response_headers: dict[str, list[str]] = {}
        for key, value in start["headers"]:
            response_headers.setdefault(key.decode().lower(), []).append(value.decode())
        for value in response_headers.get("set-cookie", []):
            jar = SimpleCookie()
            jar.load(value)
            for name, morsel in jar.items():
                if morsel.value:
                    self.cookies[name] = morsel.value
                else:
                    self.cookies.pop(name, None)
        body = b"".join(m.get("body", b"") for m in sent if m["type"] == "http.response.body")
        return start["status"], response_headers, body

    def post_form(self, path: str, fields: dict):
        fields = {"csrfmiddlewaretoken": self.cookies["csrftoken"]} | fields
        return self.request(
            "POST", path, body=urlencode(fields).encode(),
            headers=[("content-type", "application/x-www-form-urlencoded"),
                     ("referer", "http://testserver/")],
        )  # fmt: skip


@pytest.fixture
def site():
    from marketplace.asgi import application

    return AsgiClient(application)


def test_the_asgi_handler_loads_each_twin_and_leaves_the_setting_alone():
    from marketplace.asgi import django_application

    assert isinstance(django_application, async_middleware.AsgiHandler)
    assert "django.middleware.security.SecurityMiddleware" in settings.MIDDLEWARE
    assert not any(path.startswith("marketplace.async_middleware") for path in settings.MIDDLEWARE)
    for path, twin in async_middleware.TWINS.items():
        assert path in settings.MIDDLEWARE
        assert twin.__mro__[2].__module__ + "." + twin.__mro__[2].__name__ == path


def test_pages_carry_the_security_headers(site):
    status, headers, _ = site.request("GET", "/login/")

    assert status == 200
    assert headers["x-frame-options"] == ["DENY"]
    assert headers["x-content-type-options"] == ["nosniff"]
    assert "content-security-policy" in headers
    assert "csrftoken" in site.cookies


def test_a_form_without_its_csrf_token_is_refused(site):
    site.request("GET", "/login/")

    status, _, _ = site.request(
        "POST", "/login/", body=b"username=a&password=b",
        headers=[("content-type", "application/x-www-form-urlencoded")],
    )  # fmt: skip

    assert status == 403


def test_log_in_saves_a_session_and_a_message_shows_once(site):
    make_user("dana@example.com")
    site.request("GET", "/login/")

    status, headers, _ = site.post_form(
        "/login/", {"username": "dana@example.com", "password": "correct horse battery"}
    )
    assert status == 302, headers
    assert "sessionid" in site.cookies

    status, headers, _ = site.post_form("/dashboard/api-keys/", {"name": ""})  # invalid
    assert (status, headers["location"]) == (302, ["/dashboard/"])
    first = site.request("GET", "/dashboard/")
    again = site.request("GET", "/dashboard/")

    assert first[0] == again[0] == 200
    assert b"Give the key a name" in first[2]
    assert b"Give the key a name" not in again[2]


def test_an_api_call_takes_no_thread_for_middleware(site, monkeypatch):
    import django.utils.deprecation

    user = make_user("erin@example.com")
    _, key = api_key_create(user=user, name="hops", scopes=["read"])
    hops = []

    def counting(original):
        def sync_to_async(func, *args, **kwargs):
            hops.append(getattr(func, "__name__", repr(func)))
            return original(func, *args, **kwargs)

        return sync_to_async

    # Django's MiddlewareMixin hops through its module's sync_to_async; the twins through
    # theirs: count both.
    for module in (django.utils.deprecation, async_middleware):
        monkeypatch.setattr(module, "sync_to_async", counting(module.sync_to_async))

    status, _, _ = site.request("GET", "/v1/models", headers=[("authorization", f"Bearer {key}")])

    assert status in (200, 403)
    assert [h for h in hops if h.startswith("process_")] == []
