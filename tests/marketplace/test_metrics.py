"""`/metrics`: the Prometheus text format, behind METRICS_TOKEN, over real Redis and Postgres."""

import time
import uuid
from datetime import timedelta

import pytest
import redis
from django.conf import settings
from django.test import Client
from django.utils import timezone
from kombu import Queue
from prometheus_client.parser import text_string_to_metric_families

from billing.models import StripeEvent
from marketplace.celery import app as celery_app
from training_worker.models import BaseModel, Dataset, DatasetStatus, FineTuningJob, JobStatus

TOKEN = "metrics-token-" + "x" * 32


@pytest.fixture
def metrics_on(settings):
    settings.METRICS_TOKEN = TOKEN
    return settings


def scrape(client: Client | None = None) -> dict[tuple[str, tuple], float]:
    """Every sample of one scrape, keyed by (name, sorted labels)."""
    response = (client or Client()).get("/metrics", HTTP_AUTHORIZATION=f"Bearer {TOKEN}")
    assert response.status_code == 200
    assert response["Content-Type"].startswith("text/plain; version=")
    samples = {}
    for family in text_string_to_metric_families(response.content.decode()):
        for sample in family.samples:
            samples[(sample.name, tuple(sorted(sample.labels.items())))] = sample.value
    return samples


def job_on(owner, status: str, **fields) -> FineTuningJob:
    dataset = Dataset.objects.create(
        owner=owner, name="d", filename="d.csv", size_bytes=1, sha256="0" * 64,
        status=DatasetStatus.READY, task="text-classification", labels=["a", "b"],
    )  # fmt: skip
    return FineTuningJob.objects.create(
        owner=owner, base_model=BaseModel.objects.get(slug="minilm-l6"), dataset=dataset,
        task="text-classification", seed=1, status=status, **fields,
    )  # fmt: skip


def test_metrics_are_off_without_a_token_setting(db, settings):
    settings.METRICS_TOKEN = ""

    response = Client().get("/metrics", HTTP_AUTHORIZATION="Bearer anything")

    assert response.status_code == 404
    assert b"niche_" not in response.content


def test_a_scraper_without_the_token_gets_401(db, metrics_on):
    client = Client()

    missing = client.get("/metrics")
    wrong = client.get("/metrics", HTTP_AUTHORIZATION="Bearer " + "y" * 46)
    as_basic = client.get("/metrics", HTTP_AUTHORIZATION=f"Basic {TOKEN}")

    for response in (missing, wrong, as_basic):
        assert response.status_code == 401
        assert response["WWW-Authenticate"].startswith("Bearer")
        assert b"niche_" not in response.content
    assert client.post("/metrics", HTTP_AUTHORIZATION=f"Bearer {TOKEN}").status_code == 405


def test_a_request_shows_up_in_the_counter_by_view_name(db, metrics_on):
    key = (
        "niche_http_requests_total",
        (("method", "GET"), ("status", "200"), ("view", "api-listings")),
    )
    before = scrape().get(key, 0.0)

    assert Client().get("/api/v1/listings?search=anything").status_code == 200
    after = scrape()

    assert after[key] == before + 1
    latency_count = ("niche_http_request_duration_seconds_count", key[1][:1] + key[1][2:])
    assert after[latency_count] >= 1
    # Raw paths never become labels: a 404 for an unknown page counts under one name.
    Client().get(f"/no-such-page-{uuid.uuid4().hex}")
    views = {dict(labels).get("view") for (name, labels) in scrape() if "http_requests" in name}
    assert not any(view and view.startswith("/no-such-page") for view in views)


@pytest.fixture
def extra_queue(settings):
    """A queue of this test's own on the real broker, read through the settings."""
    name = f"metrics-test-{uuid.uuid4().hex[:8]}"
    settings.CELERY_TASK_QUEUES = (*settings.CELERY_TASK_QUEUES, Queue(name))
    client = redis.Redis.from_url(settings.CELERY_BROKER_URL)
    yield name
    client.delete(name, *(f"{name}\x06\x16{step}" for step in (3, 6, 9)))


@pytest.mark.filterwarnings("ignore::celery.exceptions.AlwaysEagerIgnored")  # sent for real
def test_queue_depth_reflects_messages_pushed_into_redis(db, metrics_on, extra_queue):
    try:
        redis.Redis.from_url(settings.CELERY_BROKER_URL).ping()
    except redis.ConnectionError:
        if settings.IS_CI:
            raise
        pytest.skip("Redis is not running here")
    depth = ("niche_celery_queue_depth", (("queue", extra_queue),))
    assert scrape()[depth] == 0
    assert {("queue", q.name) for q in settings.CELERY_TASK_QUEUES} >= {
        ("queue", "default"), ("queue", "training"), ("queue", "inference")
    }  # fmt: skip

    for priority in (None, None, 9):  # a priority message sits in a sibling list
        celery_app.send_task(
            "metrics.test.never_run", queue=extra_queue, priority=priority, retry=False
        )

    assert scrape()[depth] == 3
    assert scrape()[("niche_metrics_source_up", (("source", "redis"),))] == 1


def test_jobs_by_status_count_the_rows(alice, metrics_on):
    for status in (JobStatus.QUEUED, JobStatus.QUEUED, JobStatus.FAILED):
        job_on(alice, status)

    samples = scrape()

    def jobs(status: str) -> float:
        return samples[("niche_fine_tuning_jobs", (("status", status),))]

    assert jobs("queued") == 2
    assert jobs("failed") == 1
    assert jobs("running") == 0
    assert jobs("succeeded") == 0


def test_training_throughput_sums_the_live_running_jobs(alice, metrics_on):
    now = timezone.now()
    job_on(alice, JobStatus.RUNNING, heartbeat_at=now, examples_per_s=40.0)
    job_on(alice, JobStatus.RUNNING, heartbeat_at=now, examples_per_s=35.5)
    # A worker that stopped sending heartbeats no longer counts.
    job_on(alice, JobStatus.RUNNING, heartbeat_at=now - timedelta(hours=1), examples_per_s=99.0)

    samples = scrape()

    assert samples[("niche_training_examples_per_second", ())] == pytest.approx(75.5)
    assert samples[("niche_training_jobs_live", ())] == 2


def test_webhook_lag_runs_from_stripe_created_to_processed(db, metrics_on):
    now = timezone.now()
    for number, lag in enumerate((2, 4, 30)):
        StripeEvent.objects.create(
            id=f"evt_lag_{number}", type="payment_intent.succeeded",
            payload={"id": f"evt_lag_{number}", "created": int(now.timestamp()) - lag},
            processed_at=now,
        )  # fmt: skip
    StripeEvent.objects.create(
        id="evt_waiting", type="payment_intent.succeeded",
        payload={"id": "evt_waiting", "created": int(time.time())},
        received_at=now - timedelta(seconds=50),
    )  # fmt: skip

    samples = scrape()

    lag = {dict(labels)["quantile"]: value for (name, labels), value in samples.items()
           if name == "niche_stripe_webhook_lag_seconds"}  # fmt: skip
    assert lag["0.5"] == pytest.approx(4, abs=1)
    assert lag["1"] == pytest.approx(30, abs=1)
    assert samples[("niche_stripe_webhook_unprocessed_events", ())] == 1
    assert samples[("niche_stripe_webhook_oldest_unprocessed_age_seconds", ())] >= 50
