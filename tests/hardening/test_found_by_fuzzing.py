"""Regressions the fuzzers found, pinned as plain tests."""

import pytest

pytestmark = pytest.mark.django_db


def test_a_monthly_call_cap_past_the_column_is_a_422_not_a_500(alice, api):
    from tests.listings.conftest import make_version

    version = make_version(alice)
    for cap in (2**31, 2**40):
        response = api(alice).post(
            "/api/v1/listings",
            {"model_version": str(version.id), "title": "Big cap", "summary": "s",
             "domain": "healthcare", "max_calls_per_month": cap},
            format="json",
        )  # fmt: skip
        assert response.status_code == 422, response.content
        assert "max_calls_per_month" in response.json()["error"]["fields"]


def test_an_unknown_api_path_answers_a_post_with_404_in_the_error_contract(db, client):
    for path in ("/api/v1/listings/%C2%B2/delist", "/v1/nothing-here"):
        response = client.post(path, {}, HTTP_HOST="localhost")
        assert response.status_code == 404
        assert response["Content-Type"].startswith("application/json")
        assert response.json()["error"]["code"] == "not_found"
