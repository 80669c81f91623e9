"""Listings: owners' life cycle, the public catalogue, reviews, reports, permissions."""

import pytest
from django.db import connection
from django.test.utils import CaptureQueriesContext

from listings import services
from listings.models import Listing, ListingStatus, ModerationAction, Report, Review
from tests.listings.conftest import make_listing, make_version


def create_body(version, **extra) -> dict:
    return {
        "model_version": str(version.id),
        "title": "Contract clause classifier",
        "summary": "Finds risky clauses in supply contracts.",
        "description": "## What it does\n\nFlags *indemnity* clauses.<script>alert(1)</script>",
        "domain": "legal",
        "tags": ["Contracts", "risk"],
        "languages": ["en"],
        "commercial_use": True,
        "max_calls_per_month": 10000,
    } | extra


def test_alice_creates_a_draft_with_sanitized_markdown_and_a_licence_summary(alice, api):
    version = make_version(alice)

    response = api(alice).post("/api/v1/listings", create_body(version), format="json")

    assert response.status_code == 201, response.json()
    body = response.json()
    assert body["status"] == "draft" and body["slug"] == "contract-clause-classifier"
    assert "<h2>What it does</h2>" in body["description_html"]
    assert "<script>" not in body["description_html"]
    assert body["licence"]["summary"].startswith("Commercial use is allowed.")
    assert "10,000 calls a month" in body["licence"]["summary"]
    assert body["tags"] == ["contracts", "risk"]
    assert body["proposed_evaluation"]["metrics"]["accuracy"] == 0.9
    assert Listing.objects.get(slug=body["slug"]).owner == alice


def test_listing_life_cycle_through_the_api(alice, carol, api):
    client = api(alice)
    slug = client.post("/api/v1/listings", create_body(make_version(alice)), format="json").json()[
        "slug"
    ]

    submitted = client.post(f"/api/v1/listings/{slug}/submit")
    assert submitted.json()["status"] == "in_review"
    edit = client.patch(f"/api/v1/listings/{slug}", {"title": "New"}, format="json")
    assert edit.status_code == 409
    assert edit.json()["error"]["code"] == "listing_not_editable"

    services.listing_reject(
        moderator=carol, listing_id=Listing.objects.get(slug=slug).id, reason="Add risk notes."
    )
    mine = client.get(f"/api/v1/listings/{slug}").json()
    assert mine["status"] == "rejected"
    assert mine["moderation_history"][-1] == {
        "action": "reject", "reason": "Add risk notes.",
        "created_at": mine["moderation_history"][-1]["created_at"],
    }  # fmt: skip
    assert client.patch(
        f"/api/v1/listings/{slug}", {"risk_notes": "Not for medical use."}, format="json"
    ).status_code == 200  # fmt: skip
    assert client.post(f"/api/v1/listings/{slug}/submit").json()["status"] == "in_review"
    services.listing_approve(moderator=carol, listing_id=Listing.objects.get(slug=slug).id)

    public = api().get(f"/api/v1/listings/{slug}").json()
    assert public["status"] == "published"
    assert public["versions"][0]["name"] == f"{slug}@1"
    strongest = public["evaluation"]["strongest_baseline"]
    assert strongest["name"] == "generalist_zero_shot" and strongest["lift"]["delta"] == 0.3
    assert public["evaluation"]["is_legacy"] is True  # the fixture is a version 1 report
    assert public["lift_over_strongest_baseline"] == {
        "delta": 0.3, "ci_low": 0.26, "ci_high": 0.34,
        "baseline": "generalist_zero_shot", "label": "Generalist: zero-shot",
    }  # fmt: skip
    assert "moderation_history" not in public


