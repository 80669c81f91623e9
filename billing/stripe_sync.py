"""Stripe is the source of truth: read its objects, then move our rows to match.

Every path that learns something from Stripe ends here: webhook handlers
(billing.stripe_webhooks), the outbox after a write (`intent_run`) and the reconciler
(billing.reconciler). Each function re-reads the objects from Stripe first, outside any
transaction, then applies what it read under a short lock on the licence row, so the
same information arriving twice, late, or in any order ends in one state:

- money is recorded once (unique Stripe ids), with the fees and transfers Stripe
  recorded (the application fee and its refunds, the transfer and its reversals, the
  balance transaction's processing fee), never with amounts we computed ourselves;
- a licence activates only when Stripe shows the money (a succeeded one-time charge, or
  a subscription Stripe calls active), never leaves an ended state, and ends when
  Stripe ends its billing (`canceled`, `incomplete_expired`, `unpaid`);
- money that pays for no access is given back (`licence_money_settle`): a second paid
  licence for the same listing, a checkout that was replaced or expired while the buyer
  paid it, an invoice paid after access ended. Refunds go through the outbox, audited
  as the platform's. A business conflict is resolved here, so no event fails forever.
- a licence that is no longer live never keeps a live subscription: its teardown is
  recorded again until Stripe shows it cancelled.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from datetime import datetime, timedelta

from django.db import IntegrityError, transaction
from django.db.models import Q, Sum
from django.utils import timezone

from billing import stripe_gateway as gateway
from billing import stripe_outbox as outbox
from billing.errors import LicenceAlreadyHeld, PaymentProviderError
from billing.gardens import (
    garden_payouts_make,
    garden_payouts_reverse,
    payout_reversal_recorded,
    payout_transfer_recorded,
)
from billing.metering import usage_report_licence
from billing.models import (
    ENDED_LICENCE_STATUSES,
    LIVE_LICENCE_STATUSES,
    ConnectAccount,
    IntentKind,
    IntentStatus,
    Licence,
    LicenceStatus,
    OfferKind,
    Payment,
    PaymentKind,
    StripeIntent,
)
from billing.notices import buyer_notice_send
from billing.selectors import month_start, platform_fee
from billing.services import (
    billing_audit,
    licence_activate,
    licence_cancel,
    licence_mark_past_due,
    licence_renew,
    licence_revoke,
)
from billing.stripe_objects import (
    ChargeView,
    CheckoutSessionView,
    InvoiceView,
    SubscriptionView,
)
from listings.models import ListingKind

logger = logging.getLogger(__name__)

# Stripe statuses of a subscription that still bills, or may bill again.
BILLING_SUBSCRIPTION_STATUSES = ("active", "trialing", "past_due", "unpaid", "incomplete")


class StaleRead(Exception):
    """What we read from Stripe is older than what another worker already recorded:
    the caller's task retries (it re-reads)."""


# --- finding our licence ---------------------------------------------------------------


def licence_by_id(licence_id) -> Licence | None:
    if not licence_id:
        return None
    try:
        return Licence.objects.select_related("offer", "listing").filter(pk=licence_id).first()
    except (ValueError, TypeError):  # not a uuid: not one of ours
        return None


def _licence_of_subscription(sub: SubscriptionView) -> Licence | None:
    return licence_by_id(sub.licence_id) or (
        Licence.objects.select_related("offer", "listing")
        .filter(stripe_subscription_id=sub.id)
        .first()
    )


def _locked(licence: Licence) -> Licence:
    return (
        Licence.objects.select_for_update(of=("self",))
        .select_related("offer", "listing", "buyer")
        .get(pk=licence.pk)
    )


# --- money as Stripe recorded it ----------------------------------------------------


@dataclass(frozen=True)
class ChargeFacts:
    """A charge and what Stripe recorded around it, read before any lock is taken."""

    charge: ChargeView
    platform_fee: int  # the application fee Stripe took
    fee_refunded: int  # of it, what refunds returned
    expert_amount: int | None  # the transfer to the expert's account
    reversals: dict[str, int]  # refund id -> amount its transfer reversal took back


