"""Catalogue pages: search, listing page with verified numbers, review, report, listing a
model from the studio."""

from django.test import Client

from listings import services
from listings.models import Listing, Report, Review
from tests.listings.conftest import make_listing, make_version


def portal(user=None) -> Client:
    client = Client()
    if user is not None:
        client.force_login(user)
    return client


def test_catalogue_search_shows_published_listings_with_their_lift(alice, carol, db):
    make_listing(alice, moderator=carol, title="Invoice fraud detector", accuracy=0.92)
    make_listing(alice, title="Draft never shown")

    page = portal().get("/catalogue/?q=fraud").content.decode()

    assert "Invoice fraud detector" in page and "Draft never shown" not in page
    assert "lift over the strongest baseline" in page and "0.320" in page
    assert 'data-testid="lift-baseline">Generalist: zero-shot<' in page


def test_listing_page_shows_evaluation_chart_and_licence(alice, carol, db):
    listing = make_listing(alice, moderator=carol, commercial_use=True)

    page = portal().get(f"/catalogue/{listing.slug}/").content.decode()

    assert 'id="listing-chart"' in page and "This specialist" in page
    assert "Commercial use is allowed." in page
    assert listing.live_version.adapter_sha256 in page


def test_bob_with_a_licence_reviews_from_the_page_and_mallory_reports(
    alice, bob, carol, mallory, db
):
    listing = make_listing(alice, moderator=carol)
    services.entitlement_grant(listing=listing, user=bob, reference="licence-9")

    assert "Save review" in portal(bob).get(f"/catalogue/{listing.slug}/").content.decode()
    assert "Save review" not in portal(mallory).get(f"/catalogue/{listing.slug}/").content.decode()
    portal(bob).post(f"/catalogue/{listing.slug}/review/", {"rating": "5", "text": "Spot on"})
    portal(mallory).post(f"/catalogue/{listing.slug}/review/", {"rating": "1"})
    portal(mallory).post(f"/catalogue/{listing.slug}/report/", {"reason": "spam", "text": "x"})

    assert list(Review.objects.values_list("author__email", "rating")) == [("bob@example.com", 5)]
    assert Report.objects.get().reporter == mallory


def test_alice_lists_a_version_and_submits_it_then_sees_the_rejection_reason(alice, carol, db):
    version = make_version(alice)
    client = portal(alice)

    response = client.post(
        f"/studio/models/{version.id}/list/",
        {"title": "Triage helper", "summary": "Sorts notes.", "domain": "healthcare",
         "tags": "triage, notes", "attribution_required": "1"},
    )  # fmt: skip
    listing = Listing.objects.get(owner=alice)
    assert response["Location"] == f"/catalogue/{listing.slug}/"
    client.post(f"/catalogue/{listing.slug}/submit/")
    services.listing_reject(moderator=carol, listing_id=listing.id, reason="Explain the data.")

    page = client.get(f"/catalogue/{listing.slug}/").content.decode()
    assert "rejected" in page and "Explain the data." in page
    assert portal(carol).get(f"/catalogue/{listing.slug}/").status_code == 404
    assert listing.tags == ["notes", "triage"]


def test_a_crafted_cursor_shows_an_error_on_the_catalogue_page(alice, carol, db):
    from tests.listings.test_listings_api import crafted

    make_listing(alice, moderator=carol, title="Invoice fraud detector")

    response = portal().get(f"/catalogue/?q=fraud&cursor={crafted({'offset': 'ten'})}")

    assert response.status_code == 200
    assert "The cursor is not valid." in response.content.decode()


def test_a_report_without_a_known_reason_is_refused_with_the_services_message(
    alice, carol, mallory, db
):
    listing = make_listing(alice, moderator=carol)

    response = portal(mallory).post(
        f"/catalogue/{listing.slug}/report/", {"reason": "because", "text": "x"}, follow=True
    )

    assert "Choose a reason." in response.content.decode()
    assert Report.objects.count() == 0


def test_text_postgres_would_refuse_comes_back_as_a_message_not_a_500(
    alice, bob, carol, mallory, db
):
    listing = make_listing(alice, moderator=carol)
    services.entitlement_grant(listing=listing, user=bob, reference="licence-9")
    version = make_version(alice)

    too_long = portal(alice).post(
        f"/studio/models/{version.id}/list/",
        {"title": "T" * 121, "summary": "Sorts notes.", "domain": "healthcare"},
        follow=True,
    )
    nul_tag = portal(alice).post(
        f"/studio/models/{version.id}/list/",
        {"title": "Triage", "summary": "Sorts notes.", "domain": "healthcare", "tags": "a\x00b"},
        follow=True,
    )
    nul_review = portal(bob).post(
        f"/catalogue/{listing.slug}/review/", {"rating": "4", "text": "ok\x00"}, follow=True
    )
    nul_report = portal(mallory).post(
        f"/catalogue/{listing.slug}/report/", {"reason": "spam", "text": "x\x00"}, follow=True
    )

    assert [r.status_code for r in (too_long, nul_tag, nul_review, nul_report)] == [200] * 4
    assert "title: At most 120 characters." in too_long.content.decode()
    assert "tags: Each at most 40 characters, no NUL characters." in nul_tag.content.decode()
    assert "No NUL characters." in nul_review.content.decode()
    assert "No NUL characters." in nul_report.content.decode()
    assert Listing.objects.filter(owner=alice).count() == 1
    assert not Review.objects.exists() and not Report.objects.exists()


def test_an_expert_curates_a_garden_from_the_portal_and_a_buyer_cannot(alice, bob, carol, db):
    from listings import gardens
    from tests.conftest import make_user

    member = make_listing(alice, moderator=carol, title="Radiology triage")
    hidden = make_listing(alice, moderator=carol, title="Not composable")
    gardens.listing_set_composable(owner=alice, listing_id=member.pk, composable=True)
    cy = portal(make_user("cy@example.com", display_name="Cy", is_expert=True))

    form = cy.get("/gardens/new/").content.decode()
    assert "Radiology triage" in form and "Not composable" not in form
    assert hidden.slug not in form
    refused = cy.post(
        "/gardens/new/",
        {
            "kind": "router",
            "members": [hidden.slug],
            "title": "G",
            "summary": "s",
            "domain": "healthcare",
        },
    )
    assert refused.status_code == 200 and "cannot be composed" in refused.content.decode()
    response = cy.post(
        "/gardens/new/",
        {"kind": "router", "members": [member.slug], "title": "Radiology garden",
         "summary": "The best triage.", "domain": "healthcare", "member_share_percent": "60"},
    )  # fmt: skip
    garden = Listing.objects.get(kind="garden")
    assert response.status_code == 302 and response.url == f"/catalogue/{garden.slug}/"
    assert garden.garden.member_share_percent == 60 and garden.status == "draft"
    page = cy.get(response.url).content.decode()
    assert 'id="garden"' in page and "60% goes to the member that answered" in page

    pipeline = cy.post(
        "/gardens/new/",
        {"kind": "pipeline", "classifier": member.slug, "routes": "a: nowhere",
         "title": "Pipe", "summary": "s", "domain": "healthcare"},
    )  # fmt: skip
    assert "cannot be composed" in pipeline.content.decode()  # "nowhere" is no listing

    assert portal(bob).get("/gardens/new/").status_code == 403
