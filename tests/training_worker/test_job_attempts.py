"""Fencing between a worker presumed dead and the one that replaced it.

The attempt number a worker got when it claimed the job is its token: once the sweep
hands the job to another attempt, every write of the old one changes nothing and stops it.
"""

import time
from datetime import timedelta
from pathlib import Path

import pytest
from django.core.files.uploadedfile import SimpleUploadedFile
from django.db import connections
from django.utils import timezone

from tests.training_worker.conftest import classification_csv
from training_worker import runner, services
from training_worker.ml.recipe import Progress
from training_worker.models import (
    BaseModel,
    Checkpoint,
    Dataset,
    FineTuningJob,
    JobEvent,
    JobStatus,
    ModelVersion,
)


def ready_dataset(owner) -> Dataset:
    return Dataset.objects.create(
        owner=owner, name="d", filename="d.csv", size_bytes=1, sha256="0" * 64,
        status="ready", task="text-classification", labels=["a", "b"],
    )  # fmt: skip


def running_job(owner, *, attempts: int, worker: str) -> FineTuningJob:
    return FineTuningJob.objects.create(
        owner=owner, base_model=BaseModel.objects.get(slug="minilm-l6"),
        dataset=ready_dataset(owner), task="text-classification", seed=1,
        status=JobStatus.RUNNING, attempts=attempts, worker=worker,
        heartbeat_at=timezone.now(), started_at=timezone.now(),
    )  # fmt: skip


def as_seen_by(job: FineTuningJob, *, attempts: int, worker: str) -> FineTuningJob:
    """The job object a worker holds since its claim (its attempt number and name)."""
    stale = FineTuningJob.objects.select_related("base_model", "dataset").get(pk=job.pk)
    stale.attempts, stale.worker = attempts, worker
    return stale


def queued_job_with_data(owner, django_capture_on_commit_callbacks) -> FineTuningJob:
    with django_capture_on_commit_callbacks(execute=True):  # validation runs inline
        dataset = services.dataset_upload(
            owner=owner,
            file=SimpleUploadedFile("notes.csv", classification_csv(rows_per_label=10)),
        )
    # The training message is not run: the test plays the workers itself.
    return services.job_create(
        owner=owner, base_model="minilm-l6", dataset_id=dataset.pk,
        hyperparameters={"n_epochs": 1, "batch_size": 8}, seed=2,
    )  # fmt: skip


def test_a_stale_attempts_writes_change_nothing_and_stop_it(alice, tmp_path):
    job = running_job(alice, attempts=2, worker="w2@host")  # attempt 1 was presumed dead
    before = FineTuningJob.objects.get(pk=job.pk)
    callbacks = runner.JobCallbacks(as_seen_by(job, attempts=1, worker="w1@host"))
    progress = Progress(
        step=3, total_steps=9, epoch=0.3, loss=1.0, examples_per_s=5,
        eta_seconds=2, trained_tokens=90,
    )  # fmt: skip
    adapter = tmp_path / "adapter"
    adapter.mkdir()
    (adapter / "adapter_model.safetensors").write_bytes(b"w")
    (adapter / "adapter_config.json").write_text("{}")

    with pytest.raises(runner.AttemptSuperseded):
        callbacks.on_progress(progress)
    with pytest.raises(runner.AttemptSuperseded):
        callbacks.on_event("info", "Epoch 1 done.")
    with pytest.raises(runner.AttemptSuperseded):
        callbacks.on_checkpoint(3, {"epoch": 1}, adapter)
    with pytest.raises(runner.AttemptSuperseded):
        callbacks.should_cancel()

    after = FineTuningJob.objects.get(pk=job.pk)
    assert (after.step, after.heartbeat_at, after.worker) == (0, before.heartbeat_at, "w2@host")
    assert not JobEvent.objects.filter(job=job).exists()
    assert not Checkpoint.objects.filter(job=job).exists()


def test_a_stale_attempts_heartbeat_changes_nothing(alice):
    job = running_job(alice, attempts=2, worker="w2@host")
    before = FineTuningJob.objects.get(pk=job.pk).heartbeat_at
    stale = runner._Heartbeat(as_seen_by(job, attempts=1, worker="w1@host"), interval=60)
    mine = runner._Heartbeat(job, interval=60)

    assert stale.beat() is False
    assert FineTuningJob.objects.get(pk=job.pk).heartbeat_at == before
    assert mine.beat() is True
    assert FineTuningJob.objects.get(pk=job.pk).heartbeat_at > before


def test_ending_a_cancelled_run_that_no_longer_owns_the_job_logs_nothing(alice):
    job = running_job(alice, attempts=1, worker="w1@host")
    services.job_fail(job=job, code="worker_lost", message="The worker stopped answering.")

    runner._job_end_cancelled(job)

    job.refresh_from_db()
    assert job.status == JobStatus.FAILED and job.error_code == "worker_lost"
    assert not JobEvent.objects.filter(job=job, message="Job cancelled.").exists()