def charge_facts(charge_id: str) -> ChargeFacts:
    charge = gateway.charge_retrieve(charge_id)
    fee = (
        gateway.application_fee_retrieve(charge.application_fee_id)
        if charge.application_fee_id
        else None
    )
    transfer = gateway.transfer_retrieve(charge.transfer_id) if charge.transfer_id else None
    reversals = {}
    if transfer is not None:
        for refund in charge.refunds:
            if refund.transfer_reversal_id:
                reversal = gateway.transfer_reversal_retrieve(
                    transfer_id=transfer.id, reversal_id=refund.transfer_reversal_id
                )
                reversals[refund.id] = reversal.amount
    return ChargeFacts(
        charge=charge,
        platform_fee=fee.amount if fee else (charge.application_fee_amount or 0),
        fee_refunded=fee.amount_refunded if fee else 0,
        expert_amount=transfer.amount if transfer else None,
        reversals=reversals,
    )


def _insert_once(**fields) -> Payment | None:
    """Insert a payment once: a unique Stripe id makes a second insert a no-op."""
    try:
        with transaction.atomic():
            return Payment.objects.create(**fields)
    except IntegrityError:
        return None


def _record_payment(
    licence: Licence,
    facts: ChargeFacts,
    *,
    kind: str,
    invoice_id: str = "",
    paid_at: datetime | None = None,
) -> Payment:
    """The payment for a succeeded charge (one-time) or a paid invoice, recorded once,
    with Stripe's fees; fees unknown at first (null) are filled in when known."""
    charge = facts.charge
    once = {"stripe_invoice_id": invoice_id} if invoice_id else {"stripe_charge_id": charge.id}
    existing = Payment.objects.filter(kind=kind, **once).first()
    if existing is not None:
        fill = {}
        if existing.stripe_fee is None and charge.stripe_fee is not None:
            fill["stripe_fee"] = charge.stripe_fee
        if existing.expert_amount is None and facts.expert_amount is not None:
            fill["expert_amount"] = facts.expert_amount
        if fill:
            Payment.objects.filter(pk=existing.pk).update(**fill)
            existing.refresh_from_db()
        return existing
    created = paid_at or charge.created or timezone.now()
    garden = licence.listing.kind == ListingKind.GARDEN
    payment = _insert_once(
        licence=licence,
        kind=kind,
        amount=charge.amount,
        currency=charge.currency,
        stripe_fee=charge.stripe_fee,
        # A garden's charge stays on the platform's account (no application fee): the
        # fee is ours to keep, and the rest is paid out by transfers (billing.gardens).
        platform_fee=platform_fee(charge.amount) if garden else facts.platform_fee,
        expert_amount=facts.expert_amount,
        period=month_start(created),
        stripe_charge_id=charge.id,
        stripe_invoice_id=invoice_id,
        stripe_payment_intent_id=charge.payment_intent_id or "",
        stripe_application_fee_id=facts.charge.application_fee_id or "",
        stripe_transfer_id=charge.transfer_id or "",
        created_at=created,
    )
    if payment is not None and garden:
        garden_payouts_make(payment=payment)
    return payment or Payment.objects.get(kind=kind, **once)


def _refund_reason(refund_id: str, metadata: dict) -> str:
    intent = StripeIntent.objects.filter(kind=IntentKind.REFUND_CREATE, result_id=refund_id).first()
    if intent is not None and intent.reason:
        return intent.reason
    return metadata.get("reason", "") or "Refunded in Stripe."


