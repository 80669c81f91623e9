"""The catalogue: listings, their versions, reviews, reports and the moderation log.

Status fields change only through listings.services. Numbers a buyer compares (lift,
rating, popularity) are copied onto the listing by those services when they change,
so the catalogue sorts and filters on plain columns.
"""

import uuid

from django.conf import settings
from django.db import models
from django.utils import timezone

from marketplace.append_only import AppendOnlyModel
from training_worker.models import ModelVersion


class Domain(models.TextChoices):
    FINANCE = "finance", "Finance"
    HEALTHCARE = "healthcare", "Healthcare"
    LEGAL = "legal", "Legal"
    CODE = "code", "Code"
    SECURITY = "security", "Security"
    CUSTOMER_SUPPORT = "customer-support", "Customer support"
    SCIENCE = "science", "Science"
    EDUCATION = "education", "Education"
    OTHER = "other", "Other"


class ListingStatus(models.TextChoices):
    DRAFT = "draft"
    IN_REVIEW = "in_review"
    PUBLISHED = "published"
    REJECTED = "rejected"
    SUSPENDED = "suspended"
    DELISTED = "delisted"


class ListingKind(models.TextChoices):
    MODEL = "model", "A specialist model"
    GARDEN = "garden", "A garden of specialists"


# The licence terms a buyer filters on; each is a boolean column of Listing.
LICENCE_FLAGS = (
    "commercial_use",
    "derivatives_allowed",
    "on_prem_download",
    "attribution_required",
)


class Listing(models.Model):
    id = models.UUIDField(primary_key=True, default=uuid.uuid4, editable=False)
    owner = models.ForeignKey(
        settings.AUTH_USER_MODEL, on_delete=models.PROTECT, related_name="listings"
    )
    slug = models.SlugField(max_length=80, unique=True)
    title = models.CharField(max_length=120)
    summary = models.CharField(max_length=300)
    description = models.TextField(blank=True, help_text="Markdown.")
    description_html = models.TextField(blank=True, help_text="Rendered and sanitized.")
    domain = models.CharField(max_length=20, choices=Domain.choices)
    task = models.CharField(max_length=40)
    tags = models.JSONField(default=list, blank=True)
    languages = models.JSONField(default=list, blank=True)
    intended_use = models.TextField(blank=True)
    example_input = models.CharField(
        max_length=500,
        blank=True,
        help_text="An input the expert offers buyers to try (never a training row): the "
        "Try it box and the code snippets start from it.",
    )
    out_of_scope_use = models.TextField(blank=True)
    risk_notes = models.TextField(blank=True)
    # Licence terms, machine-readable; licence_summary is generated from them.
    commercial_use = models.BooleanField(default=False)
    derivatives_allowed = models.BooleanField(default=False)
    on_prem_download = models.BooleanField(default=False)
    attribution_required = models.BooleanField(default=True)
    max_calls_per_month = models.PositiveIntegerField(null=True, blank=True)
    licence_summary = models.TextField(blank=True)
    composable = models.BooleanField(
        default=False,
        help_text="The expert lets curators compose this listing into gardens (and be paid "
        "a share of each garden call it answers). Off until the expert turns it on.",
    )
    free_private_evaluation = models.BooleanField(
        default=True,
        help_text="Buyers may score it on their own rows free of charge, within their daily "
        "allowance. Off: a private evaluation of it is billed per row at the buyer's "
        "per-call licence, which the expert can never refuse.",
    )
    kind = models.CharField(
        max_length=10,
        choices=ListingKind.choices,
        default=ListingKind.MODEL,
        help_text="garden: a composition of other listings (listings.Garden), with no "
        "version of its own.",
    )

    status = models.CharField(
        max_length=20, choices=ListingStatus.choices, default=ListingStatus.DRAFT
    )
    status_reason = models.TextField(blank=True, help_text="The moderator's last reason.")
    # What serves buyers; a proposed version waits in review while the live one serves.
    live_version = models.ForeignKey(
        ModelVersion, null=True, blank=True, on_delete=models.PROTECT, related_name="+"
    )
    proposed_version = models.ForeignKey(
        ModelVersion, null=True, blank=True, on_delete=models.PROTECT, related_name="+"
    )
    # Copied from the live version's evaluation and from reviews/licences.
    score_metric = models.CharField(max_length=40, blank=True)
    score = models.FloatField(null=True, blank=True)
    # The column keeps its first name; since evaluation report version 2 it holds the lift
    # over the STRONGEST baseline (named by lift_baseline), which "best lift" sorts by.
    lift_over_generalist = models.FloatField(
        null=True, blank=True, help_text="Lift over the strongest baseline (lift_baseline)."
    )
    lift_over_generalist_low = models.FloatField(null=True, blank=True)
    lift_over_generalist_high = models.FloatField(null=True, blank=True)
    lift_baseline = models.CharField(
        max_length=60, blank=True, help_text="Key of the baseline the lift is measured over."
    )
    lift_baseline_label = models.CharField(
        max_length=120, blank=True, help_text="Its human name, e.g. 'Classic: TF-IDF + ...'."
    )
    # Generation: the graded metric beside exact match (partial credit), as the card shows
    # it: name, label, direction, the score with its interval, and the lift over the
    # strongest baseline on it (EvaluationReport.graded_metric, compacted).
    graded_metric = models.JSONField(null=True, blank=True)
    rating_avg = models.FloatField(null=True, blank=True)
    rating_count = models.IntegerField(default=0)
    popularity = models.IntegerField(default=0, help_text="Buyers who hold or held a licence.")
    # Copied from billing's active offers by listing_set_price_summary whenever they change.
    min_price_minor = models.BigIntegerField(
        null=True,
        blank=True,
        help_text="Lowest price of an active paid offer, in minor units; null: none on sale.",
    )
    price_currency = models.CharField(
        max_length=3, blank=True, help_text="ISO-4217 (lower-case) of min_price_minor."
    )

    created_at = models.DateTimeField(default=timezone.now, db_index=True)
    updated_at = models.DateTimeField(default=timezone.now)
    submitted_at = models.DateTimeField(null=True, blank=True)
    published_at = models.DateTimeField(null=True, blank=True)

    class Meta:
        ordering = ["-created_at"]
        indexes = [
            models.Index(fields=["status", "published_at"]),
            models.Index(fields=["status", "lift_over_generalist"]),
            models.Index(fields=["status", "rating_avg"]),
            models.Index(fields=["status", "popularity"]),
            models.Index(fields=["status", "price_currency", "min_price_minor"]),
        ]

    def __str__(self) -> str:
        return self.title


