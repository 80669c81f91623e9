"""The moderation console.

Moderators look at everything and change nothing by hand: every write is a bulk action
that calls one listings.services function per selected row, so each decision is checked
(moderator, state, reason) and lands in the append-only ModerationAction log.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable

from django import forms
from django.contrib import admin, messages
from django.contrib.admin.helpers import ActionForm
from django.db.models import Model, QuerySet
from django.urls import reverse
from django.utils.html import format_html, format_html_join

from accounts.admin import ExpertProfileAdmin as AccountsExpertProfileAdmin
from accounts.admin import UserAdmin as AccountsUserAdmin
from accounts.models import ExpertProfile, User
from listings import selectors, services
from listings.models import (
    LICENCE_FLAGS,
    Entitlement,
    GardenMember,
    Listing,
    ListingVersion,
    ModerationAction,
    ModerationActionType,
    Report,
    Review,
)
from marketplace.admin import ReadOnlyAdmin
from marketplace.errors import ApplicationError
from training_worker import selectors as studio_selectors
from training_worker.models import ModelVersion

NEEDS_REVIEW = "needs_review"
QUEUE_PARAMETER = "queue"


class ModerationActionForm(ActionForm):
    """The changelist's action bar, plus the reason the expert (or the log) will read."""

    reason = forms.CharField(
        required=False,  # the services decide which actions need one
        label="Reason / note:",
        widget=forms.TextInput(attrs={"size": 60}),
    )


def _reason(request) -> str:
    return request.POST.get("reason", "")


def _moderate_each(
    request, rows: Iterable[Model], act: Callable[[Model], object], done: str
) -> None:
    """Run one service call per row; a refused row is reported and the others go on."""
    for row in rows:
        try:
            act(row)
        except ApplicationError as error:
            messages.error(request, f"“{row}”: {error.message}")
        else:
            messages.success(request, f"“{row}”: {done}.")


class ModerationActionsMixin:
    """Actions declared with permissions=["moderate"] reach moderators only.

    Django's get_actions drops an action whose `has_<permission>_permission` is false,
    so other staff neither see nor can post these actions.
    """

    action_form = ModerationActionForm

    def has_moderate_permission(self, request) -> bool:
        return request.user.is_moderator


# --- review panels ----------------------------------------------------------------


def _number(value, *, signed: bool = False) -> str:
    if value is None:
        return "—"
    if isinstance(value, bool) or not isinstance(value, int | float):
        return str(value)
    if isinstance(value, int):
        return f"{value:+d}" if signed else str(value)
    return f"{value:+.4f}" if signed else f"{value:.4f}"


def _interval(low=None, high=None) -> str:
    if low is None and high is None:
        return ""
    return f"[{_number(low)}, {_number(high)}]"


def _table(headers: Iterable[str], rows: Iterable[Iterable]) -> str:
    """A small HTML table; every cell is escaped."""
    rows = [tuple(row) for row in rows]
    if not rows:
        return format_html("<p>{}</p>", "Nothing to show.")
    head = format_html_join("", "<th>{}</th>", ((h,) for h in headers))
    body = format_html_join(
        "",
        "<tr>{}</tr>",
        ((format_html_join("", "<td>{}</td>", ((cell,) for cell in row)),) for row in rows),
    )
    return format_html("<table><thead><tr>{}</tr></thead><tbody>{}</tbody></table>", head, body)


