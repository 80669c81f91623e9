"""The buyer's own evidence: private evaluations on the buyer's rows, and leaderboards on
sealed benchmark sets the platform holds.

A private evaluation belongs to its buyer alone: its rows (in storage until scoring ends,
or 30 days when the buyer keeps them for a re-run), its per-row outputs and its metrics.
The listing's expert learns only how many evaluations named the listing each month
(``PrivateEvaluationCandidate`` rows, counted; never read out). A benchmark set's rows
are held by the platform and never shown to anyone but the scoring task.
"""

from __future__ import annotations

import uuid

from django.conf import settings
from django.db import models
from django.utils import timezone


def new_evaluation_id() -> str:
    return f"peval_{uuid.uuid4().hex}"


class EvaluationStatus(models.TextChoices):
    QUEUED = "queued"
    RUNNING = "running"
    SUCCEEDED = "succeeded"
    FAILED = "failed"


ENDED_EVALUATION_STATUSES = (EvaluationStatus.SUCCEEDED, EvaluationStatus.FAILED)


class PrivateEvaluation(models.Model):
    """A buyer's rows scored by 1-5 candidate listings of one task, side by side with the
    generalist and a classic baseline (evidence.scoring). `queued → running → succeeded |
    failed`; deleting it deletes its rows and result with it."""

    id = models.CharField(
        primary_key=True, max_length=64, default=new_evaluation_id, editable=False
    )
    owner = models.ForeignKey(
        settings.AUTH_USER_MODEL, on_delete=models.CASCADE, related_name="private_evaluations"
    )
    task = models.CharField(max_length=40)
    status = models.CharField(
        max_length=20, choices=EvaluationStatus.choices, default=EvaluationStatus.QUEUED
    )
    filename = models.CharField(max_length=255, help_text="As uploaded; never a stored name.")
    row_count = models.PositiveIntegerField()
    labels = models.JSONField(
        default=list, blank=True, help_text="Classification: the buyer's labels, sorted."
    )
    rows_path = models.CharField(
        max_length=300, blank=True, help_text="Name in the default storage; blank once deleted."
    )
    keep_rows = models.BooleanField(
        default=False, help_text="The buyer keeps the rows for a re-run (30 days, deletable)."
    )
    rows_expire_at = models.DateTimeField(null=True, blank=True)
    rows_deleted_at = models.DateTimeField(null=True, blank=True)
    progress_done = models.PositiveIntegerField(default=0)
    progress_total = models.PositiveIntegerField(default=0)
    result = models.JSONField(null=True, blank=True)
    error_code = models.CharField(max_length=60, blank=True)
    error_message = models.CharField(max_length=500, blank=True)
    rerun_of = models.ForeignKey(
        "self", null=True, blank=True, on_delete=models.SET_NULL, related_name="+"
    )
    created_at = models.DateTimeField(default=timezone.now)
    started_at = models.DateTimeField(null=True, blank=True)
    finished_at = models.DateTimeField(null=True, blank=True)

    class Meta:
        ordering = ["-created_at", "-id"]
        indexes = [
            models.Index(fields=["owner", "created_at"]),
            models.Index(fields=["status", "created_at"]),
        ]

    def __str__(self) -> str:
        return f"{self.id} ({self.status}, {self.row_count} rows)"


class CandidateCharge(models.TextChoices):
    FREE = "free"  # within the buyer's daily allowance, on a listing open to free evaluation
    PER_CALL = "per_call"  # each row a metered call on the buyer's licence


class PrivateEvaluationCandidate(models.Model):
    """One listing a private evaluation scores, at the version that was live when it was
    asked for. The listing's expert sees these only as a count per month."""

    evaluation = models.ForeignKey(
        PrivateEvaluation, on_delete=models.CASCADE, related_name="candidates"
    )
    listing = models.ForeignKey(
        "listings.Listing", on_delete=models.CASCADE, related_name="private_evaluations"
    )
    version = models.ForeignKey(
        "training_worker.ModelVersion", on_delete=models.CASCADE, related_name="+"
    )
    position = models.PositiveSmallIntegerField()
    label_map = models.JSONField(
        default=dict, blank=True, help_text="The model's label -> the buyer's label."
    )
    charge = models.CharField(max_length=20, choices=CandidateCharge.choices)
    licence = models.ForeignKey(
        "billing.Licence", null=True, blank=True, on_delete=models.SET_NULL, related_name="+"
    )
    created_at = models.DateTimeField(default=timezone.now)

    class Meta:
        ordering = ["evaluation", "position"]
        constraints = [
            models.UniqueConstraint(
                fields=["evaluation", "listing"], name="evidence_candidate_once_per_evaluation"
            )
        ]
        indexes = [models.Index(fields=["listing", "created_at"])]

    def __str__(self) -> str:
        return f"{self.evaluation_id} #{self.position} ({self.charge})"


