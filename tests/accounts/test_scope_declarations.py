"""Every API method declares the scope it needs; an undeclared one is refused to all.

The walk goes through the real URL resolver, so a new endpoint that forgets its
declaration fails here before it ships.
"""

import pytest
from django.urls import URLPattern, URLResolver, get_resolver, path
from drf_spectacular.views import SpectacularAPIView, SpectacularSwaggerView
from rest_framework.response import Response
from rest_framework.views import APIView

from accounts.models import ApiKeyScope
from marketplace.api import PUBLIC, BaseApi

# Not BaseApi: the OpenAPI schema and its viewer, public by SPECTACULAR_SETTINGS.
PUBLIC_SCHEMA_VIEWS = (SpectacularAPIView, SpectacularSwaggerView)
API_PREFIXES = ("api/", "v1/")
# HEAD follows GET and OPTIONS is refused unless declared, so neither needs a line.
CHECKED_METHODS = ("get", "post", "put", "patch", "delete")


def _walk(patterns, prefix=""):
    for entry in patterns:
        if isinstance(entry, URLResolver):
            yield from _walk(entry.url_patterns, prefix + str(entry.pattern))
        elif isinstance(entry, URLPattern):
            yield prefix + str(entry.pattern), entry.callback


def undeclared_api_methods(urlconf=None) -> list[str]:
    """`route METHOD` for each API method without a valid scope declaration."""
    valid = set(ApiKeyScope.values) | {PUBLIC}
    problems = []
    for route, callback in _walk(get_resolver(urlconf).url_patterns):
        view_class = getattr(callback, "view_class", None)
        if not route.startswith(API_PREFIXES) or view_class is None:
            continue
        if not issubclass(view_class, APIView) or issubclass(view_class, PUBLIC_SCHEMA_VIEWS):
            continue
        if not issubclass(view_class, BaseApi):
            problems.append(f"{route} {view_class.__name__} is not a BaseApi")
            continue
        for method in CHECKED_METHODS:
            if hasattr(view_class, method) and view_class.declared_scope(method) not in valid:
                problems.append(f"{route} {method.upper()} ({view_class.__name__})")
    return problems


class _ForgetfulApi(BaseApi):
    """Declares GET but serves POST too."""

    required_scopes = {"GET": "read"}

    def get(self, request):
        return Response({"ok": True})

    def post(self, request):
        return Response({"ok": True})


class _PlainApiView(APIView):
    def get(self, request):
        return Response({"ok": True})


urlpatterns = [
    path("api/v1/_test/forgetful", _ForgetfulApi.as_view()),
    path("api/v1/_test/plain", _PlainApiView.as_view()),
]


def test_every_api_method_declares_its_scope():
    assert undeclared_api_methods() == []


def test_the_walk_finds_a_view_that_forgot_a_declaration():
    assert undeclared_api_methods("tests.accounts.test_scope_declarations") == [
        "api/v1/_test/forgetful POST (_ForgetfulApi)",
        "api/v1/_test/plain _PlainApiView is not a BaseApi",
    ]


@pytest.mark.urls("tests.accounts.test_scope_declarations")
def test_an_undeclared_method_is_refused_even_to_a_full_session(bob, api):
    client = api()
    client.force_login(bob)

    assert client.get("/api/v1/_test/forgetful").status_code == 200
    response = client.post("/api/v1/_test/forgetful", {}, format="json")

    assert response.status_code == 403
    assert response.json()["error"]["code"] == "permission_denied"
    assert client.options("/api/v1/_test/forgetful").status_code == 403
    assert client.put("/api/v1/_test/forgetful", {}, format="json").status_code == 405


@pytest.mark.urls("tests.accounts.test_scope_declarations")
def test_an_undeclared_method_is_refused_to_a_full_key(bob, api):
    every_scope = api(bob, scopes=ApiKeyScope.values)

    assert every_scope.get("/api/v1/_test/forgetful").status_code == 200
    assert every_scope.post("/api/v1/_test/forgetful", {}, format="json").status_code == 403


def test_public_catalogue_needs_no_credentials_but_writes_do(db, api):
    anonymous = api()

    assert anonymous.get("/api/v1/listings").status_code == 200
    assert anonymous.head("/api/v1/listings").status_code == 200
    assert anonymous.post("/api/v1/listings", {}, format="json").status_code == 401
