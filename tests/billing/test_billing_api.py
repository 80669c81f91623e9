"""The commerce API: alice prices her listing, bob reads his licences and usage,
alice reads her earnings; mallory reaches nothing of theirs."""

from datetime import date

import pytest
from django.utils import timezone

from billing import services
from billing.models import Offer, OfferStatus, Payment
from tests.billing.conftest import make_active_licence, make_offer

pytestmark = pytest.mark.django_db


def test_alice_creates_an_offer_on_her_listing(api, alice, listing):
    response = api(alice).post(
        "/api/v1/billing/offers",
        {"listing": listing.slug, "kind": "subscription", "currency": "USD",
         "unit_amount": 4900, "included_calls": 10_000, "overage": "refuse"},
        format="json",
    )  # fmt: skip

    assert response.status_code == 201, response.json()
    body = response.json()
    assert (body["object"], body["kind"], body["currency"]) == (
        "billing.offer",
        "subscription",
        "usd",
    )
    offer = Offer.objects.get(pk=body["id"])
    assert (offer.listing, offer.unit_amount, offer.included_calls) == (listing, 4900, 10_000)


def test_an_invalid_offer_is_422_in_the_error_contract(api, alice, listing):
    response = api(alice).post(
        "/api/v1/billing/offers",
        {"listing": listing.slug, "kind": "per_call", "currency": "usd", "unit_amount": -3},
        format="json",
    )

    assert response.status_code == 422
    error = response.json()["error"]
    assert error["code"] == "invalid_offer"
    assert "unit_amount" in error["fields"]
    assert not Offer.objects.exists()


def test_mallory_cannot_price_or_see_alices_offers(api, mallory, listing):
    offer = make_offer(listing, "per_call")
    client = api(mallory)

    created = client.post(
        "/api/v1/billing/offers",
        {"listing": listing.slug, "kind": "per_call", "currency": "usd", "unit_amount": 1},
        format="json",
    )
    read = client.get(f"/api/v1/billing/offers/{offer.id}")
    changed = client.patch(f"/api/v1/billing/offers/{offer.id}", {"unit_amount": 1}, format="json")
    retired = client.delete(f"/api/v1/billing/offers/{offer.id}")

    assert created.status_code == 403
    assert (read.status_code, changed.status_code, retired.status_code) == (404, 404, 404)
    assert client.get("/api/v1/billing/offers").json()["data"] == []
    stored = Offer.objects.get()
    assert (stored.unit_amount, stored.status) == (200, OfferStatus.ACTIVE)


def test_changing_a_bought_offer_answers_with_its_successor(api, alice, bob, listing):
    offer = make_offer(listing, "per_call", unit_amount=200)
    make_active_licence(bob, offer)

    response = api(alice).patch(
        f"/api/v1/billing/offers/{offer.id}", {"unit_amount": 250}, format="json"
    )

    assert response.status_code == 200
    body = response.json()
    assert body["id"] != str(offer.id)
    assert (body["replaces"], body["unit_amount"]) == (str(offer.id), 250)
    assert Offer.objects.get(pk=offer.id).status == OfferStatus.RETIRED


def test_retiring_an_offer_twice_is_409(api, alice, listing):
    offer = make_offer(listing, "per_call")
    client = api(alice)

    first = client.delete(f"/api/v1/billing/offers/{offer.id}")
    second = client.delete(f"/api/v1/billing/offers/{offer.id}")

    assert (first.status_code, first.json()["status"]) == (200, "retired")
    assert (second.status_code, second.json()["error"]["code"]) == (409, "offer_retired")


def test_anyone_reads_a_published_listings_active_offers(api, alice, listing):
    make_offer(listing, "download", unit_amount=25_000)
    make_offer(listing, "free_trial")
    retired = make_offer(listing, "per_call")
    services.offer_retire(owner=alice, offer_id=retired.id)

    response = api().get(f"/api/v1/listings/{listing.slug}/offers")

    assert response.status_code == 200
    offers = response.json()["data"]
    assert [(o["kind"], o["unit_amount"]) for o in offers] == [
        ("free_trial", 0),
        ("download", 25_000),
    ]
    assert response.json()["sandbox"] is True  # the test settings configure no Stripe key
    assert all(o["purchasable"] for o in offers)


def test_a_draft_listings_offers_are_not_public(api, alice):
    from tests.listings.conftest import make_listing

    draft = make_listing(alice)

    assert api().get(f"/api/v1/listings/{draft.slug}/offers").status_code == 404


def test_bob_lists_his_licences_with_the_calls_used(api, bob, mallory, listing):
    licence = make_active_licence(
        bob, make_offer(listing, "subscription", included_calls=100, overage="refuse")
    )
    services.usage_record(licence_id=licence.id, idempotency_key="r1")
    make_active_licence(mallory, make_offer(listing, "download"))

    response = api(bob).get("/api/v1/billing/licenses")

    assert response.status_code == 200
    (only,) = response.json()["data"]
    assert (only["id"], only["status"], only["sandbox"]) == (str(licence.id), "active", True)
    assert (only["calls_used"], only["call_quota"]) == (1, 100)
    assert only["terms"]["commercial_use"] is True
    assert only["offer"]["unit_amount"] == 4900
    assert api(bob).get(f"/api/v1/billing/licenses/{licence.id}").json()["calls_used"] == 1


