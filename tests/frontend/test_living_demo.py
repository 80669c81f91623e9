"""The living demo's services: what seed_demo queues on each start, and how a finished
demo fine-tune is listed. The integration test runs the same on a real worker."""

import pytest
from django.core.management import call_command

from accounts.models import User
from frontend.services import (
    DEMO_CURATOR_EMAIL,
    DEMO_GARDEN,
    DEMO_PUBLISH_TASK,
    DEMO_SPECIALISTS,
    MAX_DEMO_JOBS_PER_DATASET,
    DemoOutcome,
    demo_listing_publish,
    demo_training_start,
    demo_watch,
)
from listings import gardens
from listings import services as listing_services
from listings.models import Listing, ListingStatus, ModerationAction, ModerationActionType
from tests.listings.conftest import classification_evaluation
from training_worker.models import FineTuningJob, JobStatus, ModelVersion

# The demo's classifier (word sentiment, MiniLM) and generator (past tense, SmolLM2).
SUPPORT, ARITHMETIC, QUICK_SENTIMENT = DEMO_SPECIALISTS


@pytest.fixture
def demo(db) -> dict[str, User]:
    """The demo accounts and datasets as seed_demo leaves them, without the fine-tunes."""
    call_command("seed_demo", "--skip-models", "--skip-training", stdout=None, stderr=None)
    return {
        "expert": User.objects.get(email="expert@demo.niche"),
        "moderator": User.objects.get(email="moderator@demo.niche"),
    }


def start(expert, django_capture_on_commit_callbacks) -> tuple[list[FineTuningJob], list]:
    """demo_training_start, keeping the tasks it would send once committed."""
    with django_capture_on_commit_callbacks(execute=False) as sent:
        jobs = demo_training_start(expert=expert)
    return jobs, sent


def finish(job: FineTuningJob, status: str = JobStatus.SUCCEEDED) -> FineTuningJob:
    """What the worker writes when a classification fine-tune ends."""
    job.status = status
    job.save(update_fields=["status"])
    if status == JobStatus.SUCCEEDED:
        version = ModelVersion.objects.create(
            owner=job.owner, job=job, base_model=job.base_model, name=f"demo:{job.pk}",
            task="text-classification", labels=["account", "billing"], adapter_path="a",
            adapter_sha256="a" * 64, adapter_size=1, config_path="c", config_sha256="c" * 64,
            config_size=1, dataset_sha256=job.dataset.sha256, run_record={},
            evaluation=classification_evaluation(0.81, 0.4), card="---\n---\n",
        )  # fmt: skip
        FineTuningJob.objects.filter(pk=job.pk).update(fine_tuned_model=version)
    return FineTuningJob.objects.get(pk=job.pk)


def tasks_in(callbacks: list) -> list:
    """The on-commit callbacks that send a task (not the access-epoch bumps)."""
    return [c for c in callbacks if c.__module__ != "marketplace.access_epochs"]


def test_first_start_queues_the_first_demo_fine_tune_and_later_starts_none_while_it_runs(
    demo, django_capture_on_commit_callbacks
):
    expert = demo["expert"]

    jobs, sent = start(expert, django_capture_on_commit_callbacks)

    # One at a time: two trainings at once oversubscribe a small machine's cores.
    assert [(j.suffix, j.base_model.slug) for j in jobs] == [(SUPPORT.job_suffix, "minilm-l6")]
    assert jobs[0].owner == expert and jobs[0].status == JobStatus.VALIDATING_FILES
    assert len(sent) == 1  # its watcher (the dataset validates first)

    # A later start while it trains: no new job, the watcher armed again (the
    # embedded broker forgets scheduled tasks when it stops).
    again, sent = start(expert, django_capture_on_commit_callbacks)
    assert [j.pk for j in again] == [jobs[0].pk]
    assert len(sent) == 1
    assert FineTuningJob.objects.filter(owner=expert).count() == 1


