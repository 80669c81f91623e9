"""Stripe's webhooks: verified first, stored once, processed in any order to one state.

Events come from the local Stripe (tests/billing/stripe_server.py), signed as Stripe
signs them, and are handed to Django's test client; the processing task runs eagerly
when the request commits.
"""

import itertools
import json
import time

import pytest

from billing import stripe_gateway
from billing.errors import LicenceRequired
from billing.models import (
    BillingAuditEntry,
    Licence,
    LicenceStatus,
    OfferKind,
    Payment,
    PaymentKind,
    StripeEvent,
)
from billing.refunds import payment_refund
from billing.selectors import licence_for_call
from tests.billing.conftest import make_offer
from tests.billing.stripe_server import WEBHOOK_SECRET, post_webhook, sign_payload
from tests.billing.test_checkout_stripe import CHECKOUT, onboard


def buy(api, buyer, offer, stripe_server, client) -> tuple[Licence, dict]:
    """bob checks out and pays on Stripe's page; returns the licence and the
    checkout.session.completed delivery (not yet handed to Niche)."""
    response = api(buyer).post(CHECKOUT, {"offer_id": str(offer.id)}, format="json")
    assert response.status_code == 201, response.content
    licence = Licence.objects.get(pk=response.json()["licence_id"])
    return licence, stripe_server.complete_checkout(licence.stripe_checkout_session_id)


@pytest.fixture
def alice_paid_out(alice, api, client, stripe_server):
    return onboard(api, alice, stripe_server, client)


def test_a_tampered_body_a_stale_timestamp_or_no_signature_is_400_and_stores_nothing(
    alice_paid_out, bob, api, client, listing, stripe_server
):
    _, delivery = buy(api, bob, make_offer(listing, OfferKind.DOWNLOAD), stripe_server, client)
    tampered = delivery["payload"].replace('"status": "complete"', '"status": "open"')
    stale_header = sign_payload(
        delivery["payload"].encode(), WEBHOOK_SECRET, timestamp=int(time.time()) - 3600
    )
    StripeEvent.objects.all().delete()

    answers = [
        post_webhook(client, delivery, payload=tampered),
        post_webhook(client, delivery, signature=stale_header),
        post_webhook(client, delivery, signature=""),
        post_webhook(client, delivery, signature=sign_payload(b"{}", "whsec_someone_else")),
    ]

    for response in answers:
        assert response.status_code == 400
        assert response.json()["error"]["code"] == "invalid_signature"
        assert set(response.json()["error"]) == {"code", "message", "fields"}
    assert not StripeEvent.objects.exists()
    assert Licence.objects.get().status == LicenceStatus.PENDING


def test_one_event_delivered_ten_times_moves_the_ledger_once(
    alice_paid_out, bob, api, client, listing, stripe_server
):
    licence, delivery = buy(
        api, bob, make_offer(listing, OfferKind.DOWNLOAD), stripe_server, client
    )

    answers = [post_webhook(client, delivery)]
    for _ in range(9):
        again = stripe_server.redeliver(delivery["event"]["id"])  # same id, fresh signature
        answers.append(post_webhook(client, again))

    assert [r.status_code for r in answers] == [200] * 10
    assert [r.json()["duplicate"] for r in answers] == [False] + [True] * 9
    event = StripeEvent.objects.get(type="checkout.session.completed")
    assert (event.id, event.attempts, event.last_error) == (delivery["event"]["id"], 1, "")
    assert event.processed_at is not None
    assert Payment.objects.filter(licence=licence).count() == 1
    licence.refresh_from_db()
    assert licence.status == LicenceStatus.ACTIVE


def outcome(licence: Licence) -> tuple:
    licence.refresh_from_db()
    payments = sorted(
        Payment.objects.filter(licence=licence).values_list("kind", "amount", "stripe_invoice_id")
    )
    return (licence.status, licence.end_reason, licence.stripe_subscription_id, payments)


