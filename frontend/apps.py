from django.apps import AppConfig


class FrontendConfig(AppConfig):
    name = "frontend"
    verbose_name = "Web portal"

    def ready(self) -> None:
        # Registers the demo's watcher task, so services can send it by name.
        from frontend import tasks  # noqa: F401
