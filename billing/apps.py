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
        "view_gardenshare",
        "view_gardenpayout",
        "view_stripeintent",
        "view_reconciliationissue",
        "change_reconciliationissue",
        "view_reconciliationrun",
        "view_meterreport",
        "view_licenceusageperiod",
    )

    def ready(self) -> None:
        # Registers commerce's Celery tasks (webhook processing, metered reporting), so
        # services send them by name without importing this app's tasks.
        from billing import access, notices, tasks  # noqa: F401
        from marketplace.events import consumer_register

        # What a paying buyer is owed when a listing ends (listings records the events).
        consumer_register(
            name="billing.listing_ended",
            types=access.LISTING_EVENTS,
            handler=access.on_listing_event,
        )
        # The buyer is told by email when their licence ends, winds down or is refunded.
        consumer_register(
            name="billing.buyer_notices",
            types=tuple(notices.EVENT_TYPES.values()),
            handler=notices.on_licence_event,
        )
