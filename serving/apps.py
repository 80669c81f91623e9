from django.apps import AppConfig


class ServingConfig(AppConfig):
    name = "serving"

    def ready(self) -> None:
        # Registers serving's Celery tasks (the batch task and its sweep), so services
        # send them by name without importing this app's tasks. No engine is imported.
        from serving import tasks  # noqa: F401
