"""Gardens as a curator builds them and a moderator sees them: composition rules, derived
terms, review, pricing, a member leaving, and the revenue split in the ledger and on
every party's statement (sandbox money; Stripe's transfers are in
tests/billing/test_garden_payouts.py)."""

from datetime import date
from decimal import Decimal

import pytest
from django.core import mail
from django.utils import timezone

from billing import services as billing_services
from billing.errors import InvalidOffer
from billing.gardens import _largest_remainder, call_net_micros, split
from billing.models import GardenShare, OfferKind, ShareRole
from billing.selectors import licence_for_call, statement_for
from billing.services import usage_record, usage_settle_served
from listings import gardens, services
from listings.errors import InvalidListing, ListingNotFound, NotAnExpert
from listings.models import GardenMember, ListingKind, ListingStatus
from marketplace.events import events_deliver_due
from tests.billing.conftest import make_active_licence, make_offer
from tests.conftest import make_user
from tests.listings.conftest import make_listing
from training_worker.models import ModelVersion

pytestmark = pytest.mark.django_db


@pytest.fixture
def cy(db):
    """A second expert, who curates."""
    return make_user("cy@example.com", display_name="Cy", is_expert=True)


def composable(listing):
    return gardens.listing_set_composable(
        owner=listing.owner, listing_id=listing.pk, composable=True
    )


@pytest.fixture
def members(alice, carol):
    """alice's two published classification listings, both composable; one forbids
    commercial use and caps calls."""
    first = make_listing(alice, moderator=carol, title="Triage A", commercial_use=True)
    second = make_listing(
        alice, moderator=carol, title="Triage B", commercial_use=False, max_calls_per_month=5000
    )
    return composable(first), composable(second)


def router_garden(cy, members, **fields):
    return gardens.garden_create(
        curator=cy, kind="router", members=[m.slug for m in members], title="Triage garden",
        summary="The best triage model for each report.", domain="healthcare", **fields,
    )  # fmt: skip


def test_a_listing_is_not_composable_until_its_expert_says_so(alice, carol, cy):
    listing = make_listing(alice, moderator=carol)
    assert listing.composable is False

    with pytest.raises(InvalidListing) as refused:
        router_garden(cy, [listing])
    assert refused.value.code == "member_not_composable"

    with pytest.raises(ListingNotFound):  # only its expert may allow it
        gardens.listing_set_composable(owner=cy, listing_id=listing.pk, composable=True)
    composable(listing)
    assert router_garden(cy, [listing]).kind == ListingKind.GARDEN


def test_a_garden_takes_the_intersection_of_its_members_terms(cy, members):
    garden = router_garden(
        cy, members, commercial_use=True, on_prem_download=True, max_calls_per_month=10**6
    )

    assert garden.status == ListingStatus.DRAFT and garden.task == "text-classification"
    assert garden.live_version is None and garden.proposed_version is None
    # typed terms are ignored: the members' intersection
    assert (garden.commercial_use, garden.derivatives_allowed, garden.on_prem_download) == (
        False, False, False,
    )  # fmt: skip
    assert garden.attribution_required is True and garden.max_calls_per_month == 5000
    assert "Non-commercial use only." in garden.licence_summary


def test_composition_rules(alice, carol, cy, members):
    generation = make_listing(alice, moderator=carol, title="Clause writer")
    ModelVersion.objects.filter(pk=generation.live_version_id).update(task="text-generation")
    generation.task = "text-generation"
    generation.save()
    composable(generation)

    with pytest.raises(NotAnExpert):
        router_garden(make_user("bea@example.com"), members)
    with pytest.raises(InvalidListing) as mixed:
        router_garden(cy, [*members, generation])
    assert mixed.value.code == "member_wrong_task"
    with pytest.raises(InvalidListing):  # a member at most once
        router_garden(cy, [members[0], members[0]])
    with pytest.raises(InvalidListing) as unknown_label:
        gardens.garden_create(
            curator=cy, kind="pipeline", classifier=members[0].slug,
            routes={"urgent": generation.slug}, title="Pipe", summary="s", domain="legal",
        )  # fmt: skip
    assert "has no label urgent" in unknown_label.value.message
    with pytest.raises(InvalidListing) as wrong_step:
        gardens.garden_create(
            curator=cy, kind="pipeline", classifier=members[0].slug,
            routes={"a": members[1].slug}, title="Pipe", summary="s", domain="legal",
        )  # fmt: skip
    assert wrong_step.value.code == "member_wrong_task"

    pipeline = gardens.garden_create(
        curator=cy, kind="pipeline", classifier=members[0].slug,
        routes={"a": generation.slug}, title="Pipe", summary="s", domain="legal",
    )  # fmt: skip
    assert pipeline.task == "text-generation"
    plan = gardens.garden_plan(listing_id=pipeline.pk)
    assert plan.classifier.slug == members[0].slug
    assert [(m.slug, m.label) for m in plan.members] == [(generation.slug, "a")]
    # a garden cannot itself be composed
    with pytest.raises(InvalidListing):
        gardens.listing_set_composable(owner=cy, listing_id=pipeline.pk, composable=True)


