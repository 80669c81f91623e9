"""Tasks that workers send travel through Redis: validation on one worker, training on
another that listens only on `training`."""

import pytest
from django.core.files.uploadedfile import SimpleUploadedFile

from accounts.models import User
from tests.integration.test_training_on_workers import job_state, support_tickets_csv, wait_for
from training_worker import services
from training_worker.models import Dataset, JobStatus

pytestmark = [pytest.mark.integration, pytest.mark.slow]


def test_validation_on_one_worker_hands_training_to_a_training_only_worker(
    spawn_worker, shipped_base_models
):
    alice = User.objects.create_user(email="alice@example.com", password="x" * 12)
    # Given an upload and a job that waits on it, before any worker runs:
    dataset = services.dataset_upload(
        owner=alice, file=SimpleUploadedFile("tickets.csv", support_tickets_csv(12))
    )
    job = services.job_create(
        owner=alice,
        base_model="minilm-l6",
        dataset_id=dataset.pk,
        hyperparameters={"n_epochs": 1, "batch_size": 16},
        seed=4,
    )
    assert job.status == JobStatus.VALIDATING_FILES

    # When one worker takes only validation and another only training:
    validator = spawn_worker("default")
    trainer = spawn_worker("training")
    done = wait_for(lambda: job_state(job).is_terminal and job_state(job), 180, "the job")

    # Then validation queued the job, and the training task it sent went through Redis
    # to the training worker, not inline in the validating one.
    assert Dataset.objects.get(pk=dataset.pk).status == "ready"
    assert done.status == JobStatus.SUCCEEDED, done.error_message
    assert done.worker.startswith(trainer.name)
    assert done.fine_tuned_model_id is not None
    validator_log = validator.log_path.read_text()
    assert "Task training_worker.tasks.validate_dataset[" in validator_log
    assert "Task training_worker.tasks.train_fine_tuning_job[" not in validator_log
    assert "Task training_worker.tasks.train_fine_tuning_job[" in trainer.log_path.read_text()
