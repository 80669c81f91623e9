"""The outbox of writes to Stripe: decide in a transaction, call Stripe outside it.

A service that decides to move money or end billing records a StripeIntent inside its
own transaction (`intent_record`): the kind, what to send, and an idempotency key built
from our own row ids. Nothing is sent while any row lock is held. After the commit a
task sends it (`intent_send`) with that key and records Stripe's answer on the row; a
caller that needs the answer at once (a Checkout URL, a moderator's refund) sends it
inline, after its transaction. Stripe replays the first answer to a repeated key for
24 hours, so a crash between the call and the record, a retried task or two workers
racing all end in one Stripe object. A pending intent whose task was lost is sent again
by the beat sweep and the reconciler; an intent Stripe refused is `failed`, with
Stripe's message, and flagged to moderators.

Applying what Stripe answered to licences and payments is billing.stripe_sync's job
(`intent_run` there sends and applies).
"""

from __future__ import annotations

import logging
from datetime import timedelta

from django.db.models import F, Q
from django.utils import timezone

from billing import stripe_gateway as gateway
from billing.errors import PaymentProviderError, PaymentProviderUnavailable
from billing.models import (
    GardenPayout,
    IntentKind,
    IntentStatus,
    Licence,
    Payment,
    StripeIntent,
)
from marketplace.celery import send_after_commit
from marketplace.db import in_transaction

logger = logging.getLogger(__name__)

SEND_TASK = "billing.send_stripe_intent"
# Unreachable Stripe: retried with backoff, up to this many attempts (then failed).
MAX_ATTEMPTS = 10


def intent_record(
    *,
    kind: str,
    key_parts: tuple,
    params: dict,
    licence: Licence | None = None,
    payment: Payment | None = None,
    actor=None,
    reason: str = "",
    send: bool = True,
) -> StripeIntent:
    """Record a write to make at Stripe, in the caller's transaction (required), and
    send it after commit. The same decision made twice (same kind and key parts) is one
    intent: the first row is returned and nothing new is sent."""
    if not in_transaction():
        raise RuntimeError("intent_record must run inside the transaction that decides it")
    key = gateway.idempotency_key(kind, *key_parts)
    intent, created = StripeIntent.objects.get_or_create(
        idempotency_key=key,
        defaults={
            "kind": kind,
            "params": params,
            "licence": licence,
            "payment": payment,
            "actor": actor,
            "reason": reason,
        },
    )
    if created and send:
        send_after_commit(SEND_TASK, str(intent.pk))
    return intent


def _backoff(attempts: int) -> timedelta:
    return timedelta(seconds=min(3600, 10 * 2 ** max(0, attempts - 1)))


def _call(intent: StripeIntent) -> tuple[str, dict]:
    """Make the intent's call; returns (Stripe's object id, what we keep of it)."""
    p, key = intent.params, intent.idempotency_key
    if intent.kind == IntentKind.CHECKOUT_SESSION_CREATE:
        session = gateway.checkout_session_create(key=key, **p)
        return session.id, {"url": session.url, "status": session.status}
    if intent.kind == IntentKind.CHECKOUT_SESSION_EXPIRE:
        session = gateway.checkout_session_expire(session_id=p["session_id"], key=key)
        return session.id, {"status": session.status}
    if intent.kind == IntentKind.REFUND_CREATE:
        refund = gateway.refund_create(
            charge_id=p["charge_id"], amount=p["amount"], key=key, metadata=p["metadata"],
            destination_charge=p.get("destination_charge", True),
        )  # fmt: skip
        return refund.id, {"status": refund.status, "amount": refund.amount}
    if intent.kind == IntentKind.SUBSCRIPTION_CANCEL:
        sub = gateway.subscription_cancel(
            subscription_id=p["subscription_id"], invoice_now=p.get("invoice_now", False)
        )
        return sub.id, {"status": sub.status}
    if intent.kind in (
        IntentKind.SUBSCRIPTION_CANCEL_AT_PERIOD_END,
        IntentKind.SUBSCRIPTION_RESUME,
    ):
        sub = gateway.subscription_set_cancel_at_period_end(
            subscription_id=p["subscription_id"],
            cancel=intent.kind == IntentKind.SUBSCRIPTION_CANCEL_AT_PERIOD_END,
            key=key,
        )
        return sub.id, {"status": sub.status, "cancel_at_period_end": sub.cancel_at_period_end}
    if intent.kind == IntentKind.TRANSFER_CREATE:
        transfer = gateway.transfer_create(
            amount=p["amount"], currency=p["currency"], destination=p["destination"],
            source_transaction=p["source_transaction"], transfer_group=p["transfer_group"],
            key=key, metadata={"niche_garden_payout_id": str(p["payout_id"])},
        )  # fmt: skip
        return transfer.id, {"amount": transfer.amount, "destination": transfer.destination}
    if intent.kind == IntentKind.TRANSFER_REVERSAL_CREATE:
        # The payout's transfer may still be in this outbox: until it is made, retry.
        transfer_id = (
            GardenPayout.objects.filter(pk=p["reverses"])
            .values_list("stripe_transfer_id", flat=True)
            .first()
        )
        if not transfer_id:
            raise PaymentProviderUnavailable("The payout to reverse is not transferred yet.")
        reversal = gateway.transfer_reversal_create(
            transfer_id=transfer_id, amount=p["amount"], key=key,
            metadata={"niche_garden_payout_id": str(p["payout_id"])},
        )  # fmt: skip
        return reversal.id, {"amount": reversal.amount, "transfer": reversal.transfer_id}
    raise ValueError(f"unknown intent kind {intent.kind}")