def test_a_garden_is_reviewed_published_and_priced_per_call(cy, carol, members):
    garden = router_garden(cy, members)
    services.listing_submit(owner=cy, listing_id=garden.pk)
    garden = services.listing_approve(moderator=carol, listing_id=garden.pk)

    assert garden.status == ListingStatus.PUBLISHED and garden.live_version is None
    with pytest.raises(InvalidOffer):
        make_offer(garden, OfferKind.SUBSCRIPTION)
    with pytest.raises(InvalidOffer):
        make_offer(garden, OfferKind.DOWNLOAD)
    make_offer(garden, OfferKind.PER_CALL)
    # it never gets a version of its own, by any door
    with pytest.raises(InvalidListing):
        services.listing_propose_version(
            owner=cy, listing_id=garden.pk, model_version_id=members[0].live_version_id
        )
    shown = gardens.garden_public(garden)
    assert shown["kind"] == "router"
    assert shown["split"]["member_share_percent"] == 70
    assert shown["split"]["curator_share_percent"] == 30
    assert [m["listing"] for m in shown["members"]] == [m.slug for m in members]


def test_a_garden_with_no_member_left_cannot_be_submitted(cy, alice, members):
    garden = router_garden(cy, members)
    for member in members:
        gardens.listing_set_composable(owner=alice, listing_id=member.pk, composable=False)

    with pytest.raises(InvalidListing) as empty:
        services.listing_submit(owner=cy, listing_id=garden.pk)
    assert empty.value.code == "garden_empty"


def test_a_suspended_member_leaves_at_once_and_the_curator_is_told(
    cy, carol, members, django_capture_on_commit_callbacks
):
    garden = router_garden(cy, members)
    mail.outbox.clear()

    with django_capture_on_commit_callbacks(execute=True):
        services.listing_suspend(moderator=carol, listing_id=members[0].pk, reason="Leaks PII.")
    events_deliver_due()

    plan = gardens.garden_plan(listing_id=garden.pk)
    assert [m.slug for m in plan.members] == [members[1].slug]
    left = GardenMember.objects.get(listing=members[0])
    assert left.removed_at is not None and left.removed_reason == "Suspended: Leaks PII."
    assert [m.to for m in mail.outbox] == [[cy.email]]
    assert members[0].slug in mail.outbox[0].subject
    assert "other members" in mail.outbox[0].body

    # reinstating the listing does not put it back: the curator re-adds by hand
    services.listing_reinstate(moderator=carol, listing_id=members[0].pk)
    assert len(gardens.garden_plan(listing_id=garden.pk).members) == 1

    mail.outbox.clear()
    with django_capture_on_commit_callbacks(execute=True):
        services.listing_delist(owner=members[1].owner, listing_id=members[1].pk)
    events_deliver_due()
    assert gardens.garden_plan(listing_id=garden.pk).empty
    assert "refused (503)" in mail.outbox[0].body


# --- the split -------------------------------------------------------------------------


def test_each_call_splits_into_parts_that_add_up_to_the_whole():
    one = split(garden_id="g", curator_id=1, member_share_percent=70, workers=[("m", 2)])
    assert [(s.role, s.percent, s.payee_id) for s in one] == [
        (ShareRole.MEMBER, Decimal("70.000"), 2), (ShareRole.CURATOR, Decimal(30), 1),
    ]  # fmt: skip
    steps = split(
        garden_id="g", curator_id=1, member_share_percent=70, workers=[("c", 2), ("d", 3)]
    )
    assert [s.percent for s in steps] == [Decimal("35.000"), Decimal("35.000"), Decimal(30)]
    thirds = split(garden_id="g", curator_id=1, member_share_percent=100, workers=[("c", 2)],
                   generalist_steps=2)  # fmt: skip
    assert sum(s.percent for s in thirds) == 100
    assert [s.role for s in thirds] == [ShareRole.STEP, ShareRole.PLATFORM, ShareRole.CURATOR]
    generalist = split(
        garden_id="g", curator_id=1, member_share_percent=70, workers=[], generalist_steps=1
    )
    assert [(s.role, s.payee_id) for s in generalist] == [
        (ShareRole.PLATFORM, None), (ShareRole.CURATOR, 1),
    ]  # fmt: skip


def test_largest_remainder_never_loses_or_makes_a_cent():
    parts = _largest_remainder(100, {"a": 1, "b": 1, "c": 1})
    assert sorted(parts.values()) == [33, 33, 34] and sum(parts.values()) == 100
    assert _largest_remainder(7, {"a": 0}) == {"a": 0}
    for total in (1, 99, 12_345):
        assert sum(_largest_remainder(total, {"x": 3, "y": 7, "z": 11}).values()) == total