def test_new_version_goes_to_review_while_the_live_one_keeps_serving(alice, carol, api, published):
    newer = make_version(alice, accuracy=0.95)
    client = api(alice)

    response = client.post(
        f"/api/v1/listings/{published.slug}/versions",
        {"model_version": str(newer.id)},
        format="json",
    )

    assert response.status_code == 200
    public = api().get(f"/api/v1/listings/{published.slug}").json()
    assert public["status"] == "published"
    assert public["evaluation"]["metrics"]["accuracy"] == 0.9  # still the live version
    services.listing_version_approve(moderator=carol, listing_id=published.id)
    public = api().get(f"/api/v1/listings/{published.slug}").json()
    assert public["evaluation"]["metrics"]["accuracy"] == 0.95
    assert [(v["number"], v["status"]) for v in public["versions"]] == [
        (1, "retired"), (2, "live"),
    ]  # fmt: skip


def test_proposing_the_live_or_a_retired_version_again_is_409(alice, carol, api, published):
    first = published.live_version
    newer = make_version(alice, accuracy=0.95)
    client = api(alice)
    client.post(
        f"/api/v1/listings/{published.slug}/versions", {"model_version": str(newer.id)},
        format="json",
    )  # fmt: skip
    services.listing_version_approve(moderator=carol, listing_id=published.id)

    live_again = client.post(
        f"/api/v1/listings/{published.slug}/versions", {"model_version": str(newer.id)},
        format="json",
    )  # fmt: skip
    retired_again = client.post(
        f"/api/v1/listings/{published.slug}/versions", {"model_version": str(first.id)},
        format="json",
    )  # fmt: skip

    assert live_again.status_code == retired_again.status_code == 409
    assert live_again.json()["error"]["code"] == "version_already_listed"
    assert "@2" in live_again.json()["error"]["message"]
    assert "@1" in retired_again.json()["error"]["message"]
    published.refresh_from_db()
    assert published.proposed_version is None and published.live_version == newer
    assert published.versions.count() == 2


@pytest.mark.parametrize(
    ("action", "state"),
    [
        (lambda s, alice, carol, listing: services.listing_submit(owner=alice,
         listing_id=listing.id), "published"),
        (lambda s, alice, carol, listing: services.listing_approve(moderator=carol,
         listing_id=listing.id), "published"),
        (lambda s, alice, carol, listing: services.listing_reinstate(moderator=carol,
         listing_id=listing.id), "published"),
        (lambda s, alice, carol, listing: services.listing_reject(moderator=carol,
         listing_id=listing.id, reason="x"), "published"),
    ],
)  # fmt: skip
def test_transitions_that_are_not_allowed_are_409(alice, carol, published, action, state):
    from marketplace.errors import ConflictError

    with pytest.raises(ConflictError) as raised:
        action(services, alice, carol, published)

    assert raised.value.status == 409
    published.refresh_from_db()
    assert published.status == state


def test_submit_twice_over_the_api_is_409_in_the_error_contract(alice, api):
    client = api(alice)
    slug = client.post("/api/v1/listings", create_body(make_version(alice)), format="json").json()[
        "slug"
    ]
    client.post(f"/api/v1/listings/{slug}/submit")

    again = client.post(f"/api/v1/listings/{slug}/submit")

    assert again.status_code == 409
    assert again.json()["error"]["code"] == "invalid_listing_transition"


def test_permission_matrix_for_mallory(alice, mallory, api, published):
    draft = make_listing(alice, title="Secret draft")
    client = api(mallory)

    assert client.get(f"/api/v1/listings/{draft.slug}").status_code == 404
    assert client.patch(
        f"/api/v1/listings/{draft.slug}", {"title": "pwned"}, format="json"
    ).status_code == 404  # fmt: skip
    assert client.post(f"/api/v1/listings/{draft.slug}/submit").status_code == 404
    assert client.post(f"/api/v1/listings/{published.slug}/delist").status_code == 404
    assert client.post(
        f"/api/v1/listings/{published.slug}/versions",
        {"model_version": str(published.live_version_id)}, format="json",
    ).status_code == 404  # fmt: skip
    not_an_expert = client.post(
        "/api/v1/listings", create_body(published.live_version), format="json"
    )
    assert not_an_expert.status_code == 403
    assert not_an_expert.json()["error"]["code"] == "not_an_expert"
    assert [x["slug"] for x in client.get("/api/v1/listings").json()["data"]] == [published.slug]
    assert client.get("/api/v1/listings/mine").json()["data"] == []
    draft.refresh_from_db()
    assert draft.title == "Secret draft" and draft.status == "draft"
    with pytest.raises(Exception) as raised:
        services.listing_approve(moderator=mallory, listing_id=draft.id)
    assert getattr(raised.value, "code", "") == "not_a_moderator"