class ListingVersionStatus(models.TextChoices):
    LIVE = "live"
    RETIRED = "retired"


class ListingVersion(models.Model):
    """A model version that went live on a listing: `<slug>@<number>` names it."""

    listing = models.ForeignKey(Listing, on_delete=models.CASCADE, related_name="versions")
    model_version = models.ForeignKey(ModelVersion, on_delete=models.PROTECT, related_name="+")
    number = models.PositiveIntegerField()
    status = models.CharField(
        max_length=20, choices=ListingVersionStatus.choices, default=ListingVersionStatus.LIVE
    )
    published_at = models.DateTimeField(default=timezone.now)
    retired_at = models.DateTimeField(null=True, blank=True)

    class Meta:
        ordering = ["number"]
        constraints = [
            models.UniqueConstraint(fields=["listing", "number"], name="listing_version_number"),
            models.UniqueConstraint(
                fields=["listing", "model_version"], name="listing_version_once"
            ),
        ]

    def __str__(self) -> str:
        return f"{self.listing.slug}@{self.number}"


class Entitlement(models.Model):
    """A buyer holds or held a licence to a listing; billing grants it when one activates."""

    listing = models.ForeignKey(Listing, on_delete=models.CASCADE, related_name="entitlements")
    user = models.ForeignKey(
        settings.AUTH_USER_MODEL, on_delete=models.CASCADE, related_name="entitlements"
    )
    reference = models.CharField(max_length=100, help_text="e.g. the licence id in billing")
    granted_at = models.DateTimeField(default=timezone.now)

    class Meta:
        constraints = [
            models.UniqueConstraint(fields=["listing", "user"], name="one_entitlement_per_buyer")
        ]

    def __str__(self) -> str:
        return f"{self.user} → {self.listing}"


class Review(models.Model):
    listing = models.ForeignKey(Listing, on_delete=models.CASCADE, related_name="reviews")
    author = models.ForeignKey(
        settings.AUTH_USER_MODEL, on_delete=models.CASCADE, related_name="reviews"
    )
    rating = models.PositiveSmallIntegerField()
    text = models.TextField(blank=True)
    created_at = models.DateTimeField(default=timezone.now, db_index=True)
    updated_at = models.DateTimeField(default=timezone.now)
    reply = models.TextField(blank=True)
    replied_at = models.DateTimeField(null=True, blank=True)

    class Meta:
        ordering = ["-created_at"]
        constraints = [
            models.UniqueConstraint(fields=["listing", "author"], name="one_review_per_buyer"),
            models.CheckConstraint(
                condition=models.Q(rating__gte=1, rating__lte=5), name="rating_1_to_5"
            ),
        ]

    def __str__(self) -> str:
        return f"{self.rating}★ by {self.author} on {self.listing}"


class ReportReason(models.TextChoices):
    HARMFUL_OUTPUT = "harmful_output", "Harmful output"
    LICENCE_VIOLATION = "licence_violation", "Licence violation"
    MISLEADING_EVALUATION = "misleading_evaluation", "Misleading evaluation"
    PRIVACY = "privacy", "Privacy"
    SPAM = "spam", "Spam"
    OTHER = "other", "Other"


class ReportStatus(models.TextChoices):
    OPEN = "open"
    ACTIONED = "actioned"
    DISMISSED = "dismissed"


