"""Batch inference (the OpenAI Batch API): uploaded request files, batches and their
answered lines. Every other part of serving keeps no rows of its own.

Ids are OpenAI's shape (`file-…`, `batch_…`), so the official client's cursors and the
ledger's idempotency keys (`batch:<batch id>:<line>`) read them as they are.
"""

from __future__ import annotations

import uuid

from django.conf import settings
from django.db import models
from django.utils import timezone


def new_file_id() -> str:
    return f"file-{uuid.uuid4().hex}"


def new_batch_id() -> str:
    return f"batch_{uuid.uuid4().hex}"


class FilePurpose(models.TextChoices):
    BATCH = "batch"  # a buyer's JSONL of requests
    BATCH_OUTPUT = "batch_output"  # a batch's output or error file, written by Niche


class BatchFile(models.Model):
    """A JSONL file in storage: a batch's input (validated line by line at upload), or
    the output or error file a finished batch wrote. Written once, never changed."""

    id = models.CharField(primary_key=True, max_length=64, default=new_file_id, editable=False)
    owner = models.ForeignKey(
        settings.AUTH_USER_MODEL, on_delete=models.CASCADE, related_name="batch_files"
    )
    purpose = models.CharField(max_length=20, choices=FilePurpose.choices)
    filename = models.CharField(max_length=255, help_text="As displayed; never a stored name.")
    storage_path = models.CharField(max_length=300, help_text="Name in the default storage.")
    size_bytes = models.BigIntegerField()
    sha256 = models.CharField(max_length=64)
    request_count = models.PositiveIntegerField(
        default=0, help_text="Input files: the requests (non-blank lines) it holds."
    )
    endpoints = models.JSONField(
        default=list,
        blank=True,
        help_text="Input files: the endpoint families its lines call (serving.batches).",
    )
    created_at = models.DateTimeField(default=timezone.now)

    class Meta:
        ordering = ["-created_at", "-id"]
        indexes = [models.Index(fields=["owner", "created_at"])]

    def __str__(self) -> str:
        return f"{self.id} ({self.purpose}, {self.size_bytes} bytes)"


class BatchStatus(models.TextChoices):
    VALIDATING = "validating"  # created, not yet taken by a worker
    IN_PROGRESS = "in_progress"
    FINALIZING = "finalizing"  # every row answered; the output files are being written
    COMPLETED = "completed"
    FAILED = "failed"
    EXPIRED = "expired"  # the completion window passed first
    CANCELLING = "cancelling"
    CANCELLED = "cancelled"


# A worker may hold a batch in these states (serving.batch_runner claims it).
RUNNABLE_BATCH_STATUSES = (
    BatchStatus.VALIDATING,
    BatchStatus.IN_PROGRESS,
    BatchStatus.FINALIZING,
    BatchStatus.CANCELLING,
)
ENDED_BATCH_STATUSES = (
    BatchStatus.COMPLETED,
    BatchStatus.FAILED,
    BatchStatus.EXPIRED,
    BatchStatus.CANCELLED,
)


class Batch(models.Model):
    """A buyer's batch of requests, answered on the inference workers at low priority.

    `validating → in_progress → finalizing → completed`; `→ cancelling → cancelled`;
    `→ expired` past `expires_at`; `→ failed` when its workers kept dying on it. Changed
    by serving.batches (the buyer) and serving.batch_runner (the worker holding its lease).
    """

    id = models.CharField(primary_key=True, max_length=64, default=new_batch_id, editable=False)
    owner = models.ForeignKey(
        settings.AUTH_USER_MODEL, on_delete=models.CASCADE, related_name="batches"
    )
    api_key = models.ForeignKey(
        "accounts.ApiKey",
        null=True,
        blank=True,
        on_delete=models.SET_NULL,
        related_name="+",
        help_text="The key that created it (its rows' ledger rows name it); null: a session.",
    )
    input_file = models.ForeignKey(BatchFile, on_delete=models.PROTECT, related_name="+")
    endpoint = models.CharField(max_length=100)
    completion_window = models.CharField(max_length=10, default="24h")
    metadata = models.JSONField(default=dict, blank=True)
    status = models.CharField(
        max_length=20, choices=BatchStatus.choices, default=BatchStatus.VALIDATING
    )
    errors = models.JSONField(
        default=list, blank=True, help_text="Why it failed: [{code, message, param, line}]."
    )
    output_file = models.ForeignKey(
        BatchFile, null=True, blank=True, on_delete=models.SET_NULL, related_name="+"
    )
    error_file = models.ForeignKey(
        BatchFile, null=True, blank=True, on_delete=models.SET_NULL, related_name="+"
    )
    request_total = models.PositiveIntegerField(default=0)
    request_completed = models.PositiveIntegerField(default=0)
    request_failed = models.PositiveIntegerField(default=0)
    created_at = models.DateTimeField(default=timezone.now)
    expires_at = models.DateTimeField()
    in_progress_at = models.DateTimeField(null=True, blank=True)
    finalizing_at = models.DateTimeField(null=True, blank=True)
    completed_at = models.DateTimeField(null=True, blank=True)
    failed_at = models.DateTimeField(null=True, blank=True)
    expired_at = models.DateTimeField(null=True, blank=True)
    cancelling_at = models.DateTimeField(null=True, blank=True)
    cancelled_at = models.DateTimeField(null=True, blank=True)
    # The lease of the worker working on it: claimed by a conditional UPDATE, renewed as
    # it goes; one that lapses (the worker died) lets the sweep hand the batch on.
    lease_owner = models.CharField(max_length=64, blank=True)
    lease_expires_at = models.DateTimeField(null=True, blank=True)
    sent_at = models.DateTimeField(
        null=True, blank=True, help_text="When its task was last sent (the sweep resends)."
    )
    stalled_resumes = models.PositiveIntegerField(
        default=0, help_text="Times taken over from a dead worker since a row last finished."
    )

    class Meta:
        ordering = ["-created_at", "-id"]
        indexes = [
            models.Index(fields=["owner", "created_at"]),
            models.Index(
                fields=["lease_expires_at"],
                condition=models.Q(
                    status__in=["validating", "in_progress", "finalizing", "cancelling"]
                ),
                name="batch_unfinished",
            ),
        ]

    def __str__(self) -> str:
        return f"{self.id} ({self.status})"


class BatchLine(models.Model):
    """The answer to one line of a batch's input, written once (with its ledger row, in
    the same transaction): the output and error files are made from these."""

    id = models.BigAutoField(primary_key=True)
    batch = models.ForeignKey(Batch, on_delete=models.CASCADE, related_name="lines")
    line = models.PositiveIntegerField(help_text="1-based line number in the input file.")
    custom_id = models.CharField(max_length=512)
    request_id = models.CharField(max_length=64)
    succeeded = models.BooleanField()
    status_code = models.PositiveSmallIntegerField()
    body = models.JSONField(help_text="What the endpoint would have answered.")
    created_at = models.DateTimeField(default=timezone.now)

    class Meta:
        ordering = ["batch", "line"]
        constraints = [
            models.UniqueConstraint(fields=["batch", "line"], name="one_answer_per_batch_line")
        ]

    def __str__(self) -> str:
        return f"{self.batch_id} line {self.line}: {self.status_code}"
