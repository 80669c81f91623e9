"""Domain events: record what happened with the change, deliver it once per consumer.

A lower context calls `event_record(...)` inside the transaction of its change; it
never imports who listens. A higher context registers a consumer in its AppConfig.ready
(`consumer_register(name=..., types=..., handler=...)`). Each event gets one delivery
row per interested consumer in the same transaction, and is delivered by a task after
commit (a beat sweep resends what a lost task left behind). A handler runs inside a
transaction that also marks its delivery done, so what it writes commits exactly once
with the mark; a handler that raises is retried with backoff, then left `failed`, with
its error, for an operator (admin: Domain event deliveries).
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from datetime import timedelta

from django.db import transaction
from django.db.models import F
from django.utils import timezone

from marketplace.celery import send_after_commit
from marketplace.db import in_transaction
from marketplace.models import DeliveryStatus, DomainEvent, DomainEventDelivery

logger = logging.getLogger(__name__)

DELIVER_TASK = "marketplace.deliver_domain_event"
MAX_ATTEMPTS = 8


@dataclass(frozen=True)
class Consumer:
    name: str
    types: frozenset[str]
    handler: Callable[[DomainEvent], None]


_consumers: dict[str, Consumer] = {}


def consumer_register(*, name: str, types: Iterable[str], handler) -> None:
    """Listen to `types` under `name` (stable: deliveries are keyed by it). Idempotent."""
    _consumers[name] = Consumer(name=name, types=frozenset(types), handler=handler)


def consumers_of(event_type: str) -> list[Consumer]:
    return [c for c in _consumers.values() if event_type in c.types]


def event_record(
    *, type: str, subject_type: str, subject_id, actor=None, data: dict | None = None
) -> DomainEvent:
    """Write the event and its deliveries in the caller's transaction (required: an
    event must commit with the change it describes, or not at all)."""
    if not in_transaction():
        raise RuntimeError("event_record must run inside the transaction of the change")
    event = DomainEvent.objects.create(
        type=type,
        subject_type=subject_type,
        subject_id=str(subject_id),
        actor_id=getattr(actor, "pk", None),
        data=data or {},
    )
    for consumer in consumers_of(type):
        delivery = DomainEventDelivery.objects.create(event=event, consumer=consumer.name)
        send_after_commit(DELIVER_TASK, str(delivery.pk))
    return event


def _backoff(attempts: int) -> timedelta:
    return timedelta(seconds=min(3600, 5 * 2 ** max(0, attempts - 1)))


def event_deliver(*, delivery_id: int) -> DeliveryStatus | None:
    """Run one delivery if it is pending and due; returns its status afterwards (None
    when another worker holds it). Exactly once: the handler's writes and the done mark
    commit together."""
    now = timezone.now()
    try:
        with transaction.atomic():
            delivery = (
                DomainEventDelivery.objects.select_for_update(skip_locked=True)
                .select_related("event")
                .filter(pk=delivery_id, status=DeliveryStatus.PENDING, next_attempt_at__lte=now)
                .first()
            )
            if delivery is None:
                return None
            consumer = _consumers.get(delivery.consumer)
            if consumer is not None:
                consumer.handler(delivery.event)
            DomainEventDelivery.objects.filter(pk=delivery.pk).update(
                status=DeliveryStatus.DONE, done_at=timezone.now(), last_error=""
            )
            return DeliveryStatus.DONE
    except Exception as exc:
        logger.exception("domain event delivery %s failed", delivery_id)
        row = DomainEventDelivery.objects.filter(pk=delivery_id).first()
        if row is None:
            return None
        attempts = row.attempts + 1
        status = DeliveryStatus.FAILED if attempts >= MAX_ATTEMPTS else DeliveryStatus.PENDING
        DomainEventDelivery.objects.filter(pk=delivery_id).update(
            attempts=F("attempts") + 1,
            status=status,
            next_attempt_at=timezone.now() + _backoff(attempts),
            last_error=f"{type(exc).__name__}: {exc}"[:2000],
        )
        return status


def events_deliver_due(*, limit: int = 500) -> int:
    """The sweep: deliver what is pending and due (a lost task, a retry's backoff over).
    Runs them inline, oldest first; returns how many it tried."""
    ids = list(
        DomainEventDelivery.objects.filter(
            status=DeliveryStatus.PENDING, next_attempt_at__lte=timezone.now()
        )
        .order_by("id")
        .values_list("id", flat=True)[:limit]
    )
    for delivery_id in ids:
        event_deliver(delivery_id=delivery_id)
    return len(ids)
