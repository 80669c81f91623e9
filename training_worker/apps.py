from django.apps import AppConfig


class TrainingWorkerConfig(AppConfig):
    name = "training_worker"
    verbose_name = "Studio (datasets, fine-tuning, model versions)"
