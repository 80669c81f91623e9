"""Fine-tuning on real Celery worker processes: success, cancel, a worker killed."""

import random
import time

import pytest
from django.core.files.uploadedfile import SimpleUploadedFile

from accounts.models import User
from training_worker import services
from training_worker.models import FineTuningJob, JobStatus

pytestmark = [pytest.mark.integration, pytest.mark.slow]

WORDS = {
    "billing": ["invoice", "refund", "charge", "payment", "card", "receipt", "price"],
    "shipping": ["parcel", "courier", "delivery", "tracking", "address", "package", "late"],
    "account": ["password", "login", "email", "profile", "locked", "username", "reset"],
}


def support_tickets_csv(rows_per_label: int) -> bytes:
    rng = random.Random(5)
    lines = ["text,label"]
    for label, words in WORDS.items():
        for n in range(rows_per_label):
            lines.append(f'"ticket {n}: {" ".join(rng.sample(words, 4))} please help",{label}')
    return ("\n".join(lines) + "\n").encode()


def wait_for(predicate, timeout: float, what: str):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = predicate()
        if value:
            return value
        time.sleep(0.2)
    raise AssertionError(f"timed out after {timeout}s waiting for {what}")


def start_job(owner: User, rows_per_label: int, epochs: int) -> FineTuningJob:
    dataset = services.dataset_upload(
        owner=owner,
        file=SimpleUploadedFile("tickets.csv", support_tickets_csv(rows_per_label)),
    )
    wait_for(lambda: type(dataset).objects.get(pk=dataset.pk).status == "ready", 60, "validation")
    return services.job_create(
        owner=owner,
        base_model="minilm-l6",
        dataset_id=dataset.pk,
        hyperparameters={"n_epochs": epochs, "batch_size": 16},
        seed=1,
    )


def job_state(job) -> FineTuningJob:
    return FineTuningJob.objects.get(pk=job.pk)


def test_a_job_runs_to_success_on_a_worker_process(celery_worker_process, shipped_base_models):
    owner = User.objects.create_user(email="alice@example.com", password="x" * 12)
    job = start_job(owner, rows_per_label=20, epochs=2)

    done = wait_for(lambda: job_state(job).is_terminal and job_state(job), 240, "the job")

    assert done.status == JobStatus.SUCCEEDED, done.error_message
    assert done.worker.startswith(celery_worker_process.name)
    assert done.fine_tuned_model_id is not None
    assert done.heartbeat_at is not None and done.examples_per_s > 0


def test_cancel_takes_effect_within_seconds(celery_worker_process, shipped_base_models):
    owner = User.objects.create_user(email="alice@example.com", password="x" * 12)
    job = start_job(owner, rows_per_label=300, epochs=5)
    wait_for(lambda: job_state(job).step > 0, 120, "the first training step")

    services.job_cancel(owner=owner, job_id=job.pk)
    requested = time.monotonic()
    ended = wait_for(lambda: job_state(job).is_terminal and job_state(job), 30, "cancellation")

    assert ended.status == JobStatus.CANCELLED
    assert ended.error_code == "cancelled"
    assert time.monotonic() - requested < 10
    assert ended.step < ended.total_steps
    assert ended.fine_tuned_model_id is None