def _already_done(intent: StripeIntent) -> tuple[str, dict] | None:
    """Stripe refused the call: is that because what we wanted is already so (the
    session is no longer open, the subscription already cancelled)? Then the intent is
    done. Returns (id, result) when it is, None otherwise."""
    p = intent.params
    if intent.kind == IntentKind.CHECKOUT_SESSION_EXPIRE:
        session = gateway.checkout_session_retrieve(p["session_id"])
        if session.status != "open":
            return session.id, {"status": session.status, "already": True}
    if intent.kind == IntentKind.SUBSCRIPTION_CANCEL:
        sub = gateway.subscription_retrieve(p["subscription_id"])
        if sub.status in ("canceled", "incomplete_expired"):
            return sub.id, {"status": sub.status, "already": True}
    return None


def intent_send(*, intent_id) -> StripeIntent:
    """Send a pending intent whose time has come, and record the outcome. Never inside
    a transaction (Stripe is slow and row locks must not wait on it). Raises nothing for
    Stripe's answers: an unreachable Stripe leaves it pending with a backoff, a refusal
    marks it failed with Stripe's message."""
    if in_transaction():
        raise RuntimeError("intent_send must not run inside a transaction")
    intent = StripeIntent.objects.get(pk=intent_id)
    if intent.status != IntentStatus.PENDING:
        return intent
    StripeIntent.objects.filter(pk=intent.pk).update(attempts=F("attempts") + 1)
    intent.attempts += 1
    try:
        result_id, result = _call(intent)
    except PaymentProviderUnavailable as exc:
        status = IntentStatus.FAILED if intent.attempts >= MAX_ATTEMPTS else IntentStatus.PENDING
        StripeIntent.objects.filter(pk=intent.pk, status=IntentStatus.PENDING).update(
            status=status,
            next_attempt_at=timezone.now() + _backoff(intent.attempts),
            last_error=f"{exc.message} {exc.fields}"[:2000],
        )
        intent.refresh_from_db()
        return intent
    except PaymentProviderError as exc:
        done = _already_done_or_none(intent)
        if done is None:
            StripeIntent.objects.filter(pk=intent.pk, status=IntentStatus.PENDING).update(
                status=IntentStatus.FAILED,
                last_error=exc.message[:2000],
                result={"error": {"code": exc.code, "fields": exc.fields}},
                completed_at=timezone.now(),
            )
            logger.warning("stripe intent %s refused: %s", intent.pk, exc.message)
            intent.refresh_from_db()
            return intent
        result_id, result = done
    StripeIntent.objects.filter(pk=intent.pk, status=IntentStatus.PENDING).update(
        status=IntentStatus.SUCCEEDED,
        result_id=result_id or "",
        result=result,
        last_error="",
        completed_at=timezone.now(),
    )
    intent.refresh_from_db()
    return intent


def _already_done_or_none(intent: StripeIntent) -> tuple[str, dict] | None:
    try:
        return _already_done(intent)
    except (PaymentProviderError, PaymentProviderUnavailable):
        return None


def intents_due(*, older_than_seconds: int = 30, limit: int = 200) -> list[int]:
    """Pending intents whose task was lost or whose backoff is over."""
    cutoff = timezone.now() - timedelta(seconds=older_than_seconds)
    return list(
        StripeIntent.objects.filter(
            status=IntentStatus.PENDING, next_attempt_at__lte=timezone.now()
        )
        .filter(Q(attempts__gt=0) | Q(created_at__lte=cutoff))
        .order_by("id")
        .values_list("id", flat=True)[:limit]
    )
