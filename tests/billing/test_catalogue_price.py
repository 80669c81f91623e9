"""The catalogue filters and sorts by price: the lowest active paid offer, copied onto
the listing by billing whenever offers change (listings never reads offers)."""

import pytest

from billing import services
from listings.models import Listing
from tests.billing.conftest import make_offer
from tests.listings.conftest import make_listing

pytestmark = pytest.mark.django_db


@pytest.fixture
def shelf(alice, carol):
    """Four published listings: $2 per 1,000 calls, $49 a month, €30 download, unpriced."""
    cheap = make_listing(alice, moderator=carol, title="Cheap triage")
    make_offer(cheap, "per_call", unit_amount=200)
    monthly = make_listing(alice, moderator=carol, title="Monthly coder")
    make_offer(monthly, "subscription", unit_amount=4900)
    make_offer(monthly, "free_trial")
    euro = make_listing(alice, moderator=carol, title="Euro law", on_prem_download=True)
    make_offer(euro, "download", unit_amount=3000, currency="eur")
    unpriced = make_listing(alice, moderator=carol, title="Unpriced")
    return {"cheap": cheap, "monthly": monthly, "euro": euro, "unpriced": unpriced}


def slugs(response) -> list[str]:
    assert response.status_code == 200, response.json()
    return [card["slug"] for card in response.json()["data"]]


def test_cheapest_first_and_unpriced_last(api, shelf):
    response = api().get("/api/v1/listings", {"sort": "price_asc"})

    assert slugs(response) == ["cheap-triage", "euro-law", "monthly-coder", "unpriced"]
    card = response.json()["data"][0]
    assert card["price"] == {"from_minor": 200, "currency": "usd"}
    assert response.json()["data"][-1]["price"] is None


def test_dearest_first_still_puts_unpriced_last(api, shelf):
    assert slugs(api().get("/api/v1/listings", {"sort": "price_desc"})) == [
        "monthly-coder", "euro-law", "cheap-triage", "unpriced",
    ]  # fmt: skip


def test_a_price_range_in_one_currency(api, shelf):
    client = api()

    cheap_usd = client.get("/api/v1/listings", {"currency": "usd", "max_price": 1000})
    dear_usd = client.get("/api/v1/listings", {"currency": "USD", "min_price": 1000})
    all_eur = client.get("/api/v1/listings", {"currency": "eur"})

    assert slugs(cheap_usd) == ["cheap-triage"]
    assert slugs(dear_usd) == ["monthly-coder"]
    assert slugs(all_eur) == ["euro-law"]


@pytest.mark.parametrize(
    "params, field",
    [
        ({"min_price": "100"}, "currency"),
        ({"currency": "usd", "min_price": "-1"}, "min_price"),
        ({"currency": "usd", "max_price": "1.50"}, "max_price"),
        ({"currency": "usd", "max_price": "9" * 40}, "max_price"),
        ({"currency": "dollars"}, "currency"),
    ],
)
def test_a_bad_price_parameter_is_422_naming_it(api, shelf, params, field):
    response = api().get("/api/v1/listings", params)

    assert response.status_code == 422
    assert field in response.json()["error"]["fields"]


def test_price_pages_follow_a_cursor_without_gaps_or_repeats(api, alice, carol, shelf):
    for n in range(5):  # ties on price are broken by id
        make_offer(
            make_listing(alice, moderator=carol, title=f"Tie {n}"), "per_call", unit_amount=500
        )
    client = api()

    seen, cursor = [], None
    while True:
        params = {"sort": "price_asc", "limit": 2} | ({"cursor": cursor} if cursor else {})
        body = client.get("/api/v1/listings", params).json()
        seen += [card["slug"] for card in body["data"]]
        cursor = body.get("next_cursor")
        if not body["has_more"]:
            break

    assert len(seen) == len(set(seen)) == 9
    assert seen[0] == "cheap-triage" and seen[-1] == "unpriced"
    prices = [Listing.objects.get(slug=s).min_price_minor for s in seen[:-1]]
    assert prices == sorted(prices)


def test_the_price_follows_every_offer_change(alice, shelf):
    monthly = shelf["monthly"]
    offer = monthly.offers.get(kind="subscription")

    services.offer_update(owner=alice, offer_id=offer.id, unit_amount=1900)
    monthly.refresh_from_db()
    assert monthly.min_price_minor == 1900

    services.offer_retire(
        owner=alice, offer_id=monthly.offers.get(status="active", kind="subscription").id
    )
    monthly.refresh_from_db()
    assert (monthly.min_price_minor, monthly.price_currency) == (None, "")
