"""Writes of the studio: datasets, fine-tuning jobs and their transitions.

The run of a job on a worker (claim, train, write the version) is in runner.py.
"""

from __future__ import annotations

import hashlib
import logging
import secrets
from datetime import timedelta
from pathlib import PurePosixPath

from django.conf import settings
from django.core.files.storage import default_storage
from django.core.files.uploadedfile import UploadedFile
from django.db import transaction
from django.utils import timezone

from accounts.models import User
from marketplace.errors import PayloadTooLargeError
from training_worker import artifacts
from training_worker.errors import (
    DatasetInUse,
    DatasetNotFound,
    DatasetNotUsable,
    InvalidHyperparameters,
    JobNotCancellable,
    JobNotFound,
    TaskNotSupported,
    UnknownBaseModel,
)
from training_worker.ml.config import LoraHyperparameters
from training_worker.ml.dataset_validation import validate_dataset
from training_worker.ml.sealed_split import draw_sealed_split, split_fingerprint
from training_worker.models import (
    TERMINAL_JOB_STATUSES,
    BaseModel,
    Dataset,
    DatasetStatus,
    FineTuningJob,
    JobEvent,
    JobStatus,
    TaskType,
)

logger = logging.getLogger(__name__)

SEALED_FRACTION = 0.2
SEALED_CAP = 2000
MAX_ATTEMPTS = 2  # a job whose worker died is requeued once, then failed as worker_lost
ALLOWED_EXTENSIONS = {".csv", ".jsonl", ".json"}
MULTIPART_OVERHEAD_BYTES = 64 * 1024


# --- datasets ---------------------------------------------------------------------


def dataset_upload_check_size(*, declared_bytes: int) -> None:
    """Refuse an upload by its declared size, before its body is read or stored.

    Raises PayloadTooLargeError (413). Multipart framing adds a little to the file.
    """
    limit = settings.DATASET_MAX_UPLOAD_BYTES
    if declared_bytes > limit + MULTIPART_OVERHEAD_BYTES:
        raise PayloadTooLargeError(
            f"The upload is {declared_bytes:,} bytes; the limit is {limit:,} bytes.",
            code="file_too_large",
            fields={"file": [f"At most {limit:,} bytes."]},
        )


def dataset_upload(
    *, owner: User, file: UploadedFile, name: str = "", task: str | None = None
) -> Dataset:
    """Store an upload and queue its validation (after commit).

    Raises PayloadTooLargeError (413) over DATASET_MAX_UPLOAD_BYTES; nothing is stored then.
    """
    limit = settings.DATASET_MAX_UPLOAD_BYTES
    if file.size is not None and file.size > limit:
        raise PayloadTooLargeError(
            f"The file is {file.size:,} bytes; the limit is {limit:,} bytes.",
            code="file_too_large",
            fields={"file": [f"At most {limit:,} bytes."]},
        )
    filename = PurePosixPath(file.name or "dataset").name[:255]
    extension = PurePosixPath(filename).suffix.lower()
    if extension not in ALLOWED_EXTENSIONS:
        raise DatasetNotUsable(
            "Upload a .csv, .jsonl or .json file.",
            code="unsupported_file_type",
            fields={"file": [f"Unsupported extension {extension or '(none)'}."]},
        )
    if task not in (None, "", *TaskType.values):
        raise DatasetNotUsable(
            f"task must be one of {', '.join(TaskType.values)}.",
            code="unknown_task",
            fields={"task": ["Unknown task."]},
        )
    digest = hashlib.sha256()
    for chunk in file.chunks():
        digest.update(chunk)
    file.seek(0)
    dataset = Dataset(
        owner=owner,
        name=(name or filename).strip()[:200],
        filename=filename,
        task=task or "",
        size_bytes=file.size,
        sha256=digest.hexdigest(),
    )
    dataset.source_path = default_storage.save(f"datasets/{dataset.id}/source{extension}", file)
    try:
        with transaction.atomic():
            dataset.save()
            _enqueue("validate_dataset", str(dataset.id))
    except Exception:
        artifacts.delete_quietly(dataset.source_path)  # no orphan file without its row
        raise
    return dataset


