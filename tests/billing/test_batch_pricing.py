"""Batch rows (serving's Batch API) are billed at the offer's batch price.

alice prices her listing (a batch row at 50% of a call unless she says otherwise); bob's
batch rows reach the ledger already answered, through usage_record_finished, and the
metered report counts each at its price.
"""

import pytest
from django.utils import timezone

from billing import metering, services
from billing.errors import LicenceRequired
from billing.models import LicenceUsagePeriod, OfferKind, UsageRecord, UsageStatus
from billing.selectors import licence_batch_price_percent
from billing.services import FinishedCall, usage_record_finished
from tests.billing.conftest import make_active_licence, make_offer

pytestmark = pytest.mark.django_db


def offers_url() -> str:
    return "/api/v1/billing/offers"


def test_an_offer_prices_batch_rows_at_half_a_call_unless_its_expert_says_otherwise(
    api, alice, listing
):
    client = api(alice, scopes=("read", "train"))
    body = {"listing": listing.slug, "kind": "per_call", "currency": "usd", "unit_amount": 200}

    default = client.post(offers_url(), body, format="json")
    custom = client.post(offers_url(), body | {"batch_price_percent": 30}, format="json")
    too_much = client.post(offers_url(), body | {"batch_price_percent": 150}, format="json")

    assert default.status_code == 201 and default.json()["batch_price_percent"] == 50
    assert custom.status_code == 201 and custom.json()["batch_price_percent"] == 30
    assert too_much.status_code == 422
    assert "batch_price_percent" in too_much.json()["error"]["fields"]
    changed = client.patch(
        f"{offers_url()}/{default.json()['id']}", {"batch_price_percent": 40}, format="json"
    )
    assert changed.status_code == 200 and changed.json()["batch_price_percent"] == 40


def test_finished_calls_are_written_settled_and_counted_in_order_up_to_the_spend_cap(bob, listing):
    # Given bob's per-call licence capped at 5 calls (0.01 USD at 2.00 per 1,000)
    licence = make_active_licence(bob, make_offer(listing, OfferKind.PER_CALL))
    services.licence_set_spend_cap(buyer=bob, licence_id=licence.id, amount=1)
    calls = [
        FinishedCall("batch:b:1", units=2),
        FinishedCall("batch:b:2", units=1, status=UsageStatus.ERROR),  # failed: not counted
        FinishedCall("batch:b:3", units=3),
        FinishedCall("batch:b:4", units=4),  # would pass the cap
        FinishedCall("batch:b:5", units=1),
    ]

    outcomes = usage_record_finished(licence_id=licence.id, calls=calls, price_percent=50)

    assert [o.code if o else None for o in outcomes] == [
        None, None, None, "spend_cap_reached", "spend_cap_reached",
    ]  # fmt: skip
    records = UsageRecord.objects.filter(licence=licence).order_by("idempotency_key")
    assert [(r.idempotency_key, r.units, r.status) for r in records] == [
        ("batch:b:1", 2, UsageStatus.OK),
        ("batch:b:2", 1, UsageStatus.ERROR),
        ("batch:b:3", 3, UsageStatus.OK),
    ]
    assert all(r.settled_at is not None and r.price_percent == 50 for r in records)
    assert LicenceUsagePeriod.objects.get(licence=licence).calls == 5
    # and writing them again changes nothing
    again = usage_record_finished(licence_id=licence.id, calls=calls[:3], price_percent=50)
    assert again == [None, None, None]
    assert UsageRecord.objects.filter(licence=licence).count() == 3
    assert LicenceUsagePeriod.objects.get(licence=licence).calls == 5


def test_finished_calls_of_an_ended_licence_are_refused_with_nothing_written(bob, carol, listing):
    licence = make_active_licence(bob, make_offer(listing, OfferKind.SUBSCRIPTION))
    services.licence_revoke(licence_id=licence.id, actor=carol, reason="Chargeback.")

    with pytest.raises(LicenceRequired):
        usage_record_finished(licence_id=licence.id, calls=[FinishedCall("batch:b:1")])

    assert not UsageRecord.objects.exists()


def test_metered_billing_counts_a_batch_row_at_its_price_and_the_quota_counts_calls(bob, listing):
    licence = make_active_licence(bob, make_offer(listing, OfferKind.PER_CALL))
    assert licence_batch_price_percent(licence_id=licence.id) == 50
    for n in range(3):  # three interactive calls
        services.usage_record(licence_id=licence.id, idempotency_key=f"call-{n}")
        services.usage_settle(idempotency_key=f"call-{n}", status=UsageStatus.OK)
    usage_record_finished(
        licence_id=licence.id,
        calls=[FinishedCall(f"batch:b:{n}") for n in range(1, 4)],
        price_percent=licence_batch_price_percent(licence_id=licence.id),
        at=timezone.now(),
    )

    period = LicenceUsagePeriod.objects.get(licence=licence)
    assert period.calls == 6
    assert metering.period_served_calls(period) == 4  # 3 + 3 x 0.5, rounded down
    assert metering.billable(licence, metering.period_served_calls(period)) == 4
