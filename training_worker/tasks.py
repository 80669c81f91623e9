"""Celery adapters of the studio: load by id, call a service.

`train_*` tasks are routed to the `training` queue (settings.CELERY_TASK_ROUTES).
"""

from celery import shared_task
from celery.exceptions import SoftTimeLimitExceeded
from celery.signals import celeryd_after_setup, worker_process_init
from django.conf import settings

from training_worker import services

ML_QUEUES = {"training", "inference"}
_consumes_ml_queues = False


@celeryd_after_setup.connect
def _note_queues(sender, instance, **_kwargs) -> None:
    # Runs in the worker's main process before it forks its pool; children inherit it.
    global _consumes_ml_queues
    _consumes_ml_queues = bool(ML_QUEUES & set(instance.app.amqp.queues.consume_from))


@worker_process_init.connect
def _import_ml_stack(**_kwargs) -> None:
    # torch + transformers + peft cost ~5 s and ~500 MB: pay it once per pool process
    # at start-up, and only on workers that train or infer (a `default`-only worker
    # and the web processes never import the runner).
    if _consumes_ml_queues:
        import training_worker.runner  # noqa: F401


@shared_task(name="training_worker.tasks.validate_dataset")
def validate_dataset(dataset_id: str) -> str | None:
    dataset = services.dataset_validate(dataset_id=dataset_id)
    return dataset.status if dataset else None


@shared_task(
    name="training_worker.tasks.train_fine_tuning_job",
    bind=True,
    acks_late=True,
    reject_on_worker_lost=True,
    soft_time_limit=settings.TRAINING_SOFT_TIME_LIMIT,
    time_limit=settings.TRAINING_TIME_LIMIT,
)
def train_fine_tuning_job(self, job_id: str) -> str:
    from training_worker.runner import job_run

    return job_run(
        job_id=job_id,
        worker=self.request.hostname or "worker",
        time_limit_error=SoftTimeLimitExceeded,
    )


@shared_task(name="training_worker.tasks.sweep_stale_jobs")
def sweep_stale_jobs() -> dict:
    return services.studio_sweep()
