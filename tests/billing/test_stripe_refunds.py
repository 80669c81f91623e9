"""Refunds go through Stripe, once, by a moderator with a reason; a full one ends access."""

import pytest
from django.test import TestCase

from billing.errors import LicenceRequired, ReasonRequired
from billing.models import BillingAuditEntry, LicenceStatus, OfferKind, Payment, PaymentKind
from billing.refunds import payment_refund
from billing.selectors import licence_for_call
from listings.errors import NotAModerator
from tests.billing.conftest import make_offer
from tests.billing.stripe_server import post_webhook
from tests.billing.test_webhooks_stripe import alice_paid_out as alice_paid_out
from tests.billing.test_webhooks_stripe import buy


def test_refunding_a_subscription_in_full_cancels_it_at_stripe_and_ends_access(
    alice_paid_out, bob, carol, api, client, listing, stripe_server
):
    licence, delivery = buy(
        api, bob, make_offer(listing, OfferKind.SUBSCRIPTION), stripe_server, client
    )
    post_webhook(client, delivery)
    licence.refresh_from_db()
    assert licence_for_call(user=bob, listing_slug=listing.slug).licence_id == licence.pk
    payment = Payment.objects.get(licence=licence, kind=PaymentKind.INVOICE)

    with TestCase.captureOnCommitCallbacks(execute=True):  # the teardown is sent on commit
        payment_refund(payment=payment, actor=carol, reason="Service outage all month")

    licence.refresh_from_db()
    assert licence.status == LicenceStatus.REVOKED
    subscription = stripe_server.resources.Subscription._api_retrieve(
        licence.stripe_subscription_id
    )
    assert subscription.status == "canceled"
    with pytest.raises(LicenceRequired):
        licence_for_call(user=bob, listing_slug=listing.slug)
    deleted = stripe_server.send_event(
        "customer.subscription.deleted", licence.stripe_subscription_id
    )
    assert post_webhook(client, deleted).status_code == 200
    licence.refresh_from_db()
    assert licence.status == LicenceStatus.REVOKED  # an ended licence stays as it ended


def test_a_partial_refund_keeps_the_licence_and_the_rest_ends_it(
    alice_paid_out, bob, carol, api, client, listing, stripe_server
):
    licence, delivery = buy(
        api, bob, make_offer(listing, OfferKind.DOWNLOAD), stripe_server, client
    )
    post_webhook(client, delivery)
    payment = Payment.objects.get(licence=licence)

    part = payment_refund(payment=payment, actor=carol, reason="Goodwill", amount=3_333).refund
    licence.refresh_from_db()
    assert licence.status == LicenceStatus.ACTIVE
    rest = payment_refund(payment=payment, actor=carol, reason="Asked for the rest").refund

    assert (part.amount, rest.amount) == (-3_333, -21_667)
    # What Stripe returned of the fee and took back from the expert, to the cent.
    assert part.platform_fee + rest.platform_fee == -payment.platform_fee
    assert part.expert_amount + rest.expert_amount == -payment.expert_amount
    licence.refresh_from_db()
    assert licence.status == LicenceStatus.REVOKED
    refund_keys = [p.idempotency_key for p in stripe_server.posts() if p.path == "/v1/refunds"]
    assert refund_keys == [
        f"niche:refund_create:{payment.pk}:0:3333",
        f"niche:refund_create:{payment.pk}:3333:21667",
    ]
    assert BillingAuditEntry.objects.filter(action="refund").count() == 2


@pytest.mark.parametrize(("who", "reason", "error"), [
    ("mallory", "I want my money", NotAModerator),
    ("carol", "   ", ReasonRequired),
])  # fmt: skip
def test_only_a_moderator_with_a_reason_refunds(
    who, reason, error, request, alice_paid_out, bob, api, client, listing, stripe_server
):
    licence, delivery = buy(
        api, bob, make_offer(listing, OfferKind.DOWNLOAD), stripe_server, client
    )
    post_webhook(client, delivery)
    payment = Payment.objects.get(licence=licence)

    with pytest.raises(error):
        payment_refund(payment=payment, actor=request.getfixturevalue(who), reason=reason)

    assert not [p for p in stripe_server.posts() if p.path == "/v1/refunds"]
    assert not Payment.objects.filter(kind=PaymentKind.REFUND).exists()
    assert not BillingAuditEntry.objects.exists()
    licence.refresh_from_db()
    assert licence.status == LicenceStatus.ACTIVE
