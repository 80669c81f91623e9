"""Writes of the studio: datasets, fine-tuning jobs and their transitions.

The run of a job on a worker (claim, train, write the version) is in runner.py. Tasks
are sent by name once the transaction commits (marketplace.celery.send_after_commit);
this module never imports tasks.py, and the sweeps resend what the broker lost.
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
from django.db.models import Q, QuerySet, Sum
from django.utils import timezone

from accounts.models import User
from marketplace.celery import send_after_commit
from marketplace.errors import PayloadTooLargeError
from marketplace.storage import SEALED_PREFIX
from training_worker import artifacts, upload_checks
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
from training_worker.ml.data_families import (
    FamilySplitRefused,
    family_split,
    matching_family,
    pack_digests,
    row_digests,
    unpack_digests,
)
from training_worker.ml.dataset_validation import ValidationLimits, validate_dataset
from training_worker.ml.sealed_split import (
    SealedSplit,
    draw_sealed_split,
    sealed_split_seed,
    split_fingerprint,
    split_secret,
)
from training_worker.models import (
    TERMINAL_JOB_STATUSES,
    BaseModel,
    DataFamily,
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
VALIDATE_TASK = "training_worker.tasks.validate_dataset"
TRAIN_TASK = "training_worker.tasks.train_fine_tuning_job"


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

    Refuses before anything is stored: PayloadTooLargeError (413) ``file_too_large`` over
    DATASET_MAX_UPLOAD_BYTES and ``storage_quota_exceeded`` when the owner's live uploads
    would pass DATASET_STORAGE_QUOTA_BYTES (checked again under the owner's row lock, so
    parallel uploads cannot both squeeze in); DatasetNotUsable (422) for an extension other
    than .csv/.jsonl/.json and for compressed or binary content. The stored name never
    comes from the client's filename; the displayed one is ``display_filename``'s.
    """
    limit = settings.DATASET_MAX_UPLOAD_BYTES
    if file.size is not None and file.size > limit:
        raise _too_large(file.size, limit)
    filename = upload_checks.display_filename(file.name)
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
    file.seek(0)
    upload_checks.refuse_compressed_or_binary(file.read(upload_checks.SNIFF_BYTES))
    file.seek(0)
    digest, size = hashlib.sha256(), 0
    for chunk in file.chunks():
        digest.update(chunk)
        size += len(chunk)
    file.seek(0)
    if size > limit:
        raise _too_large(size, limit)
    _dataset_quota_check(owner=owner, adding=size)
    dataset = Dataset(
        owner=owner,
        name=upload_checks.display_text(name or filename, 200) or filename,
        filename=filename,
        task=task or "",
        size_bytes=size,
        sha256=digest.hexdigest(),
    )
    dataset.source_path = default_storage.save(f"datasets/{dataset.id}/source{extension}", file)
    try:
        with transaction.atomic():
            User.objects.select_for_update().only("pk").get(pk=owner.pk)  # one upload at a time
            _dataset_quota_check(owner=owner, adding=size)
            dataset.save()
            send_after_commit(VALIDATE_TASK, str(dataset.id))
    except Exception:
        artifacts.delete_quietly(dataset.source_path)  # no orphan file without its row
        raise
    return dataset


def _too_large(size: int, limit: int) -> PayloadTooLargeError:
    return PayloadTooLargeError(
        f"The file is {size:,} bytes; the limit is {limit:,} bytes.",
        code="file_too_large",
        fields={"file": [f"At most {limit:,} bytes."]},
    )


def _dataset_quota_check(*, owner: User, adding: int) -> None:
    quota = settings.DATASET_STORAGE_QUOTA_BYTES
    used = (
        Dataset.objects.filter(owner=owner, deleted_at__isnull=True).aggregate(
            total=Sum("size_bytes")
        )["total"]
        or 0
    )
    if used + adding > quota:
        raise PayloadTooLargeError(
            f"Your datasets use {used:,} bytes of your {quota:,}-byte storage quota; this "
            f"{adding:,}-byte file does not fit. Delete a dataset you no longer need.",
            code="storage_quota_exceeded",
            fields={"file": [f"Over your {quota:,}-byte dataset storage quota."]},
        )