def _record_refunds(payment: Payment, facts: ChargeFacts) -> list[Payment]:
    """A negative payment per refund Stripe lists on the charge, each recorded once.
    The platform fee they returned is Stripe's (the application fee's amount_refunded):
    the new rows share what is not yet recorded, in proportion, to the cent. What the
    expert gave back is each refund's transfer reversal. Call with the payment's
    licence row held (so two workers do not split one fee refund twice)."""
    refunds = sorted(
        (r for r in facts.charge.refunds if r.counts),
        key=lambda r: (r.created or timezone.now(), r.id),
    )
    known = set(
        Payment.objects.filter(stripe_refund_id__in=[r.id for r in refunds]).values_list(
            "stripe_refund_id", flat=True
        )
    )
    new = [r for r in refunds if r.id not in known]
    if not new:
        return []
    fee_back_recorded = -(
        Payment.objects.filter(refunds=payment, kind=PaymentKind.REFUND).aggregate(
            s=Sum("platform_fee")
        )["s"]
        or 0
    )
    to_share = facts.fee_refunded - fee_back_recorded
    if to_share < 0:
        raise StaleRead(f"charge {facts.charge.id}: fee refunds read before another record")
    total = sum(r.amount for r in new)
    rows, shared = [], 0
    for index, refund in enumerate(new):
        if index == len(new) - 1:
            fee_back = to_share - shared
        else:
            fee_back = to_share * refund.amount // max(total, 1)
        shared += fee_back
        reversal = facts.reversals.get(refund.id)
        created = refund.created or timezone.now()
        row = _insert_once(
            licence=payment.licence,
            kind=PaymentKind.REFUND,
            amount=-refund.amount,
            currency=refund.currency or payment.currency,
            platform_fee=-fee_back,
            expert_amount=-reversal if reversal is not None else None,
            period=month_start(created),
            stripe_refund_id=refund.id,
            stripe_charge_id=facts.charge.id,
            stripe_transfer_id=refund.transfer_reversal_id or "",
            refunds=payment,
            reason=_refund_reason(refund.id, refund.metadata),
            created_at=created,
        )
        if row is not None:
            rows.append(row)
            if payment.licence.listing.kind == ListingKind.GARDEN:
                garden_payouts_reverse(refund=row)  # the payees give their parts back
    return rows


def payment_refunded_amount(payment: Payment) -> int:
    """What has gone back of a payment: recorded refunds, plus refunds sent or about to
    be sent to Stripe whose record has not arrived yet."""
    recorded_rows = Payment.objects.filter(refunds=payment, kind=PaymentKind.REFUND)
    recorded = -(recorded_rows.aggregate(s=Sum("amount"))["s"] or 0)
    recorded_ids = set(recorded_rows.values_list("stripe_refund_id", flat=True))
    in_flight = sum(
        intent.params.get("amount", 0)
        for intent in StripeIntent.objects.filter(
            payment=payment,
            kind=IntentKind.REFUND_CREATE,
            status__in=(IntentStatus.PENDING, IntentStatus.SUCCEEDED),
        )
        if intent.result_id not in recorded_ids
    )
    return recorded + in_flight


def refund_record_intent(
    *, payment: Payment, amount: int, reason: str, actor=None, audit_action: str
) -> StripeIntent | Payment:
    """Give back `amount` of a payment (in the caller's transaction, the licence row
    held): a refund through the outbox for real money, a refund row at once for
    sandbox money; audited (actor None: the platform)."""
    refunded_before = payment_refunded_amount(payment)
    billing_audit(
        actor=actor,
        action=audit_action,
        target_type="payment",
        target_id=payment.pk,
        reason=reason,
    )
    if payment.sandbox:
        now = timezone.now()
        fee_back = _sandbox_fee_back(payment, amount, refunded_before)
        return Payment.objects.create(
            licence=payment.licence,
            kind=PaymentKind.REFUND,
            amount=-amount,
            currency=payment.currency,
            platform_fee=-fee_back,
            expert_amount=-(amount - fee_back),
            period=month_start(now),
            sandbox=True,
            refunds=payment,
            reason=reason,
            created_at=now,
        )
    return outbox.intent_record(
        kind=IntentKind.REFUND_CREATE,
        key_parts=(payment.pk, refunded_before, amount),
        params={
            "charge_id": payment.stripe_charge_id,
            "amount": amount,
            "metadata": {"niche_payment_id": str(payment.pk), "reason": reason[:500]},
            # a garden's charge is the platform's own: its payouts are reversed one by one
            "destination_charge": payment.licence.listing.kind != ListingKind.GARDEN,
        },
        licence=payment.licence,
        payment=payment,
        actor=actor,
        reason=reason,
    )


def _sandbox_fee_back(payment: Payment, amount: int, refunded_before: int) -> int:
    """Sandbox only (no Stripe to read it from): the fee returned in proportion, the
    last refund returning what is left of it, so a full refund nets to zero."""
    if refunded_before + amount >= payment.amount:
        returned = -(
            Payment.objects.filter(refunds=payment, kind=PaymentKind.REFUND).aggregate(
                s=Sum("platform_fee")
            )["s"]
            or 0
        )
        return payment.platform_fee - returned
    return payment.platform_fee * amount // max(payment.amount, 1)