def _evaluation_rows(version: ModelVersion) -> list[tuple[str, str, str, str]]:
    report = studio_selectors.model_version_evaluation(version=version)
    if report is None:
        return []
    rows = []
    for metric, value in report.metrics.items():
        interval = report.intervals.get(metric)
        bounds = interval[:2] if isinstance(interval, list | tuple) else []
        rows.append(("specialist", metric, _number(value), _interval(*bounds)))
    strongest = report.strongest_baseline
    for baseline in report.baselines:
        marker = " (strongest)" if baseline is strongest else ""
        rows.append(
            (
                f"baseline: {baseline.display_name}{marker}",
                baseline.metric,
                _number(baseline.value),
                _interval(baseline.ci_low, baseline.ci_high),
            )
        )
        if baseline.lift is not None:
            rows.append(
                (
                    f"lift over {baseline.display_name}",
                    baseline.lift.metric,
                    _number(baseline.lift.delta, signed=True),
                    _interval(baseline.lift.ci_low, baseline.lift.ci_high),
                )
            )
    for name, lift in report.lift.items():
        rows.append(("lift", name.replace("_", " "), _number(lift, signed=True), ""))
    return rows


def _evaluation_table(version: ModelVersion) -> str:
    evaluation = version.evaluation or {}
    caption = format_html(
        "<p><strong>{}</strong> — {}, sealed split of {} rows</p>",
        version.name,
        version.task,
        _number(evaluation.get("sealed_rows")),
    )
    rows = _evaluation_rows(version)
    return format_html("{}{}", caption, _table(["", "metric", "value", "interval"], rows))


def _version_under_review(listing: Listing) -> ModelVersion | None:
    return listing.proposed_version or listing.live_version


class NeedsReviewFilter(admin.SimpleListFilter):
    """The review queue: new listings and new versions, oldest submission first."""

    title = "review queue"
    parameter_name = QUEUE_PARAMETER

    def lookups(self, request, model_admin):
        return [(NEEDS_REVIEW, "Needs review (oldest first)")]

    def queryset(self, request, queryset):
        if self.value() == NEEDS_REVIEW:
            return queryset.filter(pk__in=selectors.review_queue().values("pk"))
        return queryset


