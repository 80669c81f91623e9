"""Offers: alice prices her listing; a bought offer is never edited in place."""

import pytest

from billing import services
from billing.errors import InvalidOffer, NotListingOwner, OfferRetired
from billing.models import Licence, Offer, OfferKind, OfferStatus
from tests.billing.conftest import make_active_licence, make_offer
from tests.listings.conftest import make_listing

pytestmark = pytest.mark.django_db


@pytest.mark.parametrize(
    "kind, fields",
    [
        (OfferKind.PER_CALL, {"unit_amount": 150}),
        (OfferKind.SUBSCRIPTION, {"unit_amount": 490, "included_calls": 500, "overage": "refuse"}),
        (
            OfferKind.SUBSCRIPTION,
            {"unit_amount": 4900, "included_calls": 5000, "overage": "bill",
             "overage_unit_amount": 120},
        ),
        (OfferKind.DOWNLOAD, {"unit_amount": 25_000}),
        (OfferKind.FREE_TRIAL, {"included_calls": 50}),
    ],
)  # fmt: skip
def test_alice_creates_each_kind_of_offer(alice, listing, kind, fields):
    offer = services.offer_create(owner=alice, listing=listing, kind=kind, currency="usd", **fields)

    stored = Offer.objects.get(pk=offer.pk)
    assert stored.kind == kind
    assert stored.status == OfferStatus.ACTIVE
    assert stored.currency == "usd"
    assert stored.unit_amount == fields.get("unit_amount", 0)


@pytest.mark.parametrize(
    "kind, fields, bad_field",
    [
        (OfferKind.PER_CALL, {"unit_amount": 0}, "unit_amount"),
        (OfferKind.PER_CALL, {"unit_amount": -1}, "unit_amount"),
        (OfferKind.PER_CALL, {"unit_amount": 1.5}, "unit_amount"),
        (OfferKind.PER_CALL, {"unit_amount": True}, "unit_amount"),
        (OfferKind.PER_CALL, {"unit_amount": 100, "included_calls": 10}, "included_calls"),
        (OfferKind.PER_CALL, {"unit_amount": 100, "currency": "xyz"}, "currency"),
        (OfferKind.PER_CALL, {"unit_amount": 100, "currency": "dollars"}, "currency"),
        (OfferKind.SUBSCRIPTION, {"unit_amount": 100, "overage": "refuse"}, "included_calls"),
        (OfferKind.SUBSCRIPTION, {"unit_amount": 100, "included_calls": 10}, "overage"),
        (
            OfferKind.SUBSCRIPTION,
            {"unit_amount": 100, "included_calls": 10, "overage": "bill"},
            "overage_unit_amount",
        ),
        (
            OfferKind.SUBSCRIPTION,
            {"unit_amount": 100, "included_calls": 10, "overage": "refuse",
             "overage_unit_amount": 5},
            "overage_unit_amount",
        ),
        (OfferKind.DOWNLOAD, {"unit_amount": 100, "overage": "bill"}, "overage"),
        (OfferKind.FREE_TRIAL, {"unit_amount": 100, "included_calls": 10}, "unit_amount"),
        (OfferKind.FREE_TRIAL, {"unit_amount": 0}, "included_calls"),
        ("lifetime", {"unit_amount": 100}, "kind"),
    ],
)  # fmt: skip
def test_an_invalid_offer_is_422_naming_the_field_and_nothing_is_written(
    alice, listing, kind, fields, bad_field
):
    with pytest.raises(InvalidOffer) as refused:
        services.offer_create(
            owner=alice, listing=listing, kind=kind, **({"currency": "usd"} | fields)
        )

    assert refused.value.status == 422
    assert bad_field in refused.value.fields
    assert not Offer.objects.exists()


def test_currency_is_stored_lower_case_as_stripe_spells_it(alice, listing):
    offer = make_offer(listing, OfferKind.PER_CALL, currency="EUR")

    assert Offer.objects.get(pk=offer.pk).currency == "eur"


def test_a_listing_prices_its_offers_in_one_currency(alice, listing):
    make_offer(listing, OfferKind.PER_CALL, currency="usd")

    with pytest.raises(InvalidOffer) as refused:
        make_offer(listing, OfferKind.DOWNLOAD, currency="eur")

    assert "currency" in refused.value.fields
    assert Offer.objects.count() == 1