def reset_to_pending(licence: Licence) -> None:
    """Back to the moment before any webhook (test set-up only; Stripe keeps its state,
    the refund it made on the first pass included)."""
    from billing.models import IntentKind, StripeIntent

    StripeIntent.objects.filter(licence=licence).exclude(
        kind=IntentKind.CHECKOUT_SESSION_CREATE
    ).delete()
    Payment.objects.filter(licence=licence, kind=PaymentKind.REFUND).delete()
    Payment.objects.filter(licence=licence).delete()
    StripeEvent.objects.all().delete()
    Licence.objects.filter(pk=licence.pk).update(
        status=LicenceStatus.PENDING,
        activated_at=None,
        ended_at=None,
        end_reason="",
        stripe_subscription_id="",
        stripe_customer_id="",
        stripe_subscription_item_id="",
        current_period_start=None,
        current_period_end=None,
        stripe_subscription_status="",
        cancel_at_period_end=False,
        access_ends_at=None,
    )


def test_five_events_delivered_in_every_order_end_in_one_state(
    alice_paid_out, bob, api, client, listing, stripe_server
):
    # Given a subscription's whole life at Stripe: bought, paid, a renewal that failed
    # (past due), then cancelled; each step's event captured, none delivered yet.
    offer = make_offer(listing, OfferKind.SUBSCRIPTION)
    licence, completed = buy(api, bob, offer, stripe_server, client)
    subscription = completed["session"]["subscription"]
    sub_now = stripe_server.send_event("customer.subscription.updated", subscription)
    paid = stripe_server.send_event(
        "invoice.paid", sub_now["event"]["data"]["object"]["latest_invoice"]
    )
    failed_invoice = stripe_server.renew_subscription(subscription, fail=True)
    assert failed_invoice["status"] == "open"
    failed = stripe_server.send_event("invoice.payment_failed", failed_invoice["id"])
    updated = stripe_server.send_event("customer.subscription.updated", subscription)
    assert updated["event"]["data"]["object"]["status"] == "past_due"
    stripe_gateway.subscription_cancel(subscription_id=subscription, invoice_now=False)
    deleted = stripe_server.send_event("customer.subscription.deleted", subscription)
    events = [completed, paid, failed, updated, deleted]

    # When they arrive in each of the 120 orders, then every order ends the same way.
    outcomes = set()
    for order in itertools.permutations(events):
        reset_to_pending(licence)
        for delivery in order:
            assert post_webhook(client, delivery).status_code == 200
        outcomes.add(json.dumps(outcome(licence), default=str))

    assert len(outcomes) == 1
    status, reason, subscription_id, payments = json.loads(outcomes.pop())
    assert (status, subscription_id) == (LicenceStatus.CANCELLED, subscription)
    assert reason == "The subscription ended at Stripe."
    # Every event is a hint: the first one processed already reads the subscription
    # cancelled, so no access was ever given, and the money paid for none goes back.
    invoice_id = paid["event"]["data"]["object"]["id"]
    assert payments == [["invoice", 4900, invoice_id], ["refund", -4900, ""]]


def test_a_refund_ends_the_licence_once_and_is_audited(
    alice_paid_out, bob, carol, api, client, listing, stripe_server
):
    licence, delivery = buy(
        api, bob, make_offer(listing, OfferKind.DOWNLOAD), stripe_server, client
    )
    post_webhook(client, delivery)
    payment = Payment.objects.get(licence=licence)

    refund = payment_refund(payment=payment, actor=carol, reason="Bought by mistake").refund
    refunded = stripe_server.send_event("charge.refunded", payment.stripe_charge_id)
    assert post_webhook(client, refunded).status_code == 200

    # The fee back and the expert's share back are Stripe's (fee refund, transfer reversal).
    assert (refund.kind, refund.amount, refund.platform_fee, refund.expert_amount) == (
        PaymentKind.REFUND,
        -25_000,
        -5_000,
        -20_000,
    )
    assert Payment.objects.filter(kind=PaymentKind.REFUND).count() == 1  # the webhook adds none
    licence.refresh_from_db()
    assert licence.status == LicenceStatus.REVOKED
    assert licence.end_reason == "Refunded in full: Bought by mistake"
    audit = BillingAuditEntry.objects.get()
    assert (audit.actor, audit.action, audit.reason) == (carol, "refund", "Bought by mistake")
    assert stripe_server.state.refund_options[refund.stripe_refund_id]["reverse_transfer"]
    (reversal,) = stripe_server.state.reversals.values()
    assert (reversal["amount"], reversal["source_refund"]) == (20_000, refund.stripe_refund_id)


