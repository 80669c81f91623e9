from django.apps import AppConfig


class TrainingWorkerConfig(AppConfig):
    name = "training_worker"
    verbose_name = "Studio (datasets, fine-tuning, model versions)"
    moderator_permissions = (
        "view_basemodel",
        "view_dataset",
        "view_finetuningjob",
        "view_modelversion",
        "view_datafamily",  # the attempt history of a data family
    )

    def ready(self) -> None:
        # Registers the studio's Celery tasks, so services can send them by name
        # (marketplace.celery.send_after_commit) without importing this app's tasks.
        from training_worker import tasks  # noqa: F401
