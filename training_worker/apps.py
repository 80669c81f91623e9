from django.apps import AppConfig


class TrainingWorkerConfig(AppConfig):
    name = "training_worker"
    verbose_name = "Studio (datasets, fine-tuning, model versions)"
    moderator_permissions = (
        "view_basemodel",
        "view_dataset",
        "view_finetuningjob",
        "view_modelversion",
    )