def test_a_refund_made_in_stripe_ends_a_download_licence_through_the_webhook(
    alice_paid_out, bob, api, client, listing, stripe_server
):
    licence, delivery = buy(
        api, bob, make_offer(listing, OfferKind.DOWNLOAD), stripe_server, client
    )
    post_webhook(client, delivery)
    payment = Payment.objects.get(licence=licence)
    stripe_gateway.refund_create(  # as Stripe's dashboard would
        charge_id=payment.stripe_charge_id, amount=payment.amount, key="dashboard", metadata={}
    )

    response = post_webhook(
        client, stripe_server.send_event("charge.refunded", payment.stripe_charge_id)
    )

    assert response.status_code == 200
    licence.refresh_from_db()
    assert (licence.status, licence.end_reason) == (LicenceStatus.REVOKED, "Refunded in full.")
    assert Payment.objects.get(kind=PaymentKind.REFUND).amount == -25_000


def test_a_deleted_subscription_ends_the_licence_and_serving_access(
    alice_paid_out, bob, api, client, listing, stripe_server
):
    licence, delivery = buy(
        api, bob, make_offer(listing, OfferKind.PER_CALL), stripe_server, client
    )
    post_webhook(client, delivery)
    licence.refresh_from_db()
    check = licence_for_call(user=bob, listing_slug=listing.slug)
    assert check.licence_id == licence.pk

    stripe_gateway.subscription_cancel(
        subscription_id=licence.stripe_subscription_id, invoice_now=True
    )
    deleted = stripe_server.send_event(
        "customer.subscription.deleted", licence.stripe_subscription_id
    )

    assert post_webhook(client, deleted).status_code == 200
    licence.refresh_from_db()
    assert licence.status == LicenceStatus.CANCELLED
    with pytest.raises(LicenceRequired):
        licence_for_call(user=bob, listing_slug=listing.slug)


def test_account_updated_copies_the_payout_flags_from_stripe(alice, api, client, stripe_server):
    response = api(alice).post("/api/v1/billing/connect/onboard", {}, format="json")
    assert response.status_code == 201
    status = api(alice).get("/api/v1/billing/connect").json()
    assert (status["status"], status["payouts_enabled"]) == ("pending", False)

    account_id = status["stripe_account_id"]
    delivery = stripe_server.complete_onboarding(account_id, payouts_enabled=False)
    assert post_webhook(client, delivery).status_code == 200
    half = api(alice).get("/api/v1/billing/connect").json()
    delivery = stripe_server.complete_onboarding(account_id, payouts_enabled=True)
    assert post_webhook(client, delivery).status_code == 200
    done = api(alice).get("/api/v1/billing/connect").json()

    assert (half["details_submitted"], half["payouts_enabled"]) == (True, False)
    assert (done["status"], done["payouts_enabled"]) == ("enabled", True)


def test_an_event_of_a_type_we_do_not_handle_is_stored_and_marked_processed(
    alice_paid_out, client, stripe_server
):
    delivery = stripe_server.send_event("payout.paid", alice_paid_out.stripe_account_id)

    response = post_webhook(client, delivery)

    assert response.status_code == 200
    assert StripeEvent.objects.get(type="payout.paid").processed_at is not None
