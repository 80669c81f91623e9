"""The reconciler: Stripe's books against ours. It repairs what is safe to repair (a
missed webhook, a lost write) and flags the rest to moderators with the evidence."""

from __future__ import annotations

from billing import stripe_gateway
from billing.errors import PaymentProviderUnavailable
from billing.models import (
    IssueStatus,
    Licence,
    LicenceStatus,
    OfferKind,
    Payment,
    PaymentKind,
    ReconciliationIssue,
    StripeEvent,
    StripeIntent,
)
from billing.reconciler import reconcile
from billing.services import licence_revoke, reconciliation_issue_resolve
from marketplace.metrics import SharedStateCollector
from tests.billing.conftest import make_offer
from tests.billing.test_money_defects import committed, pay, start_checkout
from tests.billing.test_webhooks_stripe import alice_paid_out as alice_paid_out


def drift() -> dict[str, float]:
    for family in SharedStateCollector._billing():
        if family.name == "niche_billing_drift":
            return {s.labels["kind"]: s.value for s in family.samples}
    return {}


def test_a_missed_checkout_webhook_is_recovered_from_stripes_events(
    alice_paid_out, bob, api, listing, stripe_server
):
    licence = start_checkout(api, bob, make_offer(listing, OfferKind.SUBSCRIPTION))
    stripe_server.complete_checkout(licence.stripe_checkout_session_id)  # never delivered

    run = reconcile()

    licence.refresh_from_db()
    assert licence.status == LicenceStatus.ACTIVE
    assert Payment.objects.get(licence=licence).amount == 4900
    event = StripeEvent.objects.get(type="checkout.session.completed")
    assert (event.source, event.processed_at is not None) == ("reconciler", True)
    assert run.events_recovered == 1 and run.flagged == 0 and run.error == ""


def test_a_refund_made_in_stripe_with_its_webhook_lost_is_recorded(
    alice_paid_out, bob, api, client, listing, stripe_server
):
    licence = start_checkout(api, bob, make_offer(listing, OfferKind.DOWNLOAD))
    pay(stripe_server, client, licence)
    payment = Payment.objects.get(licence=licence)
    stripe_gateway.refund_create(
        charge_id=payment.stripe_charge_id, amount=5000, key="dashboard", metadata={}
    )
    stripe_server.undelivered_events()  # the charge.refunded webhook is lost

    reconcile()

    refund = Payment.objects.get(licence=licence, kind=PaymentKind.REFUND)
    assert refund.amount == -5000
    fee = stripe_gateway.application_fee_retrieve(payment.stripe_application_fee_id)
    assert refund.platform_fee == -fee.amount_refunded
    licence.refresh_from_db()
    assert licence.status == LicenceStatus.ACTIVE  # a partial refund keeps access


def test_a_teardown_stripe_never_got_is_sent_again_and_billing_stops(
    alice_paid_out, bob, carol, api, client, listing, stripe_server, monkeypatch
):
    licence = start_checkout(api, bob, make_offer(listing, OfferKind.SUBSCRIPTION))
    pay(stripe_server, client, licence)

    def unreachable(**_fields):
        raise PaymentProviderUnavailable("Stripe is unreachable")

    monkeypatch.setattr(stripe_gateway, "subscription_cancel", unreachable)
    committed(licence_revoke, licence_id=licence.pk, actor=carol, reason="Chargeback")
    monkeypatch.undo()
    assert stripe_gateway.subscription_retrieve(licence.stripe_subscription_id).status == "active"
    StripeIntent.objects.update(next_attempt_at=licence.created_at)  # the backoff is over

    reconcile()

    assert stripe_gateway.subscription_retrieve(licence.stripe_subscription_id).status == (
        "canceled"
    )


def test_an_amount_that_disagrees_is_flagged_with_both_sides_and_resolves_when_fixed(
    alice_paid_out, bob, api, client, listing, stripe_server
):
    licence = start_checkout(api, bob, make_offer(listing, OfferKind.DOWNLOAD))
    pay(stripe_server, client, licence)
    payment = Payment.objects.get(licence=licence)
    stripe_fee_at_stripe = payment.platform_fee
    Payment.objects.filter(pk=payment.pk).update(platform_fee=stripe_fee_at_stripe + 1)

    run = reconcile()

    issue = ReconciliationIssue.objects.get(kind="payment_mismatch")
    assert issue.stripe_object_id == payment.stripe_charge_id
    assert issue.evidence["ours"]["platform_fee"] == stripe_fee_at_stripe + 1
    assert issue.evidence["stripe"]["platform_fee"] == stripe_fee_at_stripe
    assert "platform_fee" in issue.summary and run.flagged == 1
    assert drift() == {"payment_mismatch": 1.0}

    # Seen again, it stays one issue; once the books agree, the next run resolves it.
    reconcile()
    assert ReconciliationIssue.objects.filter(kind="payment_mismatch").count() == 1
    Payment.objects.filter(pk=payment.pk).update(platform_fee=stripe_fee_at_stripe)
    reconcile()
    issue.refresh_from_db()
    assert issue.status == IssueStatus.RESOLVED and drift() == {}


def test_a_subscription_no_licence_knows_is_flagged_for_a_moderator(
    alice_paid_out, bob, carol, api, client, listing, stripe_server
):
    licence = start_checkout(api, bob, make_offer(listing, OfferKind.SUBSCRIPTION))
    pay(stripe_server, client, licence)
    # Someone subscribed bob in Stripe's dashboard, outside Niche.
    offer = licence.offer
    stray = stripe_server.resources.Subscription(
        customer=licence.stripe_customer_id, items=[{"plan": offer.stripe_price_id}]
    )

    reconcile()

    issue = ReconciliationIssue.objects.get(kind="unknown_subscription")
    assert issue.stripe_object_id == stray.id
    resolved = reconciliation_issue_resolve(
        issue_id=issue.pk, moderator=carol, note="Cancelled it in Stripe's dashboard."
    )
    assert (resolved.status, resolved.resolved_by) == (IssueStatus.RESOLVED, carol)


def test_in_sandbox_mode_there_is_nothing_to_reconcile(db, settings):
    settings.STRIPE_SECRET_KEY = ""
    run = reconcile()
    assert run.error == "sandbox: nothing to reconcile" and run.finished_at is not None
    assert not Licence.objects.exists()