def test_each_attempt_gets_its_own_work_directory(alice):
    job = running_job(alice, attempts=2, worker="w2@host")

    first, second = runner.job_work_dir(job.pk, 1), runner.job_work_dir(job.pk, 2)

    assert first != second
    assert first.parent == second.parent and first.parent.name == str(job.pk)


def hand_over_after_training(monkeypatch, *, then_claim: str | None):
    """Attempt 1 trains; before it writes its version the sweep presumes it dead."""
    real_run = runner.run_fine_tune

    def train_then_lose_the_job(spec, callbacks):
        result = real_run(spec, callbacks)
        counts = services.jobs_sweep_stale(stale_after=timedelta(seconds=-60))
        assert counts == {"requeued": 1, "failed": 0}
        if then_claim:
            assert runner.job_claim(job_id=callbacks.job.pk, worker=then_claim) is not None
        return result

    monkeypatch.setattr(runner, "run_fine_tune", train_then_lose_the_job)


@pytest.mark.slow
def test_a_presumed_dead_attempt_cannot_finish_a_job_its_replacement_holds(
    alice, monkeypatch, django_capture_on_commit_callbacks
):
    job = queued_job_with_data(alice, django_capture_on_commit_callbacks)
    hand_over_after_training(monkeypatch, then_claim="w2@host")

    outcome = runner.job_run(job_id=job.pk, worker="w1@host")

    assert outcome == "superseded"
    job.refresh_from_db()
    assert (job.status, job.worker, job.attempts) == (JobStatus.RUNNING, "w2@host", 2)
    assert job.fine_tuned_model_id is None and job.finished_at is None
    assert not ModelVersion.objects.filter(job=job).exists()
    assert not JobEvent.objects.filter(job=job, message__startswith="Job succeeded").exists()


@pytest.mark.slow
def test_the_replacement_attempt_writes_the_only_version(
    alice, monkeypatch, django_capture_on_commit_callbacks
):
    job = queued_job_with_data(alice, django_capture_on_commit_callbacks)
    hand_over_after_training(monkeypatch, then_claim=None)
    first = runner.job_run(job_id=job.pk, worker="w1@host")
    monkeypatch.undo()

    second = runner.job_run(job_id=job.pk, worker="w2@host")

    assert (first, second) == ("superseded", JobStatus.SUCCEEDED)
    job.refresh_from_db()
    assert (job.status, job.worker, job.attempts) == (JobStatus.SUCCEEDED, "w2@host", 2)
    version = ModelVersion.objects.get(job=job)
    assert job.fine_tuned_model_id == version.pk
    assert JobEvent.objects.filter(job=job, message__startswith="Job succeeded").count() == 1


def heartbeat_at(job_id):
    return FineTuningJob.objects.values_list("heartbeat_at", flat=True).get(pk=job_id)


def wait_until(predicate, what: str, timeout: float = 20):
    deadline = time.monotonic() + timeout
    while not predicate():
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        time.sleep(0.02)


@pytest.mark.django_db(transaction=True)
def test_the_heartbeat_lands_again_after_its_database_connection_is_dropped(
    alice, shipped_base_models
):
    job = running_job(alice, attempts=1, worker="w1@host")
    FineTuningJob.objects.filter(pk=job.pk).update(heartbeat_at=None)
    heartbeat = runner._Heartbeat(job, interval=0.05)
    heartbeat.start()
    try:
        wait_until(lambda: heartbeat_at(job.pk) is not None, "the first beat")
        # The database drops the heartbeat's connection (failover, idle kill, restart).
        with connections["default"].cursor() as cursor:
            cursor.execute(
                "SELECT pg_terminate_backend(pid) FROM pg_stat_activity "
                "WHERE datname = current_database() AND pid <> pg_backend_pid() "
                "AND query LIKE 'UPDATE %heartbeat_at%'"
            )
            assert cursor.fetchall() == [(True,)]  # the heartbeat's own connection
        dropped_at = timezone.now()

        wait_until(lambda: heartbeat_at(job.pk) > dropped_at, "a beat after the drop")
    finally:
        heartbeat.stopped.set()
        heartbeat.join(timeout=5)
    assert not heartbeat.is_alive()


def test_work_directories_live_under_the_configured_root(alice, settings, tmp_path):
    settings.NICHE_WORK_DIR = tmp_path
    job = running_job(alice, attempts=3, worker="w@host")

    assert runner.job_work_dir(job.pk, 3) == Path(tmp_path) / "jobs" / str(job.pk) / "attempt-3"