def dataset_validate(*, dataset_id) -> Dataset | None:
    """uploaded → validating → ready | invalid; draws the sealed split when ready.

    Idempotent: a dataset no longer `uploaded` is returned untouched, one deleted in the
    meantime gives None. The claim and the final write each lock the row; the final
    write lands only while the row still exists, is not deleted and is still in this
    claim (status validating, same validation_started_at); otherwise nothing is written
    and, for a deleted dataset, the files validation wrote are removed. Any error after
    the claim ends the dataset `invalid` with the reason in its report. Jobs waiting on
    the dataset move on (queued) or fail (invalid_data) in the final write's transaction.
    """
    with transaction.atomic():
        dataset = (
            Dataset.objects.select_for_update()
            .filter(pk=dataset_id, status=DatasetStatus.UPLOADED, deleted_at__isnull=True)
            .first()
        )
        if dataset is None:
            return Dataset.objects.filter(pk=dataset_id).first()
        dataset.status = DatasetStatus.VALIDATING
        dataset.validation_started_at = timezone.now()
        dataset.save(update_fields=["status", "validation_started_at"])
    try:
        outcome = _validation_outcome(dataset)
    except Exception as exc:  # a bug or a storage error must not leave it `validating`
        logger.exception("validation of dataset %s crashed", dataset.pk)
        outcome = _invalid_outcome(
            "validation_crashed",
            f"Validation stopped on an unexpected error ({type(exc).__name__}); "
            "upload the file again, or contact support if it happens again.",
        )
    with transaction.atomic():
        current = (
            Dataset.objects.select_for_update()
            .filter(
                pk=dataset.pk,
                status=DatasetStatus.VALIDATING,
                validation_started_at=dataset.validation_started_at,
                deleted_at__isnull=True,
            )
            .first()
        )
        if current is None:  # deleted, or handed to another validation by the sweep
            live = Dataset.objects.filter(pk=dataset.pk, deleted_at__isnull=True).first()
            if live is None:
                written = (outcome.get("train_path", ""), outcome.get("sealed_path", ""))
                transaction.on_commit(
                    lambda: artifacts.delete_quietly(dataset.source_path, *written)
                )
            return live
        _dataset_finish(current, outcome)
    return current


def _dataset_finish(dataset: Dataset, outcome: dict) -> None:
    """Store a validation outcome and move the jobs waiting on it; the caller holds the
    dataset's row lock."""
    for name, value in outcome.items():
        setattr(dataset, name, value)
    dataset.validated_at = timezone.now()
    dataset.save(update_fields=[*outcome, "validated_at"])
    _advance_jobs_waiting_on(dataset)


def _validation_outcome(dataset: Dataset) -> dict:
    """Validate the stored upload and write the split's files; the fields to store."""
    raw = artifacts.read_bytes(dataset.source_path)
    result = validate_dataset(
        raw,
        filename=dataset.filename,
        task=dataset.task or None,
        limits=ValidationLimits(max_rows=settings.DATASET_MAX_ROWS),
    )
    outcome = {
        "report": result.report,
        "format": result.format or "",
        "task": result.task or dataset.task,
        "rows_usable": len(result.rows),
        "status": DatasetStatus.INVALID,
    }
    if not result.ok:
        return outcome
    secret = split_secret(configured=settings.SEALED_SPLIT_SECRET, secret_key=settings.SECRET_KEY)
    rows = [{k: v for k, v in row.items() if k != "row"} for row in result.rows]
    try:
        placed = _family_split(dataset, rows, task=result.task, secret=secret)
    except FamilySplitRefused as exc:
        return outcome | _invalid_outcome(
            exc.code,
            "This file shares at least half of its rows with a dataset you uploaded before, "
            "so it belongs to that data family and is scored on the family's held-out rows "
            f"(one sealed split per family); but {exc.message}. Keep those rows in the file, "
            "or train on the dataset you uploaded first.",
            report=result.report,
        )
    except ValueError as exc:  # e.g. more labels than the sealed split can hold
        return outcome | _invalid_outcome(
            "sealed_split_impossible",
            f"The held-out split cannot be drawn from this file: {exc}.",
            report=result.report,
        )
    if placed is None:  # deleted or handed to another validation: nothing will be stored
        return outcome
    family, split, seed, founded = placed
    fingerprint = split_fingerprint(rows, split, secret=secret)
    outcome["train_path"] = artifacts.write_jsonl(
        f"datasets/{dataset.id}/train.jsonl", [rows[i] for i in split.train_indices]
    )
    outcome["sealed_path"] = artifacts.write_jsonl(
        f"{SEALED_PREFIX}datasets/{dataset.id}/sealed.jsonl",  # never served by any URL
        [rows[i] for i in split.sealed_indices],
    )
    outcome |= {
        "split_seed": seed,
        "split_fingerprint": fingerprint,
        "train_rows": len(split.train_indices),
        "sealed_rows": len(split.sealed_indices),
        "family": family,
        "status": DatasetStatus.READY,
    }
    if result.task == TaskType.TEXT_CLASSIFICATION:
        outcome["labels"] = sorted(result.report.get("label_distribution") or {})
    outcome["report"]["sealed_split"] = {  # never the seed: it would let the split be recomputed
        "fraction": SEALED_FRACTION,
        "cap": SEALED_CAP,
        "train_rows": outcome["train_rows"],
        "sealed_rows": outcome["sealed_rows"],
        "fingerprint": fingerprint,
        "near_duplicate_groups": split.near_duplicate_groups,
        "near_duplicate_rows": split.near_duplicate_rows,
        # Which of the owner's datasets it shares held-out rows with; never the keys.
        "data_family": {
            "id": str(family.pk),
            "founded_by_this_dataset": founded,
            "first_dataset": str(family.root_dataset_id) if family.root_dataset_id else None,
        },
    }
    return outcome


