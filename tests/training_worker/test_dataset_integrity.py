"""Datasets and the jobs waiting on them, when steps race or messages get lost.

Each race is played in a fixed order: the racing step runs at the exact point where it
hurts (inside validation, or while job creation holds its transaction open).
"""

import threading
import time
from datetime import timedelta

import pytest
from django.core.files.storage import default_storage
from django.db import connection, connections
from django.utils import timezone
from kombu.exceptions import OperationalError

from marketplace.storage import SEALED_PREFIX
from tests.training_worker.conftest import classification_csv, upload
from training_worker import services, tasks
from training_worker.models import (
    BaseModel,
    Dataset,
    DatasetStatus,
    FineTuningJob,
    JobEvent,
    JobStatus,
)


def post_dataset(client, filename: str, content: bytes):
    """Upload; the validation task is sent on commit, which these tests leave unrun."""
    response = client.post("/api/v1/datasets", {"file": upload(filename, content)})
    assert response.status_code == 202, response.json()
    return response.json()["id"]


def files_under(prefix: str) -> list[str]:
    """Files under `prefix` and under its sealed twin (where sealed splits live)."""
    return [
        name
        for folder in (prefix, f"{SEALED_PREFIX}{prefix}")
        if default_storage.exists(folder)
        for name in default_storage.listdir(folder)[1]
    ]


def ready_dataset(owner) -> Dataset:
    return Dataset.objects.create(
        owner=owner, name="d", filename="d.csv", size_bytes=1, sha256="0" * 64,
        status=DatasetStatus.READY, task="text-classification", labels=["a", "b"],
    )  # fmt: skip


def job_on(dataset, status: str, **fields) -> FineTuningJob:
    return FineTuningJob.objects.create(
        owner=dataset.owner, base_model=BaseModel.objects.get(slug="minilm-l6"),
        dataset=dataset, task="text-classification", seed=1, status=status, **fields,
    )  # fmt: skip


# --- delete during validation ------------------------------------------------------


def test_a_dataset_deleted_while_it_validates_stays_deleted_and_leaves_no_files(
    alice, api, monkeypatch, django_capture_on_commit_callbacks
):
    client = api(alice)
    dataset_id = post_dataset(client, "notes.csv", classification_csv())
    real_validate = services.validate_dataset

    def validate_while_alice_deletes(raw, **kwargs):
        result = real_validate(raw, **kwargs)
        with django_capture_on_commit_callbacks(execute=True):
            deleted = client.delete(f"/api/v1/datasets/{dataset_id}")
        assert deleted.status_code == 204
        return result

    monkeypatch.setattr(services, "validate_dataset", validate_while_alice_deletes)

    with django_capture_on_commit_callbacks(execute=True):
        services.dataset_validate(dataset_id=dataset_id)

    assert not Dataset.objects.filter(pk=dataset_id).exists()
    assert client.get(f"/api/v1/datasets/{dataset_id}").status_code == 404
    assert files_under(f"datasets/{dataset_id}") == []


def test_a_dataset_with_a_cancelled_job_deleted_while_it_validates_stays_deleted(
    alice, api, monkeypatch, django_capture_on_commit_callbacks
):
    client = api(alice)
    dataset_id = post_dataset(client, "notes.csv", classification_csv())
    job = client.post(
        "/api/v1/fine_tuning/jobs",
        {"base_model": "minilm-l6", "dataset": dataset_id},
        format="json",
    ).json()
    assert client.post(f"/api/v1/fine_tuning/jobs/{job['id']}/cancel").status_code == 200
    real_validate = services.validate_dataset

    def validate_while_alice_deletes(raw, **kwargs):
        result = real_validate(raw, **kwargs)
        with django_capture_on_commit_callbacks(execute=True):
            assert client.delete(f"/api/v1/datasets/{dataset_id}").status_code == 204
        return result

    monkeypatch.setattr(services, "validate_dataset", validate_while_alice_deletes)

    with django_capture_on_commit_callbacks(execute=True):
        services.dataset_validate(dataset_id=dataset_id)

    dataset = Dataset.objects.get(pk=dataset_id)  # a job used it: the record stays
    assert dataset.deleted_at is not None
    assert (dataset.source_path, dataset.train_path, dataset.sealed_path) == ("", "", "")
    assert client.get(f"/api/v1/datasets/{dataset_id}").status_code == 404
    assert files_under(f"datasets/{dataset_id}") == []


