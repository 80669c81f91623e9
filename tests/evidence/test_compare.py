"""Compare 2-4 listings side by side (API and portal): verified scores with their intervals
and lifts, licence terms, offers and the cost of 1,000 calls, latency from the gateway's
histogram, and the caller's own private evaluations, never another buyer's.

alice (expert) sells, bob buys, carol moderates, mallory is another buyer.
"""

import uuid

import pytest
from django.test import Client
from django.utils import timezone

from billing.models import OfferKind
from evidence.compare import quantile_from_buckets
from evidence.models import (
    CandidateCharge,
    EvaluationStatus,
    PrivateEvaluation,
    PrivateEvaluationCandidate,
)
from listings import gardens, services
from listings.models import Listing
from marketplace.metrics import observe_inference
from tests.billing.conftest import make_offer
from tests.conftest import make_user
from tests.listings.conftest import generation_evaluation, make_listing

pytestmark = pytest.mark.django_db

OVERLAP = "these intervals overlap: the evaluations cannot tell these two apart"


@pytest.fixture
def shelf(alice, carol):
    """Three published classification listings. Sealed accuracy intervals (±0.05): close
    [0.85, 0.95] and near [0.83, 0.93] overlap; far [0.55, 0.65] stands apart."""
    close = make_listing(
        alice, moderator=carol, title="Ticket triage", accuracy=0.90, commercial_use=True,
        on_prem_download=True,
    )  # fmt: skip
    make_offer(close, OfferKind.PER_CALL, unit_amount=200)
    make_offer(close, OfferKind.SUBSCRIPTION, unit_amount=4900, included_calls=10_000)
    near = make_listing(
        alice, moderator=carol, title="Support router", accuracy=0.88, max_calls_per_month=50_000
    )
    make_offer(
        near, OfferKind.SUBSCRIPTION, unit_amount=900, included_calls=500, overage="bill",
        overage_unit_amount=300,
    )  # fmt: skip
    make_offer(near, OfferKind.FREE_TRIAL, included_calls=100)
    far = make_listing(alice, moderator=carol, title="Cheap sorter", accuracy=0.60, generalist=0.4)
    return {"close": close, "near": near, "far": far}


def compare(client, *listings, **extra):
    return client.get("/api/v1/compare", {"listings": ",".join(x.slug for x in listings), **extra})


def by_slug(body: dict) -> dict[str, dict]:
    return {x["slug"]: x for x in body["listings"]}


# --- the side-by-side ---------------------------------------------------------------------


def test_anyone_reads_scores_licences_offers_and_costs_side_by_side(api, shelf):
    close, near = shelf["close"], shelf["near"]

    response = compare(api(), close, near)

    assert response.status_code == 200, response.json()
    body = response.json()
    assert body["object"] == "comparison"
    assert [x["slug"] for x in body["listings"]] == [close.slug, near.slug]  # as named
    assert body["task"] == "text-classification" and body["tasks_differ"] is False
    first, second = by_slug(body)[close.slug], by_slug(body)[near.slug]

    # Verified score: the sealed evaluation's headline, its interval and the lift over the
    # strongest baseline (the generalist, 0.6), named, as the listing's page shows them.
    verified = first["verified"]
    assert verified["metric"] == "accuracy" and verified["value"] == 0.9
    assert (verified["ci_low"], verified["ci_high"]) == pytest.approx((0.85, 0.95))
    assert verified["sealed_rows"] == 200
    assert verified["lift"] == pytest.approx(0.3)
    assert (verified["lift_ci_low"], verified["lift_ci_high"]) == pytest.approx((0.26, 0.34))
    assert verified["lift_baseline"] == "generalist_zero_shot"
    assert "Accuracy 90.0% on 200 sealed test rows" in verified["summary"]
    assert "likely between 85.0% and 95.0% (95% interval)" in verified["summary"]
    assert verified["lift_summary"].startswith("Better than the strongest simple alternative")
    assert "by 30.0 points" in verified["lift_summary"]

    # Licence terms, machine-readable and in words.
    assert first["licence"]["commercial_use"] is True
    assert first["licence"]["on_prem_download"] is True
    assert second["licence"]["max_calls_per_month"] == 50_000
    assert "Not for commercial use." in second["licence"]["plain"]
    assert "At most 50,000 calls a month." in second["licence"]["plain"]

    # Offers, and what 1,000 calls in a month cost at each (minor units).
    costs = {o["kind"]: o["cost_of_1000_calls"] for o in first["offers"]}
    assert costs == {"per_call": 200, "subscription": 4900}
    near_offers = {o["kind"]: o for o in second["offers"]}
    # 500 calls included, the other 500 billed at 3.00 per 1,000: 9.00 + 1.50
    assert near_offers["subscription"]["cost_of_1000_calls"] == 1050
    assert near_offers["free_trial"]["cost_of_1000_calls"] is None
    assert "fewer than 1,000" in near_offers["free_trial"]["explained"]

    # No call yet: no latency to show.
    assert first["latency"] == {
        "calls": 0, "p50_ms": None, "p95_ms": None,
        "summary": "Not enough calls yet to say how fast it answers.",
    }  # fmt: skip

    # Anonymous: no private rows, and it says how to see them.
    assert body["private_evaluations_included"] is False
    assert first["private_scores"] == []
    assert "Sign in" in body["private_evaluations_note"]