# --- the licence follows the money ---------------------------------------------------


def _covers_access(licence: Licence, payment: Payment) -> bool:
    """Money paid while the licence gave (or was about to give) access."""
    if licence.activated_at is None:
        return False
    return licence.ended_at is None or payment.created_at <= licence.ended_at


def licence_money_settle(licence: Licence) -> list[StripeIntent | Payment]:
    """Give back every amount paid for a licence that pays for no access (call with
    the licence row held): the second of two paid licences, a checkout replaced or
    expired while it was paid, an invoice paid after access ended. Each refund is for
    what is left of the payment, audited as the platform's, and the buyer is told."""
    refunds = []
    payments = Payment.objects.filter(licence=licence).exclude(kind=PaymentKind.REFUND)
    for payment in payments.select_for_update():
        if _covers_access(licence, payment):
            continue
        left = payment.amount - payment_refunded_amount(payment)
        if left <= 0 or (not payment.sandbox and not payment.stripe_charge_id):
            continue
        reason = (
            f"Paid for no access: {licence.end_reason or 'the licence never started'} "
            "Refunded automatically."
        )
        refunds.append(
            refund_record_intent(
                payment=payment,
                amount=left,
                reason=reason,
                audit_action="refund_automatic",
            )
        )
        buyer_notice_send(licence=licence, kind="refunded", reason=reason, amount=left)
    return refunds


def _ensure_billing_ended(licence: Licence, sub: SubscriptionView | None) -> None:
    """A licence that gives no access must not keep a subscription that bills."""
    if licence.sandbox or sub is None or sub.status not in BILLING_SUBSCRIPTION_STATUSES:
        return
    if licence.cancel_at_period_end and sub.cancel_at_period_end:
        return  # ends by itself at the period's end; access lasts until then
    if licence.status in LIVE_LICENCE_STATUSES:
        return
    cancels = StripeIntent.objects.filter(licence=licence, kind=IntentKind.SUBSCRIPTION_CANCEL)
    in_flight = cancels.filter(
        Q(status=IntentStatus.PENDING)
        | Q(status=IntentStatus.SUCCEEDED, completed_at__gte=timezone.now() - timedelta(minutes=5))
    )
    if in_flight.exists():
        return  # sent, or about to be: Stripe's answer has not reached this read yet
    outbox.intent_record(
        kind=IntentKind.SUBSCRIPTION_CANCEL,
        key_parts=(licence.pk, sub.id, cancels.count()),
        params={
            "subscription_id": sub.id,
            "invoice_now": licence.kind == OfferKind.PER_CALL,
        },
        licence=licence,
    )


def _activate_or_refund(licence: Licence, **activation) -> Licence:
    """Activate a pending licence Stripe shows as paid; a buyer who already holds a live
    licence of the same kind gets this one cancelled (and its money back, by
    licence_money_settle) instead of an event that fails forever."""
    try:
        with transaction.atomic():
            return licence_activate(licence_id=licence.pk, **activation)
    except LicenceAlreadyHeld:
        return licence_cancel(
            licence_id=licence.pk,
            reason="A second licence of the same kind was paid for this listing.",
            notify=False,
        )


def _revoke_if_refunded_in_full(licence: Licence) -> Licence:
    """A licence whose latest payment went back in full gives no more access."""
    if licence.status not in LIVE_LICENCE_STATUSES:
        return licence
    latest = (
        Payment.objects.filter(licence=licence)
        .exclude(kind=PaymentKind.REFUND)
        .order_by("-created_at", "-id")
        .first()
    )
    if latest is None or latest.amount <= 0:
        return licence
    if payment_refunded_amount(latest) >= latest.amount:
        return licence_revoke(licence_id=licence.pk, reason="Refunded in full.")
    return licence


# --- one-time purchases (download licences) ----------------------------------------------


def one_time_sync(*, licence: Licence, payment_intent_id: str) -> Licence:
    """A download licence: active once its charge succeeded, revoked once refunded in
    full, its money given back if it pays for no access; pending otherwise."""
    intent = gateway.payment_intent_retrieve(payment_intent_id)
    if intent.status != "succeeded" or not intent.latest_charge_id:
        return licence
    facts = charge_facts(intent.latest_charge_id)
    with transaction.atomic():
        licence = _locked(licence)
        payment = _record_payment(licence, facts, kind=PaymentKind.CHARGE)
        _record_refunds(payment, facts)
        if licence.status == LicenceStatus.PENDING:
            licence = _activate_or_refund(
                licence,
                stripe_customer_id=intent.customer_id or "",
                stripe_payment_intent_id=intent.id,
            )
        licence = _revoke_if_refunded_in_full(licence)
        licence_money_settle(licence)
    return licence


