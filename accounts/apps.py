from django.apps import AppConfig, apps
from django.db.models.signals import post_migrate


def _sync_moderators_group(sender, app_config, using, **kwargs) -> None:
    """post_migrate fires once per app with models, in INSTALLED_APPS order, and
    auth's handler (connected before this one) creates that app's permissions: sync
    once the last app has had its turn, so every app's permissions exist."""
    from accounts.services import moderators_group_sync

    apps_with_models = [c for c in apps.get_app_configs() if c.models_module is not None]
    if app_config is apps_with_models[-1]:
        moderators_group_sync(using=using)


class AccountsConfig(AppConfig):
    name = "accounts"
    verbose_name = "Accounts"
    moderator_permissions = (
        "view_user",
        "change_user",
        "view_expertprofile",
        "view_apikey",
    )

    def ready(self) -> None:
        from accounts import schema  # noqa: F401  registers the OpenAPI auth scheme

        # Every app's post_migrate, not only this one's: listings' and the studio's
        # permissions are created after accounts'.
        post_migrate.connect(_sync_moderators_group, dispatch_uid="moderators_group_sync")
