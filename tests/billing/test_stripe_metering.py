"""Per-call usage goes to Stripe's metered billing exactly once, and periods close."""

from datetime import timedelta

import pytest
from django.test import TestCase
from django.utils import timezone

from billing import stripe_gateway
from billing.errors import PaymentProviderUnavailable
from billing.metering import usage_report_to_stripe
from billing.models import LicenceUsagePeriod, OfferKind, UsageRecord
from billing.services import usage_record
from tests.billing.conftest import make_offer
from tests.billing.stripe_server import post_webhook
from tests.billing.test_webhooks_stripe import (
    alice_paid_out as alice_paid_out,
)
from tests.billing.test_webhooks_stripe import buy

CHECKOUT = "/api/v1/billing/checkout"


def calls(licence, *request_ids: str) -> None:
    for request_id in request_ids:
        usage_record(licence_id=licence.pk, idempotency_key=request_id)


def test_per_call_usage_reaches_stripe_once_even_when_a_run_dies_after_stripe_accepted(
    alice_paid_out, bob, api, client, listing, stripe_server, monkeypatch
):
    licence, delivery = buy(
        api, bob, make_offer(listing, OfferKind.PER_CALL), stripe_server, client
    )
    post_webhook(client, delivery)
    licence.refresh_from_db()
    customer = licence.stripe_customer_id
    calls(licence, "req-1", "req-2", "req-3")
    soon = timezone.now() + timedelta(minutes=5)

    assert usage_report_to_stripe(now=soon) == 1
    assert usage_report_to_stripe(now=soon) == 0  # nothing new: nothing sent

    assert stripe_server.metered_total(customer) == 3
    period = LicenceUsagePeriod.objects.get(licence=licence)
    assert (period.calls, period.stripe_reported_calls, period.closed_at) == (3, 3, None)
    assert not UsageRecord.objects.filter(licence=licence, reported_at__isnull=True).exists()

    # A run whose answer from Stripe is lost after Stripe counted the event...
    calls(licence, "req-4", "req-5")
    accepted = stripe_gateway.meter_event_create

    def accepted_then_lost(**fields):
        accepted(**fields)
        raise PaymentProviderUnavailable("the connection dropped")

    monkeypatch.setattr(stripe_gateway, "meter_event_create", accepted_then_lost)
    with pytest.raises(PaymentProviderUnavailable):
        usage_report_to_stripe(now=soon + timedelta(minutes=5))
    monkeypatch.undo()
    # ...then one more call, and the next runs.
    calls(licence, "req-6")
    usage_report_to_stripe(now=soon + timedelta(minutes=10))
    usage_report_to_stripe(now=soon + timedelta(minutes=15))

    assert stripe_server.metered_total(customer) == 6
    period.refresh_from_db()
    assert (period.calls, period.stripe_reported_calls) == (6, 6)
    sent = [e["identifier"] for e in stripe_server.state.meter_events.values()]
    assert sent == [f"niche-usage-{period.pk}-{n}" for n in (3, 5, 6)]

    # After the period ends (and a grace for late calls) it closes.
    usage_report_to_stripe(now=period.period_end + timedelta(minutes=11))
    period.refresh_from_db()
    assert period.closed_at is not None


def test_sandbox_usage_is_never_sent_to_stripe_and_its_periods_close(
    alice, bob, api, listing, settings, stripe_server
):
    settings.STRIPE_SECRET_KEY = ""
    offer = make_offer(listing, OfferKind.PER_CALL)
    with TestCase.captureOnCommitCallbacks(execute=True):
        response = api(bob).post(CHECKOUT, {"offer_id": str(offer.id)}, format="json")
    assert response.status_code == 201, response.content
    licence = offer.licences.get()
    calls(licence, "req-1")
    period = LicenceUsagePeriod.objects.get(licence=licence)

    assert usage_report_to_stripe(now=period.period_end + timedelta(minutes=11)) == 0

    period.refresh_from_db()
    assert period.closed_at is not None and period.stripe_reported_calls == 0
    assert stripe_server.state.meter_events == {}


def test_a_subscription_that_bills_overage_reports_only_the_calls_past_its_quota(
    alice_paid_out, bob, api, client, listing, stripe_server
):
    offer = make_offer(
        listing,
        OfferKind.SUBSCRIPTION,
        included_calls=2,
        overage="bill",
        overage_unit_amount=500,
    )
    licence, delivery = buy(api, bob, offer, stripe_server, client)
    session = stripe_server.state.sessions[licence.stripe_checkout_session_id]
    offer.refresh_from_db()
    assert [item["price"] for item in session["line_items"]["data"]] == [
        offer.stripe_price_id,
        offer.stripe_overage_price_id,
    ]
    post_webhook(client, delivery)
    licence.refresh_from_db()
    overage_price = stripe_server.state.prices[offer.stripe_overage_price_id]
    assert overage_price["unit_amount_decimal"] == "0.5"  # 500 per 1,000 calls
    items = stripe_gateway.subscription_retrieve(licence.stripe_subscription_id)["items"]["data"]
    overage_item = next(i for i in items if i["plan"]["id"] == offer.stripe_overage_price_id)
    assert licence.stripe_subscription_item_id == overage_item["id"]

    calls(licence, *(f"req-{n}" for n in range(5)))
    usage_report_to_stripe(now=timezone.now() + timedelta(minutes=5))

    assert stripe_server.metered_total(licence.stripe_customer_id) == 3  # 5 calls - 2 included
