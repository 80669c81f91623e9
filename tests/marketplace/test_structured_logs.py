"""Every line logged during a request or a task names its request, user and job."""

import json
import logging

import pytest
from django.http import JsonResponse
from django.test import Client
from django.urls import include, path

from marketplace.celery import app as celery_app
from marketplace.log_context import JsonFormatter

logger = logging.getLogger("tests.structured_logs")


def logging_view(request):
    logger.info("inside the view")
    return JsonResponse({"ok": True})


urlpatterns = [
    path("_test/logs", logging_view),
    path("", include("marketplace.urls")),
]


@celery_app.task(name="tests.structured_logs.job_task")
def job_task(job_id: str) -> str:
    logger.info("working on the job")
    return job_id


def records_of(caplog, message: str) -> list[logging.LogRecord]:
    return [r for r in caplog.records if r.getMessage() == message]


@pytest.mark.urls("tests.marketplace.test_structured_logs")
def test_a_request_id_is_honoured_echoed_and_on_every_line(db, caplog):
    caplog.set_level(logging.INFO)

    response = Client().get("/_test/logs", HTTP_X_REQUEST_ID="edge-7f3a.1")

    assert response["X-Request-ID"] == "edge-7f3a.1"
    (inside,) = records_of(caplog, "inside the view")
    (access,) = [r for r in caplog.records if r.name == "niche.request"]
    assert inside.request_id == access.request_id == "edge-7f3a.1"
    assert access.status == 200 and access.path == "/_test/logs"
    assert not hasattr(inside, "user_id")  # anonymous


@pytest.mark.urls("tests.marketplace.test_structured_logs")
def test_a_hostile_request_id_is_replaced_by_a_generated_one(db, caplog):
    caplog.set_level(logging.INFO)

    response = Client().get("/_test/logs", HTTP_X_REQUEST_ID='x"\n{"level":"forged"}')

    generated = response["X-Request-ID"]
    assert len(generated) == 32 and int(generated, 16) >= 0
    assert records_of(caplog, "inside the view")[0].request_id == generated


def test_an_api_key_callers_lines_carry_their_user_id_as_json(bob, api, caplog):
    caplog.set_level(logging.INFO)

    response = api(bob).get("/api/v1/listings/mine", HTTP_X_REQUEST_ID="req-1")

    assert response.status_code == 200
    (access,) = [r for r in caplog.records if r.name == "niche.request"]
    assert access.user_id == str(bob.pk)
    line = json.loads(JsonFormatter().format(access))
    assert line["request_id"] == "req-1"
    assert line["user_id"] == str(bob.pk)
    assert line["status"] == 200 and line["level"] == "INFO"
    assert line["message"] == "GET /api/v1/listings/mine 200"


def test_a_tasks_lines_carry_its_job_id_and_task_id_then_the_context_ends(caplog):
    caplog.set_level(logging.INFO)

    result = job_task.apply(args=["7c1f0e5e-job"])
    logger.info("after the task")

    (inside,) = records_of(caplog, "working on the job")
    assert inside.job_id == "7c1f0e5e-job"
    assert inside.task_id == result.id
    assert inside.task_name == "tests.structured_logs.job_task"
    (after,) = records_of(caplog, "after the task")
    assert not hasattr(after, "job_id") and not hasattr(after, "task_id")
    line = json.loads(JsonFormatter().format(inside))
    assert line["job_id"] == "7c1f0e5e-job" and line["task_id"] == result.id