def dataset_validate(*, dataset_id) -> Dataset | None:
    """uploaded → validating → ready | invalid; draws the sealed split when ready.

    Idempotent: a dataset no longer `uploaded` is returned untouched, one deleted in the
    meantime gives None. Jobs waiting on the dataset move on (queued) or fail
    (invalid_data) in the same transaction.
    """
    claimed = Dataset.objects.filter(pk=dataset_id, status=DatasetStatus.UPLOADED).update(
        status=DatasetStatus.VALIDATING, validation_started_at=timezone.now()
    )
    dataset = Dataset.objects.filter(pk=dataset_id).first()
    if not claimed or dataset is None:
        return dataset
    raw = artifacts.read_bytes(dataset.source_path)
    result = validate_dataset(raw, filename=dataset.filename, task=dataset.task or None)
    dataset.report = result.report
    dataset.format = result.format or ""
    dataset.task = result.task or dataset.task
    dataset.rows_usable = len(result.rows)
    if result.ok:
        # The platform draws the split; seeded by the content so re-uploads agree.
        seed = int(dataset.sha256[:12], 16)
        rows = [{k: v for k, v in row.items() if k != "row"} for row in result.rows]
        split = draw_sealed_split(
            rows, task=result.task, seed=seed, fraction=SEALED_FRACTION, cap=SEALED_CAP
        )
        dataset.train_path = artifacts.write_jsonl(
            f"datasets/{dataset.id}/train.jsonl", [rows[i] for i in split.train_indices]
        )
        dataset.sealed_path = artifacts.write_jsonl(
            f"datasets/{dataset.id}/sealed.jsonl", [rows[i] for i in split.sealed_indices]
        )
        dataset.split_seed = seed
        dataset.split_fingerprint = split_fingerprint(rows, split)
        dataset.train_rows = len(split.train_indices)
        dataset.sealed_rows = len(split.sealed_indices)
        if result.task == TaskType.TEXT_CLASSIFICATION:
            dataset.labels = sorted(result.report.get("label_distribution") or {})
        dataset.report["sealed_split"] = {
            "seed": seed,
            "fraction": SEALED_FRACTION,
            "cap": SEALED_CAP,
            "train_rows": dataset.train_rows,
            "sealed_rows": dataset.sealed_rows,
            "fingerprint": dataset.split_fingerprint,
        }
        dataset.status = DatasetStatus.READY
    else:
        dataset.status = DatasetStatus.INVALID
    dataset.validated_at = timezone.now()
    with transaction.atomic():
        dataset.save()
        _advance_jobs_waiting_on(dataset)
    return dataset


def dataset_delete(*, owner: User, dataset_id) -> None:
    """Delete a dataset's files. A dataset that jobs used keeps its row (hash, counts).

    Raises DatasetNotFound for another user's dataset, DatasetInUse while a job on it
    has not finished.
    """
    with transaction.atomic():
        dataset = (
            Dataset.objects.select_for_update()
            .filter(owner=owner, pk=dataset_id, deleted_at__isnull=True)
            .first()
        )
        if dataset is None:
            raise DatasetNotFound("No dataset with this id.")
        if dataset.jobs.exclude(status__in=TERMINAL_JOB_STATUSES).exists():
            raise DatasetInUse("A fine-tuning job on this dataset has not finished yet.")
        paths = (dataset.source_path, dataset.train_path, dataset.sealed_path)
        if dataset.jobs.exists():
            dataset.deleted_at = timezone.now()
            dataset.source_path = dataset.train_path = dataset.sealed_path = ""
            dataset.save(update_fields=["deleted_at", "source_path", "train_path", "sealed_path"])
        else:
            dataset.delete()
        transaction.on_commit(lambda: artifacts.delete_quietly(*paths))


# --- jobs -------------------------------------------------------------------------


