"""Commerce in the moderation console: read-only and searchable.

Money and licences change only through services: the two writes here are bulk actions
(refund a payment through Stripe, revoke a licence) that call one service per selected
row, require a reason, and land in the append-only billing audit log.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable

from django import forms
from django.contrib import admin, messages
from django.contrib.admin.helpers import ActionForm
from django.db.models import Model

from billing.models import (
    BillingAuditEntry,
    ConnectAccount,
    Licence,
    Offer,
    Payment,
    StripeEvent,
    UsageRecord,
)
from billing.refunds import payment_refund
from billing.services import licence_revoke
from marketplace.admin import ReadOnlyAdmin
from marketplace.errors import ApplicationError


class ReasonActionForm(ActionForm):
    """The changelist's action bar, plus the reason the audit log keeps."""

    reason = forms.CharField(
        required=False,  # the services refuse an empty one, row by row
        label="Reason:",
        widget=forms.TextInput(attrs={"size": 60}),
    )


def _each(request, rows: Iterable[Model], act: Callable[[Model], object], done: str) -> None:
    """One service call per row; a refused row is reported and the others go on."""
    for row in rows:
        try:
            act(row)
        except ApplicationError as error:
            messages.error(request, f"“{row}”: {error.message}")
        else:
            messages.success(request, f"“{row}”: {done}.")


class ModeratedActionsMixin:
    """Actions with permissions=["moderate"] reach moderators only (Django drops an
    action whose has_<permission>_permission is false)."""

    action_form = ReasonActionForm

    def has_moderate_permission(self, request) -> bool:
        return request.user.is_moderator


@admin.register(Licence)
class LicenceAdmin(ModeratedActionsMixin, ReadOnlyAdmin):
    list_display = [
        "id", "buyer", "listing", "kind", "status", "sandbox", "created_at", "activated_at",
    ]  # fmt: skip
    list_filter = ["status", "kind", "sandbox"]
    list_select_related = ["buyer", "listing"]
    search_fields = [
        "=id", "buyer__email", "listing__slug", "listing__title", "=stripe_checkout_session_id",
        "=stripe_subscription_id", "=stripe_customer_id", "=stripe_payment_intent_id",
    ]  # fmt: skip
    date_hierarchy = "created_at"
    actions = ["revoke"]

    @admin.action(
        description="Revoke (reason required; access stops at once)", permissions=["moderate"]
    )
    def revoke(self, request, queryset):
        reason = request.POST.get("reason", "")
        _each(
            request,
            queryset,
            lambda licence: licence_revoke(
                licence_id=licence.pk, actor=request.user, reason=reason
            ),
            "revoked",
        )


@admin.register(Payment)
class PaymentAdmin(ModeratedActionsMixin, ReadOnlyAdmin):
    list_display = [
        "id", "kind", "amount", "currency", "platform_fee", "stripe_fee", "period", "sandbox",
        "licence", "created_at",
    ]  # fmt: skip
    list_filter = ["kind", "sandbox", "currency", "period"]
    list_select_related = ["licence", "licence__buyer", "licence__listing"]
    search_fields = [
        "=licence__id", "licence__buyer__email", "licence__listing__slug", "=stripe_charge_id",
        "=stripe_invoice_id", "=stripe_refund_id", "reason",
    ]  # fmt: skip
    date_hierarchy = "created_at"
    actions = ["refund"]

    @admin.action(
        description="Refund in full through Stripe (reason required)", permissions=["moderate"]
    )
    def refund(self, request, queryset):
        reason = request.POST.get("reason", "")
        _each(
            request,
            queryset,
            lambda payment: payment_refund(payment=payment, actor=request.user, reason=reason),
            "refunded",
        )


@admin.register(StripeEvent)
class StripeEventAdmin(ReadOnlyAdmin):
    list_display = ["id", "type", "received_at", "processed_at", "attempts", "short_error"]
    list_filter = ["type", ("processed_at", admin.EmptyFieldListFilter)]
    search_fields = ["=id", "type", "last_error"]
    date_hierarchy = "received_at"

    @admin.display(description="Last error")
    def short_error(self, event: StripeEvent) -> str:
        return event.last_error[:80]


@admin.register(BillingAuditEntry)
class BillingAuditEntryAdmin(ReadOnlyAdmin):
    list_display = ["created_at", "actor", "action", "target_type", "target_id", "reason"]
    list_filter = ["action", "target_type"]
    list_select_related = ["actor"]
    search_fields = ["=target_id", "actor__email", "reason"]


@admin.register(Offer)
class OfferAdmin(ReadOnlyAdmin):
    list_display = ["id", "listing", "kind", "unit_amount", "currency", "status", "created_at"]
    list_filter = ["kind", "status", "currency"]
    list_select_related = ["listing"]
    search_fields = ["=id", "listing__slug", "listing__title"]


@admin.register(ConnectAccount)
class ConnectAccountAdmin(ReadOnlyAdmin):
    list_display = [
        "expert", "stripe_account_id", "charges_enabled", "payouts_enabled", "sandbox",
        "updated_at",
    ]  # fmt: skip
    list_filter = ["payouts_enabled", "sandbox"]
    list_select_related = ["expert"]
    search_fields = ["expert__email", "=stripe_account_id"]


@admin.register(UsageRecord)
class UsageRecordAdmin(ReadOnlyAdmin):
    list_display = ["id", "licence", "units", "status", "latency_ms", "created_at"]
    list_filter = ["status"]
    list_select_related = ["licence", "licence__buyer", "licence__listing"]
    search_fields = ["=idempotency_key", "=licence__id", "buyer__email"]
    show_full_result_count = False  # the ledger is large; no COUNT(*) per page
