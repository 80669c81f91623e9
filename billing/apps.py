from django.apps import AppConfig


class BillingConfig(AppConfig):
    name = "billing"
    verbose_name = "Commerce"
    # What the moderators group may do here (accounts.services.moderators_group_sync):
    # look at everything; "change" only to run the refund and revoke actions.
    moderator_permissions = (
        "view_licence",
        "change_licence",
        "view_payment",
        "change_payment",
        "view_stripeevent",
        "view_billingauditentry",
        "view_offer",
        "view_connectaccount",
        "view_usagerecord",
    )

    def ready(self) -> None:
        # Registers commerce's Celery tasks (webhook processing, metered reporting), so
        # services send them by name without importing this app's tasks.
        from billing import tasks  # noqa: F401