def test_a_download_and_a_small_quota_say_why_1000_calls_have_no_price(api, alice, carol):
    capped = make_listing(alice, moderator=carol, title="Capped", max_calls_per_month=800)
    make_offer(capped, OfferKind.PER_CALL, unit_amount=200)
    local = make_listing(alice, moderator=carol, title="Local", on_prem_download=True)
    make_offer(local, OfferKind.DOWNLOAD, unit_amount=25_000)
    make_offer(local, OfferKind.SUBSCRIPTION, unit_amount=900, included_calls=200)

    body = compare(api(), capped, local).json()

    (capped_offer,) = by_slug(body)[capped.slug]["offers"]
    assert capped_offer["cost_of_1000_calls"] is None
    assert "at most 800 calls a month" in capped_offer["explained"]
    local_offers = {o["kind"]: o for o in by_slug(body)[local.slug]["offers"]}
    assert local_offers["download"]["cost_of_1000_calls"] is None
    assert "your own machines" in local_offers["download"]["explained"]
    assert local_offers["subscription"]["cost_of_1000_calls"] is None
    assert "refused" in local_offers["subscription"]["explained"]


# --- overlap, in words; never a winner ------------------------------------------------------


def test_overlapping_intervals_are_said_to_be_indistinguishable(api, shelf):
    close, near = shelf["close"], shelf["near"]

    body = compare(api(), close, near).json()

    (verdict,) = body["verdicts"]
    assert (verdict["a"], verdict["b"], verdict["source"]) == (close.slug, near.slug, "sealed")
    assert verdict["overlap"] is True
    assert OVERLAP in verdict["summary"]
    # Sealed splits differ: it says so and points to the like-for-like evidence.
    (note,) = body["notes"]
    assert "not directly comparable" in note
    assert "private evaluation" in note and "leaderboards" in note
    assert body["like_for_like"] == {
        "private_evaluation": "/api/v1/evaluations", "leaderboards": "/api/v1/leaderboards",
    }  # fmt: skip


def test_apart_intervals_still_crown_no_winner(api, shelf):
    close, far = shelf["close"], shelf["far"]

    (verdict,) = compare(api(), far, close).json()["verdicts"]

    assert verdict["overlap"] is False
    assert verdict["summary"] == (
        "Ticket triage's interval lies above Cheap sorter's, but each was measured on its own "
        "expert's sealed rows: this does not show which would do better on your data."
    )