def test_expert_cannot_use_another_experts_version(alice, api, db):
    from tests.conftest import make_user

    eve = make_user("eve@example.com", is_expert=True)
    response = api(eve).post("/api/v1/listings", create_body(make_version(alice)), format="json")

    assert response.status_code == 422
    assert "model_version" in response.json()["error"]["fields"]


def test_bob_cannot_review_without_a_licence_and_can_with_one(bob, alice, api, published):
    client = api(bob)
    denied = client.post(f"/api/v1/listings/{published.slug}/reviews", {"rating": 5}, format="json")
    assert denied.status_code == 403
    assert denied.json()["error"]["code"] == "review_not_allowed"

    services.entitlement_grant(listing=published, user=bob, reference="licence-1")
    first = client.post(
        f"/api/v1/listings/{published.slug}/reviews", {"rating": 4, "text": "Good"}, format="json"
    )
    edited = client.post(
        f"/api/v1/listings/{published.slug}/reviews", {"rating": 2, "text": "Hm"}, format="json"
    )

    assert first.status_code == edited.status_code == 200
    assert Review.objects.filter(listing=published).count() == 1
    listing = api().get(f"/api/v1/listings/{published.slug}").json()
    assert listing["rating"] == {"average": 2.0, "count": 1}
    assert listing["popularity"] == 1

    review_id = edited.json()["id"]
    reply = api(alice).post(
        f"/api/v1/listings/{published.slug}/reviews/{review_id}/reply",
        {"text": "Thanks"}, format="json",
    )  # fmt: skip
    again = api(alice).post(
        f"/api/v1/listings/{published.slug}/reviews/{review_id}/reply",
        {"text": "Again"}, format="json",
    )  # fmt: skip
    assert reply.status_code == 200 and reply.json()["reply"] == "Thanks"
    assert again.status_code == 409
    assert api(bob).post(
        f"/api/v1/listings/{published.slug}/reviews/{review_id}/reply",
        {"text": "me too"}, format="json",
    ).status_code == 404  # fmt: skip


@pytest.mark.parametrize(
    ("body", "field"),
    [({"reason": "because"}, "reason"), ({"reason": "spam", "text": "x" * 5001}, "text")],
)
def test_report_rules_are_the_services_own(mallory, api, published, body, field):
    from marketplace.errors import ApplicationError

    response = api(mallory).post(f"/api/v1/listings/{published.slug}/reports", body, format="json")
    with pytest.raises(ApplicationError) as raised:
        services.report_create(reporter=mallory, listing=published, **body)

    assert response.status_code == 422 and raised.value.status == 422
    assert response.json()["error"]["message"] == raised.value.message
    assert list(response.json()["error"]["fields"]) == [field] == list(raised.value.fields)
    assert Report.objects.count() == 0


def test_anyone_signed_in_can_report_a_listing(mallory, api, published):
    response = api(mallory).post(
        f"/api/v1/listings/{published.slug}/reports",
        {"reason": "misleading_evaluation", "text": "Too good to be true"},
        format="json",
    )

    assert response.status_code == 201
    report = Report.objects.get()
    assert (report.reporter, report.status, report.listing) == (mallory, "open", published)
    assert api().post(
        f"/api/v1/listings/{published.slug}/reports", {"reason": "spam"}, format="json"
    ).status_code == 401  # fmt: skip