# --- a job created while its dataset finishes validation ---------------------------


def lock_waiters() -> int:
    with connections["default"].cursor() as cursor:
        cursor.execute("SELECT pg_stat_clear_snapshot()")  # fresh view inside a transaction
        cursor.execute(
            "SELECT count(*) FROM pg_stat_activity "
            "WHERE datname = current_database() AND wait_event_type = 'Lock'"
        )
        return cursor.fetchone()[0]


@pytest.mark.django_db(transaction=True)
def test_a_job_created_while_its_dataset_finishes_validation_is_queued(
    alice, api, monkeypatch, shipped_base_models
):
    sent = []  # the broker: what would have gone to the queues
    monkeypatch.setattr(tasks.validate_dataset, "delay", lambda *a: sent.append(("validate", *a)))
    monkeypatch.setattr(tasks.train_fine_tuning_job, "delay", lambda *a: sent.append(("train", *a)))
    client = api(alice)
    dataset_id = post_dataset(client, "notes.csv", classification_csv())
    assert Dataset.objects.get(pk=dataset_id).status == DatasetStatus.UPLOADED

    def validate_on_another_connection():
        try:
            services.dataset_validate(dataset_id=dataset_id)
        finally:
            connection.close()

    validator = threading.Thread(target=validate_on_another_connection)
    real_job_event = services.job_event

    def job_event_while_validation_finishes(*, job, message, **kwargs):
        if message.startswith("Created fine-tuning job") and not validator.is_alive():
            # Job creation has read the dataset and not committed: validation ends now.
            validator.start()
            deadline = time.monotonic() + 30
            while validator.is_alive() and not lock_waiters():
                assert time.monotonic() < deadline, "validation neither ended nor waited"
                time.sleep(0.01)
        return real_job_event(job=job, message=message, **kwargs)

    monkeypatch.setattr(services, "job_event", job_event_while_validation_finishes)

    response = client.post(
        "/api/v1/fine_tuning/jobs",
        {"base_model": "minilm-l6", "dataset": dataset_id},
        format="json",
    )
    validator.join(timeout=30)

    assert response.status_code == 201, response.json()
    job = FineTuningJob.objects.get(pk=response.json()["id"])
    assert Dataset.objects.get(pk=dataset_id).status == DatasetStatus.READY
    assert job.status == JobStatus.QUEUED
    assert sent.count(("train", str(job.pk))) == 1


# --- validation that crashes or dies -------------------------------------------------


def test_a_file_whose_sealed_split_cannot_be_drawn_ends_invalid_with_the_reason(
    alice, api, monkeypatch, django_capture_on_commit_callbacks
):
    monkeypatch.setattr(services, "SEALED_CAP", 2)  # fewer sealed rows than labels
    client = api(alice)

    with django_capture_on_commit_callbacks(execute=True):
        dataset_id = post_dataset(client, "notes.csv", classification_csv())

    body = client.get(f"/api/v1/datasets/{dataset_id}").json()
    assert body["status"] == "invalid"
    error = body["report"]["errors"][0]
    assert error["code"] == "sealed_split_impossible"
    assert "3 labels" in error["message"]
    dataset = Dataset.objects.get(pk=dataset_id)
    assert dataset.status == DatasetStatus.INVALID
    assert dataset.train_path == dataset.sealed_path == ""
    assert sorted(files_under(f"datasets/{dataset_id}")) == ["source.csv"]


def test_a_dataset_whose_validation_keeps_dying_is_given_up_after_the_cap(alice, api, settings):
    settings.STUDIO_MAX_REQUEUES = 2
    client = api(alice)
    dataset_id = post_dataset(client, "notes.csv", classification_csv())
    rows = Dataset.objects.filter(pk=dataset_id)

    outcomes = []
    for _ in range(3):
        # A worker claims the dataset and dies (its messages are never run here).
        rows.update(status="validating", validation_started_at=timezone.now() - timedelta(hours=1))
        tasks.sweep_stale_jobs()
        outcomes.append(rows.get().status)

    assert outcomes == ["uploaded", "uploaded", "invalid"]
    body = client.get(f"/api/v1/datasets/{dataset_id}").json()
    assert body["status"] == "invalid"
    assert body["report"]["errors"][0]["code"] == "validation_stalled"
    assert "3 tries" in body["report"]["errors"][0]["message"]
    assert rows.get().requeues == 2


