"""Commerce in the moderation console: read-only and searchable.

Money and licences change only through services: the writes here are bulk actions
(refund a payment through Stripe, revoke a licence, resolve a reconciliation issue)
that call one service per selected row, require a reason or note, and land in the
append-only billing audit log. The reconciler's findings (ReconciliationIssue, with
Stripe's side and ours as evidence), the outbox of writes to Stripe (StripeIntent) and
metering periods that fail to report are here for moderators to act on.
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
    GardenPayout,
    GardenShare,
    Licence,
    LicenceUsagePeriod,
    MeterReport,
    Offer,
    Payment,
    ReconciliationIssue,
    ReconciliationRun,
    StripeEvent,
    StripeIntent,
    UsageRecord,
)
from billing.refunds import payment_refund
from billing.services import licence_revoke, reconciliation_issue_resolve
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
    list_display = ["created_at", "who", "action", "target_type", "target_id", "reason"]
    list_filter = ["action", "target_type"]
    list_select_related = ["actor"]
    search_fields = ["=target_id", "actor__email", "reason"]

    @admin.display(description="Actor")
    def who(self, entry: BillingAuditEntry) -> str:
        return str(entry.actor) if entry.actor else "the platform (automatic)"


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


@admin.register(GardenShare)
class GardenShareAdmin(ReadOnlyAdmin):
    """A garden call's split: who worked on it and their part (billing.gardens)."""

    list_display = ["id", "garden", "listing", "payee", "role", "percent", "amount_micros",
                    "paid_by", "created_at"]  # fmt: skip
    list_filter = ["role", "sandbox"]
    list_select_related = ["garden", "listing", "payee"]
    search_fields = ["garden__slug", "listing__slug", "payee__email", "=usage__idempotency_key"]
    show_full_result_count = False


@admin.register(GardenPayout)
class GardenPayoutAdmin(ReadOnlyAdmin):
    """The transfers (and reversals) that paid a garden's payments out."""

    list_display = ["id", "payment", "garden", "listing", "payee", "role", "amount", "currency",
                    "stripe_transfer_id", "stripe_reversal_id", "created_at"]  # fmt: skip
    list_filter = ["role", "sandbox"]
    list_select_related = ["garden", "listing", "payee", "payment"]
    search_fields = ["garden__slug", "payee__email", "=stripe_transfer_id"]


@admin.register(ReconciliationIssue)
class ReconciliationIssueAdmin(ModeratedActionsMixin, ReadOnlyAdmin):
    """What the reconciler found that it could not safely repair, with the evidence."""

    list_display = ["last_seen_at", "kind", "stripe_object_id", "status", "licence", "summary"]
    list_filter = ["status", "kind"]
    list_select_related = ["licence"]
    search_fields = ["=stripe_object_id", "summary", "=licence__id"]
    readonly_fields = ["evidence"]
    actions = ["resolve"]

    @admin.action(description="Mark resolved (note required)", permissions=["moderate"])
    def resolve(self, request, queryset):
        note = request.POST.get("reason", "")
        _each(
            request,
            queryset,
            lambda issue: reconciliation_issue_resolve(
                issue_id=issue.pk, moderator=request.user, note=note
            ),
            "resolved",
        )


@admin.register(ReconciliationRun)
class ReconciliationRunAdmin(ReadOnlyAdmin):
    list_display = [
        "started_at", "finished_at", "events_listed", "events_recovered", "licences_checked",
        "repaired", "flagged", "error",
    ]  # fmt: skip


@admin.register(StripeIntent)
class StripeIntentAdmin(ReadOnlyAdmin):
    """The outbox: every write made (or to make) at Stripe, with its answer."""

    list_display = ["id", "kind", "status", "attempts", "licence", "result_id", "created_at"]
    list_filter = ["status", "kind"]
    search_fields = ["=idempotency_key", "=result_id", "=licence__id", "last_error"]
    date_hierarchy = "created_at"


@admin.register(LicenceUsagePeriod)
class LicenceUsagePeriodAdmin(ReadOnlyAdmin):
    """Metering periods; filter on failures to see the ones Stripe refuses."""

    list_display = [
        "licence", "period_start", "period_end", "calls", "report_failures", "next_report_at",
        "closed_at",
    ]  # fmt: skip
    list_filter = [("closed_at", admin.EmptyFieldListFilter), "report_failures"]
    search_fields = ["=licence__id", "last_report_error"]
    show_full_result_count = False


@admin.register(MeterReport)
class MeterReportAdmin(ReadOnlyAdmin):
    list_display = ["identifier", "period", "value", "billable_total", "created_at", "sent_at"]
    search_fields = ["=identifier"]
    show_full_result_count = False