class BenchmarkSet(models.Model):
    """A sealed, platform-held set of rows for one task and label space, built from public
    corpora whose licences are recorded here. No expert ever sees its rows."""

    slug = models.SlugField(max_length=80, unique=True)
    title = models.CharField(max_length=160)
    task = models.CharField(max_length=40)
    description = models.TextField(blank=True)
    labels = models.JSONField(
        default=list, blank=True, help_text="Classification: the set's labels, sorted."
    )
    rows_path = models.CharField(max_length=300, help_text="Name in the default storage.")
    row_count = models.PositiveIntegerField(default=0)
    rows_sha256 = models.CharField(max_length=64, blank=True)
    metric = models.JSONField(
        default=dict,
        blank=True,
        help_text="{name, label, higher_is_better, why}: what its board ranks by, chosen from "
        "the rows when the set is created (accuracy; for generation the graded metric).",
    )
    sources = models.JSONField(
        default=list,
        blank=True,
        help_text="[{name, url, licence, attribution}]: the public corpora it was built from.",
    )
    is_active = models.BooleanField(default=True)
    created_by = models.ForeignKey(
        settings.AUTH_USER_MODEL, null=True, blank=True, on_delete=models.SET_NULL, related_name="+"
    )
    created_at = models.DateTimeField(default=timezone.now)

    class Meta:
        ordering = ["task", "slug"]

    def __str__(self) -> str:
        return f"{self.title} ({self.task}, {self.row_count} rows)"


class BenchmarkLabelMap(models.Model):
    """A moderator-approved map from a benchmark set's labels to a listing's labels, for a
    listing whose labels do not cover the set's by name."""

    benchmark = models.ForeignKey(BenchmarkSet, on_delete=models.CASCADE, related_name="label_maps")
    listing = models.ForeignKey("listings.Listing", on_delete=models.CASCADE, related_name="+")
    mapping = models.JSONField(help_text="{benchmark label: listing label}.")
    approved_by = models.ForeignKey(
        settings.AUTH_USER_MODEL, null=True, blank=True, on_delete=models.SET_NULL, related_name="+"
    )
    approved_at = models.DateTimeField(null=True, blank=True)

    class Meta:
        constraints = [
            models.UniqueConstraint(
                fields=["benchmark", "listing"], name="evidence_label_map_once_per_listing"
            )
        ]

    def __str__(self) -> str:
        return f"{self.benchmark_id} → {self.listing_id}"


class LeaderboardEntry(models.Model):
    """A listing's version scored on a benchmark set. Re-scoring a new version supersedes
    the listing's current entry (``superseded_at``); the history is kept."""

    benchmark = models.ForeignKey(BenchmarkSet, on_delete=models.CASCADE, related_name="entries")
    listing = models.ForeignKey(
        "listings.Listing", on_delete=models.CASCADE, related_name="leaderboard_entries"
    )
    version = models.ForeignKey(
        "training_worker.ModelVersion", on_delete=models.CASCADE, related_name="+"
    )
    metric = models.CharField(max_length=40)
    higher_is_better = models.BooleanField(default=True)
    value = models.FloatField()
    ci_low = models.FloatField()
    ci_high = models.FloatField()
    rows = models.PositiveIntegerField()
    detail = models.JSONField(default=dict, blank=True)
    scored_at = models.DateTimeField(default=timezone.now)
    superseded_at = models.DateTimeField(null=True, blank=True)

    class Meta:
        ordering = ["benchmark", "-scored_at"]
        constraints = [
            models.UniqueConstraint(
                fields=["benchmark", "listing"],
                condition=models.Q(superseded_at__isnull=True),
                name="evidence_one_current_entry_per_listing",
            ),
            models.UniqueConstraint(
                fields=["benchmark", "version"], name="evidence_version_scored_once_per_set"
            ),
        ]

    def __str__(self) -> str:
        return f"{self.listing_id} on {self.benchmark_id}: {self.metric} {self.value:.3f}"