def job_create(
    *,
    owner: User,
    base_model: str,
    dataset_id,
    hyperparameters: dict | None = None,
    seed: int | None = None,
    suffix: str = "",
) -> FineTuningJob:
    """Create a job in validating_files; it is queued as soon as its dataset is ready.

    Raises UnknownBaseModel, DatasetNotFound, DatasetNotUsable, TaskNotSupported,
    InvalidHyperparameters (all 4xx, nothing written).
    """
    base = BaseModel.objects.filter(slug=base_model, enabled=True).first()
    if base is None:
        raise UnknownBaseModel(
            f"No enabled base model '{base_model}'.",
            fields={"base_model": ["Unknown or disabled base model."]},
        )
    dataset = Dataset.objects.filter(owner=owner, pk=dataset_id, deleted_at__isnull=True).first()
    if dataset is None:
        raise DatasetNotFound("No dataset with this id.", fields={"dataset": ["Not found."]})
    if dataset.status == DatasetStatus.INVALID:
        raise DatasetNotUsable(
            "The dataset failed validation; see its report.",
            fields={"dataset": ["Invalid dataset."]},
        )
    if dataset.task and dataset.task not in base.tasks:
        raise TaskNotSupported(
            f"{base.slug} supports {', '.join(base.tasks)}, not {dataset.task}.",
            fields={"base_model": [f"Does not support {dataset.task}."]},
        )
    try:
        requested = LoraHyperparameters.from_dict(hyperparameters or {})
    except ValueError as exc:
        raise InvalidHyperparameters(str(exc), fields={"hyperparameters": [str(exc)]}) from exc
    with transaction.atomic():
        job = FineTuningJob.objects.create(
            owner=owner,
            base_model=base,
            dataset=dataset,
            task=dataset.task or base.tasks[0],
            hyperparameters={k: v for k, v in requested.as_dict().items() if v is not None},
            seed=seed if seed is not None else secrets.randbelow(2**31),
            suffix=suffix,
        )
        job_event(job=job, message=f"Created fine-tuning job on {base.slug}.")
        if dataset.status == DatasetStatus.READY:
            _job_queue(job)
        else:
            job_event(job=job, message="Waiting for the dataset's validation.")
    return job


def _job_queue(job: FineTuningJob) -> None:
    """validating_files → queued, and enqueue training once the transaction commits."""
    updated = FineTuningJob.objects.filter(pk=job.pk, status=JobStatus.VALIDATING_FILES).update(
        status=JobStatus.QUEUED
    )
    if updated:
        job.status = JobStatus.QUEUED
        job_event(job=job, message="Dataset validated; job queued.")
        _enqueue("train_fine_tuning_job", str(job.pk))


def _advance_jobs_waiting_on(dataset: Dataset) -> None:
    for job in dataset.jobs.filter(status=JobStatus.VALIDATING_FILES):
        if dataset.status == DatasetStatus.READY and dataset.task in job.base_model.tasks:
            job.task = dataset.task
            job.save(update_fields=["task"])
            _job_queue(job)
        else:
            reason = (
                "The dataset failed validation."
                if dataset.status == DatasetStatus.INVALID
                else f"{job.base_model.slug} does not support {dataset.task}."
            )
            job_fail(job=job, code="invalid_data", message=reason)


def job_cancel(*, owner: User, job_id) -> FineTuningJob:
    """Cancel now if not started; a running job stops at its next training step.

    Raises JobNotFound (another user's job too) and JobNotCancellable (409) when the
    job already finished.
    """
    with transaction.atomic():
        job = FineTuningJob.objects.select_for_update().filter(owner=owner, pk=job_id).first()
        if job is None:
            raise JobNotFound("No fine-tuning job with this id.")
        if job.is_terminal:
            raise JobNotCancellable(f"The job already ended ({job.status}).")
        if job.status == JobStatus.RUNNING:
            if job.cancel_requested_at is None:
                job.cancel_requested_at = timezone.now()
                job.save(update_fields=["cancel_requested_at"])
                job_event(job=job, message="Cancellation requested; stopping at the next step.")
        else:
            job.cancel_requested_at = timezone.now()
            job.status = JobStatus.CANCELLED
            job.finished_at = timezone.now()
            job.error_code, job.error_message = "cancelled", "Cancelled before it started."
            job.save()
            job_event(job=job, message="Job cancelled before it started.")
    return job


