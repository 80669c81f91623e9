"""Stripe's webhooks: stored once by event id, processed in a task, order-independent.

An event is only a hint that something changed. Its handler re-reads the object from
Stripe and moves our rows to match what Stripe says *now*, so the same event twice,
or five events in any order, end in one state: a payment is recorded once (unique
Stripe ids), a licence never leaves an ended state, and a licence activates only when
Stripe shows the money (a paid one-time charge not fully refunded, or a subscription
Stripe calls active).
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from datetime import UTC, datetime, timedelta

from django.db import IntegrityError, transaction
from django.db.models import F, Sum
from django.utils import timezone

from billing import stripe_gateway as gateway
from billing.checkout import connect_account_sync, platform_fee
from billing.errors import InvalidWebhookSignature
from billing.models import (
    ENDED_LICENCE_STATUSES,
    Licence,
    LicenceStatus,
    OfferKind,
    Payment,
    PaymentKind,
    StripeEvent,
)
from billing.selectors import month_start
from billing.services import (
    licence_activate,
    licence_cancel,
    licence_mark_past_due,
    licence_renew,
    licence_revoke,
)
from marketplace.celery import send_after_commit

logger = logging.getLogger(__name__)

PROCESS_TASK = "billing.process_stripe_event"


# --- receiving ------------------------------------------------------------------------


def stripe_event_receive(*, event: dict) -> tuple[StripeEvent, bool]:
    """Store a verified event once by its id and send it to be processed after commit.

    Returns (row, created). A replay of a processed event changes nothing; a replay of
    one still unprocessed (its task lost or failed) sends it again, which is safe
    because processing is idempotent."""
    event_id, event_type = event.get("id"), event.get("type")
    if not (isinstance(event_id, str) and event_id and isinstance(event_type, str)):
        raise InvalidWebhookSignature("The webhook body is not a Stripe event.", code="bad_event")
    row, created = StripeEvent.objects.get_or_create(
        id=event_id, defaults={"type": event_type, "payload": event}
    )
    if row.processed_at is None:
        send_after_commit(PROCESS_TASK, row.id)
    return row, created


def stripe_event_process(*, event_id: str) -> StripeEvent:
    """Run the event's handler unless it already ran. A failure is stored on the row
    (attempts, last_error) and raised, so the task may retry it."""
    StripeEvent.objects.filter(pk=event_id).update(attempts=F("attempts") + 1)
    event = StripeEvent.objects.get(pk=event_id)
    if event.processed_at is not None:
        return event
    handler = HANDLERS.get(event.type)
    try:
        if handler is not None:
            handler(event.payload)
    except Exception as exc:
        StripeEvent.objects.filter(pk=event_id).update(last_error=f"{type(exc).__name__}: {exc}")
        raise
    StripeEvent.objects.filter(pk=event_id, processed_at__isnull=True).update(
        processed_at=timezone.now(), last_error=""
    )
    event.refresh_from_db()
    return event


def stripe_events_resend_unprocessed(*, older_than_seconds: int = 60, max_attempts: int = 8) -> int:
    """The sweep: send again events whose task was lost (never ran or failed)."""
    cutoff = timezone.now() - timedelta(seconds=older_than_seconds)
    ids = list(
        StripeEvent.objects.filter(
            processed_at__isnull=True, received_at__lt=cutoff, attempts__lt=max_attempts
        ).values_list("id", flat=True)[:500]
    )
    for event_id in ids:
        send_after_commit(PROCESS_TASK, event_id)
    return len(ids)


# --- reading Stripe's objects ---------------------------------------------------------


def _id(value) -> str | None:
    """An expandable field: an id, or the object itself."""
    if isinstance(value, dict):
        return value.get("id")
    return value or None


def _when(timestamp: int | None) -> datetime | None:
    return datetime.fromtimestamp(timestamp, tz=UTC) if timestamp else None


def _licence(licence_id) -> Licence | None:
    if not licence_id:
        return None
    try:
        return Licence.objects.select_related("offer").filter(pk=licence_id).first()
    except (ValueError, TypeError):  # not a uuid: not one of ours
        return None


def _licence_of_subscription(subscription: dict) -> Licence | None:
    licence = _licence((subscription.get("metadata") or {}).get("niche_licence_id"))
    if licence is None:
        licence = Licence.objects.filter(stripe_subscription_id=subscription["id"]).first()
    return licence


def _subscription_of_invoice(invoice: dict) -> str | None:
    parent = (invoice.get("parent") or {}).get("subscription_details") or {}
    return _id(parent.get("subscription")) or _id(invoice.get("subscription"))


def _charge_of(payment_intent: dict) -> dict | None:
    charge = payment_intent.get("latest_charge")
    if isinstance(charge, str):
        return gateway.charge_retrieve(charge)
    return charge


# --- recording money ------------------------------------------------------------------


def payment_insert_once(**fields) -> Payment | None:
    """Insert a payment once: a unique Stripe id makes a second insert a no-op."""
    try:
        with transaction.atomic():
            return Payment.objects.create(**fields)
    except IntegrityError:
        return None


def _stripe_fee(charge: dict) -> int | None:
    balance = charge.get("balance_transaction")
    return balance.get("fee") if isinstance(balance, dict) else None


def payment_record_charge(
    *, licence: Licence, charge: dict, kind: str, invoice_id: str = ""
) -> Payment:
    """The payment for a succeeded charge (one-time) or paid invoice, recorded once."""
    once = {"stripe_invoice_id": invoice_id} if invoice_id else {"stripe_charge_id": charge["id"]}
    existing = Payment.objects.filter(kind=kind, **once).first()
    if existing is not None:
        return existing
    fee = charge.get("application_fee_amount")
    if fee is None:
        fee = platform_fee(charge["amount"])
    created = _when(charge.get("created")) or timezone.now()
    payment = payment_insert_once(
        licence=licence,
        kind=kind,
        amount=charge["amount"],
        currency=charge["currency"],
        stripe_fee=_stripe_fee(charge),
        platform_fee=fee,
        period=month_start(created),
        stripe_charge_id=charge["id"],
        stripe_invoice_id=invoice_id,
        created_at=created,
    )
    return payment or Payment.objects.get(kind=kind, **once)


def payment_record_refunds(*, payment: Payment, charge: dict) -> list[Payment]:
    """A negative payment per refund Stripe lists on the charge, each recorded once;
    the platform fee goes back in proportion."""
    refunds = (charge.get("refunds") or {}).get("data") or []
    recorded = []
    for refund in refunds:
        if refund.get("status") not in (None, "succeeded", "pending"):
            continue
        fee_back = -((payment.platform_fee * refund["amount"]) // max(payment.amount, 1))
        created = _when(refund.get("created")) or timezone.now()
        row = payment_insert_once(
            licence=payment.licence,
            kind=PaymentKind.REFUND,
            amount=-refund["amount"],
            currency=refund.get("currency") or payment.currency,
            platform_fee=fee_back,
            period=month_start(created),
            stripe_refund_id=refund["id"],
            stripe_charge_id=charge["id"],
            refunds=payment,
            reason=(refund.get("metadata") or {}).get("reason", ""),
            created_at=created,
        )
        if row is not None:
            recorded.append(row)
    return recorded


def _fully_refunded(payment: Payment) -> bool:
    given_back = -(
        Payment.objects.filter(refunds=payment, kind=PaymentKind.REFUND).aggregate(s=Sum("amount"))[
            "s"
        ]
        or 0
    )
    return given_back >= payment.amount > 0


# --- moving licences to what Stripe says ----------------------------------------------


def _locked(licence: Licence) -> Licence:
    return Licence.objects.select_for_update().get(pk=licence.pk)


def _activate(licence: Licence, **stripe_ids) -> Licence:
    if licence.status == LicenceStatus.PENDING:
        return licence_activate(licence_id=licence.pk, **stripe_ids)
    return licence


def licence_sync_one_time(*, licence: Licence, payment_intent_id: str) -> Licence:
    """A download licence: active once the charge succeeded, revoked once it is fully
    refunded; pending otherwise. Holds the licence row while it decides."""
    with transaction.atomic():
        licence = _locked(licence)
        intent = gateway.payment_intent_retrieve(payment_intent_id)
        charge = _charge_of(intent)
        if intent.get("status") != "succeeded" or charge is None:
            return licence
        # Money is recorded whatever the licence's state: every order records the same.
        payment = payment_record_charge(licence=licence, charge=charge, kind=PaymentKind.CHARGE)
        payment_record_refunds(payment=payment, charge=charge)
        if licence.status in ENDED_LICENCE_STATUSES:
            return licence
        if _fully_refunded(payment):
            return licence_revoke(licence_id=licence.pk, reason="Refunded in full.")
        return _activate(
            licence,
            stripe_customer_id=_id(intent.get("customer")) or "",
            stripe_payment_intent_id=intent["id"],
        )


def _metered_item(licence: Licence, subscription: dict) -> dict | None:
    items = (subscription.get("items") or {}).get("data") or []
    offer = licence.offer
    wanted = offer.stripe_overage_price_id if licence.kind == OfferKind.SUBSCRIPTION else None
    for item in items:
        price = item.get("price") or item.get("plan") or {}
        usage = (price.get("recurring") or {}).get("usage_type") or price.get("usage_type")
        if wanted and _id(price) == wanted:
            return item
        if not wanted and usage == "metered":
            return item
    return None


def licence_sync_subscription(*, licence: Licence, subscription_id: str) -> Licence:
    """A per-call or subscription licence follows its Stripe subscription: active or
    trialing → active (with Stripe's current period), past_due or unpaid → past_due,
    canceled or incomplete_expired → cancelled; incomplete → still pending. An ended
    licence stays ended. Holds the licence row while it decides."""
    with transaction.atomic():
        licence = _locked(licence)
        sub = gateway.subscription_retrieve(subscription_id)
        status = sub.get("status")
        latest_invoice = _id(sub.get("latest_invoice"))
        if latest_invoice:  # whether or not invoice.paid arrives, or arrives first
            _record_paid_invoice(licence, gateway.invoice_retrieve(latest_invoice))
        if licence.status in ENDED_LICENCE_STATUSES:
            return licence
        if status in ("canceled", "incomplete_expired"):
            return licence_cancel(
                licence_id=licence.pk,
                reason="Subscription ended at Stripe.",
                at=_when(sub.get("ended_at") or sub.get("canceled_at")),
            )
        if status not in ("active", "trialing", "past_due", "unpaid"):
            return licence
        items = (sub.get("items") or {}).get("data") or []
        first = items[0] if items else {}
        start = _when(first.get("current_period_start") or sub.get("current_period_start"))
        end = _when(first.get("current_period_end") or sub.get("current_period_end"))
        metered = _metered_item(licence, sub)
        ids = {
            "stripe_customer_id": _id(sub.get("customer")) or "",
            "stripe_subscription_id": sub["id"],
            "stripe_subscription_item_id": (metered or {}).get("id", ""),
        }
        if licence.status == LicenceStatus.PENDING:
            licence = licence_activate(
                licence_id=licence.pk, period_start=start, period_end=end, **ids
            )
        elif (
            start
            and end
            and status in ("active", "trialing")
            and (licence.status == LicenceStatus.PAST_DUE or licence.current_period_start != start)
        ):
            licence = licence_renew(licence_id=licence.pk, period_start=start, period_end=end)
        if status in ("past_due", "unpaid") and licence.status == LicenceStatus.ACTIVE:
            licence = licence_mark_past_due(licence_id=licence.pk)
        return licence


def _record_paid_invoice(licence: Licence, invoice: dict) -> None:
    if invoice.get("status") != "paid" or not invoice.get("amount_paid"):
        return
    charge = _id(invoice.get("charge"))
    if charge is None and invoice.get("payment_intent"):
        charge = _id(_charge_of(gateway.payment_intent_retrieve(_id(invoice["payment_intent"]))))
    charge_data = gateway.charge_retrieve(charge) if charge else {}
    payment = payment_record_charge(
        licence=licence,
        charge={
            "id": charge or "",
            "amount": invoice["amount_paid"],
            "currency": invoice["currency"],
            "application_fee_amount": invoice.get("application_fee_amount"),
            "balance_transaction": charge_data.get("balance_transaction"),
            "created": (invoice.get("status_transitions") or {}).get("paid_at")
            or invoice.get("created"),
        },
        kind=PaymentKind.INVOICE,
        invoice_id=invoice["id"],
    )
    if charge_data:
        payment_record_refunds(payment=payment, charge=charge_data)


# --- handlers (one per event type; each re-reads from Stripe) -------------------------


def on_checkout_session(event: dict) -> None:
    session = gateway.checkout_session_retrieve(event["data"]["object"]["id"])
    licence = _licence(session.get("client_reference_id"))
    if licence is None or licence.stripe_checkout_session_id not in ("", session["id"]):
        logger.info("checkout session %s is not one of ours", session["id"])
        return
    if session.get("status") == "expired":
        if licence.status == LicenceStatus.PENDING:
            licence_cancel(licence_id=licence.pk, reason="Checkout expired unpaid.")
        return
    if session.get("status") != "complete":
        return
    if session.get("mode") == "payment":
        licence_sync_one_time(licence=licence, payment_intent_id=_id(session["payment_intent"]))
    else:
        subscription_id = _id(session["subscription"])
        Licence.objects.filter(pk=licence.pk, stripe_subscription_id="").update(
            stripe_subscription_id=subscription_id
        )
        licence_sync_subscription(licence=licence, subscription_id=subscription_id)


def on_invoice(event: dict) -> None:
    invoice = gateway.invoice_retrieve(event["data"]["object"]["id"])
    subscription_id = _subscription_of_invoice(invoice)
    if subscription_id is None:
        return
    licence = _licence_of_subscription(gateway.subscription_retrieve(subscription_id))
    if licence is None:
        return
    _record_paid_invoice(licence, invoice)
    licence_sync_subscription(licence=licence, subscription_id=subscription_id)


def on_subscription(event: dict) -> None:
    subscription = gateway.subscription_retrieve(event["data"]["object"]["id"])
    licence = _licence_of_subscription(subscription)
    if licence is not None:
        licence_sync_subscription(licence=licence, subscription_id=subscription["id"])


def on_charge_refunded(event: dict) -> None:
    charge = gateway.charge_retrieve(event["data"]["object"]["id"])
    intent_id = _id(charge.get("payment_intent"))
    intent = gateway.payment_intent_retrieve(intent_id) if intent_id else {}
    licence = _licence((intent.get("metadata") or {}).get("niche_licence_id"))
    if licence is not None and licence.kind == OfferKind.DOWNLOAD:
        licence_sync_one_time(licence=licence, payment_intent_id=intent_id)
        return
    invoice_id = _id(intent.get("invoice"))
    payment = (
        Payment.objects.filter(stripe_charge_id=charge["id"])
        .exclude(kind=PaymentKind.REFUND)
        .select_related("licence")
        .first()
    )
    if payment is None and invoice_id:
        on_invoice({"data": {"object": {"id": invoice_id}}})
        payment = Payment.objects.filter(stripe_invoice_id=invoice_id).first()
    if payment is not None:
        payment_record_refunds(payment=payment, charge=charge)


def on_account_updated(event: dict) -> None:
    connect_account_sync(stripe_account_id=event.get("account") or event["data"]["object"]["id"])


HANDLERS: dict[str, Callable[[dict], None]] = {
    "checkout.session.completed": on_checkout_session,
    "checkout.session.expired": on_checkout_session,
    "checkout.session.async_payment_succeeded": on_checkout_session,
    "invoice.paid": on_invoice,
    "invoice.payment_failed": on_invoice,
    "customer.subscription.created": on_subscription,
    "customer.subscription.updated": on_subscription,
    "customer.subscription.deleted": on_subscription,
    "charge.refunded": on_charge_refunded,
    "account.updated": on_account_updated,
}
