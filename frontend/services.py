"""The living demo: a fine-tune per demo dataset, listed through moderation when done.

On the first `make run` the catalogue would be empty. `demo_training_start` (called by
`seed_demo` on every start) queues a short fine-tune per demo dataset as the demo
expert, one at a time, and arms a watcher task; the watcher (`demo_watch`) lists the finished
specialist through the same services an expert and a moderator use (the approval is
audited), then queues the next one. All are idempotent: the job's suffix and the
listing's slug are the keys, so later starts queue nothing twice and list nothing twice.
"""

from __future__ import annotations

import enum
from dataclasses import dataclass, field
from pathlib import Path

from django.db import transaction
from django.db.models import QuerySet

from accounts.models import User
from billing import selectors as billing_selectors
from billing import services as billing_services
from listings import gardens as listing_gardens
from listings import selectors as listing_selectors
from listings import services as listing_services
from listings.errors import InvalidListingTransition, SlugTaken
from listings.models import Listing, ListingStatus
from marketplace.celery import send_after_commit
from training_worker import selectors as studio_selectors
from training_worker import services as studio_services
from training_worker.models import Dataset, FineTuningJob, JobStatus

DEMO_DATA = Path(__file__).resolve().parent / "demo_data"
DEMO_EXPERT_EMAIL = "expert@demo.niche"
DEMO_CURATOR_EMAIL = "curator@demo.niche"
DEMO_MODERATOR_EMAIL = "moderator@demo.niche"
DEMO_PUBLISH_TASK = "frontend.tasks.demo_publish_when_trained"
DEMO_APPROVAL_REASON = (
    "Demo specialist seeded by make run; its scores are the platform's own evaluation "
    "on the sealed split."
)
# A demo dataset whose fine-tunes keep failing is not retried for ever.
MAX_DEMO_JOBS_PER_DATASET = 3
WAITING_STATUSES = (JobStatus.VALIDATING_FILES, JobStatus.QUEUED, JobStatus.RUNNING)
# The generation demo's fine-tune: the platform's generation defaults, fewer epochs (auto
# would give 10 for 400 short rows), so the first start lists it within minutes.
DEMO_GENERATION_HYPERPARAMETERS: dict = {"n_epochs": 4}
# Not one of the 500 rows; the README and the Try it box show the specialist's answer.
DEMO_GENERATION_EXAMPLE = "carry"


@dataclass(frozen=True)
class DemoSpecialist:
    """One demo dataset, the short fine-tune on it, and the listing it becomes."""

    filename: str  # in frontend/demo_data
    dataset_name: str
    base_model: str
    job_suffix: str  # marks the demo's jobs: the key that keeps later starts idempotent
    hyperparameters: dict
    listing: dict = field(default_factory=dict)  # slug and content for listing_create
    # Priced once published (billing's offer_create arguments), so `make run` can sell.
    offers: tuple[dict, ...] = ()