def test_the_portal_page_says_it_in_words_and_draws_the_intervals(shelf):
    close, near, far = shelf["close"], shelf["near"], shelf["far"]

    response = Client().get("/compare/", {"listings": f"{close.slug},{near.slug},{far.slug}"})

    assert response.status_code == 200
    page = response.content.decode()
    assert OVERLAP in page  # close and near
    assert page.count('data-overlap="true"') == 1
    assert page.count('data-overlap="false"') == 2  # far against each
    assert "not directly comparable" in page
    for word in ("winner", "Winner", "best choice"):
        assert word not in page
    chart = page[page.index('data-testid="compare-sealed-chart"') :]
    chart = chart[: chart.index("</svg>")]
    assert chart.count('data-bar="listing"') == 3
    assert chart.count("<line x1=") == 3 * 3 + 1  # three whiskers and the axis
    assert 'data-listing="ticket-triage"' in page
    assert '1,000 calls: <strong data-testid="cost-1000">2.00 USD</strong>' in page
    assert "10.50 USD" in page  # the near listing's subscription with overage
    assert "Not enough calls yet" in page
    # The table scrolls inside its own box on a narrow screen.
    assert 'data-testid="compare-table-box"' in page and "overflow-x:auto" in page


def test_listings_of_another_task_are_flagged_and_not_compared(api, alice, carol, shelf):
    writer = make_listing(alice, moderator=carol, title="Clause writer")
    Listing.objects.filter(pk=writer.pk).update(task="text-generation")
    writer.live_version.task = "text-generation"
    writer.live_version.evaluation = generation_evaluation()
    writer.live_version.save(update_fields=["task", "evaluation"])

    body = compare(api(), shelf["close"], writer).json()

    assert body["tasks_differ"] is True
    assert by_slug(body)[writer.slug]["same_task"] is False
    (note,) = body["task_notes"]
    assert note.startswith("Clause writer is a text-generation model, unlike Ticket triage")
    assert body["verdicts"] == []  # exact match and accuracy are not set side by side
    assert by_slug(body)[writer.slug]["verified"]["metric"] == "exact_match"


def test_a_garden_shows_its_members_scores_not_one_of_its_own(api, alice, carol, shelf):
    for member in (shelf["close"], shelf["near"]):
        gardens.listing_set_composable(owner=alice, listing_id=member.pk, composable=True)
    cy = make_user("cy@example.com", display_name="Cy", is_expert=True)
    garden = gardens.garden_create(
        curator=cy, kind="router", members=[shelf["close"].slug, shelf["near"].slug],
        title="Triage garden", summary="Each ticket to its best model.", domain="healthcare",
    )  # fmt: skip
    services.listing_submit(owner=cy, listing_id=garden.pk)
    services.listing_approve(moderator=carol, listing_id=garden.pk)

    body = compare(api(), garden, shelf["far"]).json()

    shown = by_slug(body)[garden.slug]
    assert shown["kind"] == "garden" and shown["verified"] is None
    assert "no sealed evaluation of its own" in shown["verified_note"]
    assert [m["slug"] for m in shown["garden_members"]] == [shelf["close"].slug, shelf["near"].slug]
    assert shown["garden_members"][0]["verified"]["value"] == 0.9
    assert body["verdicts"] == []  # a garden's interval is not its members'
    page = Client().get("/compare/", {"listings": f"{garden.slug},{shelf['far'].slug}"})
    assert 'data-testid="garden-badge"' in page.content.decode()


# --- bad input: the one error shape, a friendly page --------------------------------------