def test_when_a_demo_fine_tune_ends_its_watcher_lists_it_and_queues_the_next(
    demo, django_capture_on_commit_callbacks
):
    expert = demo["expert"]
    jobs, _ = start(expert, django_capture_on_commit_callbacks)
    assert demo_watch(job_id=jobs[0].pk) == DemoOutcome.WAITING
    assert FineTuningJob.objects.filter(owner=expert).count() == 1

    finish(jobs[0])
    with django_capture_on_commit_callbacks(execute=False) as sent:
        outcome = demo_watch(job_id=jobs[0].pk)

    assert outcome == DemoOutcome.PUBLISHED
    assert Listing.objects.get(slug=SUPPORT.listing["slug"]).status == ListingStatus.PUBLISHED
    generator = FineTuningJob.objects.get(owner=expert, suffix=ARITHMETIC.job_suffix)
    # A real pretrained base, not the randomly initialised tiny LM of the fast tests.
    assert generator.base_model.slug == "smollm2-135m-instruct"
    # the next one's watcher and the delivery of listing.version_live (the leaderboards
    # score the new version), and no second watcher for the first (publishing also bumps
    # the access epochs on commit: not a task)
    assert len(tasks_in(sent)) == 2


def test_a_finished_demo_fine_tune_is_listed_through_audited_moderation_once(
    demo, django_capture_on_commit_callbacks
):
    expert, moderator = demo["expert"], demo["moderator"]
    jobs, _ = start(expert, django_capture_on_commit_callbacks)
    job = next(j for j in jobs if j.suffix == SUPPORT.job_suffix)
    assert demo_listing_publish(job_id=job.pk) == DemoOutcome.WAITING
    assert not Listing.objects.exists()

    job = finish(job)
    outcome = demo_listing_publish(job_id=job.pk)

    assert outcome == DemoOutcome.PUBLISHED
    listing = Listing.objects.get(slug=SUPPORT.listing["slug"])
    assert listing.owner == expert and listing.status == ListingStatus.PUBLISHED
    assert listing.live_version_id == job.fine_tuned_model_id
    assert listing.score == pytest.approx(0.81)  # the platform's own evaluation
    approval = ModerationAction.objects.get(listing=listing)
    assert approval.actor == moderator and approval.action == ModerationActionType.APPROVE
    assert approval.reason

    # A second watcher for the same job, and a later start, change nothing.
    assert demo_listing_publish(job_id=job.pk) == DemoOutcome.PUBLISHED
    again, sent = start(expert, django_capture_on_commit_callbacks)
    assert job.pk not in {j.pk for j in again}
    assert [j.suffix for j in again] == [ARITHMETIC.job_suffix]  # the next one, queued
    assert len(sent) == 1
    assert Listing.objects.count() == 1 and ModerationAction.objects.count() == 1
    assert FineTuningJob.objects.filter(owner=expert).count() == 2


def test_a_demo_listing_a_moderator_rejected_is_left_to_the_moderators(
    demo, carol, django_capture_on_commit_callbacks
):
    expert = demo["expert"]
    jobs, _ = start(expert, django_capture_on_commit_callbacks)
    job = finish(next(j for j in jobs if j.suffix == SUPPORT.job_suffix))
    listing = listing_services.listing_create(
        owner=expert, model_version_id=job.fine_tuned_model_id, **SUPPORT.listing
    )
    listing_services.listing_submit(owner=expert, listing_id=listing.id)
    listing_services.listing_reject(moderator=carol, listing_id=listing.id, reason="Not today.")

    assert demo_listing_publish(job_id=job.pk) == DemoOutcome.LEFT_TO_MODERATORS

    assert Listing.objects.get(pk=listing.pk).status == ListingStatus.REJECTED
    again, _ = start(expert, django_capture_on_commit_callbacks)
    assert job.pk not in {j.pk for j in again}