def test_a_download_offer_needs_terms_that_allow_on_prem(alice, carol):
    listing = make_listing(alice, moderator=carol, on_prem_download=False)

    with pytest.raises(InvalidOffer) as refused:
        make_offer(listing, OfferKind.DOWNLOAD)

    assert "kind" in refused.value.fields


def test_one_active_free_trial_per_listing(alice, listing):
    make_offer(listing, OfferKind.FREE_TRIAL)

    with pytest.raises(InvalidOffer):
        make_offer(listing, OfferKind.FREE_TRIAL)

    assert Offer.objects.filter(kind=OfferKind.FREE_TRIAL).count() == 1


def test_mallory_cannot_price_alices_listing(mallory, listing):
    with pytest.raises(NotListingOwner):
        services.offer_create(
            owner=mallory, listing=listing, kind="per_call", currency="usd", unit_amount=1
        )
    assert not Offer.objects.exists()


def test_an_offer_nobody_bought_is_edited_in_place(alice, listing):
    offer = make_offer(listing, OfferKind.PER_CALL, unit_amount=200)

    updated = services.offer_update(owner=alice, offer_id=offer.id, unit_amount=300)

    assert updated.pk == offer.pk
    assert Offer.objects.get().unit_amount == 300


def test_a_bought_offer_is_retired_and_succeeded_never_edited(alice, bob, listing):
    offer = make_offer(listing, OfferKind.SUBSCRIPTION, unit_amount=4900)
    licence = make_active_licence(bob, offer)

    successor = services.offer_update(owner=alice, offer_id=offer.id, unit_amount=5900)

    old = Offer.objects.get(pk=offer.pk)
    assert successor.pk != offer.pk
    assert successor.replaces_id == offer.pk
    assert (old.status, old.unit_amount) == (OfferStatus.RETIRED, 4900)
    assert old.retired_at is not None
    assert Offer.objects.get(pk=successor.pk).unit_amount == 5900
    assert Licence.objects.get(pk=licence.pk).offer_id == offer.pk  # bob's terms stand


def test_the_kind_of_an_offer_cannot_change(alice, listing):
    offer = make_offer(listing, OfferKind.PER_CALL)

    with pytest.raises(InvalidOffer) as refused:
        services.offer_update(owner=alice, offer_id=offer.id, kind="download")

    assert "kind" in refused.value.fields


def test_an_update_is_validated_like_a_creation(alice, listing):
    offer = make_offer(listing, OfferKind.PER_CALL, unit_amount=200)

    with pytest.raises(InvalidOffer):
        services.offer_update(owner=alice, offer_id=offer.id, unit_amount=-5)

    assert Offer.objects.get().unit_amount == 200


def test_retiring_twice_is_409_and_a_retired_offer_cannot_change(alice, listing):
    offer = make_offer(listing, OfferKind.PER_CALL)
    services.offer_retire(owner=alice, offer_id=offer.id)

    with pytest.raises(OfferRetired) as twice:
        services.offer_retire(owner=alice, offer_id=offer.id)
    with pytest.raises(OfferRetired):
        services.offer_update(owner=alice, offer_id=offer.id, unit_amount=1)

    assert twice.value.status == 409
    assert Offer.objects.get().status == OfferStatus.RETIRED


def test_the_listing_shows_its_lowest_active_paid_price(alice, listing):
    make_offer(listing, OfferKind.FREE_TRIAL)
    per_call = make_offer(listing, OfferKind.PER_CALL, unit_amount=200)
    make_offer(listing, OfferKind.DOWNLOAD, unit_amount=25_000)
    listing.refresh_from_db()
    assert (listing.min_price_minor, listing.price_currency) == (200, "usd")

    services.offer_retire(owner=alice, offer_id=per_call.id)
    listing.refresh_from_db()
    assert (listing.min_price_minor, listing.price_currency) == (25_000, "usd")


def test_a_listing_with_only_a_free_trial_has_no_price(alice, listing):
    trial = make_offer(listing, OfferKind.FREE_TRIAL)
    listing.refresh_from_db()
    assert listing.min_price_minor is None

    services.offer_retire(owner=alice, offer_id=trial.id)
    listing.refresh_from_db()
    assert (listing.min_price_minor, listing.price_currency) == (None, "")