@pytest.mark.parametrize(
    "names, says",
    [
        ("", "Choose 2 to 4 listings to compare (0 were chosen)"),
        ("ticket-triage", "Choose 2 to 4 listings to compare (1 was chosen)"),
        (
            "ticket-triage,support-router,cheap-sorter,a,b",
            "at most 4 listings at a time (5 were chosen)",
        ),
        ("ticket-triage,support-router,ticket-triage", "ticket-triage appears more than once"),
        ("ticket-triage,no-such-model", "No published listing is named no-such-model"),
    ],
)
def test_bad_input_is_one_422_shape_and_a_friendly_page(api, shelf, names, says):
    response = api().get("/api/v1/compare", {"listings": names})

    assert response.status_code == 422
    error = response.json()["error"]
    assert error["code"] == "invalid_comparison"
    assert says in error["message"]
    assert error["fields"] == {"listings": [error["message"]]}

    page = Client().get("/compare/", {"listings": names})
    if names:
        assert page.status_code == 422
        assert says in page.content.decode()
        assert 'id="compare-error"' in page.content.decode()
    else:  # nothing named: the page explains how to compare
        assert page.status_code == 200 and 'id="compare-intro"' in page.content.decode()


def test_an_unpublished_listing_reads_as_unknown(api, alice, shelf):
    draft = make_listing(alice, title="Secret draft")  # never submitted
    suspended = shelf["far"]
    Listing.objects.filter(pk=suspended.pk).update(status="suspended")

    for hidden in (draft, suspended):
        response = compare(api(alice), shelf["close"], hidden)  # even to its own expert
        assert response.status_code == 422
        assert response.json()["error"]["message"].startswith(
            f"No published listing is named {hidden.slug}:"
        )


def test_repeated_parameters_work_as_the_catalogue_boxes_send_them(api, shelf):
    response = api().get("/api/v1/compare", {"listings": [shelf["close"].slug, shelf["near"].slug]})

    assert response.status_code == 200
    assert [x["slug"] for x in response.json()["listings"]] == [
        shelf["close"].slug, shelf["near"].slug,
    ]  # fmt: skip


# --- the caller's own private evaluations, never another's ---------------------------------


def private_evaluation(owner, listings, values, *, separated=False) -> PrivateEvaluation:
    """A succeeded evaluation of `listings` on the owner's rows, its result as the scoring
    writes it (evidence.scoring.score_rows)."""
    contenders = [
        {"key": f"listing:{x.slug}", "label": x.title, "value": value,
         "ci_low": round(value - 0.04, 4), "ci_high": round(value + 0.04, 4),
         "rows_scored": 120, "errors": 0, "latency_ms_per_row": {"mean": 41.5, "p95": 80.0}}
        for x, value in zip(listings, values, strict=True)
    ] + [
        {"key": "generalist", "label": "Generalist", "value": 0.5, "ci_low": 0.41,
         "ci_high": 0.59, "rows_scored": 120, "errors": 0,
         "latency_ms_per_row": {"mean": 60.0, "p95": 90.0}},
    ]  # fmt: skip
    delta = round(values[0] - values[1], 4)
    pairs = [
        {"a": f"listing:{listings[0].slug}", "b": f"listing:{listings[1].slug}", "delta": delta,
         "ci_low": round(delta - (0.02 if separated else 0.08), 4),
         "ci_high": round(delta + 0.02, 4), "separated": separated},
        {"a": f"listing:{listings[0].slug}", "b": "generalist", "delta": 0.3, "ci_low": 0.2,
         "ci_high": 0.4, "separated": True},
    ]  # fmt: skip
    evaluation = PrivateEvaluation.objects.create(
        owner=owner, task="text-classification", status=EvaluationStatus.SUCCEEDED,
        filename="my rows.csv", row_count=120, finished_at=timezone.now(),
        result={
            "task": "text-classification", "rows": 120,
            "metric": {"name": "accuracy", "label": "Accuracy", "higher_is_better": True},
            "contenders": contenders, "pairs": pairs, "warnings": [],
        },
    )  # fmt: skip
    for position, listing in enumerate(listings):
        PrivateEvaluationCandidate.objects.create(
            evaluation=evaluation, listing=listing, version=listing.live_version,
            position=position, charge=CandidateCharge.FREE,
        )  # fmt: skip
    return evaluation


