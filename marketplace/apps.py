from django.apps import AppConfig


class MarketplaceConfig(AppConfig):
    name = "marketplace"
    verbose_name = "Niche platform"

    def ready(self) -> None:
        from marketplace import tasks  # noqa: F401  (the domain-event outbox's tasks)
        from marketplace.log_context import install_record_factory

        install_record_factory()
