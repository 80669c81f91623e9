"""Every error, Django's and DRF's included, leaves in one shape."""

import pytest
from django.core.exceptions import PermissionDenied
from django.urls import path
from rest_framework.test import APIClient

from marketplace.api import BaseApi
from marketplace.errors import ConflictError


class _RaisesDjangoPermissionDenied(BaseApi):
    permission_classes = []

    def get_permissions(self):
        return []

    def get(self, request):
        raise PermissionDenied


class _RaisesConflict(BaseApi):
    def get_permissions(self):
        return []

    def get(self, request):
        raise ConflictError("The job already finished.", code="job_not_cancellable")


urlpatterns = [
    path("api/v1/_test/denied", _RaisesDjangoPermissionDenied.as_view()),
    path("api/v1/_test/conflict", _RaisesConflict.as_view()),
]


def assert_error_shape(response, status: int, code: str) -> dict:
    assert response.status_code == status
    assert response["Content-Type"].startswith("application/json")
    body = response.json()
    assert set(body) == {"error"}
    assert set(body["error"]) == {"code", "message", "fields"}
    assert body["error"]["code"] == code
    assert body["error"]["message"]
    return body["error"]


def test_unknown_api_path_is_404_in_the_contract(db):
    assert_error_shape(APIClient().get("/api/v1/no-such-thing"), 404, "not_found")
    # /v1 is the OpenAI-compatible API: its errors take OpenAI's shape (issue #9).
    openai_error = APIClient().get("/v1/no-such-thing").json()["error"]
    assert set(openai_error) == {"message", "type", "param", "code"}
    assert openai_error["code"] == "not_found"


def test_wrong_method_is_405(bob, api):
    assert_error_shape(api(bob).put("/api/v1/me", {}), 405, "method_not_allowed")


def test_validation_error_is_422_with_fields(bob, api):
    error = assert_error_shape(
        api(bob, scopes=["keys"]).post("/api/v1/api_keys", {"scopes": ["read"]}, format="json"),
        422,
        "validation_error",
    )
    assert list(error["fields"]) == ["name"]


def test_malformed_json_is_400(bob, api):
    client = api(bob, scopes=["keys"])
    response = client.post("/api/v1/api_keys", data="{not json", content_type="application/json")
    assert_error_shape(response, 400, "malformed_request")


def test_bad_cursor_is_422(bob, api):
    error = assert_error_shape(
        api(bob).get("/api/v1/api_keys?after=not-an-id"), 422, "validation_error"
    )
    assert "after" in error["fields"]


@pytest.mark.urls("tests.marketplace.test_error_contract")
def test_django_permission_denied_is_403(db):
    assert_error_shape(APIClient().get("/api/v1/_test/denied"), 403, "permission_denied")


@pytest.mark.urls("tests.marketplace.test_error_contract")
def test_application_error_keeps_its_code_and_status(db):
    error = assert_error_shape(
        APIClient().get("/api/v1/_test/conflict"), 409, "job_not_cancellable"
    )
    assert error["message"] == "The job already finished."


def test_html_pages_get_an_html_404(db):
    response = APIClient().get("/no-such-page/")
    assert response.status_code == 404
    assert response["Content-Type"].startswith("text/html")


def test_openapi_schema_and_docs_are_served(db):
    client = APIClient()
    schema = client.get("/api/schema/?format=json")
    assert schema.status_code == 200
    assert "/api/v1/api_keys" in schema.json()["paths"]
    assert client.get("/api/docs/").status_code == 200