# --- subscriptions -------------------------------------------------------------------


@dataclass(frozen=True)
class PaidInvoice:
    invoice: InvoiceView
    facts: ChargeFacts | None  # None: the charge is known already (recorded)


def _paid_invoices(sub: SubscriptionView) -> list[PaidInvoice]:
    """The subscription's paid invoices, with what Stripe recorded around each charge
    not yet in our books (reads only)."""
    out = []
    for invoice in gateway.invoices_of_subscription(sub.id):
        if invoice.status != "paid" or invoice.amount_paid <= 0:
            continue
        if Payment.objects.filter(kind=PaymentKind.INVOICE, stripe_invoice_id=invoice.id).exists():
            out.append(PaidInvoice(invoice, None))
            continue
        charge_id = None
        for paid in invoice.payments:
            if paid.status != "paid":
                continue
            charge_id = paid.charge_id
            if charge_id is None and paid.payment_intent_id:
                charge_id = gateway.payment_intent_retrieve(paid.payment_intent_id).latest_charge_id
            if charge_id:
                break
        out.append(PaidInvoice(invoice, charge_facts(charge_id) if charge_id else None))
    return out


def _apply_subscription_state(licence: Licence, sub: SubscriptionView) -> Licence:
    status = sub.status
    start, end = sub.period
    if licence.stripe_subscription_status != (status or ""):
        Licence.objects.filter(pk=licence.pk).update(stripe_subscription_status=status or "")
        licence.stripe_subscription_status = status or ""
    if licence.status in ENDED_LICENCE_STATUSES:
        return licence
    if status in ("canceled", "incomplete_expired", "unpaid"):
        reason = {
            "canceled": "The subscription ended at Stripe.",
            "incomplete_expired": "The first payment never went through.",
            "unpaid": "Payment failed and Stripe stopped retrying; access has ended.",
        }[status]
        return licence_cancel(
            licence_id=licence.pk,
            reason=licence.end_reason if licence.cancel_at_period_end else reason,
            at=sub.ended_at or sub.canceled_at if status == "canceled" else None,
        )
    if status not in ("active", "trialing", "past_due"):
        return licence  # incomplete: the first payment is still on its way
    metered_item = next((i for i in sub.items if i.usage_type == "metered"), None)
    if licence.status == LicenceStatus.PENDING:
        licence = _activate_or_refund(
            licence,
            period_start=start,
            period_end=end,
            stripe_customer_id=sub.customer_id or "",
            stripe_subscription_id=sub.id,
            stripe_subscription_item_id=metered_item.id if metered_item else "",
            stripe_subscription_status=status,
        )
        if licence.status not in LIVE_LICENCE_STATUSES:
            return licence
    elif (
        start
        and end
        and status in ("active", "trialing")
        and (licence.status == LicenceStatus.PAST_DUE or licence.current_period_start != start)
    ):
        licence = licence_renew(licence_id=licence.pk, period_start=start, period_end=end)
    if status == "past_due" and licence.status == LicenceStatus.ACTIVE:
        licence = licence_mark_past_due(licence_id=licence.pk)
    return licence


def _mirror_cancel_at_period_end(licence: Licence, sub: SubscriptionView) -> None:
    """Our wind-down and Stripe's cancel_at_period_end agree: a cancellation made in
    Stripe's dashboard winds the licence down; ours that Stripe lacks is sent again."""
    if licence.status not in LIVE_LICENCE_STATUSES or licence.kind == OfferKind.DOWNLOAD:
        return
    _start, end = sub.period
    if sub.cancel_at_period_end and not licence.cancel_at_period_end:
        Licence.objects.filter(pk=licence.pk).update(
            cancel_at_period_end=True, access_ends_at=end or licence.current_period_end
        )
    elif licence.cancel_at_period_end and not sub.cancel_at_period_end:
        ends = licence.access_ends_at or end or timezone.now()
        pending = StripeIntent.objects.filter(
            licence=licence,
            kind__in=(
                IntentKind.SUBSCRIPTION_CANCEL_AT_PERIOD_END,
                IntentKind.SUBSCRIPTION_RESUME,
            ),
            status=IntentStatus.PENDING,
        ).exists()
        if not pending:
            outbox.intent_record(
                kind=IntentKind.SUBSCRIPTION_CANCEL_AT_PERIOD_END,
                key_parts=(licence.pk, int(ends.timestamp()), "again"),
                params={"subscription_id": sub.id},
                licence=licence,
            )


