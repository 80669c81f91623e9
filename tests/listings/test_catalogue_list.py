"""The catalogue list endpoint's fast path: one query of the card columns, cards written
out by hand, and still exactly what ListingCardOutput says, and never a stale page."""

import pytest
from django.db import connection
from django.http import QueryDict
from django.test.utils import CaptureQueriesContext
from rest_framework.renderers import JSONRenderer

from accounts.models import ExpertProfile
from listings import selectors, services
from listings.apis import ListingCardOutput
from listings.models import Listing
from marketplace.pagination import list_body
from tests.conftest import make_user
from tests.listings.conftest import generation_evaluation, make_listing
from training_worker.models import ModelVersion

pytestmark = pytest.mark.django_db


@pytest.fixture
def shelf(alice, carol):
    """Listings over every branch a card has: a lift or none, a price or none, an expert
    with a profile (verified or not) or without one, a display name or only an email."""
    verified_expert = make_user("vera@example.com", display_name="Vera", is_expert=True)
    profile = ExpertProfile.objects.create(user=verified_expert, headline="Contract lawyer")
    services.expert_verify(moderator=carol, profile=profile, note="Bar admission checked")
    no_profile = make_user("nameless.expert@example.com", is_expert=True)

    priced = make_listing(alice, moderator=carol, title="Priced triage", tags=["x-ray", "ü"])
    services.listing_set_price_summary(listing=priced, min_price_minor=4900, currency="eur")
    unscored = make_listing(alice, title="Unscored router", commercial_use=True)
    ModelVersion.objects.filter(pk=unscored.proposed_version_id).update(evaluation={})
    services.listing_submit(owner=alice, listing_id=unscored.id)
    services.listing_approve(moderator=carol, listing_id=unscored.id)
    speller = make_listing(alice, title="Phoneme speller")
    ModelVersion.objects.filter(pk=speller.proposed_version_id).update(
        task="text-generation", evaluation=generation_evaluation()
    )
    services.listing_submit(owner=alice, listing_id=speller.id)
    services.listing_approve(moderator=carol, listing_id=speller.id)
    return [
        speller,
        priced,
        unscored,
        make_listing(verified_expert, moderator=carol, title="Clause finder", domain="legal"),
        make_listing(no_profile, moderator=carol, title="Anonymous tagger", max_calls_per_month=9),
    ]


def serializer_body(query: str) -> bytes:
    """What the list answered when every card went through ListingCardOutput."""
    page = selectors.listing_search(query=selectors.catalogue_query_from_params(QueryDict(query)))
    data = ListingCardOutput(page.listings, many=True).data
    body = list_body(data, has_more=page.has_more, next_cursor=page.next_cursor)
    return JSONRenderer().render(body)


@pytest.mark.parametrize(
    "query",
    ["", "limit=2", "sort=best_lift", "sort=price_asc", "sort=rating&limit=3", "q=triage"],
)
def test_the_list_is_byte_for_byte_what_the_card_serializer_renders(api, shelf, query):
    response = api().get(f"/api/v1/listings?{query}")

    assert response.status_code == 200
    assert len(response.json()["data"]) >= 1
    assert response.content == serializer_body(query)


def test_every_branch_of_a_card_is_covered_by_the_shelf(api, shelf):
    cards = {c["title"]: c for c in api().get("/api/v1/listings").json()["data"]}

    assert cards["Priced triage"]["price"] == {"from_minor": 4900, "currency": "eur"}
    assert cards["Priced triage"]["tags"] == ["x-ray", "ü"]
    assert cards["Unscored router"]["lift_over_strongest_baseline"] is None
    assert cards["Unscored router"]["score"] is None and cards["Unscored router"]["price"] is None
    assert cards["Clause finder"]["expert"] == {
        "name": "Vera", "verified": True, "headline": "Contract lawyer",
    }  # fmt: skip
    assert cards["Anonymous tagger"]["expert"] == {
        "name": "nameless.expert", "verified": False, "headline": "",
    }  # fmt: skip
    assert cards["Anonymous tagger"]["licence"]["max_calls_per_month"] == 9
    assert cards["Priced triage"]["published_at"].endswith("Z")
    # A generator's card carries its graded metric; a classifier's has none.
    assert cards["Phoneme speller"]["graded_metric"] == {
        "name": "token_error_rate", "label": "Token error rate", "higher_is_better": False,
        "value": 0.21, "ci_low": 0.18, "ci_high": 0.24,
        "lift": {"metric": "token_error_rate", "delta": 0.41, "ci_low": 0.36, "ci_high": 0.46},
        "baseline_label": "Classic: nearest-neighbour retrieval (TF-IDF)",
    }  # fmt: skip
    assert cards["Priced triage"]["graded_metric"] is None


