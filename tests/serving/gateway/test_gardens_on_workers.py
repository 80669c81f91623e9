"""Gardens over HTTP: a live server, a real inference worker process, real routing
signals, the official `openai` client.

alice sells a ticket classifier and a clause writer and lets curators compose them; cy
curates gardens over them and sells each per call. bob licenses the gardens only, never
their members: every call is metered on his garden licence, and its ledger row carries
the split (who answered, the curator, the platform where the generalist answered).
"""

import dataclasses

import openai
import pytest
from django.conf import settings

from billing.models import GardenShare, OfferKind, PlatformUsage, ShareRole, UsageRecord
from listings import gardens, services
from listings.models import Listing
from tests.billing.conftest import make_active_licence, make_offer
from tests.conftest import make_user
from tests.serving.gateway.conftest import key_for
from tests.serving.gateway.test_gateway_on_workers import (  # noqa: F401  (fixtures)
    LABELS,
    inference_worker,
    served_adapters,
)
from tests.serving.gateway.test_router_on_workers import (
    IN_DOMAIN_CLAUSE,
    IN_DOMAIN_TICKET,
    OUT_OF_DOMAIN,
    post,
)
from tests.serving.gateway.test_router_on_workers import market as market

pytestmark = [pytest.mark.integration, pytest.mark.django_db(transaction=True)]


@dataclasses.dataclass
class Gardens:
    triage: Listing  # router garden over the ticket classifier
    drafting: Listing  # router garden over the clause writer
    pipeline: Listing  # the ticket classifier's label picks the clause writer
    cy: object
    bob_key: str


@pytest.fixture
def garden_world(market, alice, bob, carol):
    cy = make_user("cy@example.com", display_name="Cy", is_expert=True)
    for member in (market.tickets, market.clauses):
        gardens.listing_set_composable(owner=alice, listing_id=member.pk, composable=True)

    def publish(**fields):
        garden = gardens.garden_create(
            curator=cy, summary="Composed by Cy.", domain="legal", **fields
        )
        services.listing_submit(owner=cy, listing_id=garden.pk)
        garden = services.listing_approve(moderator=carol, listing_id=garden.pk)
        make_active_licence(bob, make_offer(garden, OfferKind.PER_CALL, unit_amount=2000))
        return garden

    return Gardens(
        triage=publish(title="Triage garden", kind="router", members=[market.tickets.slug]),
        drafting=publish(title="Drafting garden", kind="router", members=[market.clauses.slug]),
        pipeline=publish(
            title="Triage then draft",
            kind="pipeline",
            classifier=market.tickets.slug,
            routes=dict.fromkeys(LABELS, market.clauses.slug),
        ),
        cy=cy,
        bob_key=key_for(bob),
    )


def shares_of(record: UsageRecord) -> list[tuple[str, str | None]]:
    return sorted(
        (s.role, s.listing.slug if s.listing else None)
        for s in GardenShare.objects.filter(usage=record).select_related("listing")
    )


def test_a_router_garden_routes_each_input_among_its_members_on_the_garden_licence(
    live_server, market, garden_world
):
    garden = garden_world.triage
    response = post(
        live_server, f"/api/v1/models/{garden.slug}/predict", garden_world.bob_key,
        {"inputs": [IN_DOMAIN_TICKET, OUT_OF_DOMAIN], "labels": LABELS},
    )  # fmt: skip

    assert response.status_code == 200, response.text
    body = response.json()
    assert body["model"] == garden.slug
    ticket, other = body["predictions"]
    assert ticket["routed_to"] == market.tickets.slug
    assert other["routed_to"] == "niche/generalist"
    assert response.headers["X-Niche-Garden"] == garden.slug
    assert set(response.headers["X-Niche-Listing"].split(",")) == {
        market.tickets.slug, "niche/generalist",
    }  # fmt: skip
    # bob holds no licence on the member: both calls are on his garden licence
    records = UsageRecord.objects.filter(listing=garden).order_by("id")
    assert records.count() == 2 and not PlatformUsage.objects.exists()
    by_answer = {tuple(shares_of(r)) for r in records}
    assert by_answer == {
        (("curator", garden.slug), ("member", market.tickets.slug)),
        (("curator", garden.slug), ("platform", None)),
    }
    assert not UsageRecord.objects.filter(listing=market.tickets).exists()


def test_the_openai_client_calls_a_generation_garden_and_is_told_who_answered(
    live_server, market, garden_world
):
    client = openai.OpenAI(
        base_url=f"{live_server.url}/v1", api_key=garden_world.bob_key, max_retries=0,
        timeout=120,
    )  # fmt: skip
    garden = garden_world.drafting

    raw = client.chat.completions.with_raw_response.create(
        model=garden.slug, messages=[{"role": "user", "content": IN_DOMAIN_CLAUSE}], max_tokens=4
    )
    completion = raw.parse()
    assert raw.headers["X-Niche-Garden"] == garden.slug
    assert raw.headers["X-Niche-Listing"] == market.clauses.slug
    assert completion.model == garden.slug
    assert completion.niche["routed_to"] == market.clauses.slug
    assert completion.niche["garden"] == garden.slug
    (record,) = UsageRecord.objects.filter(listing=garden)
    assert shares_of(record) == [("curator", garden.slug), ("member", market.clauses.slug)]
    member = GardenShare.objects.get(usage=record, role=ShareRole.MEMBER)
    # 20.00 per 1,000 calls: 2 cents a call; what the platform fee leaves; the member's 70 %
    after_fee = 100 - settings.PLATFORM_FEE_PERCENT
    assert member.amount_micros == 2 * 1_000_000 * after_fee // 100 * 70 // 100 > 0

    raw = client.completions.with_raw_response.create(
        model=garden.slug, prompt=OUT_OF_DOMAIN, max_tokens=3
    )
    assert raw.headers["X-Niche-Listing"] == "niche/generalist"
    assert raw.parse().niche["fallback"] is True