def subscription_sync(*, subscription_id: str, licence: Licence | None = None) -> Licence | None:
    """A per-call or subscription licence follows its Stripe subscription (see the
    module docstring), and its paid invoices are recorded. None when the subscription
    is not one of ours."""
    sub = gateway.subscription_retrieve(subscription_id)
    licence = licence or _licence_of_subscription(sub)
    if licence is None:
        return None
    paid = _paid_invoices(sub)
    with transaction.atomic():
        licence = _locked(licence)
        if not licence.stripe_subscription_id:
            Licence.objects.filter(pk=licence.pk).update(stripe_subscription_id=sub.id)
            licence.stripe_subscription_id = sub.id
        for item in paid:
            if item.facts is None:
                continue
            payment = _record_payment(
                licence,
                item.facts,
                kind=PaymentKind.INVOICE,
                invoice_id=item.invoice.id,
                paid_at=item.invoice.paid_at or item.invoice.created,
            )
            _record_refunds(payment, item.facts)
        licence = _apply_subscription_state(licence, sub)
        licence = _locked(licence)
        _mirror_cancel_at_period_end(licence, sub)
        licence = _revoke_if_refunded_in_full(licence)
        licence_money_settle(licence)
        _ensure_billing_ended(licence, sub)
    return licence


def invoice_sync(*, invoice_id: str) -> Licence | None:
    invoice = gateway.invoice_retrieve(invoice_id)
    if invoice.subscription_id is None:
        return None
    return subscription_sync(subscription_id=invoice.subscription_id)


# --- checkout sessions ---------------------------------------------------------------


def checkout_session_sync(*, session_id: str) -> Licence | None:
    """A finished or expired Checkout Session, applied to its licence."""
    session = gateway.checkout_session_retrieve(session_id)
    return _apply_session(session)


def _apply_session(session: CheckoutSessionView) -> Licence | None:
    licence = licence_by_id(session.licence_id)
    if licence is None or licence.stripe_checkout_session_id not in ("", session.id):
        logger.info("checkout session %s is not one of ours", session.id)
        return None
    if session.status == "expired":
        if licence.status == LicenceStatus.PENDING:
            return licence_cancel(
                licence_id=licence.pk, reason="Checkout expired unpaid.", notify=False
            )
        return licence
    if session.status != "complete":
        return licence
    if not licence.stripe_checkout_session_id:
        Licence.objects.filter(pk=licence.pk, stripe_checkout_session_id="").update(
            stripe_checkout_session_id=session.id
        )
    if session.mode == "payment" and session.payment_intent_id:
        return one_time_sync(licence=licence, payment_intent_id=session.payment_intent_id)
    if session.subscription_id:
        Licence.objects.filter(pk=licence.pk, stripe_subscription_id="").update(
            stripe_subscription_id=session.subscription_id
        )
        return subscription_sync(subscription_id=session.subscription_id, licence=licence)
    return licence


# --- charges (refunds made anywhere) ---------------------------------------------------


def charge_sync(*, charge_id: str) -> Licence | None:
    """A charge's refunds, wherever they were made (our outbox, Stripe's dashboard)."""
    payment = (
        Payment.objects.filter(stripe_charge_id=charge_id)
        .exclude(kind=PaymentKind.REFUND)
        .select_related("licence")
        .first()
    )
    if payment is None:
        charge = gateway.charge_retrieve(charge_id)
        if not charge.payment_intent_id:
            return None
        intent = gateway.payment_intent_retrieve(charge.payment_intent_id)
        licence = licence_by_id(intent.metadata.get("niche_licence_id"))
        if licence is not None and licence.kind == OfferKind.DOWNLOAD:
            return one_time_sync(licence=licence, payment_intent_id=intent.id)
        for paid in gateway.invoice_payments_of_payment_intent(intent.id):
            if paid.invoice_id:
                return invoice_sync(invoice_id=paid.invoice_id)
        return None
    facts = charge_facts(charge_id)
    with transaction.atomic():
        licence = _locked(payment.licence)
        _record_refunds(payment, facts)
        licence = _revoke_if_refunded_in_full(licence)
    return licence


