"""/healthz says which part is down."""

import pytest
from django.test import Client

from marketplace.celery import app


@pytest.mark.django_db
def test_unreachable_broker_is_503_naming_the_broker(monkeypatch):
    monkeypatch.setattr(app.conf, "broker_url", "redis://127.0.0.1:1/0")

    response = Client().get("/healthz")

    body = response.json()
    assert response.status_code == 503
    assert body["status"] == "down"
    assert body["checks"]["database"]["ok"] is True
    assert body["checks"]["broker"]["ok"] is False
    assert set(body["down"]) == {"broker", "workers"}
