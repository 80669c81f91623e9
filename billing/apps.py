from django.apps import AppConfig


class BillingConfig(AppConfig):
    name = "billing"

    def ready(self) -> None:
        # Registers commerce's Celery tasks (webhook processing, metered reporting), so
        # services send them by name without importing this app's tasks.
        from billing import tasks  # noqa: F401
