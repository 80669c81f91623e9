"""Reads of the studio. Every read is scoped to its owner: others get nothing (404)."""

from dataclasses import dataclass
from datetime import timedelta

from django.conf import settings
from django.db.models import Count, Q, QuerySet, Sum
from django.utils import timezone

from accounts.models import User
from training_worker.errors import DatasetNotFound, JobNotFound, ModelVersionNotFound
from training_worker.ml.base_models import packaged_base_provenance
from training_worker.ml.evaluation_report import EvaluationReport, read_evaluation
from training_worker.models import (
    BaseModel,
    Checkpoint,
    DataFamily,
    Dataset,
    FineTuningJob,
    JobEvent,
    JobStatus,
    ModelVersion,
)


def base_model_list() -> QuerySet[BaseModel]:
    return BaseModel.objects.filter(enabled=True)


def dataset_list(*, owner: User) -> QuerySet[Dataset]:
    return Dataset.objects.filter(owner=owner, deleted_at__isnull=True)


def dataset_get(*, owner: User, dataset_id) -> Dataset:
    dataset = dataset_list(owner=owner).filter(pk=dataset_id).first()
    if dataset is None:
        raise DatasetNotFound("No dataset with this id.")
    return dataset


def job_list(*, owner: User) -> QuerySet[FineTuningJob]:
    return FineTuningJob.objects.filter(owner=owner).select_related("base_model")


def job_get(*, owner: User, job_id) -> FineTuningJob:
    job = job_list(owner=owner).filter(pk=job_id).first()
    if job is None:
        raise JobNotFound("No fine-tuning job with this id.")
    return job


def job_events(*, job: FineTuningJob, after: int | None, limit: int) -> tuple[list, bool]:
    """Events oldest first after the given event id; (page, has_more)."""
    events = JobEvent.objects.filter(job=job)
    if after is not None:
        events = events.filter(id__gt=after)
    rows = list(events.order_by("id")[: limit + 1])
    return rows[:limit], len(rows) > limit


def job_checkpoints(*, job: FineTuningJob) -> QuerySet[Checkpoint]:
    return job.checkpoints.order_by("step")


def model_version_list(*, owner: User) -> QuerySet[ModelVersion]:
    return ModelVersion.objects.filter(owner=owner).select_related("base_model")


def model_version_get(*, owner: User, version_id) -> ModelVersion:
    version = model_version_list(owner=owner).filter(pk=version_id).first()
    if version is None:
        raise ModelVersionNotFound("No model version with this id.")
    return version


def base_model_provenance(*, base_model: BaseModel) -> dict[str, str] | None:
    """``{"hub_id", "package"}`` for a base shipped in a PyPI package; None otherwise."""
    return packaged_base_provenance(base_model.source)


def model_version_evaluation(*, version: ModelVersion | None) -> EvaluationReport | None:
    """The typed evaluation of a version (any stored report version); None without one."""
    return None if version is None else read_evaluation(version.evaluation)


def job_counts_by_status() -> dict[str, int]:
    """Fine-tuning jobs per status, every status present (zero included): for /metrics."""
    counts = dict.fromkeys(JobStatus.values, 0)
    rows = FineTuningJob.objects.order_by().values_list("status").annotate(n=Count("id"))
    counts.update({status: n for status, n in rows})
    return counts


def training_throughput() -> tuple[int, float]:
    """(running jobs with a fresh heartbeat, their summed examples/s) from the progress the
    workers write about once a second: the same numbers whichever machine trains."""
    fresh = timezone.now() - timedelta(seconds=settings.TRAINING_HEARTBEAT_STALE_SECONDS)
    live = FineTuningJob.objects.filter(status=JobStatus.RUNNING, heartbeat_at__gte=fresh)
    totals = live.aggregate(n=Count("id"), rate=Sum("examples_per_s"))
    return totals["n"], float(totals["rate"] or 0.0)


# --- data families: how often an owner ran a sealed evaluation on the same data -----


def job_sealed_evaluations_before(*, job: FineTuningJob) -> int:
    """Sealed evaluations its owner ran on the job's data BEFORE this job's: the jobs on the
    datasets of its data family (of its dataset alone, for one validated before families)
    created earlier, in (created_at, id) order, that produced an evaluation (succeeded) or
    still may (not finished). Creation order is fixed when a job is made, so jobs run side
    by side cannot share a number or come out lower by finishing first; an earlier job that
    later fails or is cancelled was still counted, which errs towards more attempts."""
    family_id = job.dataset.family_id
    on_data = Q(dataset__family_id=family_id) if family_id else Q(dataset_id=job.dataset_id)
    earlier = Q(created_at__lt=job.created_at) | Q(created_at=job.created_at, pk__lt=job.pk)
    return (
        FineTuningJob.objects.filter(on_data, earlier, owner_id=job.owner_id)
        .exclude(status__in=[JobStatus.FAILED, JobStatus.CANCELLED])
        .count()
    )


def data_family_datasets(*, family: DataFamily) -> QuerySet[Dataset]:
    """The family's datasets, oldest first (deleted ones too: their counts stay)."""
    return family.datasets.order_by("created_at", "id")


def data_family_jobs(*, family: DataFamily) -> QuerySet[FineTuningJob]:
    """Every job on the family's datasets in the order attempts are counted."""
    return (
        FineTuningJob.objects.filter(dataset__family=family, owner_id=family.owner_id)
        .select_related("dataset", "fine_tuned_model")
        .order_by("created_at", "id")
    )


def data_family_of_version(*, version: ModelVersion) -> DataFamily | None:
    return DataFamily.objects.filter(datasets__jobs__model_version=version).first()


@dataclass(frozen=True)
class FamilyJob:
    """A job on a data family, for moderators: ``evaluation_number`` counts the family's
    jobs that produced an evaluation, in creation order (None: this one produced none);
    ``report`` is its version's evaluation, which records the number it was corrected for."""

    job: FineTuningJob
    evaluation_number: int | None
    report: EvaluationReport | None


def data_family_history(*, family: DataFamily) -> list[FamilyJob]:
    """Every job on the family's datasets, oldest first, with its evaluation."""
    history, evaluated = [], 0
    for job in data_family_jobs(family=family):
        version = job.fine_tuned_model
        report = model_version_evaluation(version=version)
        if report is not None:
            evaluated += 1
        history.append(FamilyJob(job, evaluated if report is not None else None, report))
    return history
