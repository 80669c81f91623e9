"""The living demo: `seed_demo` on a fresh platform fills the catalogue by itself.

A real worker process trains the demo fine-tunes; the demo's watcher task lists each
one through the moderation path when it succeeds.
"""

import time

import pytest
from django.core.management import call_command
from rest_framework.test import APIClient

from accounts.models import User
from frontend.services import DEMO_CURATOR_EMAIL, DEMO_GARDEN, DEMO_SPECIALISTS
from listings.models import Listing, ListingStatus, ModerationAction, ModerationActionType
from training_worker.models import FineTuningJob, JobStatus

pytestmark = [pytest.mark.integration, pytest.mark.slow]
DEMO_SLUGS = {spec.listing["slug"] for spec in DEMO_SPECIALISTS}
# and the demo garden over the generation specialist, listed once that one is
LISTED = DEMO_SLUGS | {DEMO_GARDEN["slug"]}


def wait_for(predicate, timeout: float, what: str):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = predicate()
        if value:
            return value
        time.sleep(1)
    raise AssertionError(f"timed out after {timeout}s waiting for {what}: {demo_state()}")


def demo_state() -> dict:
    jobs = FineTuningJob.objects.filter(suffix__startswith="demo-")
    return {
        "jobs": list(jobs.values_list("suffix", "status", "error_message")),
        "listings": list(Listing.objects.values_list("slug", "status")),
    }


def catalogue_slugs(api: APIClient) -> set[str]:
    response = api.get("/api/v1/listings", {"q": "demo", "limit": 100})
    assert response.status_code == 200
    return {card["slug"] for card in response.json()["data"]}


@pytest.mark.timeout(900)
def test_first_start_lists_real_demo_specialists_and_later_starts_add_nothing(
    celery_worker_process, shipped_base_models
):
    api = APIClient()
    assert catalogue_slugs(api) == set()  # what a new buyer saw before: nothing

    # Given a fresh platform, when `make run` seeds the demo (its first start)
    call_command("seed_demo")

    # then within minutes the catalogue shows the demo specialists, live, with the
    # platform's own evaluation
    started = time.monotonic()
    wait_for(lambda: catalogue_slugs(api) == LISTED, 840, "the demo listings")
    print(f"demo specialists listed {time.monotonic() - started:.0f}s after seed_demo")
    for slug in DEMO_SLUGS:
        detail = api.get(f"/api/v1/listings/{slug}").json()
        assert detail["status"] == "published"
        assert detail["score"] is not None
        assert detail["evaluation"]["sealed_rows"] > 0
        assert detail["evaluation"]["metrics"]

    expert = User.objects.get(email="expert@demo.niche")
    moderator = User.objects.get(email="moderator@demo.niche")
    listings = Listing.objects.filter(slug__in=DEMO_SLUGS)
    assert {listing.owner_id for listing in listings} == {expert.pk}
    assert all(listing.status == ListingStatus.PUBLISHED for listing in listings)
    # approved through the audited moderation path, by the demo moderator
    approvals = ModerationAction.objects.filter(
        listing__in=listings, action=ModerationActionType.APPROVE
    )
    assert sorted(a.actor_id for a in approvals) == [moderator.pk] * len(DEMO_SPECIALISTS)
    garden = api.get(f"/api/v1/listings/{DEMO_GARDEN['slug']}").json()
    assert garden["kind"] == "garden" and garden["status"] == "published"
    assert [m["listing"] for m in garden["garden"]["members"]] == ["demo-past-tense"]
    assert Listing.objects.get(slug=DEMO_GARDEN["slug"]).owner.email == DEMO_CURATOR_EMAIL
    jobs = FineTuningJob.objects.filter(owner=expert)
    assert [j.status for j in jobs] == [JobStatus.SUCCEEDED] * len(DEMO_SPECIALISTS)

    # When the platform starts again, seed_demo runs again
    call_command("seed_demo")
    time.sleep(2)  # a watcher it wrongly armed would act within this time

    # then nothing is queued or listed twice
    assert FineTuningJob.objects.filter(owner=expert).count() == len(DEMO_SPECIALISTS)
    assert Listing.objects.filter(owner=expert).count() == len(DEMO_SPECIALISTS)
    # (the specialists and the garden)
    assert ModerationAction.objects.filter(action=ModerationActionType.APPROVE).count() == (
        len(DEMO_SPECIALISTS) + 1
    )
    assert catalogue_slugs(api) == LISTED