class Report(models.Model):
    listing = models.ForeignKey(Listing, on_delete=models.CASCADE, related_name="reports")
    reporter = models.ForeignKey(
        settings.AUTH_USER_MODEL, on_delete=models.CASCADE, related_name="reports"
    )
    reason = models.CharField(max_length=30, choices=ReportReason.choices)
    text = models.TextField(blank=True)
    status = models.CharField(
        max_length=20, choices=ReportStatus.choices, default=ReportStatus.OPEN
    )
    created_at = models.DateTimeField(default=timezone.now, db_index=True)
    resolved_by = models.ForeignKey(
        settings.AUTH_USER_MODEL, null=True, blank=True, on_delete=models.SET_NULL, related_name="+"
    )
    resolved_at = models.DateTimeField(null=True, blank=True)
    resolution_note = models.TextField(blank=True)

    class Meta:
        ordering = ["created_at"]

    def __str__(self) -> str:
        return f"{self.get_reason_display()} report on {self.listing}"


class ModerationActionType(models.TextChoices):
    APPROVE = "approve"
    REJECT = "reject"
    SUSPEND = "suspend"
    REINSTATE = "reinstate"
    APPROVE_VERSION = "approve_version"
    REJECT_VERSION = "reject_version"
    REPORT_ACTIONED = "report_actioned"
    REPORT_DISMISSED = "report_dismissed"
    SUSPEND_USER = "suspend_user"
    REINSTATE_USER = "reinstate_user"
    VERIFY_EXPERT = "verify_expert"


class ModerationAction(AppendOnlyModel):
    """The audit log: one row per moderator action, append-only."""

    actor = models.ForeignKey(
        settings.AUTH_USER_MODEL, on_delete=models.PROTECT, related_name="moderation_actions"
    )
    action = models.CharField(max_length=30, choices=ModerationActionType.choices)
    target_type = models.CharField(max_length=40)
    target_id = models.CharField(max_length=64)
    listing = models.ForeignKey(
        Listing, null=True, blank=True, on_delete=models.PROTECT, related_name="moderation_log"
    )
    reason = models.TextField(blank=True)
    created_at = models.DateTimeField(default=timezone.now, db_index=True)

    class Meta:
        ordering = ["-created_at", "-id"]

    def __str__(self) -> str:
        return f"{self.actor} {self.action} {self.target_type}:{self.target_id}"


class GardenKind(models.TextChoices):
    ROUTER = "router", "Router: the best member for each request"
    PIPELINE = "pipeline", "Pipeline: a classifier's label picks the member that answers"


class Garden(models.Model):
    """A curated composition of other experts' listings, sold as one listing (its own
    offers, terms and moderation). Each answered call pays the members that worked on it
    and the curator their shares of the price after the platform fee
    (billing.GardenShare)."""

    listing = models.OneToOneField(
        Listing, on_delete=models.CASCADE, primary_key=True, related_name="garden"
    )
    kind = models.CharField(max_length=10, choices=GardenKind.choices)
    member_share_percent = models.PositiveSmallIntegerField(
        default=70,
        help_text="Percent of a call's price after the platform fee that goes to the members "
        "that answered it (split equally between a pipeline's steps); the rest goes to the "
        "curator.",
    )
    classifier = models.ForeignKey(
        Listing,
        null=True,
        blank=True,
        on_delete=models.PROTECT,
        related_name="+",
        help_text="pipeline: the classification listing whose label picks the answering member.",
    )
    classifier_removed_at = models.DateTimeField(null=True, blank=True)
    created_at = models.DateTimeField(default=timezone.now)

    class Meta:
        constraints = [
            models.CheckConstraint(
                condition=models.Q(member_share_percent__lte=100), name="garden_share_at_most_all"
            )
        ]

    def __str__(self) -> str:
        return f"{self.get_kind_display()} garden {self.listing_id}"

    @property
    def curator_share_percent(self) -> int:
        return 100 - self.member_share_percent


class GardenMember(models.Model):
    """A listing composed into a garden. A member leaves (removed_at) when it is
    suspended or delisted, or its expert stops allowing composition; a removed member
    never answers again, and the curator adds it back by hand."""

    garden = models.ForeignKey(Garden, on_delete=models.CASCADE, related_name="members")
    listing = models.ForeignKey(
        Listing, on_delete=models.PROTECT, related_name="garden_memberships"
    )
    label = models.CharField(
        max_length=100,
        blank=True,
        help_text="pipeline: the classifier's label this member answers; blank in a router garden.",
    )
    position = models.PositiveSmallIntegerField(default=0)
    added_at = models.DateTimeField(default=timezone.now)
    removed_at = models.DateTimeField(null=True, blank=True)
    removed_reason = models.TextField(blank=True)

    class Meta:
        ordering = ["position", "id"]
        constraints = [
            # A router garden names a member once; a pipeline may map several labels to one.
            models.UniqueConstraint(
                fields=["garden", "listing"],
                condition=models.Q(removed_at__isnull=True, label=""),
                name="garden_member_once",
            ),
            models.UniqueConstraint(
                fields=["garden", "label"],
                condition=models.Q(removed_at__isnull=True) & ~models.Q(label=""),
                name="garden_label_once",
            ),
        ]

    def __str__(self) -> str:
        return f"{self.listing_id} in {self.garden_id}"
