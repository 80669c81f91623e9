"""The reconciler: Stripe's books against ours, on a schedule (beat, every 15 minutes).

Stripe is the source of truth. Each run, well inside the 3 days Stripe retries a
webhook (it lists events for 30):

1. **Missed webhooks.** Lists Stripe's events of the types we handle since the window's
   start; an event we never received is stored (source "reconciler") and processed now.
   An event that keeps failing is processed once more and flagged.
2. **The outbox.** Sends every intent whose task was lost or whose backoff is over; an
   intent Stripe refused is flagged with Stripe's message.
3. **Licences.** Re-syncs every licence Stripe bills (live, or changed within the window)
   from its Checkout Session, subscription or payment intent: a missed activation,
   renewal, cancellation, payment or refund is repaired here exactly as its webhook
   would have, money paying for no access is refunded, and a subscription that bills a
   licence that is no longer live is cancelled.
4. **Money.** For every payment in the window, compares the amount, the application fee,
   the transfer to the expert, the refunds, the fee refunds and the transfer reversals
   with Stripe's; and every live subscription of our customers with the licences. A
   disagreement that is not safe to repair by itself (an amount that differs, a
   subscription no licence knows) becomes a ReconciliationIssue with both sides as
   evidence, for moderators (admin: Reconciliation issues), and is counted in /metrics
   (niche_billing_drift). An issue whose disagreement is gone is resolved by the next run.
"""

from __future__ import annotations

import logging
from datetime import datetime, timedelta

from django.db.models import Sum
from django.utils import timezone

from billing import stripe_gateway as gateway
from billing import stripe_sync
from billing.errors import PaymentProviderError, PaymentProviderUnavailable
from billing.gardens import garden_stripe_side
from billing.models import (
    LIVE_LICENCE_STATUSES,
    IntentStatus,
    IssueStatus,
    Licence,
    LicenceStatus,
    OfferKind,
    Payment,
    PaymentKind,
    ReconciliationIssue,
    ReconciliationRun,
    StripeEvent,
    StripeIntent,
)
from billing.stripe_webhooks import (
    HANDLERS,
    MAX_ATTEMPTS,
    stripe_event_process,
    stripe_event_receive,
)
from listings.models import ListingKind

logger = logging.getLogger(__name__)

WINDOW = timedelta(days=3)


class Findings:
    """Issues seen in one run, keyed by (kind, object id), and what was repaired."""

    def __init__(self, run: ReconciliationRun) -> None:
        self.run = run
        self.seen: set[tuple[str, str]] = set()
        self.checked_kinds: set[str] = set()

    def flag(self, kind: str, object_id: str, summary: str, evidence: dict, licence=None) -> None:
        self.seen.add((kind, object_id))
        now = timezone.now()
        issue = ReconciliationIssue.objects.filter(
            kind=kind, stripe_object_id=object_id, status=IssueStatus.OPEN
        ).first()
        if issue is None:
            ReconciliationIssue.objects.create(
                kind=kind,
                stripe_object_id=object_id,
                licence=licence,
                summary=summary[:2000],
                evidence=evidence,
            )
        else:
            ReconciliationIssue.objects.filter(pk=issue.pk).update(
                last_seen_at=now, summary=summary[:2000], evidence=evidence
            )
        self.run.flagged += 1

    def resolve_the_rest(self) -> None:
        """Open issues of the kinds this run checked that it did not see again."""
        for issue in ReconciliationIssue.objects.filter(
            status=IssueStatus.OPEN, kind__in=self.checked_kinds
        ):
            if (issue.kind, issue.stripe_object_id) not in self.seen:
                ReconciliationIssue.objects.filter(pk=issue.pk).update(
                    status=IssueStatus.RESOLVED,
                    resolved_at=timezone.now(),
                    resolution_note=(
                        f"Agreed again with Stripe in reconciliation run {self.run.pk}."
                    ),
                )