DEMO_SPECIALISTS = (
    DemoSpecialist(
        filename="word_sentiment.jsonl",
        dataset_name="AFINN-111 word sentiment (600 words)",
        base_model="minilm-l6",
        job_suffix="demo-word-sentiment",
        # 432 training rows of one word each (48 more pick the epoch): 3 epochs. A fresh
        # `make run` on two idle cores listed it 41 s after healthy, SmolLM2's conversion
        # and its scoring as the generalist included (5 epochs beside a 2-thread bench had
        # taken 152 s, and epoch 2 had been the best).
        hyperparameters={"n_epochs": 3},
        listing={
            "slug": "demo-word-sentiment",
            "title": "Word sentiment: positive or negative (demo)",
            "summary": "Tells whether an English word reads positive or negative, for "
            "lexicon building and review tagging.",
            "description": "A LoRA adapter on MiniLM-L6, fine-tuned by `make run` on 600 "
            "words of AFINN-111 (Finn Årup Nielsen, 2011; data ODC-BY-1.0, contents "
            "CC-BY-4.0), each labelled by the sign of its valence. The scores are the "
            "platform's evaluation on a sealed split the expert never saw.",
            "domain": "customer-support",
            "tags": ["demo", "sentiment", "lexicon"],
            "languages": ["en"],
            "intended_use": "Trying Niche: search, the evaluation page, the playground; "
            "tagging single words or short phrases by sentiment.",
            "example_input": "delightful",  # not one of the 600 rows
            "out_of_scope_use": "Whole reviews or documents: it learnt from single words.",
            "commercial_use": False,
            "on_prem_download": True,
            "attribution_required": True,
        },
        offers=(
            {"kind": "free_trial", "currency": "usd", "included_calls": 100},
            {
                "kind": "subscription",
                "currency": "usd",
                "unit_amount": 19_00,
                "included_calls": 10_000,
                "overage": "refuse",
                "name": "Team",
            },
            {"kind": "download", "currency": "usd", "unit_amount": 49_00, "name": "On-prem"},
        ),
    ),
    DemoSpecialist(
        filename="past_tense.jsonl",
        dataset_name="English verbs and their simple past (500)",
        base_model="smollm2-135m-instruct",
        job_suffix="demo-past-tense",
        hyperparameters=DEMO_GENERATION_HYPERPARAMETERS,
        listing={
            "slug": "demo-past-tense",
            "title": "English past tense (demo)",
            "summary": "Gives the simple past of an English verb (seek -> sought, carry "
            "-> carried), for grammar tools and language learning.",
            "description": "A LoRA adapter on SmolLM2-135M-Instruct, fine-tuned by "
            "`make run` on 500 English verbs and their simple past, from the inflection "
            "tables of lemminflect 0.2.3 (MIT), derived from the NIH SPECIALIST Lexicon. "
            "The base model cannot do this prompted: it explains the verb instead of "
            "conjugating it, and with three examples it still gets most verbs wrong. The "
            "evaluation shows by how much 500 rows taught it, with character error rate "
            "for partial credit.",
            "domain": "education",
            "tags": ["demo", "grammar", "verbs", "generation"],
            "languages": ["en"],
            "intended_use": "Trying Niche's generation API and evaluation; drafting verb "
            "tables for grammar exercises, checked by a person.",
            "example_input": DEMO_GENERATION_EXAMPLE,
            "out_of_scope_use": "Sentences, and anything published unchecked: it learnt "
            "from 500 single verbs, 30 of them irregular.",
            "commercial_use": False,
            "attribution_required": True,
        },
        offers=(
            {"kind": "free_trial", "currency": "usd", "included_calls": 50},
            {"kind": "per_call", "currency": "usd", "unit_amount": 1_00},
        ),
    ),
    # A second sentiment specialist on the same 600 words (the same dataset, so the same
    # sealed rows: its evaluation counts as the data's second attempt), trained for two
    # epochs without the lexical head: a buyer has two listings of one task to compare on
    # their own rows and on the leaderboard. On a fresh `make run` one epoch had learnt
    # nothing yet (it answered the majority label); two scored 0.83 on the sealed rows,
    # against the full demo's 0.96.
    DemoSpecialist(
        filename="word_sentiment.jsonl",
        dataset_name="AFINN-111 word sentiment (600 words)",
        base_model="minilm-l6",
        job_suffix="demo-word-sentiment-quick",
        hyperparameters={"n_epochs": 2, "lexical_blend": False},
        listing={
            "slug": "demo-word-sentiment-quick",
            "title": "Word sentiment, quick (demo)",
            "summary": "Positive or negative for an English word, from a shorter "
            "fine-tune: cheaper per call than the full demo, and its evaluation shows what "
            "the shorter training gives up.",
            "description": "A LoRA adapter on MiniLM-L6 trained for two epochs, without the "
            "lexical head, on the same 600 AFINN-111 words as *Word sentiment* (Finn Årup "
            "Nielsen, 2011; data ODC-BY-1.0, contents CC-BY-4.0). Same sealed rows, so its "
            "lift interval is corrected for being the second evaluation on this data.",
            "domain": "customer-support",
            "tags": ["demo", "sentiment", "lexicon"],
            "languages": ["en"],
            "intended_use": "Comparing two specialists of one task: try both on your own "
            "words from *Try on my rows*, or read the leaderboard.",
            "example_input": "delightful",
            "out_of_scope_use": "Whole reviews or documents: it learnt from single words.",
            "commercial_use": True,
            "on_prem_download": False,
            "attribution_required": True,
        },
        offers=(
            {"kind": "free_trial", "currency": "usd", "included_calls": 100},
            {"kind": "per_call", "currency": "usd", "unit_amount": 50},
        ),
    ),
)


# The demo garden: the curator composes the expert's generation specialist with the
# generalist as fallback, and sells it per call; each call pays both experts their share.
DEMO_GARDEN = {
    "slug": "demo-grammar-garden",
    "title": "Grammar helper garden (demo)",
    "summary": "Asks the past-tense specialist when a request is an English verb, and a "
    "general model otherwise; every answer says who answered.",
    "description": "A router garden curated by `make run`'s demo curator over the demo "
    "expert's past-tense specialist. A request near the specialist's training inputs "
    "goes to it when its calibrated chance of beating the general model clears the "
    "threshold; anything else is answered by SmolLM2 itself. Of each call's price "
    "after the platform fee, 70% goes to the expert whose model answered and 30% to "
    "the curator.",
    "domain": "education",
    "tags": ["demo", "garden", "grammar"],
    "languages": ["en"],
    "example_input": DEMO_GENERATION_EXAMPLE,
    "intended_use": "Trying gardens: buy it in the sandbox, call it with the openai "
    "client, and read both experts' statements.",
}
DEMO_GARDEN_MEMBERS = ("demo-past-tense",)
DEMO_GARDEN_OFFERS = (
    {"kind": "free_trial", "currency": "usd", "included_calls": 50},
    # 2 cents a call: a few demo calls already show on both experts' statements.
    {"kind": "per_call", "currency": "usd", "unit_amount": 20_00},
)


