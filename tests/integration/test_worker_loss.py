"""Worker loss: a worker process killed mid-job, one paused until its replacement has
finished, and a job whose workers keep dying.

This module must not use the module-scoped `celery_worker_process`: the job has to
land on the worker the test kills.
"""

import os
import signal
import time
from datetime import timedelta

import pytest
from django.db import connection
from django.utils import timezone

from accounts.models import User
from tests.integration.test_training_on_workers import job_state, start_job, wait_for
from training_worker import services
from training_worker.models import (
    BaseModel,
    Dataset,
    FineTuningJob,
    JobEvent,
    JobStatus,
    ModelVersion,
)

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


def open_transactions() -> int:
    with connection.cursor() as cursor:
        cursor.execute(
            "SELECT count(*) FROM pg_stat_activity WHERE datname = current_database() "
            "AND state LIKE 'idle in transaction%%' AND pid <> pg_backend_pid()"
        )
        return cursor.fetchone()[0]


def pause(worker) -> None:
    """SIGSTOP the worker's process group between two of its transactions (a process
    paused inside one would hold the job's row lock, and the sweep would wait on it)."""
    for _ in range(100):
        os.killpg(worker.process.pid, signal.SIGSTOP)
        if not open_transactions():
            return
        os.killpg(worker.process.pid, signal.SIGCONT)
        time.sleep(0.05)
    raise AssertionError("the worker never left its transaction")


def test_a_paused_worker_that_wakes_after_its_replacement_finished_changes_nothing(
    spawn_worker, shipped_base_models
):
    owner = User.objects.create_user(email="alice@example.com", password="x" * 12)
    sleeper = spawn_worker("training")
    spawn_worker("default")
    job = start_job(owner, rows_per_label=40, epochs=2)
    wait_for(lambda: job_state(job).step > 0, 120, "the first training step")

    pause(sleeper)  # a long GC pause, a frozen VM: alive, but presumed dead
    try:
        assert services.jobs_sweep_stale(stale_after=timedelta(seconds=0)) == {
            "requeued": 1,
            "failed": 0,
        }
        rescuer = spawn_worker("training")
        done = wait_for(lambda: job_state(job).is_terminal and job_state(job), 240, "the retry")
        events = JobEvent.objects.filter(job=job).count()
    finally:
        os.killpg(sleeper.process.pid, signal.SIGCONT)
    wait_for(lambda: "superseded" in sleeper.log_path.read_text(), 60, "the sleeper to stop")

    assert done.status == JobStatus.SUCCEEDED, done.error_message
    assert done.worker.startswith(rescuer.name) and done.attempts == 2
    after = job_state(job)
    assert (after.status, after.worker, after.fine_tuned_model_id, after.step) == (
        done.status,
        done.worker,
        done.fine_tuned_model_id,
        done.step,
    )
    assert ModelVersion.objects.filter(job=job).count() == 1
    assert JobEvent.objects.filter(job=job).count() == events


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