def reconcile(*, now: datetime | None = None, window: timedelta = WINDOW) -> ReconciliationRun:
    """One run (see the module docstring). Never raises for Stripe's or one licence's
    trouble: each step records what it could not do and the run goes on."""
    now = now or timezone.now()
    run = ReconciliationRun.objects.create(started_at=now)
    if gateway.sandbox_mode():  # no Stripe: our books are the only books
        ReconciliationRun.objects.filter(pk=run.pk).update(
            finished_at=timezone.now(), error="sandbox: nothing to reconcile"
        )
        run.refresh_from_db()
        return run
    findings = Findings(run)
    steps = (
        (_missed_events, "events"),
        (_outbox, "outbox"),
        (_licences, "licences"),
        (_money, "money"),
        (_unknown_subscriptions, "subscriptions"),
    )
    errors = []
    for step, name in steps:
        try:
            step(findings, now=now, window=window)
        except (PaymentProviderError, PaymentProviderUnavailable) as exc:
            errors.append(f"{name}: {exc.message}")
            logger.warning("reconciliation step %s: %s", name, exc.message)
    if not errors:
        findings.resolve_the_rest()
    ReconciliationRun.objects.filter(pk=run.pk).update(
        finished_at=timezone.now(),
        events_listed=run.events_listed,
        events_recovered=run.events_recovered,
        licences_checked=run.licences_checked,
        repaired=run.repaired,
        flagged=run.flagged,
        error="; ".join(errors)[:2000],
    )
    run.refresh_from_db()
    return run


# --- 1. events -------------------------------------------------------------------------


def _missed_events(findings: Findings, *, now: datetime, window: timedelta) -> None:
    findings.checked_kinds.add("event_failing")
    run = findings.run
    events = gateway.events_list(created_after=now - window, types=sorted(HANDLERS))
    run.events_listed = len(events)
    known = set(
        StripeEvent.objects.filter(id__in=[e.view.id for e in events]).values_list("id", flat=True)
    )
    for event in sorted(events, key=lambda e: (e.view.created or now, e.view.id)):
        if event.view.id in known:
            continue
        stripe_event_receive(event=event, source="reconciler")
        run.events_recovered += 1
        run.repaired += 1
        _process(event.view.id, findings)
    for stuck in StripeEvent.objects.filter(
        processed_at__isnull=True, received_at__lt=now - timedelta(minutes=5)
    ):
        _process(stuck.id, findings)
        stuck.refresh_from_db()
        if stuck.processed_at is None and stuck.attempts >= MAX_ATTEMPTS:
            findings.flag(
                "event_failing",
                stuck.id,
                f"Stripe event {stuck.id} ({stuck.type}) fails after {stuck.attempts} attempts.",
                {"type": stuck.type, "last_error": stuck.last_error},
            )


def _process(event_id: str, findings: Findings) -> None:
    try:
        stripe_event_process(event_id=event_id)
    except Exception as exc:
        logger.warning("reconciler: event %s: %s", event_id, exc)


# --- 2. the outbox ---------------------------------------------------------------------


def _outbox(findings: Findings, *, now: datetime, window: timedelta) -> None:
    findings.checked_kinds.add("intent_refused")
    findings.run.repaired += stripe_sync.intents_send_due()
    for intent in StripeIntent.objects.filter(
        status=IntentStatus.FAILED, created_at__gte=now - window
    ):
        findings.flag(
            "intent_refused",
            f"intent:{intent.pk}",
            f"Stripe refused our {intent.kind} ({intent.idempotency_key}): {intent.last_error}",
            {"kind": intent.kind, "params": intent.params, "last_error": intent.last_error},
            licence=intent.licence,
        )


# --- 3. licences -----------------------------------------------------------------------


def _fingerprint(licence: Licence) -> tuple:
    licence.refresh_from_db()
    payments = Payment.objects.filter(licence=licence).aggregate(n=Sum("amount"))["n"]
    return (
        licence.status,
        licence.current_period_start,
        licence.cancel_at_period_end,
        payments,
        Payment.objects.filter(licence=licence).count(),
        StripeIntent.objects.filter(licence=licence).count(),
    )


def _licences(findings: Findings, *, now: datetime, window: timedelta) -> None:
    findings.checked_kinds.add("licence_sync_failed")
    for licence in stripe_sync.licences_to_check(since=window):
        findings.run.licences_checked += 1
        before = _fingerprint(licence)
        try:
            _sync_licence(licence)
        except (PaymentProviderError, PaymentProviderUnavailable, stripe_sync.StaleRead) as exc:
            findings.flag(
                "licence_sync_failed",
                f"licence:{licence.pk}",
                f"Licence {licence.pk} could not be compared with Stripe: {exc}",
                {"error": str(exc)},
                licence=licence,
            )
            continue
        if _fingerprint(licence) != before:
            findings.run.repaired += 1


def _sync_licence(licence: Licence) -> None:
    if licence.stripe_subscription_id:
        stripe_sync.subscription_sync(
            subscription_id=licence.stripe_subscription_id, licence=licence
        )
    elif licence.stripe_payment_intent_id:
        stripe_sync.one_time_sync(
            licence=licence, payment_intent_id=licence.stripe_payment_intent_id
        )
    elif licence.stripe_checkout_session_id:
        stripe_sync.checkout_session_sync(session_id=licence.stripe_checkout_session_id)