class DemoOutcome(enum.StrEnum):
    WAITING = "waiting"  # the fine-tune has not finished
    PUBLISHED = "published"
    NOT_TRAINED = "not_trained"  # the fine-tune failed or was cancelled: nothing to list
    LEFT_TO_MODERATORS = "left_to_moderators"  # rejected, suspended or delisted by a person
    SLUG_TAKEN = "slug_taken"  # another user's listing has the demo's slug


def _demo_specialist_of(job: FineTuningJob) -> DemoSpecialist | None:
    return next((s for s in DEMO_SPECIALISTS if s.job_suffix == job.suffix), None)


def _demo_listing(expert: User, spec: DemoSpecialist) -> Listing | None:
    mine = listing_selectors.listing_list_mine(owner=expert)
    return mine.filter(slug=spec.listing["slug"]).first()


def _demo_pending(expert: User) -> list[tuple[DemoSpecialist, Dataset, QuerySet]]:
    """The demo datasets whose specialist is not listed yet: (spec, dataset, its jobs)."""
    datasets = {d.name: d for d in studio_selectors.dataset_list(owner=expert)}
    pending = []
    for spec in DEMO_SPECIALISTS:
        dataset = datasets.get(spec.dataset_name)
        if dataset is None:
            continue
        listing = _demo_listing(expert, spec)
        if listing is not None and listing.status == ListingStatus.PUBLISHED:
            _demo_offers_ensure(expert=expert, listing=listing, spec=spec)  # listed before
            demo_garden_ensure()
        if listing is not None and listing.status not in (
            ListingStatus.DRAFT,
            ListingStatus.IN_REVIEW,
        ):
            continue
        jobs = studio_selectors.job_list(owner=expert).filter(
            dataset=dataset, suffix=spec.job_suffix
        )
        pending.append((spec, dataset, jobs))
    return pending


def _demo_queue_next(expert: User) -> FineTuningJob | None:
    """Queue the first pending demo fine-tune, unless a demo job is still waiting (one
    trains at a time), the dataset has a succeeded job, or it had its attempts."""
    demo_jobs = studio_selectors.job_list(owner=expert).filter(
        suffix__in=[spec.job_suffix for spec in DEMO_SPECIALISTS]
    )
    if demo_jobs.filter(status__in=WAITING_STATUSES).exists():
        return None
    for spec, dataset, jobs in _demo_pending(expert):
        if jobs.filter(status=JobStatus.SUCCEEDED).exists():
            continue
        if jobs.count() >= MAX_DEMO_JOBS_PER_DATASET:
            continue
        job = studio_services.job_create(
            owner=expert,
            base_model=spec.base_model,
            dataset_id=dataset.id,
            hyperparameters=spec.hyperparameters,
            seed=2026,
            suffix=spec.job_suffix,
        )
        send_after_commit(DEMO_PUBLISH_TASK, str(job.id))
        return job
    return None


def demo_training_start(*, expert: User) -> list[FineTuningJob]:
    """On each start: watch again the demo jobs not listed yet, queue the next one.

    A demo job that is waiting or succeeded but whose specialist is not listed gets a
    watcher again (the embedded broker forgets scheduled tasks when it stops); then,
    if no demo job is waiting, the next demo fine-tune is queued (at most
    MAX_DEMO_JOBS_PER_DATASET per dataset, ever). Nothing for a specialist that is
    listed, or that a moderator rejected, suspended or delisted. Idempotent; sends its
    tasks once the caller's transaction commits. Returns the jobs being watched.
    """
    watched = []
    for _spec, _dataset, jobs in _demo_pending(expert):
        job = jobs.filter(status__in=(*WAITING_STATUSES, JobStatus.SUCCEEDED)).first()
        if job is not None:
            send_after_commit(DEMO_PUBLISH_TASK, str(job.id))
            watched.append(job)
    queued = _demo_queue_next(expert)
    return [*watched, queued] if queued is not None else watched