def test_mallory_cannot_read_bobs_licence(api, bob, mallory, listing):
    licence = make_active_licence(bob, make_offer(listing, "per_call"))

    response = api(mallory).get(f"/api/v1/billing/licenses/{licence.id}")

    assert (response.status_code, response.json()["error"]["code"]) == (404, "licence_not_found")


def test_bob_reads_his_usage_per_day_listing_and_key(api, bob, listing):
    from accounts.services import api_key_create

    licence = make_active_licence(bob, make_offer(listing, "per_call"))
    key, _ = api_key_create(user=bob, name="batch", scopes=["infer"])
    for n in range(3):
        services.usage_record(licence_id=licence.id, idempotency_key=f"k{n}", api_key_id=key.id)
    services.usage_record(licence_id=licence.id, idempotency_key="s1", latency_ms=10)
    services.usage_record(licence_id=licence.id, idempotency_key="e1", status="error")

    response = api(bob).get("/api/v1/billing/usage")

    assert response.status_code == 200
    body = response.json()
    today = timezone.now().date().isoformat()
    rows = {(r["day"], r["listing"], r["api_key"]): r for r in body["data"]}
    assert rows[(today, listing.slug, str(key.id))]["calls"] == 3
    session = rows[(today, listing.slug, None)]
    assert (session["calls"], session["errors"]) == (1, 1)
    assert body["total_calls"] == 4
    only_key = api(bob).get("/api/v1/billing/usage", {"api_key": str(key.id)}).json()
    assert only_key["total_calls"] == 3


@pytest.mark.parametrize(
    "params", [{"since": "yesterday"}, {"since": "2026-02-01", "until": "2026-01-01"},
               {"since": "2020-01-01", "until": "2026-01-01"}, {"api_key": "not-a-key"}],
)  # fmt: skip
def test_a_bad_usage_window_is_422(api, bob, params):
    response = api(bob).get("/api/v1/billing/usage", params)

    assert (response.status_code, response.json()["error"]["code"]) == (422, "invalid_period")


def test_alice_reads_her_statement_and_the_months_for_the_chart(api, alice, bob, mallory, listing):
    licence = make_active_licence(bob, make_offer(listing, "download", unit_amount=25_000))
    this_month = timezone.now().date().replace(day=1)
    Payment.objects.create(
        licence=licence, kind="charge", amount=25_000, currency="usd", platform_fee=5000,
        stripe_fee=755, period=this_month, sandbox=True,
    )  # fmt: skip
    month = this_month.strftime("%Y-%m")

    chart = api(alice).get("/api/v1/billing/earnings").json()
    statement = api(alice).get("/api/v1/billing/earnings", {"month": month}).json()
    mallorys = api(mallory).get("/api/v1/billing/earnings", {"month": month}).json()

    assert chart["months"] == [
        {"month": this_month.isoformat(), "currency": "usd", "gross": 25_000, "refunds": 0,
         "platform_fee": 5000, "net": 20_000},
    ]  # fmt: skip
    (part,) = statement["listings"]
    assert (part["listing"], part["net"], part["lines"][0]["licence"]) == (
        listing.slug, 20_000, str(licence.id),
    )  # fmt: skip
    assert part["lines"][0]["buyer"] == "Bob"
    assert statement["totals"]["usd"]["net"] == 20_000
    assert (mallorys["listings"], mallorys["totals"]) == ([], {})


def test_a_bad_month_is_422(api, alice):
    response = api(alice).get("/api/v1/billing/earnings", {"month": "2026-13"})

    assert response.status_code == 422


@pytest.mark.parametrize(
    "method, path",
    [("get", "/api/v1/billing/offers"), ("get", "/api/v1/billing/licenses"),
     ("get", "/api/v1/billing/usage"), ("get", "/api/v1/billing/earnings")],
)  # fmt: skip
def test_signed_out_callers_get_401(api, method, path):
    assert getattr(api(), method)(path).status_code == 401


def test_a_key_without_train_scope_cannot_change_offers(api, alice, listing):
    offer = make_offer(listing, "per_call")
    reader = api(alice, scopes=("read",))

    listed = reader.get("/api/v1/billing/offers")
    changed = reader.patch(f"/api/v1/billing/offers/{offer.id}", {"unit_amount": 1}, format="json")

    assert listed.status_code == 200
    assert changed.status_code == 403
    assert Offer.objects.get().unit_amount == 200


def test_statement_month_default_does_not_leak_other_months(api, alice, bob, listing):
    licence = make_active_licence(bob, make_offer(listing, "per_call"))
    Payment.objects.create(
        licence=licence, kind="invoice", amount=100, currency="usd", platform_fee=20,
        period=date(2020, 1, 1), sandbox=True,
    )  # fmt: skip

    assert api(alice).get("/api/v1/billing/earnings").json()["months"] == []