@admin.register(Listing)
class ListingAdmin(ModerationActionsMixin, ReadOnlyAdmin):
    list_display = [
        "title", "slug", "owner", "status", "domain", "score", "lift_over_generalist",
        "submitted_at",
    ]  # fmt: skip
    list_filter = [NeedsReviewFilter, "status", "domain"]
    list_select_related = ["owner"]
    search_fields = ["title", "slug", "owner__email"]
    actions = [
        "approve", "reject", "suspend", "reinstate", "approve_new_version", "reject_new_version",
    ]  # fmt: skip
    panels = [
        "evaluation_summary", "data_family_attempts", "dataset_validation", "model_card",
        "expert_history", "moderation_log",
    ]  # fmt: skip
    fieldsets = [
        (
            None,
            {"fields": ["title", "slug", "owner", "status", "status_reason", "domain", "task"]},
        ),
        ("Review", {"fields": panels}),
        (
            "Content",
            {
                "fields": [
                    "summary",
                    "description",
                    "tags",
                    "languages",
                    "intended_use",
                    "out_of_scope_use",
                    "risk_notes",
                ]
            },
        ),
        (
            "Licence",
            {
                "fields": [
                    *LICENCE_FLAGS,
                    "max_calls_per_month",
                    "licence_summary",
                ]
            },
        ),
        (
            "Versions and numbers",
            {
                "fields": [
                    "live_version",
                    "proposed_version",
                    "score_metric",
                    "score",
                    "lift_over_generalist",
                    "lift_over_generalist_low",
                    "lift_over_generalist_high",
                    "lift_baseline",
                    "lift_baseline_label",
                    "rating_avg",
                    "rating_count",
                    "popularity",
                ]
            },
        ),
        ("Dates", {"fields": ["created_at", "updated_at", "submitted_at", "published_at"]}),
    ]

    def get_readonly_fields(self, request, obj=None):
        return [f.name for f in Listing._meta.fields] + self.panels

    def get_queryset(self, request) -> QuerySet[Listing]:
        return (
            super()
            .get_queryset(request)
            .select_related(
                "owner",
                "live_version",
                "proposed_version",
                "proposed_version__job__dataset",
                "live_version__job__dataset",
            )
        )

    def get_ordering(self, request):
        if request.GET.get(QUEUE_PARAMETER) == NEEDS_REVIEW:
            return ["submitted_at", "id"]
        return super().get_ordering(request)

    # --- panels on the change page

    @admin.display(description="Evaluation (by the platform)")
    def evaluation_summary(self, listing: Listing) -> str:
        sections = []
        if listing.proposed_version is not None:
            sections.append(("Proposed version (under review)", listing.proposed_version))
        if listing.live_version is not None:
            sections.append(("Live version", listing.live_version))
        if not sections:
            return "No model version."
        return format_html_join(
            "",
            "<h4>{}</h4>{}",
            ((heading, _evaluation_table(version)) for heading, version in sections),
        )

    @admin.display(description="Attempts on this data family")
    def data_family_attempts(self, listing: Listing) -> str:
        """How many sealed evaluations the expert ran on the data behind each version, with
        a link to the family's full attempt history."""
        sections = [
            (heading, version)
            for heading, version in (
                ("Proposed version", listing.proposed_version),
                ("Live version", listing.live_version),
            )
            if version is not None
        ]
        if not sections:
            return "No model version."
        parts = []
        for heading, version in sections:
            report = studio_selectors.model_version_evaluation(version=version)
            family = studio_selectors.data_family_of_version(version=version)
            before = report.prior_sealed_evaluations if report else 0
            recorded = report is not None and report.sealed_evaluations is not None
            if family is None:
                parts.append(format_html("<p>{}: {}</p>", heading, "no data family recorded."))
                continue
            history = studio_selectors.data_family_history(family=family)
            total = sum(1 for entry in history if entry.evaluation_number)
            parts.append(
                format_html(
                    "<p>{}: {} sealed evaluation(s) on this data before this one{}; {} on the "
                    'family in all. <a href="{}">Attempt history of the data family</a></p>',
                    heading,
                    before,
                    "" if recorded else " (evaluated before attempts were recorded)",
                    total,
                    reverse("admin:training_worker_datafamily_change", args=[family.pk]),
                )
            )
        return format_html_join("", "{}", ((part,) for part in parts))

    @admin.display(description="Dataset validation")
    def dataset_validation(self, listing: Listing) -> str:
        version = _version_under_review(listing)
        if version is None:
            return "No model version."
        report = version.job.dataset.report or {}
        sealed = report.get("sealed_split") or {}
        counts = format_html(
            "<p>{} rows, {} usable, {} sealed for evaluation</p>",
            _number(report.get("rows_total")),
            _number(report.get("rows_usable")),
            _number(sealed.get("sealed_rows")),
        )
        issues = [
            (kind, issue.get("code", ""), _number(issue.get("count")), issue.get("message", ""))
            for kind in ("errors", "warnings")
            for issue in report.get(kind) or []
        ]
        if not issues:
            return format_html("{}<p>{}</p>", counts, "No errors or warnings.")
        return format_html("{}{}", counts, _table(["", "code", "rows", "message"], issues))

    @admin.display(description="Model card")
    def model_card(self, listing: Listing) -> str:
        version = _version_under_review(listing)
        if version is None:
            return "No model version."
        return format_html('<pre style="white-space: pre-wrap">{}</pre>', version.card)

    @admin.display(description="The expert's history")
    def expert_history(self, listing: Listing) -> str:
        owner_actions = ModerationAction.objects.filter(listing__owner_id=listing.owner_id)
        rejections = owner_actions.filter(
            action__in=[ModerationActionType.REJECT, ModerationActionType.REJECT_VERSION]
        ).count()
        suspensions = owner_actions.filter(action=ModerationActionType.SUSPEND).count()
        account_suspensions = ModerationAction.objects.filter(
            action=ModerationActionType.SUSPEND_USER,
            target_type=User._meta.model_name,
            target_id=str(listing.owner_id),
        ).count()
        summary = format_html(
            "<p>{}: {} rejection(s), {} listing suspension(s), {} account suspension(s)</p>",
            listing.owner,
            rejections,
            suspensions,
            account_suspensions,
        )
        others = Listing.objects.filter(owner_id=listing.owner_id).exclude(pk=listing.pk)
        rows = [
            (
                format_html(
                    '<a href="{}">{}</a>',
                    reverse("admin:listings_listing_change", args=[other.pk]),
                    other.title,
                ),
                other.status,
                other.status_reason,
            )
            for other in others.order_by("-created_at")
        ]
        return format_html("{}{}", summary, _table(["other listing", "status", "reason"], rows))

    @admin.display(description="Moderation log")
    def moderation_log(self, listing: Listing) -> str:
        log = selectors.moderation_history(listing=listing).select_related("actor")
        rows = [(a.created_at, a.actor, a.action, a.reason) for a in log]
        return _table(["when", "moderator", "action", "reason"], rows)

    # --- moderation actions

    @admin.action(description="Approve (publish)", permissions=["moderate"])
    def approve(self, request, queryset):
        _moderate_each(
            request,
            queryset,
            lambda listing: services.listing_approve(
                moderator=request.user, listing_id=listing.pk, reason=_reason(request)
            ),
            "approved and published",
        )

    @admin.action(description="Reject (reason required)", permissions=["moderate"])
    def reject(self, request, queryset):
        _moderate_each(
            request,
            queryset,
            lambda listing: services.listing_reject(
                moderator=request.user, listing_id=listing.pk, reason=_reason(request)
            ),
            "rejected",
        )

    @admin.action(description="Suspend (reason required)", permissions=["moderate"])
    def suspend(self, request, queryset):
        _moderate_each(
            request,
            queryset,
            lambda listing: services.listing_suspend(
                moderator=request.user, listing_id=listing.pk, reason=_reason(request)
            ),
            "suspended",
        )

    @admin.action(description="Reinstate", permissions=["moderate"])
    def reinstate(self, request, queryset):
        _moderate_each(
            request,
            queryset,
            lambda listing: services.listing_reinstate(
                moderator=request.user, listing_id=listing.pk, reason=_reason(request)
            ),
            "reinstated",
        )

    @admin.action(description="Approve the new version", permissions=["moderate"])
    def approve_new_version(self, request, queryset):
        _moderate_each(
            request,
            queryset,
            lambda listing: services.listing_version_approve(
                moderator=request.user, listing_id=listing.pk, reason=_reason(request)
            ),
            "new version approved and live",
        )

    @admin.action(description="Reject the new version (reason required)", permissions=["moderate"])
    def reject_new_version(self, request, queryset):
        _moderate_each(
            request,
            queryset,
            lambda listing: services.listing_version_reject(
                moderator=request.user, listing_id=listing.pk, reason=_reason(request)
            ),
            "new version rejected",
        )


