"""The domain-event outbox every context writes to and a few consumers read.

A context records what happened (`listing.delisted`, `user.suspended`, ...) as a
DomainEvent inside the transaction of the change itself, so the event exists exactly
when the change committed. Consumers (registered by higher contexts, see
marketplace.events) receive each event once: a DomainEventDelivery row per event and
consumer, unique, marked done in the same transaction as the consumer's own writes.
Lower contexts never import their consumers.
"""

from django.db import models
from django.utils import timezone


class DomainEvent(models.Model):
    """Something that happened, written once in the transaction that made it happen."""

    id = models.BigAutoField(primary_key=True)
    type = models.CharField(max_length=64, db_index=True, help_text="e.g. listing.delisted.")
    subject_type = models.CharField(max_length=40, help_text="e.g. listing, user.")
    subject_id = models.CharField(max_length=64, db_index=True)
    actor_id = models.BigIntegerField(
        null=True, blank=True, help_text="The user who caused it; null for the platform."
    )
    data = models.JSONField(default=dict, blank=True, help_text="Ids and small facts only.")
    created_at = models.DateTimeField(default=timezone.now, db_index=True)

    class Meta:
        ordering = ["id"]

    def __str__(self) -> str:
        return f"{self.type} {self.subject_type}:{self.subject_id}"


class DeliveryStatus(models.TextChoices):
    PENDING = "pending"
    DONE = "done"
    FAILED = "failed"  # attempts exhausted: shown to operators, retried by hand


class DomainEventDelivery(models.Model):
    """One consumer's handling of one event: written pending with the event, done once."""

    event = models.ForeignKey(DomainEvent, on_delete=models.CASCADE, related_name="deliveries")
    consumer = models.CharField(max_length=64)
    status = models.CharField(
        max_length=10, choices=DeliveryStatus.choices, default=DeliveryStatus.PENDING
    )
    attempts = models.PositiveIntegerField(default=0)
    next_attempt_at = models.DateTimeField(default=timezone.now)
    last_error = models.TextField(blank=True)
    done_at = models.DateTimeField(null=True, blank=True)

    class Meta:
        ordering = ["id"]
        constraints = [
            models.UniqueConstraint(fields=["event", "consumer"], name="one_delivery_per_consumer")
        ]
        indexes = [models.Index(fields=["status", "next_attempt_at"])]

    def __str__(self) -> str:
        return f"{self.event} → {self.consumer} ({self.status})"
