"""Refunds, issued through Stripe by a moderator with a reason in the audit log."""

from __future__ import annotations

from django.db import transaction
from django.db.models import Sum
from django.utils import timezone

from accounts.models import User
from billing import stripe_gateway as gateway
from billing.errors import InvalidUsage, ReasonRequired
from billing.models import ENDED_LICENCE_STATUSES, Payment, PaymentKind
from billing.selectors import month_start
from billing.services import billing_audit, licence_revoke
from billing.stripe_events import payment_insert_once
from listings.errors import NotAModerator
from marketplace.errors import ConflictError


def payment_refund(
    *, payment: Payment, actor: User, reason: str, amount: int | None = None
) -> Payment:
    """Refund `amount` (default: all that is left) of a payment and return the refund row.

    Through Stripe for a real payment (taking the expert's share back from their
    transfer and returning the platform fee in proportion; keyed by the payment and what
    was refunded before, so a retried request refunds once), directly for a sandbox one.
    The reason goes in the billing audit log. A payment refunded in full ends its
    licence at once (revoked) and, for a subscription, cancels it at Stripe so billing
    stops. Holds the payment row. Raises NotAModerator (403), ReasonRequired /
    InvalidUsage (422), ConflictError (409) when nothing is left to refund.
    """
    reason = (reason or "").strip()
    if not reason:
        raise ReasonRequired("Give a reason for the refund; it goes in the audit log.")
    if not actor.is_moderator:
        raise NotAModerator("Only moderators issue refunds.")
    if payment.kind == PaymentKind.REFUND:
        raise InvalidUsage("A refund cannot be refunded.")
    with transaction.atomic():
        payment = Payment.objects.select_for_update().select_related("licence").get(pk=payment.pk)
        earlier = Payment.objects.filter(refunds=payment, kind=PaymentKind.REFUND).aggregate(
            amount=Sum("amount"), fee=Sum("platform_fee")
        )
        refunded_before = -(earlier["amount"] or 0)
        left = payment.amount - refunded_before
        amount = left if amount is None else amount
        if left <= 0:
            raise ConflictError("This payment is already refunded in full.", code="refunded")
        if not 0 < amount <= left:
            raise InvalidUsage(f"Refund between 1 and {left} (minor units).")
        fee_back = -((payment.platform_fee * amount) // max(payment.amount, 1))
        if amount == left:  # the last refund returns what is left of the fee, to the cent
            fee_back = -(payment.platform_fee + (earlier["fee"] or 0))
        now = timezone.now()
        if payment.sandbox:
            refund = Payment.objects.create(
                licence=payment.licence,
                kind=PaymentKind.REFUND,
                amount=-amount,
                currency=payment.currency,
                platform_fee=fee_back,
                period=month_start(now),
                sandbox=True,
                refunds=payment,
                reason=reason,
                created_at=now,
            )
        else:
            if not payment.stripe_charge_id:
                raise ConflictError(
                    "Stripe's charge for this payment is unknown; refund it in Stripe.",
                    code="charge_unknown",
                )
            stripe_refund = gateway.refund_create(
                payment_id=payment.pk,
                refunded_before=refunded_before,
                amount=amount,
                charge_id=payment.stripe_charge_id,
                reason=reason,
            )
            refund = payment_insert_once(
                licence=payment.licence,
                kind=PaymentKind.REFUND,
                amount=-amount,
                currency=payment.currency,
                platform_fee=fee_back,
                period=month_start(now),
                stripe_refund_id=stripe_refund["id"],
                stripe_charge_id=payment.stripe_charge_id,
                refunds=payment,
                reason=reason,
                created_at=now,
            ) or Payment.objects.get(stripe_refund_id=stripe_refund["id"])
            if not refund.reason:  # charge.refunded got here first
                Payment.objects.filter(pk=refund.pk).update(reason=reason)
                refund.reason = reason
        billing_audit(
            actor=actor, action="refund", target_type="payment", target_id=payment.pk, reason=reason
        )
        licence = payment.licence
        if amount == left and licence.status not in ENDED_LICENCE_STATUSES:
            licence_revoke(licence_id=licence.pk, reason=f"Refunded in full: {reason}")
            if licence.stripe_subscription_id and not licence.sandbox:
                gateway.subscription_cancel(licence.stripe_subscription_id)
    return refund