@admin.register(Report)
class ReportAdmin(ModerationActionsMixin, ReadOnlyAdmin):
    list_display = ["listing_link", "reason", "status", "reporter", "created_at"]
    list_filter = ["status", "reason"]
    list_select_related = ["listing", "reporter"]
    search_fields = ["listing__title", "listing__slug", "reporter__email", "text"]
    actions = ["mark_actioned", "dismiss"]

    @admin.display(description="Listing", ordering="listing__title")
    def listing_link(self, report: Report) -> str:
        url = reverse("admin:listings_listing_change", args=[report.listing_id])
        return format_html('<a href="{}">{}</a>', url, report.listing)

    def _resolve(self, request, queryset, *, actioned: bool, done: str) -> None:
        _moderate_each(
            request,
            queryset,
            lambda report: services.report_resolve(
                moderator=request.user,
                report_id=report.pk,
                actioned=actioned,
                note=_reason(request),
            ),
            done,
        )

    @admin.action(description="Mark actioned (note required)", permissions=["moderate"])
    def mark_actioned(self, request, queryset):
        self._resolve(request, queryset, actioned=True, done="marked actioned")

    @admin.action(description="Dismiss (note required)", permissions=["moderate"])
    def dismiss(self, request, queryset):
        self._resolve(request, queryset, actioned=False, done="dismissed")