def _family_split(
    dataset: Dataset, rows: list[dict], *, task: str, secret: bytes
) -> tuple[DataFamily, SealedSplit, int | None, bool] | None:
    """The dataset's data family and its split: ``(family, split, seed, founded)``.

    Under the owner's row lock, so that two variants validated at once cannot both found a
    family: the dataset joins the owner's family of this task that shares at least half of
    the smaller side's inputs (``ml.data_families.matching_family``) and is sealed on the
    family's sealed inputs (seed None), or else draws a split as before, seeded by an HMAC
    of the file's hash under the server secret, and founds a family with it. None when
    the dataset left this validation meanwhile (deleted, or taken over by the sweep).
    Raises ``FamilySplitRefused`` and, from the draw, ``ValueError``.
    """
    digests = row_digests(rows, task=task, secret=secret)
    keys = frozenset(digests)
    with transaction.atomic():
        User.objects.select_for_update().only("pk").get(pk=dataset.owner_id)
        claimed = Dataset.objects.select_for_update().filter(
            pk=dataset.pk,
            status=DatasetStatus.VALIDATING,
            validation_started_at=dataset.validation_started_at,
            deleted_at__isnull=True,
        )
        if not claimed.exists():
            return None
        families = DataFamily.objects.filter(owner_id=dataset.owner_id, task=task)
        family = matching_family(
            keys, ((f, unpack_digests(f.input_keys)) for f in families.order_by("created_at"))
        )
        if family is not None:
            split = family_split(
                rows, task=task, digests=digests, sealed_keys=unpack_digests(family.sealed_keys)
            )
            return family, split, None, False
        # Seeded by an HMAC of the content under a server secret: the expert can neither
        # compute the split offline nor pad the file until it suits them.
        seed = sealed_split_seed(secret=secret, file_sha256=dataset.sha256)
        split = draw_sealed_split(
            rows, task=task, seed=seed, fraction=SEALED_FRACTION, cap=SEALED_CAP
        )
        family = DataFamily.objects.create(
            owner_id=dataset.owner_id,
            task=task,
            root_dataset=dataset,
            input_keys=pack_digests(keys),
            sealed_keys=pack_digests(digests[i] for i in split.sealed_indices),
        )
        return family, split, seed, True


