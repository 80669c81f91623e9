from django.apps import AppConfig


class ListingsConfig(AppConfig):
    name = "listings"
    verbose_name = "Catalogue and moderation"
    moderator_permissions = (
        "view_listing",
        "change_listing",  # the moderation actions; content fields stay read-only
        "view_listingversion",
        "view_review",
        "view_report",
        "change_report",
        "view_moderationaction",
        "view_entitlement",
        "view_garden",
        "view_gardenmember",
    )

    def ready(self) -> None:
        from listings import gardens
        from marketplace.events import consumer_register

        consumer_register(
            name="garden_curator_notice",
            types=[gardens.MEMBER_LEFT_EVENT],
            handler=gardens.on_member_left,
        )