@admin.register(ModerationAction)
class ModerationActionAdmin(ReadOnlyAdmin):
    """The audit log: readable by moderators, writable by no one through the console
    (superusers included); rows are written only by the services."""

    list_display = [
        "created_at", "actor", "action", "target_type", "target_id", "listing", "reason",
    ]  # fmt: skip
    list_filter = ["action", "target_type"]
    list_select_related = ["actor", "listing"]
    search_fields = ["actor__email", "target_id", "listing__slug", "reason"]
    date_hierarchy = "created_at"

    def get_actions(self, request):
        actions = super().get_actions(request)
        actions.pop("delete_selected", None)
        return actions


@admin.register(GardenMember)
class GardenMemberAdmin(ReadOnlyAdmin):
    """Who a garden composes, and who left it and why (listings.gardens)."""

    list_display = ["garden", "listing", "label", "added_at", "removed_at", "removed_reason"]
    list_select_related = ["garden__listing", "listing"]
    search_fields = ["garden__listing__slug", "listing__slug"]


@admin.register(ListingVersion)
class ListingVersionAdmin(ReadOnlyAdmin):
    list_display = ["__str__", "listing", "number", "status", "model_version", "published_at"]
    list_filter = ["status"]
    list_select_related = ["listing", "model_version"]
    search_fields = ["listing__slug", "model_version__name"]


@admin.register(Review)
class ReviewAdmin(ReadOnlyAdmin):
    list_display = ["listing", "author", "rating", "created_at", "replied_at"]
    list_filter = ["rating"]
    list_select_related = ["listing", "author"]
    search_fields = ["listing__slug", "author__email", "text"]


@admin.register(Entitlement)
class EntitlementAdmin(ReadOnlyAdmin):
    list_display = ["listing", "user", "reference", "granted_at"]
    list_select_related = ["listing", "user"]
    search_fields = ["listing__slug", "user__email", "reference"]


# --- accounts, with audited moderation -------------------------------------------

admin.site.unregister(User)


@admin.register(User)
class ModeratedUserAdmin(ModerationActionsMixin, AccountsUserAdmin):
    actions = ["suspend_users", "reinstate_users"]

    def has_change_permission(self, request, obj=None) -> bool:
        # change_user on Django's UserAdmin edits is_superuser, groups and passwords; a
        # moderator holding it could promote themselves. Moderators suspend and reinstate
        # through the audited actions; only superusers edit accounts by hand.
        return request.user.is_superuser and super().has_change_permission(request, obj)

    @admin.action(description="Suspend user (reason required)", permissions=["moderate"])
    def suspend_users(self, request, queryset):
        _moderate_each(
            request,
            queryset,
            lambda user: services.user_suspend(
                moderator=request.user, user=user, reason=_reason(request)
            ),
            "suspended",
        )

    @admin.action(description="Reinstate user", permissions=["moderate"])
    def reinstate_users(self, request, queryset):
        _moderate_each(
            request,
            queryset,
            lambda user: services.user_reinstate(
                moderator=request.user, user=user, reason=_reason(request)
            ),
            "reinstated",
        )


admin.site.unregister(ExpertProfile)


@admin.register(ExpertProfile)
class ModeratedExpertProfileAdmin(ModerationActionsMixin, AccountsExpertProfileAdmin):
    actions = ["verify_experts"]

    @admin.action(description="Verify expert (note required)", permissions=["moderate"])
    def verify_experts(self, request, queryset):
        _moderate_each(
            request,
            queryset.select_related("user"),
            lambda profile: services.expert_verify(
                moderator=request.user, profile=profile, note=_reason(request)
            ),
            "verified",
        )