# --- Connect ------------------------------------------------------------------------


def account_sync(*, stripe_account_id: str) -> ConnectAccount | None:
    """Re-read the account from Stripe and copy its flags (account.updated). None when
    the account is not one of ours."""
    if not ConnectAccount.objects.filter(stripe_account_id=stripe_account_id).exists():
        return None
    data = gateway.account_retrieve(stripe_account_id)
    with transaction.atomic():
        account = ConnectAccount.objects.select_for_update().get(
            stripe_account_id=stripe_account_id
        )
        account.charges_enabled = data.charges_enabled
        account.payouts_enabled = data.payouts_enabled
        account.details_submitted = data.details_submitted
        account.updated_at = timezone.now()
        account.save(
            update_fields=["charges_enabled", "payouts_enabled", "details_submitted", "updated_at"]
        )
    return account


# --- the outbox, sent and applied -------------------------------------------------------


def intent_run(*, intent_id) -> StripeIntent:
    """Send an intent (billing.stripe_outbox) and apply what Stripe answered."""
    intent = StripeIntent.objects.select_related("licence").get(pk=intent_id)
    if intent.status == IntentStatus.PENDING and intent.kind == IntentKind.SUBSCRIPTION_CANCEL:
        licence = intent.licence
        if licence is not None and intent.params.get("invoice_now"):
            # The calls served so far reach Stripe before the final invoice is made.
            usage_report_licence(licence_id=licence.pk)
    intent = outbox.intent_send(intent_id=intent_id)
    if intent.status != IntentStatus.SUCCEEDED:
        return intent
    try:
        _apply_intent(intent)
    except PaymentProviderError:
        logger.exception("applying stripe intent %s", intent.pk)
    return intent


def _apply_intent(intent: StripeIntent) -> None:
    licence = intent.licence
    if intent.kind == IntentKind.CHECKOUT_SESSION_CREATE and licence is not None:
        Licence.objects.filter(pk=licence.pk, stripe_checkout_session_id="").update(
            stripe_checkout_session_id=intent.result_id
        )
    elif intent.kind == IntentKind.CHECKOUT_SESSION_EXPIRE:
        if intent.result.get("status") == "complete":  # paid just before: apply it
            checkout_session_sync(session_id=intent.result_id)
    elif intent.kind == IntentKind.TRANSFER_CREATE:
        payout_transfer_recorded(payout_id=intent.params["payout_id"], transfer_id=intent.result_id)
    elif intent.kind == IntentKind.TRANSFER_REVERSAL_CREATE:
        payout_reversal_recorded(payout_id=intent.params["payout_id"], reversal_id=intent.result_id)
    elif intent.kind == IntentKind.REFUND_CREATE and intent.payment_id:
        charge_sync(charge_id=intent.params["charge_id"])
    elif intent.kind in (
        IntentKind.SUBSCRIPTION_CANCEL,
        IntentKind.SUBSCRIPTION_CANCEL_AT_PERIOD_END,
        IntentKind.SUBSCRIPTION_RESUME,
    ):
        subscription_sync(subscription_id=intent.result_id, licence=licence)


def intents_send_due() -> int:
    """The sweep: pending intents whose task was lost or whose backoff is over."""
    ids = outbox.intents_due()
    for intent_id in ids:
        intent_run(intent_id=intent_id)
    return len(ids)


def licences_to_check(*, since: timedelta) -> list[Licence]:
    """Licences the reconciler compares with Stripe: live ones billed by Stripe, and
    those that started, changed or ended recently."""
    recent = timezone.now() - since
    return list(
        Licence.objects.filter(sandbox=False)
        .exclude(kind=OfferKind.FREE_TRIAL)
        .filter(
            Q(status__in=LIVE_LICENCE_STATUSES)
            | Q(created_at__gte=recent)
            | Q(ended_at__gte=recent)
        )
        .select_related("offer", "listing")
    )
