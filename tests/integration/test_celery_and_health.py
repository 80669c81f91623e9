"""A real Celery worker process against Redis, and /healthz seeing it."""

import pytest
from django.test import Client

from marketplace.celery import app, ping

pytestmark = pytest.mark.integration


def test_task_round_trip_through_a_worker_process(celery_worker_process):
    result = ping.delay()

    assert result.get(timeout=30) == "pong"
    assert celery_worker_process.process.poll() is None


def test_tasks_route_to_queues_by_module():
    router = app.amqp.router

    assert router.route({}, "training_worker.tasks.train_job")["queue"].name == "training"
    assert router.route({}, "training_worker.tasks.validate_dataset")["queue"].name == "default"
    assert router.route({}, "serving.tasks.anything")["queue"].name == "inference"
    assert router.route({}, "marketplace.ping")["queue"].name == "default"


def test_celery_speaks_json_only():
    assert app.conf.accept_content == ["json"]
    assert app.conf.task_serializer == "json"
    assert app.conf.worker_prefetch_multiplier == 1


@pytest.mark.django_db
def test_healthz_is_green_with_database_broker_and_a_live_worker(celery_worker_process, settings):
    settings.HEALTHZ_TOKEN = "ops-token-0123456789"
    public = Client().get("/healthz")
    response = Client().get("/healthz", HTTP_AUTHORIZATION="Bearer ops-token-0123456789")

    body = response.json()
    assert public.status_code == 200
    assert public.json() == {"status": "ok"}
    assert response.status_code == 200, body
    assert body["status"] == "ok"
    assert body["checks"]["database"]["vendor"] == "postgresql"
    assert any(celery_worker_process.name in w for w in body["checks"]["workers"]["workers"])