def demo_watch(*, job_id) -> DemoOutcome:
    """One look at a demo fine-tune: list it once it succeeded and, once it has ended,
    queue the next demo fine-tune (never a watcher again: no task ping-pong)."""
    outcome = demo_listing_publish(job_id=job_id)
    if outcome != DemoOutcome.WAITING:
        with transaction.atomic():  # the next job's tasks are sent once it commits
            _demo_queue_next(User.objects.get(email=DEMO_EXPERT_EMAIL))
    return outcome


def demo_listing_publish(*, job_id) -> DemoOutcome:
    """List a finished demo fine-tune: create and submit as the expert, approve as the
    demo moderator (audited, as any approval). Safe to call again and concurrently:
    the listing's slug is unique, each step is one locked, state-checked service, and
    a step another call already took is skipped.
    """
    expert = User.objects.get(email=DEMO_EXPERT_EMAIL)
    job = studio_selectors.job_get(owner=expert, job_id=job_id)
    spec = _demo_specialist_of(job)
    if spec is None:
        return DemoOutcome.NOT_TRAINED
    if job.status in WAITING_STATUSES:
        return DemoOutcome.WAITING
    if job.status != JobStatus.SUCCEEDED or job.fine_tuned_model_id is None:
        return DemoOutcome.NOT_TRAINED
    listing = _demo_listing(expert, spec)
    if listing is None:
        try:
            listing = listing_services.listing_create(
                owner=expert, model_version_id=job.fine_tuned_model_id, **spec.listing
            )
        except SlugTaken:  # another call created it meanwhile, or someone else owns the slug
            listing = _demo_listing(expert, spec)
            if listing is None:
                return DemoOutcome.SLUG_TAKEN
    if listing.status == ListingStatus.DRAFT:
        try:
            listing = listing_services.listing_submit(owner=expert, listing_id=listing.id)
        except InvalidListingTransition:
            listing = _demo_listing(expert, spec)
    if listing.status == ListingStatus.IN_REVIEW:
        moderator = User.objects.get(email=DEMO_MODERATOR_EMAIL)
        try:
            listing = listing_services.listing_approve(
                moderator=moderator, listing_id=listing.id, reason=DEMO_APPROVAL_REASON
            )
        except InvalidListingTransition:
            listing = _demo_listing(expert, spec)
    if listing.status == ListingStatus.PUBLISHED:
        _demo_offers_ensure(expert=expert, listing=listing, spec=spec)
        demo_garden_ensure()
        return DemoOutcome.PUBLISHED
    return DemoOutcome.LEFT_TO_MODERATORS


def _demo_offers_ensure(*, expert: User, listing: Listing, spec: DemoSpecialist) -> None:
    """Price a demo listing once: only a listing that never had an offer gets the demo's,
    so an expert's own changes are never undone. Holds the listing row, so two watchers
    cannot both price it."""
    with transaction.atomic():
        Listing.objects.select_for_update().filter(pk=listing.pk).values("pk").first()
        priced = billing_selectors.offer_list_mine(
            owner=expert, listing_slug=listing.slug, include_retired=True
        )
        if priced.exists():
            return
        for offer in spec.offers:
            billing_services.offer_create(owner=expert, listing=listing, **offer)


def demo_garden_ensure() -> Listing | None:
    """List the demo garden once its members are published: the expert allows
    composition, the curator creates and submits it, the demo moderator approves it
    (audited), and it is priced. Only ever once: the garden's slug is the key, and a
    garden that exists (in any state, whoever changed it) is left alone."""
    curator = User.objects.filter(email=DEMO_CURATOR_EMAIL).first()
    expert = User.objects.filter(email=DEMO_EXPERT_EMAIL).first()
    if (
        curator is None
        or expert is None
        or Listing.objects.filter(slug=DEMO_GARDEN["slug"]).exists()
    ):
        return None
    members = list(
        Listing.objects.filter(
            slug__in=DEMO_GARDEN_MEMBERS, owner=expert, status=ListingStatus.PUBLISHED
        )
    )
    if len(members) != len(DEMO_GARDEN_MEMBERS):
        return None
    with transaction.atomic():
        for member in members:
            if not member.composable:
                listing_gardens.listing_set_composable(
                    owner=expert, listing_id=member.pk, composable=True
                )
        try:
            garden = listing_gardens.garden_create(
                curator=curator, kind="router", members=list(DEMO_GARDEN_MEMBERS), **DEMO_GARDEN
            )
        except SlugTaken:
            return None
        listing_services.listing_submit(owner=curator, listing_id=garden.pk)
        garden = listing_services.listing_approve(
            moderator=User.objects.get(email=DEMO_MODERATOR_EMAIL),
            listing_id=garden.pk,
            reason="Demo garden seeded by make run over the demo expert's specialist.",
        )
        for offer in DEMO_GARDEN_OFFERS:
            billing_services.offer_create(owner=curator, listing=garden, **offer)
    return garden