def test_the_catalogue_page_shows_a_generators_graded_metric_on_its_card(client, shelf):
    page = client.get("/catalogue/").content.decode()

    card = page[page.index("Phoneme speller") :]
    card = card[: card.index("</article>")]
    assert 'data-testid="card-graded"' in card
    assert "Token error rate <strong>0.210</strong>" in card and "lower is better" in card
    assert (
        "better than Classic: nearest-neighbour retrieval (TF-IDF) by <strong>0.410</strong>"
        in (card)
    )


def test_a_page_is_one_query_of_the_card_columns_only(api, shelf):
    client = api()

    with CaptureQueriesContext(connection) as queries:
        assert client.get("/api/v1/listings?sort=popularity").status_code == 200

    assert len(queries.captured_queries) == 1
    sql = queries.captured_queries[0]["sql"]
    for unread in ('"password"', '"description"', '"evaluation"', '"bio"', '"status_reason"'):
        assert unread not in sql


def test_the_api_and_the_portal_read_the_same_pages(shelf):
    for query in ("", "limit=1", "sort=best_lift&limit=2", "sort=price_desc", "q=triage"):
        q = selectors.catalogue_query_from_params(QueryDict(query))
        rows, listings = selectors.listing_card_search(query=q), selectors.listing_search(query=q)

        assert [r["id"] for r in rows.listings] == [x.id for x in listings.listings]
        assert (rows.has_more, rows.next_cursor) == (listings.has_more, listings.next_cursor)


def test_a_suspension_hides_the_listing_from_the_very_next_list(alice, bob, carol, api):
    kept = make_listing(alice, moderator=carol, title="Kept triage")
    flagged = make_listing(alice, moderator=carol, title="Flagged triage")
    anonymous, signed_in = api(), api(bob)
    queries = ["", "sort=best_lift", "q=triage", "domain=healthcare"]

    def slugs(client, query) -> set[str]:
        response = client.get(f"/api/v1/listings?{query}")
        assert response.status_code == 200, response.json()
        return {card["slug"] for card in response.json()["data"]}

    for _ in range(3):  # every read path warm, as on a busy server
        for client in (anonymous, signed_in):
            assert all(slugs(client, q) == {kept.slug, flagged.slug} for q in queries)

    services.listing_suspend(moderator=carol, listing_id=flagged.id, reason="Under review")
    for client in (anonymous, signed_in):
        assert all(slugs(client, q) == {kept.slug} for q in queries)

    services.listing_reinstate(moderator=carol, listing_id=flagged.id)
    assert slugs(anonymous, "") == {kept.slug, flagged.slug}

    services.user_suspend(moderator=carol, user=alice, reason="Fraud")
    for client in (anonymous, signed_in):
        assert all(slugs(client, q) == set() for q in queries)
    assert Listing.objects.filter(owner=alice, status="published").count() == 2


def test_a_generators_listing_page_shows_the_graded_metric_beside_exact_match(client, shelf):
    page = client.get(f"/catalogue/{shelf[0].slug}/").content.decode()

    graded = page[page.index('data-testid="graded-metric"') :]
    graded = graded[: graded.index("</p>")]
    assert "Partial credit: <strong>Token error rate</strong>" in graded
    assert "lower is better; chosen because answers are sequences of symbols" in graded
    assert "<strong>0.210</strong>" in graded and "[0.180, 0.240]" in graded
    # Every baseline row carries its graded value and the specialist's lift over it.
    table = page[page.index('data-testid="baseline-table"') :]
    assert "<th>Token error rate</th><th>specialist better by</th>" in table
    assert "0.620" in table and "0.410" in table