def test_catalogue_hides_suspended_listings_and_suspended_owners(alice, carol, api, published):
    assert len(api().get("/api/v1/listings").json()["data"]) == 1
    services.listing_suspend(moderator=carol, listing_id=published.id, reason="Under review")
    assert api().get("/api/v1/listings").json()["data"] == []
    assert api().get(f"/api/v1/listings/{published.slug}").status_code == 404
    services.listing_reinstate(moderator=carol, listing_id=published.id)
    services.user_suspend(moderator=carol, user=alice, reason="Fraud")
    assert api().get("/api/v1/listings").json()["data"] == []
    assert ModerationAction.objects.filter(actor=carol).count() == 4  # approve incl.


def test_catalogue_list_query_count_does_not_grow_with_listings(alice, carol, api):
    client = api()
    make_listing(alice, moderator=carol, title="One")
    with CaptureQueriesContext(connection) as few:
        assert len(client.get("/api/v1/listings").json()["data"]) == 1
    for n in range(6):
        make_listing(alice, moderator=carol, title=f"More {n}")
    with CaptureQueriesContext(connection) as many:
        assert len(client.get("/api/v1/listings").json()["data"]) == 7

    assert len(many.captured_queries) == len(few.captured_queries)


def test_filters_sorts_and_cursor_pages(alice, carol, api):
    weak = make_listing(alice, moderator=carol, title="Weak", accuracy=0.7, generalist=0.65)
    strong = make_listing(
        alice, moderator=carol, title="Strong", accuracy=0.95, generalist=0.5, domain="finance",
        commercial_use=True,
    )  # fmt: skip
    middle = make_listing(alice, moderator=carol, title="Middle", accuracy=0.8, generalist=0.6)
    client = api()

    by_lift = client.get("/api/v1/listings?sort=best_lift").json()["data"]
    assert [x["slug"] for x in by_lift] == [strong.slug, middle.slug, weak.slug]
    assert [x["slug"] for x in client.get("/api/v1/listings?min_lift=0.15").json()["data"]] == [
        middle.slug, strong.slug,
    ]  # newest first by default  # fmt: skip
    assert [x["slug"] for x in client.get("/api/v1/listings?domain=finance").json()["data"]] == [
        strong.slug
    ]
    assert [
        x["slug"] for x in client.get("/api/v1/listings?commercial_use=true").json()["data"]
    ] == [strong.slug]

    first = client.get("/api/v1/listings?sort=best_lift&limit=2").json()
    second = client.get(
        f"/api/v1/listings?sort=best_lift&limit=2&cursor={first['next_cursor']}"
    ).json()
    assert [x["slug"] for x in first["data"]] == [strong.slug, middle.slug]
    assert first["has_more"] is True
    assert [x["slug"] for x in second["data"]] == [weak.slug]
    assert second["has_more"] is False and second["next_cursor"] is None
    newest = client.get("/api/v1/listings").json()["data"]
    assert [x["slug"] for x in newest] == [middle.slug, strong.slug, weak.slug]


def test_bad_catalogue_parameters_are_422(db, api):
    client = api()
    assert client.get("/api/v1/listings?sort=cheapest").status_code == 422
    assert client.get("/api/v1/listings?limit=0").status_code == 422
    assert client.get("/api/v1/listings?cursor=!!!").status_code == 422
    assert client.get("/api/v1/listings?min_lift=lots").status_code == 422


@pytest.mark.parametrize("name", ["q", "domain", "tag", "task"])
def test_catalogue_parameters_with_a_nul_character_are_422(db, api, name):
    response = api().get(f"/api/v1/listings?{name}=fraud%00")

    assert response.status_code == 422
    assert response.json()["error"]["fields"] == {name: ["No NUL characters."]}


def crafted(payload) -> str:
    import base64
    import json

    return base64.urlsafe_b64encode(json.dumps(payload).encode()).decode().rstrip("=")