def test_served_calls_show_on_the_member_and_the_curator_statements(
    cy, carol, alice, bob, members, settings
):
    settings.PLATFORM_FEE_PERCENT = 20
    garden = router_garden(cy, members, member_share_percent=60)
    services.listing_submit(owner=cy, listing_id=garden.pk)
    services.listing_approve(moderator=carol, listing_id=garden.pk)
    offer = make_offer(garden, OfferKind.PER_CALL, unit_amount=1000)  # 1 cent a call
    licence = make_active_licence(bob, offer, sandbox=True)
    check = licence_for_call(user=bob, listing_slug=garden.slug)
    assert check.garden and check.licence_id == licence.pk and check.model_version_id is None

    plan = gardens.garden_plan(listing_id=garden.pk)
    first, second = plan.members
    for n, (member, units) in enumerate([(first, 3), (second, 1), (first, 2)]):
        shares = split(
            garden_id=garden.pk, curator_id=cy.pk, member_share_percent=60,
            workers=[(member.listing_id, member.owner_id)],
        )  # fmt: skip
        usage_record(licence_id=licence.pk, idempotency_key=f"g-{n}", units=units, shares=shares)
        usage_settle_served(idempotency_key=f"g-{n}")
    # a call that failed earns nobody anything
    failed = split(garden_id=garden.pk, curator_id=cy.pk, member_share_percent=60,
                   workers=[(first.listing_id, first.owner_id)])  # fmt: skip
    usage_record(licence_id=licence.pk, idempotency_key="g-x", units=5, shares=failed)
    billing_services.usage_settle(idempotency_key="g-x", status="error")

    # 6 calls at 1 cent, 80 % after the fee: 4.8 cents; members 60 %, the curator 40 %
    assert call_net_micros(offer, 6) == 4_800_000
    month = date.today().replace(day=1)
    alice_lines = statement_for(expert=alice, month=month, sandbox=True).gardens
    assert [(g.listing_slug, g.role, g.calls, g.accrued) for g in alice_lines] == [
        (first.slug, "member", 5, 2),  # 5 x 0.8 x 0.6 = 2.4 cents
        (second.slug, "member", 1, 0),  # 0.48 cents
    ]
    (curator_line,) = statement_for(expert=cy, month=month, sandbox=True).gardens
    assert (curator_line.listing_slug, curator_line.role, curator_line.calls) == (
        garden.slug, "curator", 6,
    )  # fmt: skip
    assert curator_line.accrued == 2  # 6 x 0.8 x 0.4 = 1.92 cents
    micros = sum(
        s.amount_micros
        for s in GardenShare.objects.filter(usage__status="ok", created_at__lte=timezone.now())
    )
    assert micros == 4_800_000  # every served micro-cent is someone's
    # the curator's own sales never include the garden's licence
    assert statement_for(expert=cy, month=month, sandbox=True).listings == []


def test_the_curator_restores_a_former_member_once_it_may_answer_again(
    cy, carol, alice, members, api
):
    garden = router_garden(cy, members)
    services.listing_suspend(moderator=carol, listing_id=members[0].pk, reason="Checking.")
    gardens.listing_set_composable(owner=alice, listing_id=members[1].pk, composable=False)
    assert gardens.garden_plan(listing_id=garden.pk).empty

    # not while it is suspended
    with pytest.raises(InvalidListing) as refused:
        gardens.garden_member_restore(curator=cy, garden_id=garden.pk, member_slug=members[0].slug)
    assert refused.value.code == "member_not_composable"
    services.listing_reinstate(moderator=carol, listing_id=members[0].pk)
    # only its curator, and only a former member
    with pytest.raises(ListingNotFound):
        gardens.garden_member_restore(
            curator=alice, garden_id=garden.pk, member_slug=members[0].slug
        )
    outsider = composable(make_listing(alice, moderator=carol, title="Never a member"))
    with pytest.raises(InvalidListing) as stranger:
        gardens.garden_member_restore(curator=cy, garden_id=garden.pk, member_slug=outsider.slug)
    assert stranger.value.code == "not_a_former_member"

    response = api(cy).post(
        f"/api/v1/gardens/{garden.slug}/members/restore",
        {"listing": members[0].slug},
        format="json",
    )

    assert response.status_code == 200, response.content
    assert [m["listing"] for m in response.json()["garden"]["members"]] == [members[0].slug]
    plan = gardens.garden_plan(listing_id=garden.pk)
    assert [m.slug for m in plan.members] == [members[0].slug]
    # restoring twice changes nothing
    with pytest.raises(InvalidListing):
        gardens.garden_member_restore(curator=cy, garden_id=garden.pk, member_slug=members[0].slug)
    assert GardenMember.objects.filter(garden_id=garden.pk, removed_at=None).count() == 1
