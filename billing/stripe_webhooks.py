"""Stripe's webhooks: stored raw once by event id, processed by a task, order-free.

The endpoint verifies the signature, stores the event as delivered (a unique row per
Stripe event id, so a redelivery changes nothing) and answers 2xx only after that
commit; a task then processes it. An event is only a hint that an object changed: its
handler re-reads the object from Stripe and applies it (billing.stripe_sync), so the
same event twice, or five events in any order, end in one state. Business conflicts
(a duplicate purchase, an ended licence) are resolved by the sync, never raised, so an
event fails only while Stripe or our database is unreachable: it is retried with
backoff, and after MAX_ATTEMPTS it waits for the reconciler, which re-syncs its object
and flags it to moderators.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from datetime import timedelta

from django.db.models import F, Q
from django.utils import timezone

from billing import stripe_sync
from billing.errors import InvalidWebhookSignature
from billing.models import StripeEvent
from billing.stripe_gateway import VerifiedEvent
from billing.stripe_objects import StripeEventView
from marketplace.celery import send_after_commit

logger = logging.getLogger(__name__)

PROCESS_TASK = "billing.process_stripe_event"
MAX_ATTEMPTS = 8


# --- receiving ------------------------------------------------------------------------


def stripe_event_receive(
    *, event: VerifiedEvent, source: str = "webhook"
) -> tuple[StripeEvent, bool]:
    """Store a verified event once by its id and send it to be processed after commit.

    Returns (row, created). A replay of a processed event changes nothing; a replay of
    one still unprocessed (its task lost or failed) sends it again, which is safe
    because processing is idempotent."""
    view = event.view
    if not (view.id and view.type):
        raise InvalidWebhookSignature("The webhook body is not a Stripe event.", code="bad_event")
    row, created = StripeEvent.objects.get_or_create(
        id=view.id, defaults={"type": view.type, "payload": event.payload, "source": source}
    )
    if row.processed_at is None:
        send_after_commit(PROCESS_TASK, row.id)
    return row, created


def _backoff(attempts: int) -> timedelta:
    return timedelta(seconds=min(3600, 15 * 2 ** max(0, attempts - 1)))


def stripe_event_process(*, event_id: str) -> StripeEvent:
    """Run the event's handler unless it already ran. A failure is stored on the row
    (attempts, last_error, next_attempt_at) and raised, so the task may retry it."""
    StripeEvent.objects.filter(pk=event_id).update(attempts=F("attempts") + 1)
    event = StripeEvent.objects.get(pk=event_id)
    if event.processed_at is not None:
        return event
    view = StripeEventView.parse(event.payload)
    handler = HANDLERS.get(event.type)
    try:
        if handler is not None and view.object_id:
            handler(view)
    except Exception as exc:
        StripeEvent.objects.filter(pk=event_id).update(
            last_error=f"{type(exc).__name__}: {exc}"[:2000],
            next_attempt_at=timezone.now() + _backoff(event.attempts),
        )
        raise
    StripeEvent.objects.filter(pk=event_id, processed_at__isnull=True).update(
        processed_at=timezone.now(), last_error="", next_attempt_at=None
    )
    event.refresh_from_db()
    return event


def stripe_events_resend_unprocessed(*, older_than_seconds: int = 60) -> int:
    """The sweep: send again events whose task was lost or whose backoff is over."""
    now = timezone.now()
    ids = list(
        StripeEvent.objects.filter(
            processed_at__isnull=True,
            received_at__lt=now - timedelta(seconds=older_than_seconds),
            attempts__lt=MAX_ATTEMPTS,
        )
        .filter(Q(next_attempt_at__isnull=True) | Q(next_attempt_at__lte=now))
        .values_list("id", flat=True)[:500]
    )
    for event_id in ids:
        send_after_commit(PROCESS_TASK, event_id)
    return len(ids)


# --- handlers (one per event type; each re-reads from Stripe) -------------------------


def _session(event: StripeEventView) -> None:
    stripe_sync.checkout_session_sync(session_id=event.object_id)


def _invoice(event: StripeEventView) -> None:
    stripe_sync.invoice_sync(invoice_id=event.object_id)


def _subscription(event: StripeEventView) -> None:
    stripe_sync.subscription_sync(subscription_id=event.object_id)


def _charge(event: StripeEventView) -> None:
    stripe_sync.charge_sync(charge_id=event.object_id)


def _account(event: StripeEventView) -> None:
    stripe_sync.account_sync(stripe_account_id=event.account or event.object_id)


HANDLERS: dict[str, Callable[[StripeEventView], None]] = {
    "checkout.session.completed": _session,
    "checkout.session.expired": _session,
    "checkout.session.async_payment_succeeded": _session,
    "checkout.session.async_payment_failed": _session,
    "invoice.paid": _invoice,
    "invoice.payment_failed": _invoice,
    "invoice.marked_uncollectible": _invoice,
    "customer.subscription.created": _subscription,
    "customer.subscription.updated": _subscription,
    "customer.subscription.deleted": _subscription,
    "charge.refunded": _charge,
    "account.updated": _account,
}
