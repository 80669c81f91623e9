"""Per-call usage goes to Stripe's metered billing exactly once, from immutable facts,
one period at a time; periods close."""

from datetime import timedelta

from django.test import TestCase
from django.utils import timezone

from billing import models as billing_models
from billing import stripe_gateway
from billing.errors import PaymentProviderError, PaymentProviderUnavailable
from billing.metering import usage_report_to_stripe
from billing.models import LicenceUsagePeriod, OfferKind, UsageStatus
from billing.services import usage_record, usage_settle
from tests.billing.conftest import make_offer
from tests.billing.stripe_server import post_webhook
from tests.billing.test_webhooks_stripe import (
    alice_paid_out as alice_paid_out,
)
from tests.billing.test_webhooks_stripe import buy

CHECKOUT = "/api/v1/billing/checkout"


def calls(licence, *request_ids: str, status: str = UsageStatus.OK) -> None:
    """Calls recorded before they run and settled as they turned out."""
    for request_id in request_ids:
        usage_record(licence_id=licence.pk, idempotency_key=request_id)
        usage_settle(idempotency_key=request_id, status=status)


def bought_per_call(api, bob, listing, stripe_server, client):
    licence, delivery = buy(
        api, bob, make_offer(listing, OfferKind.PER_CALL), stripe_server, client
    )
    post_webhook(client, delivery)
    licence.refresh_from_db()
    return licence


def test_per_call_usage_reaches_stripe_once_even_when_a_run_dies_after_stripe_accepted(
    alice_paid_out, bob, api, client, listing, stripe_server, monkeypatch
):
    licence = bought_per_call(api, bob, listing, stripe_server, client)
    customer = licence.stripe_customer_id
    calls(licence, "req-1", "req-2", "req-3")
    soon = timezone.now() + timedelta(minutes=5)

    assert usage_report_to_stripe(now=soon).sent == 1
    assert usage_report_to_stripe(now=soon).sent == 0  # nothing new: nothing sent

    assert stripe_server.metered_total(customer) == 3
    period = LicenceUsagePeriod.objects.get(licence=licence)
    assert (period.calls, period.closed_at) == (3, None)

    # A run whose answer from Stripe is lost after Stripe counted the event...
    calls(licence, "req-4", "req-5")
    accepted = stripe_gateway.meter_event_create

    def accepted_then_lost(**fields):
        accepted(**fields)
        raise PaymentProviderUnavailable("the connection dropped")

    monkeypatch.setattr(stripe_gateway, "meter_event_create", accepted_then_lost)
    assert usage_report_to_stripe(now=soon + timedelta(minutes=5)).failed == 1
    monkeypatch.undo()
    # ...then one more call, and the next runs (after the failed period's backoff).
    calls(licence, "req-6")
    usage_report_to_stripe(now=soon + timedelta(hours=1))
    usage_report_to_stripe(now=soon + timedelta(hours=2))

    assert stripe_server.metered_total(customer) == 6
    reports = billing_models.MeterReport.objects.filter(period=period).order_by("billable_total")
    assert [(r.value, r.billable_total, r.sent_at is not None) for r in reports] == [
        (3, 3, True), (2, 5, True), (1, 6, True),
    ]  # fmt: skip
    sent = [e["identifier"] for e in stripe_server.state.meter_events.values()]
    assert sent == [f"niche-usage-{period.pk}-{n}" for n in (3, 5, 6)]

    # After the period ends (and a grace for late calls) it closes.
    period.refresh_from_db()
    usage_report_to_stripe(now=period.period_end + timedelta(minutes=11))
    period.refresh_from_db()
    assert period.closed_at is not None


def test_reporting_never_freezes_when_a_call_fails_after_others_were_reported(
    alice_paid_out, bob, api, client, listing, stripe_server
):
    """Issue 20, defect 3: once a call already reported was settled `error`, reporting
    stopped for the rest of the period (102 calls counted, 3 reported). Reports are now
    computed from settled ledger rows only, which never change."""
    licence = bought_per_call(api, bob, listing, stripe_server, client)
    soon = timezone.now() + timedelta(minutes=5)
    calls(licence, "req-1", "req-2")
    usage_record(licence_id=licence.pk, idempotency_key="stream-1")  # still streaming
    usage_report_to_stripe(now=soon)
    usage_settle(idempotency_key="stream-1", status=UsageStatus.ERROR)  # it failed after all
    calls(licence, *(f"more-{n}" for n in range(100)))

    usage_report_to_stripe(now=soon + timedelta(minutes=5))

    assert stripe_server.metered_total(licence.stripe_customer_id) == 102
    period = LicenceUsagePeriod.objects.get(licence=licence)
    assert period.calls == 102  # the quota counter agrees: the failed call gave its back


def test_one_period_stripe_refuses_does_not_stop_the_others(
    alice_paid_out, bob, mallory, api, client, listing, stripe_server, monkeypatch
):
    """Issue 20, defect 7: a period Stripe refused stopped metering for every licence."""
    refused = bought_per_call(api, bob, listing, stripe_server, client)
    fine = bought_per_call(api, mallory, listing, stripe_server, client)
    calls(refused, "bob-1", "bob-2")
    calls(fine, "mallory-1")
    accepted = stripe_gateway.meter_event_create

    def refuse_bob(**fields):
        if fields["customer_id"] == refused.stripe_customer_id:
            raise PaymentProviderError("No such customer", fields={"stripe_code": ["x"]})
        return accepted(**fields)

    monkeypatch.setattr(stripe_gateway, "meter_event_create", refuse_bob)
    now = timezone.now() + timedelta(minutes=5)
    run = usage_report_to_stripe(now=now)

    assert (run.sent, run.failed) == (1, 1)
    assert stripe_server.metered_total(fine.stripe_customer_id) == 1
    failing = LicenceUsagePeriod.objects.get(licence=refused)
    assert failing.report_failures == 1 and failing.next_report_at > now
    assert "No such customer" in failing.last_report_error
    from billing.selectors import billing_health

    assert billing_health().failing_periods == 1
    # Backing off: the next run leaves it alone; once due and Stripe takes it, it recovers.
    assert usage_report_to_stripe(now=now + timedelta(seconds=30)).failed == 0
    monkeypatch.undo()
    usage_report_to_stripe(now=failing.next_report_at + timedelta(seconds=1))
    assert stripe_server.metered_total(refused.stripe_customer_id) == 2
    failing.refresh_from_db()
    assert (failing.report_failures, failing.last_report_error) == (0, "")
    assert billing_health().failing_periods == 0


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

    assert usage_report_to_stripe(now=period.period_end + timedelta(minutes=11)).sent == 0

    period.refresh_from_db()
    assert period.closed_at is not None and not billing_models.MeterReport.objects.exists()
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
    items = stripe_gateway.subscription_retrieve(licence.stripe_subscription_id).items
    overage_item = next(i for i in items if i.price_id == offer.stripe_overage_price_id)
    assert overage_item.usage_type == "metered"
    assert licence.stripe_subscription_item_id == overage_item.id

    calls(licence, *(f"req-{n}" for n in range(5)))
    usage_report_to_stripe(now=timezone.now() + timedelta(minutes=5))

    assert stripe_server.metered_total(licence.stripe_customer_id) == 3  # 5 calls - 2 included