@pytest.mark.parametrize(
    ("sort", "payload"),
    [
        ("relevance", {"offset": "ten"}),
        ("relevance", {"offset": -5}),
        ("relevance", {"offset": None}),
        ("relevance", {"offset": {"$gt": 0}}),
        ("relevance", {"offset": 1.5}),
        ("relevance", {"offset": True}),
        ("relevance", {}),
        ("relevance", {"value": 0.2, "id": "6a0c6cf1-7b9a-4c84-8f6d-0d5ef3b1e0a1"}),
        ("best_lift", {"value": 0.2, "id": "not-a-uuid"}),
        ("best_lift", {"value": 0.2, "id": None}),
        ("best_lift", {"value": "lots", "id": "6a0c6cf1-7b9a-4c84-8f6d-0d5ef3b1e0a1"}),
        ("best_lift", {"value": [1], "id": "6a0c6cf1-7b9a-4c84-8f6d-0d5ef3b1e0a1"}),
        ("popularity", {"value": 2.5, "id": "6a0c6cf1-7b9a-4c84-8f6d-0d5ef3b1e0a1"}),
        ("newest", {"value": "yesterday", "id": "6a0c6cf1-7b9a-4c84-8f6d-0d5ef3b1e0a1"}),
        ("newest", {"offset": 20}),
    ],
)
def test_crafted_catalogue_cursors_are_422(alice, carol, api, sort, payload):
    make_listing(alice, moderator=carol, title="One")
    query = f"sort={sort}&q=radiology" if sort == "relevance" else f"sort={sort}"

    response = api().get(f"/api/v1/listings?{query}&cursor={crafted(payload)}")

    assert response.status_code == 422
    assert response.json()["error"]["fields"] == {"cursor": ["Invalid."]}


def test_cursors_the_catalogue_hands_out_still_work_for_every_sort(alice, carol, api):
    for n in range(3):
        make_listing(alice, moderator=carol, title=f"Radiology {n}")
    client = api()

    for query in ("q=radiology", "sort=newest", "sort=best_lift", "sort=rating",
                  "sort=popularity"):  # fmt: skip
        first = client.get(f"/api/v1/listings?{query}&limit=2").json()
        rest = client.get(f"/api/v1/listings?{query}&limit=2&cursor={first['next_cursor']}")

        assert rest.status_code == 200, (query, rest.json())
        slugs = [x["slug"] for x in first["data"] + rest.json()["data"]]
        assert len(set(slugs)) == 3, query


@pytest.mark.skipif(connection.vendor != "postgresql", reason="full-text search is Postgres")
def test_postgres_full_text_search_ranks_title_matches_first(alice, carol, api):
    in_title = make_listing(alice, moderator=carol, title="Invoice fraud detector")
    in_text = make_listing(
        alice, moderator=carol, title="Payments helper",
        description="Also catches some fraud in invoices.",
    )  # fmt: skip
    make_listing(alice, moderator=carol, title="Radiology triage")

    found = api().get("/api/v1/listings?q=fraud").json()["data"]
    stemmed = api().get("/api/v1/listings?q=invoices").json()["data"]

    assert [x["slug"] for x in found] == [in_title.slug, in_text.slug]
    assert {x["slug"] for x in stemmed} == {in_title.slug, in_text.slug}


def test_search_fallback_matches_substrings(alice, carol, api):
    target = make_listing(alice, moderator=carol, title="Invoice fraud detector")
    make_listing(alice, moderator=carol, title="Radiology triage")

    found = api().get("/api/v1/listings?q=fraud").json()["data"]

    assert [x["slug"] for x in found] == [target.slug]


def test_expert_summary_shows_the_verified_badge(alice, carol, api, published):
    assert api().get(f"/api/v1/listings/{published.slug}").json()["expert"]["verified"] is False
    services.expert_verify(moderator=carol, profile=alice.expert_profile, note="Board certified")

    expert = api().get(f"/api/v1/listings/{published.slug}").json()["expert"]

    assert expert == {"name": "Alice", "verified": True, "headline": "Radiologist"}
    assert (
        api().get(f"/api/v1/listings/{published.slug}").json()["status"] == ListingStatus.PUBLISHED
    )
