"""/healthz: anyone learns ok or degraded; staff and the ops token learn which part is down."""

import pytest
from django.test import Client

from marketplace.celery import app


@pytest.fixture
def broker_down(monkeypatch):
    monkeypatch.setattr(app.conf, "broker_url", "redis://127.0.0.1:1/0")


@pytest.mark.django_db
def test_the_public_gets_the_status_and_nothing_else(broker_down):
    response = Client().get("/healthz")

    assert response.status_code == 503
    assert response.json() == {"status": "degraded"}
    assert b"Error" not in response.content and b"127.0.0.1" not in response.content


@pytest.mark.django_db
def test_mallory_with_a_wrong_token_gets_the_status_only(broker_down, settings):
    settings.HEALTHZ_TOKEN = "ops-token-0123456789"

    response = Client().get("/healthz", HTTP_AUTHORIZATION="Bearer ops-token-guess")

    assert response.status_code == 503
    assert response.json() == {"status": "degraded"}


def test_a_signed_in_non_staff_user_gets_the_status_only(broker_down, bob):
    client = Client()
    client.force_login(bob)

    assert client.get("/healthz").json() == {"status": "degraded"}


@pytest.mark.django_db
def test_the_ops_token_sees_which_part_is_down(broker_down, settings):
    settings.HEALTHZ_TOKEN = "ops-token-0123456789"

    response = Client().get("/healthz", HTTP_AUTHORIZATION="Bearer ops-token-0123456789")

    body = response.json()
    assert response.status_code == 503
    assert body["status"] == "degraded"
    assert body["checks"]["database"]["ok"] is True
    assert body["checks"]["broker"]["ok"] is False
    assert set(body["down"]) == {"broker", "workers"}


@pytest.mark.django_db
def test_an_empty_token_setting_opens_nothing(broker_down, settings):
    settings.HEALTHZ_TOKEN = ""

    response = Client().get("/healthz", HTTP_AUTHORIZATION="Bearer ")

    assert response.json() == {"status": "degraded"}


def test_carol_on_the_staff_sees_the_details(broker_down, carol):
    client = Client()
    client.force_login(carol)

    body = client.get("/healthz").json()

    assert body["checks"]["broker"]["ok"] is False
    assert "error" in body["checks"]["broker"]