def test_a_pipeline_garden_labels_first_then_the_mapped_member_answers(
    live_server, market, garden_world
):
    garden = garden_world.pipeline
    response = post(
        live_server, "/v1/completions", garden_world.bob_key,
        {"model": garden.slug, "prompt": IN_DOMAIN_TICKET, "max_tokens": 3},
    )  # fmt: skip

    assert response.status_code == 200, response.text
    niche = response.json()["niche"]
    assert niche["routed_to"] == market.clauses.slug
    assert niche["runner_up"]["listing"] == market.tickets.slug
    assert niche["runner_up"]["label"] in LABELS
    assert f"{market.tickets.slug} labelled it" in niche["reason"]
    (record,) = UsageRecord.objects.filter(listing=garden)
    assert shares_of(record) == [
        ("curator", garden.slug), ("step", market.clauses.slug), ("step", market.tickets.slug),
    ]  # fmt: skip
    assert sum(s.percent for s in GardenShare.objects.filter(usage=record)) == 100


def test_a_garden_whose_members_all_left_answers_503_and_others_are_refused(
    live_server, market, garden_world, carol, mallory
):
    garden = garden_world.drafting
    refused = post(
        live_server, "/v1/completions", key_for(mallory),
        {"model": garden.slug, "prompt": IN_DOMAIN_CLAUSE, "max_tokens": 3},
    )  # fmt: skip
    assert refused.status_code == 403

    services.listing_suspend(moderator=carol, listing_id=market.clauses.pk, reason="Unsafe.")
    response = post(
        live_server, "/v1/completions", garden_world.bob_key,
        {"model": garden.slug, "prompt": IN_DOMAIN_CLAUSE, "max_tokens": 3},
    )  # fmt: skip

    assert response.status_code == 503, response.text
    assert response.json()["error"]["code"] == "garden_empty"
    assert not UsageRecord.objects.filter(listing=garden).exists()
    # the classification garden, whose member is still there, still answers
    still = post(
        live_server, f"/api/v1/models/{garden_world.triage.slug}/predict", garden_world.bob_key,
        {"inputs": [IN_DOMAIN_TICKET], "labels": LABELS},
    )  # fmt: skip
    assert still.status_code == 200, still.text


def test_the_try_it_box_calls_a_garden_and_says_who_answered(market, garden_world, bob):
    from django.test import Client

    portal = Client()
    portal.force_login(bob)
    garden = garden_world.drafting
    page = portal.get(f"/catalogue/{garden.slug}/").content.decode()
    assert 'id="garden"' in page and "Try it" in page

    response = portal.post(
        f"/catalogue/{garden.slug}/try/",
        {"text": IN_DOMAIN_CLAUSE, "max_new_tokens": "3"},
        HTTP_X_REQUESTED_WITH="fetch",
    )

    assert response.status_code == 200, response.content
    shown = response.content.decode()
    assert 'id="try-answered-by"' in shown and market.clauses.slug in shown
    assert UsageRecord.objects.filter(listing=garden).count() == 1


def test_route_previews_a_router_garden_and_refuses_what_it_cannot(
    live_server, market, garden_world, mallory
):
    garden = garden_world.triage
    body = {"task": "text-classification", "inputs": [IN_DOMAIN_TICKET, OUT_OF_DOMAIN]}
    response = post(live_server, "/api/v1/route", garden_world.bob_key, body | {
        "garden": garden.slug,
    })  # fmt: skip

    assert response.status_code == 200, response.text
    preview = response.json()
    assert preview["garden"] == garden.slug
    assert preview["candidates"] == [market.tickets.slug]
    assert [r["routed_to"] for r in preview["routes"]] == [
        market.tickets.slug, "niche/generalist",
    ]  # fmt: skip
    assert not UsageRecord.objects.exists()  # decided only
    # mallory holds no licence to the garden; a pipeline is decided by its classifier
    assert post(live_server, "/api/v1/route", key_for(mallory), body | {
        "garden": garden.slug,
    }).status_code == 403  # fmt: skip
    pipeline = post(live_server, "/api/v1/route", garden_world.bob_key, {
        "task": "text-generation", "inputs": [IN_DOMAIN_TICKET],
        "garden": garden_world.pipeline.slug,
    })  # fmt: skip
    assert pipeline.status_code == 422 and "pipeline" in pipeline.json()["error"]["message"]
