"""Admin pieces every context shares."""

from django.contrib import admin


class ReadOnlyAdmin(admin.ModelAdmin):
    """For records that change only through services: the admin looks, never edits."""

    def has_add_permission(self, request) -> bool:
        return False

    def has_change_permission(self, request, obj=None) -> bool:
        return False

    def has_delete_permission(self, request, obj=None) -> bool:
        return False


def _register_outbox_admin() -> None:
    from marketplace.models import DomainEventDelivery

    @admin.register(DomainEventDelivery)
    class DomainEventDeliveryAdmin(ReadOnlyAdmin):
        """Each consumer's handling of each domain event; failed ones need an operator."""

        list_display = ["id", "event", "consumer", "status", "attempts", "done_at"]
        list_filter = ["status", "consumer"]
        search_fields = ["consumer", "last_error", "=event__subject_id"]
        list_select_related = ["event"]


_register_outbox_admin()