# --- lost messages -----------------------------------------------------------------------


def test_an_upload_whose_message_was_lost_is_validated_by_the_sweep(
    alice, api, settings, django_capture_on_commit_callbacks
):
    settings.STUDIO_UPLOADED_STALE_SECONDS = 0
    client = api(alice)
    dataset_id = post_dataset(client, "notes.csv", classification_csv())  # message lost

    with django_capture_on_commit_callbacks(execute=True):
        counts = tasks.sweep_stale_jobs()

    assert counts["datasets_resent"] == 1
    assert client.get(f"/api/v1/datasets/{dataset_id}").json()["status"] == "ready"
    assert Dataset.objects.get(pk=dataset_id).requeues == 1


def test_an_upload_the_broker_refuses_is_accepted_and_validated_by_the_sweep(
    alice, api, settings, monkeypatch, django_capture_on_commit_callbacks
):
    def broker_down(*args):
        raise OperationalError("Error 111 connecting to 127.0.0.1:6379. Connection refused.")

    client = api(alice)
    with monkeypatch.context() as patch:
        patch.setattr(tasks.validate_dataset, "delay", broker_down)
        with django_capture_on_commit_callbacks(execute=True):
            response = client.post(
                "/api/v1/datasets", {"file": upload("notes.csv", classification_csv())}
            )

    assert response.status_code == 202
    dataset_id = response.json()["id"]
    assert Dataset.objects.get(pk=dataset_id).status == DatasetStatus.UPLOADED
    settings.STUDIO_UPLOADED_STALE_SECONDS = 0  # the broker is back; the sweep passes
    with django_capture_on_commit_callbacks(execute=True):
        tasks.sweep_stale_jobs()
    assert client.get(f"/api/v1/datasets/{dataset_id}").json()["status"] == "ready"


def test_a_queued_job_whose_message_was_lost_is_sent_again_then_failed_after_the_cap(
    alice, api, settings, django_capture_on_commit_callbacks
):
    settings.STUDIO_QUEUED_STALE_SECONDS = 0
    settings.STUDIO_MAX_REQUEUES = 2
    job = job_on(ready_dataset(alice), JobStatus.QUEUED)

    sends = []
    for _ in range(3):
        with django_capture_on_commit_callbacks() as callbacks:  # messages lost again
            tasks.sweep_stale_jobs()
        sends.append(len(callbacks))

    assert sends == [1, 1, 0]
    body = api(alice).get(f"/api/v1/fine_tuning/jobs/{job.pk}").json()
    assert body["status"] == "failed"
    assert body["error"]["code"] == "queue_lost"
    assert "3 times" in body["error"]["message"]
    job.refresh_from_db()
    assert job.requeues == 2 and job.status == JobStatus.FAILED


def test_a_job_left_waiting_behind_a_ready_dataset_is_queued_by_the_sweep(
    alice, settings, django_capture_on_commit_callbacks
):
    settings.STUDIO_VALIDATING_FILES_STALE_SECONDS = 0
    job = job_on(ready_dataset(alice), JobStatus.VALIDATING_FILES)

    with django_capture_on_commit_callbacks() as callbacks:
        tasks.sweep_stale_jobs()

    job.refresh_from_db()
    assert job.status == JobStatus.QUEUED
    assert len(callbacks) == 1  # the training task
    assert JobEvent.objects.filter(job=job, message="Dataset validated; job queued.").exists()


def test_the_sweep_leaves_fresh_and_finished_rows_alone(
    alice, api, django_capture_on_commit_callbacks
):
    dataset = ready_dataset(alice)
    post_dataset(api(alice), "notes.csv", classification_csv())  # uploaded just now
    job_on(dataset, JobStatus.QUEUED)
    job_on(dataset, JobStatus.SUCCEEDED)

    with django_capture_on_commit_callbacks() as callbacks:
        counts = tasks.sweep_stale_jobs()

    assert callbacks == []
    assert set(counts.values()) == {0}