def test_a_failed_demo_fine_tune_is_tried_again_on_the_next_start_a_bounded_number_of_times(
    demo, django_capture_on_commit_callbacks
):
    expert = demo["expert"]
    for attempt in range(MAX_DEMO_JOBS_PER_DATASET):
        jobs, _ = start(expert, django_capture_on_commit_callbacks)
        job = next(j for j in jobs if j.suffix == SUPPORT.job_suffix)
        assert demo_listing_publish(job_id=finish(job, JobStatus.FAILED).pk) == (
            DemoOutcome.NOT_TRAINED
        )
        assert FineTuningJob.objects.filter(suffix=SUPPORT.job_suffix).count() == attempt + 1

    jobs, _ = start(expert, django_capture_on_commit_callbacks)

    assert SUPPORT.job_suffix not in {j.suffix for j in jobs}
    assert FineTuningJob.objects.filter(suffix=SUPPORT.job_suffix).count() == (
        MAX_DEMO_JOBS_PER_DATASET
    )


def test_the_watcher_task_is_registered_under_the_name_services_send():
    from marketplace.celery import app

    assert DEMO_PUBLISH_TASK in app.tasks


def test_each_demo_dataset_is_a_real_corpus_whose_licence_is_recorded_and_whose_example_is_new():
    """The demo trains on committed samples of public corpora (bench/demo_data.py), each
    named with its licence in NOTICE.md, and the example a buyer tries is not a row."""
    import json

    from frontend.services import DEMO_DATA

    notice = (DEMO_DATA / "NOTICE.md").read_text(encoding="utf-8")
    assert "ODC-BY-1.0" in notice and "MIT License" in notice
    for spec in DEMO_SPECIALISTS:
        assert f"## {spec.filename}" in notice
        rows = [json.loads(line) for line in (DEMO_DATA / spec.filename).read_text().splitlines()]
        inputs = {row.get("text") or row.get("prompt") for row in rows}
        assert len(inputs) == len(rows) >= 500
        example = spec.listing["example_input"]
        assert example and example not in inputs


def test_the_demo_garden_is_listed_once_its_member_is_and_only_once(
    demo, django_capture_on_commit_callbacks
):
    expert = demo["expert"]
    jobs, _ = start(expert, django_capture_on_commit_callbacks)
    first = finish(next(j for j in jobs if j.suffix == SUPPORT.job_suffix))
    assert demo_listing_publish(job_id=first.pk) == DemoOutcome.PUBLISHED
    assert not Listing.objects.filter(slug=DEMO_GARDEN["slug"]).exists()  # member not yet

    jobs, _ = start(expert, django_capture_on_commit_callbacks)
    second = finish(next(j for j in jobs if j.suffix == ARITHMETIC.job_suffix))
    assert demo_listing_publish(job_id=second.pk) == DemoOutcome.PUBLISHED

    garden = Listing.objects.get(slug=DEMO_GARDEN["slug"])
    assert garden.kind == "garden" and garden.status == ListingStatus.PUBLISHED
    assert garden.owner.email == DEMO_CURATOR_EMAIL
    assert Listing.objects.get(slug=ARITHMETIC.listing["slug"]).composable
    plan = gardens.garden_plan(listing_id=garden.pk)
    assert [m.slug for m in plan.members] == [ARITHMETIC.listing["slug"]]
    assert sorted(garden.offers.values_list("kind", flat=True)) == ["free_trial", "per_call"]
    approval = ModerationAction.objects.get(listing=garden)
    assert approval.actor == demo["moderator"] and approval.reason

    # later starts and watchers change nothing
    assert demo_listing_publish(job_id=second.pk) == DemoOutcome.PUBLISHED
    start(expert, django_capture_on_commit_callbacks)
    assert Listing.objects.filter(kind="garden").count() == 1
    assert ModerationAction.objects.filter(listing=garden).count() == 1
