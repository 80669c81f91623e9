"""Worker loss: a worker process killed mid-job, and a job whose workers keep dying.

This module must not use the module-scoped `celery_worker_process`: the job has to
land on the worker the test kills.
"""

from datetime import timedelta

import pytest
from django.utils import timezone

from accounts.models import User
from tests.integration.test_training_on_workers import job_state, start_job, wait_for
from training_worker import services
from training_worker.models import BaseModel, Dataset, FineTuningJob, JobStatus

pytestmark = [pytest.mark.integration, pytest.mark.slow]


def test_a_worker_killed_mid_job_is_requeued_once_and_nothing_stays_running(
    spawn_worker, shipped_base_models
):
    owner = User.objects.create_user(email="alice@example.com", password="x" * 12)
    doomed = spawn_worker("training")
    # The default/validation queue is served by a second worker that survives.
    spawn_worker("default")
    job = start_job(owner, rows_per_label=60, epochs=2)
    wait_for(lambda: job_state(job).step > 0, 120, "the first training step")

    doomed.kill()  # SIGKILL to the worker's whole process group, mid-step
    running = job_state(job)
    assert running.status == JobStatus.RUNNING  # nobody told the database
    assert running.worker.startswith(doomed.name)
    counts = services.jobs_sweep_stale(stale_after=timedelta(seconds=0))

    assert counts == {"requeued": 1, "failed": 0}
    assert job_state(job).status == JobStatus.QUEUED
    rescuer = spawn_worker("training")
    done = wait_for(lambda: job_state(job).is_terminal and job_state(job), 240, "the retry")
    assert done.status == JobStatus.SUCCEEDED, done.error_message
    assert done.attempts == 2
    assert done.worker.startswith(rescuer.name)
    assert not FineTuningJob.objects.filter(status=JobStatus.RUNNING).exists()


def test_a_job_whose_worker_dies_twice_fails_as_worker_lost(shipped_base_models):
    owner = User.objects.create_user(email="alice@example.com", password="x" * 12)
    dataset = Dataset.objects.create(
        owner=owner, name="d", filename="d.csv", size_bytes=1, sha256="0" * 64, status="ready",
        task="text-classification",
    )  # fmt: skip
    job = FineTuningJob.objects.create(
        owner=owner, base_model=BaseModel.objects.get(slug="minilm-l6"), dataset=dataset,
        task="text-classification", seed=1, status=JobStatus.RUNNING, attempts=2,
        worker="gone@host", heartbeat_at=timezone.now() - timedelta(minutes=10),
    )  # fmt: skip

    counts = services.jobs_sweep_stale()

    assert counts == {"requeued": 0, "failed": 1}
    failed = job_state(job)
    assert failed.status == JobStatus.FAILED
    assert failed.error_code == "worker_lost"
    assert "attempt 2 of 2" in failed.error_message