def _invalid_outcome(code: str, message: str, *, report: dict | None = None) -> dict:
    """An `invalid` dataset whose report carries one error the owner reads."""
    report = dict(report or {"warnings": []})
    report["errors"] = [{"code": code, "message": message, "rows": [], "count": 0}]
    return {"status": DatasetStatus.INVALID, "report": report}


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

    Holds the dataset's row lock from the read of its status to the commit, so a
    validation that finishes meanwhile waits and then finds the job (never strands it).
    Raises UnknownBaseModel, DatasetNotFound, DatasetNotUsable, TaskNotSupported,
    InvalidHyperparameters (all 4xx, nothing written).
    """
    base = BaseModel.objects.filter(slug=base_model, enabled=True).first()
    if base is None:
        raise UnknownBaseModel(
            f"No enabled base model '{base_model}'.",
            fields={"base_model": ["Unknown or disabled base model."]},
        )
    with transaction.atomic():
        dataset = (
            Dataset.objects.select_for_update()
            .filter(owner=owner, pk=dataset_id, deleted_at__isnull=True)
            .first()
        )
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
        status=JobStatus.QUEUED, enqueued_at=timezone.now()
    )
    if updated:
        job.status = JobStatus.QUEUED
        job_event(job=job, message="Dataset validated; job queued.")
        send_after_commit(TRAIN_TASK, str(job.pk))


def _advance_jobs_waiting_on(dataset: Dataset) -> None:
    """Queue or fail the jobs waiting on a validated dataset; the caller holds its lock."""
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


def job_attempt_rows(*, job: FineTuningJob) -> QuerySet[FineTuningJob]:
    """The job's row while the attempt `job` carries still runs it (the fencing token is
    attempts + worker, as set by its claim). Every write of a run is a conditional UPDATE
    on it; zero rows changed means the attempt was superseded."""
    return FineTuningJob.objects.filter(
        pk=job.pk, status=JobStatus.RUNNING, attempts=job.attempts, worker=job.worker
    )


def job_fail(*, job: FineTuningJob, code: str, message: str, fenced: bool = False) -> bool:
    """Any non-terminal state → failed, with the error stored on the job.

    With `fenced`, only while the attempt `job` carries still runs the job (a worker
    failing its own run never fails its replacement's). Returns whether the job changed.
    """
    if fenced:
        rows = job_attempt_rows(job=job)
    else:
        rows = FineTuningJob.objects.filter(pk=job.pk).exclude(status__in=TERMINAL_JOB_STATUSES)
    updated = rows.update(
        status=JobStatus.FAILED,
        error_code=code,
        error_message=message[:2000],
        finished_at=timezone.now(),
    )
    if updated:
        job_event(job=job, level="error", message=f"Job failed ({code}): {message}")
    return bool(updated)


def job_event(
    *, job: FineTuningJob, message: str, level: str = "info", type: str = "message",
    data: dict | None = None,
) -> JobEvent:  # fmt: skip
    return JobEvent.objects.create(job=job, level=level, type=type, message=message, data=data)


# --- sweeps: every waiting state has an age limit ------------------------------------


def studio_sweep() -> dict[str, int]:
    """One pass over every non-terminal state of datasets and jobs (the beat task).

    Lost messages and dead workers leave rows waiting: each state has an age limit
    (STUDIO_*_STALE_SECONDS, TRAINING_HEARTBEAT_STALE_SECONDS); past it the task is sent
    again, at most STUDIO_MAX_REQUEUES times (running jobs: MAX_ATTEMPTS claims), then
    the row fails with a reason its owner sees.
    """
    return jobs_sweep_stale() | datasets_sweep_stuck() | jobs_sweep_waiting()


def jobs_sweep_stale(*, stale_after: timedelta | None = None) -> dict[str, int]:
    """Running jobs whose heartbeat went stale: requeue once, then fail as worker_lost.

    Each row is changed by a conditional UPDATE on (status, heartbeat_at, attempts), so a
    worker that comes back to life and a concurrent sweep cannot both win; the requeue
    ends the old attempt, whose later writes then change nothing.
    """
    if stale_after is None:
        stale_after = timedelta(seconds=settings.TRAINING_HEARTBEAT_STALE_SECONDS)
    cutoff = timezone.now() - stale_after
    counts = {"requeued": 0, "failed": 0}
    stale = FineTuningJob.objects.filter(status=JobStatus.RUNNING, heartbeat_at__lt=cutoff)
    for job in stale:
        row = FineTuningJob.objects.filter(
            pk=job.pk, status=JobStatus.RUNNING, heartbeat_at=job.heartbeat_at,
            attempts=job.attempts,
        )  # fmt: skip
        with transaction.atomic():
            if job.attempts < MAX_ATTEMPTS and job.cancel_requested_at is None:
                if row.update(
                    status=JobStatus.QUEUED, worker="", step=0, enqueued_at=timezone.now()
                ):
                    counts["requeued"] += 1
                    job_event(
                        job=job,
                        level="warning",
                        message=f"Worker {job.worker} stopped answering; job requeued.",
                    )
                    send_after_commit(TRAIN_TASK, str(job.pk))
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


def datasets_sweep_stuck() -> dict[str, int]:
    """Datasets whose validation message was lost (`uploaded`) or whose worker died
    (`validating`) past their age limit: validation is sent again (it is idempotent and
    writes fixed paths); after STUDIO_MAX_REQUEUES resends the dataset ends `invalid`
    with `validation_stalled` in its report, and the jobs waiting on it fail."""
    now = timezone.now()
    stuck = Q(
        status=DatasetStatus.UPLOADED,
        enqueued_at__lt=now - timedelta(seconds=settings.STUDIO_UPLOADED_STALE_SECONDS),
    ) | Q(
        status=DatasetStatus.VALIDATING,
        validation_started_at__lt=now - timedelta(seconds=settings.STUDIO_VALIDATING_STALE_SECONDS),
    )
    counts = {"datasets_resent": 0, "datasets_given_up": 0}
    for dataset_id in Dataset.objects.filter(stuck, deleted_at__isnull=True).values_list(
        "pk", flat=True
    ):
        with transaction.atomic():
            dataset = (
                Dataset.objects.select_for_update()
                .filter(stuck, pk=dataset_id, deleted_at__isnull=True)
                .first()
            )
            if dataset is None:  # validated or claimed meanwhile
                continue
            if dataset.requeues >= settings.STUDIO_MAX_REQUEUES:
                outcome = _invalid_outcome(
                    "validation_stalled",
                    f"Validation did not finish after {dataset.requeues + 1} tries; "
                    "upload the file again, or contact support if it happens again.",
                )
                _dataset_finish(dataset, outcome)
                counts["datasets_given_up"] += 1
                continue
            dataset.status = DatasetStatus.UPLOADED
            dataset.requeues += 1
            dataset.enqueued_at = now
            dataset.save(update_fields=["status", "requeues", "enqueued_at"])
            send_after_commit(VALIDATE_TASK, str(dataset.pk))
            counts["datasets_resent"] += 1
    return counts


def jobs_sweep_waiting() -> dict[str, int]:
    """Jobs waiting before a worker took them, past their age limit.

    validating_files behind a dataset that finished validation is queued (or failed) now;
    one whose dataset still validates is left to datasets_sweep_stuck. queued: the
    training task is sent again (the claim is conditional, so a duplicate is harmless);
    after STUDIO_MAX_REQUEUES resends the job fails as queue_lost.
    """
    now = timezone.now()
    counts = {"jobs_advanced": 0, "jobs_resent": 0, "jobs_queue_lost": 0}
    waiting_cutoff = now - timedelta(seconds=settings.STUDIO_VALIDATING_FILES_STALE_SECONDS)
    validated = (DatasetStatus.READY, DatasetStatus.INVALID)
    dataset_ids = set(
        FineTuningJob.objects.filter(
            status=JobStatus.VALIDATING_FILES,
            enqueued_at__lt=waiting_cutoff,
            dataset__status__in=validated,
        ).values_list("dataset_id", flat=True)
    )
    for dataset_id in dataset_ids:
        with transaction.atomic():
            dataset = Dataset.objects.select_for_update().get(pk=dataset_id)
            waiting = dataset.jobs.filter(status=JobStatus.VALIDATING_FILES).count()
            if dataset.status in validated and waiting:
                _advance_jobs_waiting_on(dataset)
                counts["jobs_advanced"] += waiting

    queued_cutoff = now - timedelta(seconds=settings.STUDIO_QUEUED_STALE_SECONDS)
    for job_id in FineTuningJob.objects.filter(
        status=JobStatus.QUEUED, enqueued_at__lt=queued_cutoff
    ).values_list("pk", flat=True):
        with transaction.atomic():
            job = (
                FineTuningJob.objects.select_for_update()
                .filter(pk=job_id, status=JobStatus.QUEUED, enqueued_at__lt=queued_cutoff)
                .first()
            )
            if job is None:  # claimed or cancelled meanwhile
                continue
            if job.requeues >= settings.STUDIO_MAX_REQUEUES:
                job_fail(
                    job=job,
                    code="queue_lost",
                    message=(
                        f"No training worker took this job; its task was sent "
                        f"{job.requeues + 1} times. Create the job again, or contact "
                        "support if it happens again."
                    ),
                )
                counts["jobs_queue_lost"] += 1
                continue
            job.requeues += 1
            job.enqueued_at = now
            job.save(update_fields=["requeues", "enqueued_at"])
            job_event(
                job=job,
                level="warning",
                message="No worker took the job in time; its task was sent again.",
            )
            send_after_commit(TRAIN_TASK, str(job.pk))
            counts["jobs_resent"] += 1
    return counts
