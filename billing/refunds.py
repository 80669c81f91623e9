"""Refunds a moderator issues, with a reason in the audit log.

Validated first, decided in one transaction (the audit entry, the outbox intent and,
for a full refund, the end of the licence and of its billing), sent to Stripe after the
commit: a reason Stripe would accept but our audit log would refuse can no longer leave
money refunded at Stripe and nothing recorded here. The refund's row (amount, the fee
Stripe returned, the transfer reversal) is recorded from Stripe's refund by
billing.stripe_sync, the same way a refund made in Stripe's dashboard is.
"""

from __future__ import annotations

from dataclasses import dataclass

from django.db import transaction

from accounts.models import User
from billing.errors import InvalidUsage, ReasonRequired
from billing.models import (
    LIVE_LICENCE_STATUSES,
    IntentStatus,
    Licence,
    Payment,
    PaymentKind,
    StripeIntent,
)
from billing.notices import buyer_notice_send
from billing.services import MAX_REASON_CHARS, licence_revoke
from billing.stripe_sync import intent_run, payment_refunded_amount, refund_record_intent
from listings.errors import NotAModerator
from marketplace.errors import ConflictError


@dataclass(frozen=True)
class RefundOutcome:
    """What a refund request did: the refund row once recorded (at once in sandbox;
    from Stripe's answer otherwise), and the outbox intent (None in sandbox)."""

    refund: Payment | None
    intent: StripeIntent | None

    @property
    def pending(self) -> bool:
        """Stripe has not answered yet (unreachable): the outbox sends it again."""
        return self.intent is not None and self.intent.status == IntentStatus.PENDING


def _checked_reason(reason: str) -> str:
    reason = (reason or "").strip()
    if not reason:
        raise ReasonRequired("Give a reason for the refund; it goes in the audit log.")
    if len(reason) > MAX_REASON_CHARS - 20:
        raise ReasonRequired(f"The reason is over {MAX_REASON_CHARS - 20} characters.")
    return reason


def payment_refund(
    *, payment: Payment, actor: User, reason: str, amount: int | None = None
) -> RefundOutcome:
    """Refund `amount` (default: all that is left) of a payment.

    Through Stripe for a real payment (taking the expert's share back from their
    transfer and returning the platform fee in proportion, keyed by the payment and
    what was refunded before, so a retried request refunds once), directly for a
    sandbox one. A payment refunded in full ends its licence (revoked) and, through the
    licence's teardown, its subscription. Holds the licence, then the payment row.
    Raises NotAModerator (403), ReasonRequired / InvalidUsage (422), ConflictError
    (409) when nothing is left to refund or Stripe's charge is unknown.
    """
    reason = _checked_reason(reason)
    if not actor.is_moderator:
        raise NotAModerator("Only moderators issue refunds.")
    if payment.kind == PaymentKind.REFUND:
        raise InvalidUsage("A refund cannot be refunded.")
    if amount is not None and (isinstance(amount, bool) or not isinstance(amount, int)):
        raise InvalidUsage("The amount is a whole number of minor units.")
    with transaction.atomic():
        licence = Licence.objects.select_for_update().get(pk=payment.licence_id)
        payment = Payment.objects.select_for_update().get(pk=payment.pk)
        left = payment.amount - payment_refunded_amount(payment)
        if left <= 0:
            raise ConflictError("This payment is already refunded in full.", code="refunded")
        amount = left if amount is None else amount
        if not 0 < amount <= left:
            raise InvalidUsage(f"Refund between 1 and {left} (minor units).")
        if not payment.sandbox and not payment.stripe_charge_id:
            raise ConflictError(
                "Stripe's charge for this payment is unknown; refund it in Stripe.",
                code="charge_unknown",
            )
        recorded = refund_record_intent(
            payment=payment, amount=amount, reason=reason, actor=actor, audit_action="refund"
        )
        if amount == left and licence.status in LIVE_LICENCE_STATUSES:
            licence_revoke(licence_id=licence.pk, reason=f"Refunded in full: {reason}")
        buyer_notice_send(licence=licence, kind="refunded", reason=reason, amount=amount)
    if isinstance(recorded, Payment):
        return RefundOutcome(refund=recorded, intent=None)
    intent = intent_run(intent_id=recorded.pk)
    refund = (
        Payment.objects.filter(stripe_refund_id=intent.result_id).first()
        if intent.result_id
        else None
    )
    return RefundOutcome(refund=refund, intent=intent)
