from django.apps import AppConfig
from django.db.models.signals import post_migrate


def _sync_moderators_group(sender, **kwargs) -> None:
    from accounts.services import moderators_group_sync

    moderators_group_sync()


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

        # Permissions exist only after post_migrate, so the group is synced then.
        post_migrate.connect(_sync_moderators_group, sender=self)