def job_fail(*, job: FineTuningJob, code: str, message: str) -> None:
    """Any non-terminal state → failed, with the error stored on the job."""
    updated = (
        FineTuningJob.objects.filter(pk=job.pk)
        .exclude(status__in=TERMINAL_JOB_STATUSES)
        .update(
            status=JobStatus.FAILED,
            error_code=code,
            error_message=message[:2000],
            finished_at=timezone.now(),
        )
    )
    if updated:
        job_event(job=job, level="error", message=f"Job failed ({code}): {message}")


def job_event(
    *, job: FineTuningJob, message: str, level: str = "info", type: str = "message",
    data: dict | None = None,
) -> JobEvent:  # fmt: skip
    return JobEvent.objects.create(job=job, level=level, type=type, message=message, data=data)


def jobs_sweep_stale(*, stale_after: timedelta | None = None) -> dict[str, int]:
    """Running jobs whose heartbeat went stale: requeue once, then fail as worker_lost.

    Each row is changed by a conditional UPDATE on (status, heartbeat_at), so a worker
    that comes back to life and a concurrent sweep cannot both win.
    """
    if stale_after is None:
        stale_after = timedelta(seconds=settings.TRAINING_HEARTBEAT_STALE_SECONDS)
    cutoff = timezone.now() - stale_after
    counts = {"requeued": 0, "failed": 0}
    stale = FineTuningJob.objects.filter(status=JobStatus.RUNNING, heartbeat_at__lt=cutoff)
    for job in stale:
        row = FineTuningJob.objects.filter(
            pk=job.pk, status=JobStatus.RUNNING, heartbeat_at=job.heartbeat_at
        )
        with transaction.atomic():
            if job.attempts < MAX_ATTEMPTS and job.cancel_requested_at is None:
                if row.update(status=JobStatus.QUEUED, worker="", step=0):
                    counts["requeued"] += 1
                    job_event(
                        job=job,
                        level="warning",
                        message=f"Worker {job.worker} stopped answering; job requeued.",
                    )
                    _enqueue("train_fine_tuning_job", str(job.pk))
            elif row.update(
                status=JobStatus.FAILED,
                error_code="worker_lost",
                error_message=(
                    f"The worker running this job stopped answering "
                    f"(attempt {job.attempts} of {MAX_ATTEMPTS})."
                ),
                finished_at=timezone.now(),
            ):
                counts["failed"] += 1
                job_event(job=job, level="error", message="Worker lost; job failed.")
    return counts


def datasets_sweep_stuck(*, stuck_after: timedelta = timedelta(minutes=10)) -> int:
    """Datasets left `validating` by a worker that died go back to `uploaded` and are
    validated again (validation is idempotent and writes to fixed paths)."""
    cutoff = timezone.now() - stuck_after
    count = 0
    for dataset in Dataset.objects.filter(
        status=DatasetStatus.VALIDATING, validation_started_at__lt=cutoff
    ):
        with transaction.atomic():
            if Dataset.objects.filter(
                pk=dataset.pk, status=DatasetStatus.VALIDATING,
                validation_started_at=dataset.validation_started_at,
            ).update(status=DatasetStatus.UPLOADED):  # fmt: skip
                count += 1
                _enqueue("validate_dataset", str(dataset.pk))
    return count


def _enqueue(task_name: str, object_id: str) -> None:
    """Send a task by name once the surrounding transaction commits (ids only)."""
    from training_worker import tasks

    task = getattr(tasks, task_name)
    transaction.on_commit(lambda: task.delay(object_id))