@pytest.fixture
def evaluations(bob, mallory, shelf):
    """bob's evaluation of close and near, and mallory's of the same two (other values)."""
    close, near = shelf["close"], shelf["near"]
    return {
        "bob": private_evaluation(bob, [close, near], [0.8125, 0.7875]),
        "mallory": private_evaluation(mallory, [close, near], [0.6375, 0.9125], separated=True),
    }


def test_bob_sees_his_own_private_evaluations_and_never_mallorys(api, bob, shelf, evaluations):
    close, near = shelf["close"], shelf["near"]

    response = compare(api(bob, scopes=["read"]), close, near)

    body = response.json()
    assert body["private_evaluations_included"] is True
    (score,) = by_slug(body)[close.slug]["private_scores"]
    assert score["evaluation_id"] == evaluations["bob"].id
    assert (score["value"], score["ci_low"], score["ci_high"]) == (0.8125, 0.7725, 0.8525)
    assert score["rows"] == 120 and score["latency_ms_mean"] == 41.5
    assert "On your 120 rows" in score["summary"] and "81.2%" in score["summary"]
    # The paired difference between the two, on the same rows of his: like for like.
    private = [v for v in body["verdicts"] if v["source"] == "private"]
    assert len(private) == 1  # the pair with the generalist is not a compared listing
    assert private[0]["overlap"] is True
    assert "cannot be told apart" in private[0]["summary"]
    text = response.content.decode()
    assert evaluations["mallory"].id not in text
    assert "0.6375" not in text and "63.8%" not in text and "91.2%" not in text


def test_mallory_sees_only_hers(api, mallory, shelf, evaluations):
    body = compare(api(mallory), shelf["close"], shelf["near"]).json()

    ids = {s["evaluation_id"] for x in body["listings"] for s in x["private_scores"]}
    assert ids == {evaluations["mallory"].id}
    (verdict,) = [v for v in body["verdicts"] if v["source"] == "private"]
    assert verdict["overlap"] is False
    assert verdict["summary"].startswith(
        "On the same 120 rows of yours, Support router scored better than Ticket triage by "
        "27.5 points"
    )


def test_the_expert_sees_no_buyers_evaluation_of_her_listings(api, alice, shelf, evaluations):
    body = compare(api(alice), shelf["close"], shelf["near"]).json()

    assert all(x["private_scores"] == [] for x in body["listings"])
    assert [v for v in body["verdicts"] if v["source"] == "private"] == []
    assert "no finished private evaluation" in body["private_evaluations_note"]


@pytest.mark.parametrize("scopes", [["infer"], ["train"]])
def test_a_key_without_the_read_scope_gets_the_catalogue_parts_only(
    api, bob, shelf, evaluations, scopes
):
    response = compare(api(bob, scopes=scopes), shelf["close"], shelf["near"])

    assert response.status_code == 200
    body = response.json()
    assert body["private_evaluations_included"] is False
    assert all(x["private_scores"] == [] for x in body["listings"])
    assert "read scope" in body["private_evaluations_note"]
    assert evaluations["bob"].id not in response.content.decode()


def test_an_unfinished_or_failed_evaluation_is_not_shown(api, bob, shelf, evaluations):
    PrivateEvaluation.objects.filter(pk=evaluations["bob"].pk).update(
        status=EvaluationStatus.RUNNING
    )

    body = compare(api(bob), shelf["close"], shelf["near"]).json()

    assert all(x["private_scores"] == [] for x in body["listings"])


def test_the_portal_shows_bob_his_rows_and_not_mallorys(bob, shelf, evaluations):
    client = Client()
    client.force_login(bob)

    page = client.get(
        "/compare/", {"listings": f"{shelf['close'].slug},{shelf['near'].slug}"}
    ).content.decode()

    assert 'data-testid="private-ticket-triage"' in page
    assert "On your 120 rows" in page and "81.2%" in page
    assert 'data-testid="compare-private-chart"' in page
    assert "63.8%" not in page and "91.2%" not in page
    assert evaluations["mallory"].id not in page
    anonymous = (
        Client()
        .get("/compare/", {"listings": f"{shelf['close'].slug},{shelf['near'].slug}"})
        .content.decode()
    )
    assert "On your 120 rows" not in anonymous
    assert "Sign in to see your own private evaluations" in anonymous