# --- 4. money --------------------------------------------------------------------------


def _money(findings: Findings, *, now: datetime, window: timedelta) -> None:
    findings.checked_kinds.update({"payment_mismatch", "subscription_bills_ended_licence"})
    payments = (
        Payment.objects.filter(sandbox=False, created_at__gte=now - window)
        .exclude(kind=PaymentKind.REFUND)
        .exclude(stripe_charge_id="")
        .select_related("licence")
    )
    for payment in payments:
        facts = stripe_sync.charge_facts(payment.stripe_charge_id)
        refunds = Payment.objects.filter(refunds=payment, kind=PaymentKind.REFUND).aggregate(
            amount=Sum("amount"), fee=Sum("platform_fee"), expert=Sum("expert_amount")
        )
        ours = {
            "amount": payment.amount,
            "platform_fee": payment.platform_fee,
            "expert_amount": payment.expert_amount,
            "refunded": -(refunds["amount"] or 0),
            "fee_refunded": -(refunds["fee"] or 0),
            "reversed": -(refunds["expert"] or 0),
        }
        theirs = {
            "amount": facts.charge.amount,
            "platform_fee": facts.platform_fee,
            "expert_amount": facts.expert_amount,
            "refunded": sum(r.amount for r in facts.charge.refunds if r.counts),
            "fee_refunded": facts.fee_refunded,
            "reversed": sum(facts.reversals.values()),
        }
        if payment.licence.listing.kind == ListingKind.GARDEN:
            theirs |= garden_stripe_side(payment, ours)  # separate charges and transfers
        if ours != theirs:
            findings.flag(
                "payment_mismatch",
                payment.stripe_charge_id,
                f"Payment {payment.pk} disagrees with Stripe's charge {payment.stripe_charge_id}: "
                + ", ".join(
                    f"{k} {ours[k]} here, {theirs[k]} at Stripe"
                    for k in ours
                    if ours[k] != theirs[k]
                ),
                {"ours": ours, "stripe": theirs},
                licence=payment.licence,
            )
    for licence in (
        Licence.objects.filter(sandbox=False)
        .exclude(stripe_subscription_id="")
        .exclude(status__in=LIVE_LICENCE_STATUSES)
        .filter(ended_at__gte=now - window)
    ):
        sub = gateway.subscription_retrieve(licence.stripe_subscription_id)
        if sub.status in stripe_sync.BILLING_SUBSCRIPTION_STATUSES and not (
            licence.cancel_at_period_end and sub.cancel_at_period_end
        ):
            findings.flag(
                "subscription_bills_ended_licence",
                sub.id,
                f"Subscription {sub.id} is {sub.status} at Stripe but licence {licence.pk} "
                f"is {licence.status}; its cancellation is on its way or was refused.",
                {"subscription_status": sub.status, "licence_status": licence.status},
                licence=licence,
            )


def _unknown_subscriptions(findings: Findings, *, now: datetime, window: timedelta) -> None:
    """Subscriptions Stripe bills for our customers that no licence of theirs knows."""
    findings.checked_kinds.add("unknown_subscription")
    customers = set(
        Licence.objects.filter(sandbox=False)
        .exclude(stripe_customer_id="")
        .exclude(kind__in=(OfferKind.DOWNLOAD, OfferKind.FREE_TRIAL))
        .filter(status__in=(*LIVE_LICENCE_STATUSES, LicenceStatus.CANCELLED, LicenceStatus.REVOKED))
        .values_list("stripe_customer_id", flat=True)
    )
    known = set(
        Licence.objects.exclude(stripe_subscription_id="").values_list(
            "stripe_subscription_id", flat=True
        )
    )
    for customer_id in sorted(customers):
        for sub in gateway.subscriptions_of_customer(customer_id):
            if sub.status not in stripe_sync.BILLING_SUBSCRIPTION_STATUSES or sub.id in known:
                continue
            licence = stripe_sync.licence_by_id(sub.licence_id)
            if licence is not None:
                stripe_sync.subscription_sync(subscription_id=sub.id, licence=licence)
                findings.run.repaired += 1
                continue
            findings.flag(
                "unknown_subscription",
                sub.id,
                f"Subscription {sub.id} bills customer {customer_id}, and no licence knows it.",
                {"status": sub.status, "metadata": sub.metadata},
            )