# --- latency, from the gateway's per-listing histogram ---------------------------------------


def test_latency_percentiles_come_from_the_histogram_buckets(api, alice, carol, shelf):
    # A fresh slug: the process's histogram outlives each test's database.
    timed = make_listing(alice, moderator=carol, title=f"Timed {uuid.uuid4().hex[:8]}")
    for _ in range(30):
        observe_inference(
            task="text-classification", latency_s=0.03, engine_s=0.01, batch_size=1,
            listing=timed.slug,
        )  # fmt: skip
    for _ in range(10):
        observe_inference(
            task="text-classification", latency_s=0.4, engine_s=0.01, batch_size=1,
            listing=timed.slug,
        )  # fmt: skip

    latency = by_slug(compare(api(), timed, shelf["close"]).json())[timed.slug]["latency"]

    # 40 calls: 30 in (0.025, 0.05], 10 in (0.25, 0.5]. p50 is the 20th call: 0.025 +
    # 0.025 * 20/30; p95 the 38th: 0.25 + 0.25 * 8/10.
    assert latency["calls"] == 40
    assert latency["p50_ms"] == pytest.approx(41.7, abs=0.1)
    assert latency["p95_ms"] == pytest.approx(450.0, abs=0.1)
    assert latency["summary"].startswith("Half of its calls were answered within 42 ms")


def test_a_few_calls_are_not_enough_to_say(api, alice, carol, shelf):
    timed = make_listing(alice, moderator=carol, title=f"Few {uuid.uuid4().hex[:8]}")
    for _ in range(3):
        observe_inference(
            task="text-classification", latency_s=0.03, engine_s=0.01, batch_size=1,
            listing=timed.slug,
        )  # fmt: skip

    latency = by_slug(compare(api(), timed, shelf["close"]).json())[timed.slug]["latency"]

    assert latency["p50_ms"] is None
    assert latency["summary"] == "Not enough calls yet (3 so far) to say how fast it answers."


def test_quantile_from_buckets_follows_prometheus():
    inf = float("inf")
    assert quantile_from_buckets([], 0.5) is None
    assert quantile_from_buckets([(0.1, 0), (inf, 0)], 0.5) is None
    assert quantile_from_buckets([(0.1, 10), (0.2, 20), (inf, 20)], 0.5) == pytest.approx(0.1)
    assert quantile_from_buckets([(0.1, 0), (0.2, 10), (inf, 10)], 0.5) == pytest.approx(0.15)
    # in the +Inf bucket: the highest finite bound
    assert quantile_from_buckets([(0.1, 1), (60.0, 1), (inf, 10)], 0.95) == 60.0


# --- the catalogue's affordance ----------------------------------------------------------------


def test_catalogue_cards_and_the_listing_page_offer_add_to_compare(shelf):
    catalogue = Client().get("/catalogue/").content.decode()

    assert 'id="compare-form"' in catalogue and 'action="/compare/"' in catalogue
    assert catalogue.count('data-testid="add-to-compare"') == 3
    assert f'name="listings" value="{shelf["close"].slug}" form="compare-form"' in catalogue

    listing_page = Client().get(f"/catalogue/{shelf['close'].slug}/").content.decode()
    assert f"/catalogue/?task=text-classification&amp;compare={shelf['close'].slug}" in listing_page
    # From there, the catalogue keeps that listing in the form and drops its own box.
    narrowed = (
        Client()
        .get("/catalogue/", {"task": "text-classification", "compare": shelf["close"].slug})
        .content.decode()
    )
    assert f'<input type="hidden" name="listings" value="{shelf["close"].slug}">' in narrowed
    assert narrowed.count('data-testid="add-to-compare"') == 2
