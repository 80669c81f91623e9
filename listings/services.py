"""Writes of the catalogue: one function per transition, moderator actions audited.

Every transition locks the listing row (select_for_update), checks the current state
and raises InvalidListingTransition (409) when the move is not allowed.
"""

from __future__ import annotations

import markdown
import nh3
from django.db import IntegrityError, transaction
from django.db.models import Avg, Count
from django.utils import timezone
from django.utils.text import slugify

from accounts.models import ExpertProfile, User
from accounts.services import expert_profile_verify
from listings import gardens
from listings.errors import (
    InvalidListing,
    InvalidListingTransition,
    InvalidReport,
    ListingNotEditable,
    ListingNotFound,
    NotAModerator,
    NotAnExpert,
    ReasonRequired,
    ReplyNotAllowed,
    ReviewNotAllowed,
    SlugTaken,
    VersionAlreadyListed,
)
from listings.models import (
    LICENCE_FLAGS,
    Domain,
    Entitlement,
    Listing,
    ListingKind,
    ListingStatus,
    ListingVersion,
    ListingVersionStatus,
    ModerationAction,
    ModerationActionType,
    Report,
    ReportReason,
    ReportStatus,
    Review,
)
from listings.selectors import user_may_review
from marketplace import access_epochs
from marketplace.events import event_record
from training_worker import selectors as studio_selectors
from training_worker.models import ModelVersion

CONTENT_FIELDS = (
    "title", "summary", "description", "domain", "tags", "languages", "intended_use",
    "example_input", "out_of_scope_use", "risk_notes", *LICENCE_FLAGS, "max_calls_per_month",
)  # fmt: skip
EDITABLE_STATES = (ListingStatus.DRAFT, ListingStatus.REJECTED)
RESERVED_SLUGS = {"mine"}  # path words under /api/v1/listings/
MAX_TAGS = 12
MAX_TAG_CHARS = 40
MAX_REPORT_CHARS = 5000
MAX_REVIEW_CHARS = 5000


# --- content ----------------------------------------------------------------------


def render_description(text: str) -> str:
    """Markdown → HTML, sanitized by nh3 (Ammonia): no scripts, styles or handlers."""
    html = markdown.markdown(text, extensions=["extra", "sane_lists"], output_format="html")
    return nh3.clean(html, link_rel="noopener noreferrer nofollow")


def licence_summary_of(
    *,
    commercial_use: bool,
    derivatives_allowed: bool,
    on_prem_download: bool,
    attribution_required: bool,
    max_calls_per_month: int | None,
) -> str:
    """A plain-language sentence per licence flag, generated so it can never disagree."""
    parts = [
        "Commercial use is allowed." if commercial_use else "Non-commercial use only.",
        "You may build derivative models." if derivatives_allowed
        else "No derivative models or redistribution.",
        "You may download the adapter to run on your own machines." if on_prem_download
        else "Use through the Niche API only; no download.",
        "Credit the expert when you publish results." if attribution_required
        else "No attribution required.",
        f"Up to {max_calls_per_month:,} calls a month." if max_calls_per_month
        else "No monthly call cap beyond your plan.",
    ]  # fmt: skip
    return " ".join(parts)


MAX_CALLS_PER_MONTH = 2**31 - 1  # the column's (PositiveIntegerField) upper bound


def _text_error(value: str, max_length: int | None) -> str | None:
    """What Postgres would refuse with a 500: NUL characters, or too long for the column."""
    if "\x00" in value:
        return "No NUL characters."
    if max_length is not None and len(value) > max_length:
        return f"At most {max_length} characters."
    return None


def _clean_content(values: dict) -> dict:
    """Check listing content for every caller (API and portal alike); InvalidListing (422)."""
    errors: dict[str, list[str]] = {}
    if "domain" in values and values["domain"] not in Domain.values:
        errors["domain"] = [f"One of {', '.join(Domain.values)}."]
    for name, value in values.items():
        if isinstance(value, str):
            error = _text_error(value, Listing._meta.get_field(name).max_length)
            if error:
                errors[name] = [error]
    for name in ("tags", "languages"):
        if name in values:
            items = [str(t).strip().lower() for t in values[name] if str(t).strip()]
            if len(items) > MAX_TAGS:
                errors[name] = [f"At most {MAX_TAGS}."]
            elif any(_text_error(item, MAX_TAG_CHARS) for item in items):
                errors[name] = [f"Each at most {MAX_TAG_CHARS} characters, no NUL characters."]
            values[name] = sorted(set(items))
    if "title" in values and not values["title"].strip():
        errors["title"] = ["Required."]
    cap = values.get("max_calls_per_month")
    if cap is not None and not 1 <= cap <= MAX_CALLS_PER_MONTH:  # a 500 past the column
        errors["max_calls_per_month"] = [f"From 1 to {MAX_CALLS_PER_MONTH:,}, or empty."]
    if errors:
        raise InvalidListing("The listing has invalid fields.", fields=errors)
    return values


def _apply_content(listing: Listing, values: dict) -> None:
    for name, value in values.items():
        setattr(listing, name, value)
    listing.description_html = render_description(listing.description)
    listing.licence_summary = licence_summary_of(
        commercial_use=listing.commercial_use,
        derivatives_allowed=listing.derivatives_allowed,
        on_prem_download=listing.on_prem_download,
        attribution_required=listing.attribution_required,
        max_calls_per_month=listing.max_calls_per_month,
    )
    listing.updated_at = timezone.now()


def _owned_version(owner: User, model_version_id) -> ModelVersion:
    version = ModelVersion.objects.filter(owner=owner, pk=model_version_id).first()
    if version is None:
        raise InvalidListing(
            "Choose one of your own model versions.",
            fields={"model_version": ["Not one of your model versions."]},
        )
    return version


def listing_create(*, owner: User, model_version_id, slug: str = "", **content) -> Listing:
    """A draft listing offering one of the owner's model versions.

    Raises NotAnExpert (403), InvalidListing (422) for bad fields or another user's
    version, SlugTaken (409).
    """
    if not owner.is_expert:
        raise NotAnExpert("Only experts can list models.")
    version = _owned_version(owner, model_version_id)
    content = _clean_content(content)
    slug = slugify(slug or content.get("title", ""))[:80]
    if not slug or slug in RESERVED_SLUGS:
        raise InvalidListing("Choose another slug.", fields={"slug": ["Required or reserved."]})
    listing = Listing(owner=owner, slug=slug, task=version.task, proposed_version=version)
    _apply_content(listing, content)
    try:
        with transaction.atomic():
            listing.save()
    except IntegrityError:
        raise SlugTaken(f"The slug '{slug}' is taken.", fields={"slug": ["Taken."]}) from None
    return listing


def _locked(listing_id) -> Listing:
    listing = Listing.objects.select_for_update().filter(pk=listing_id).first()
    if listing is None:
        raise ListingNotFound("No listing here.")
    return listing


def _owned_locked(owner: User, listing_id) -> Listing:
    listing = _locked(listing_id)
    if listing.owner_id != owner.pk:
        raise ListingNotFound("No listing here.")
    return listing


def listing_update(*, owner: User, listing_id, model_version_id=None, **content) -> Listing:
    """Edit content while draft or rejected (409 otherwise)."""
    with transaction.atomic():
        listing = _owned_locked(owner, listing_id)
        if listing.status not in EDITABLE_STATES:
            raise ListingNotEditable(
                f"A {listing.status} listing cannot be edited; propose a new version instead."
            )
        if listing.kind == ListingKind.GARDEN:
            if model_version_id is not None:
                raise InvalidListing(
                    "A garden has no version of its own; its members answer.",
                    fields={"model_version": ["Not for a garden."]},
                )
            for name in (*LICENCE_FLAGS, "max_calls_per_month"):
                content.pop(name, None)  # the members' intersection, never typed
        if model_version_id is not None:
            listing.proposed_version = _owned_version(owner, model_version_id)
            listing.task = listing.proposed_version.task
        _apply_content(listing, _clean_content(content))
        listing.save()
    return listing


def _transition(listing: Listing, allowed: tuple, target: str, verb: str) -> None:
    if listing.status not in allowed:
        raise InvalidListingTransition(
            f"Cannot {verb} a listing that is {listing.status}.",
            fields={"status": [listing.status]},
        )
    listing.status = target


def listing_set_free_private_evaluation(*, owner: User, listing_id, free: bool) -> Listing:
    """The expert offers (or stops offering) free private evaluation of this listing on
    buyers' own rows. Paid evaluation, each row a call on the buyer's licence, stays open
    whatever this says."""
    if not isinstance(free, bool):
        raise InvalidListing("free is true or false.", fields={"free": ["A boolean."]})
    with transaction.atomic():
        listing = _owned_locked(owner, listing_id)
        listing.free_private_evaluation = free
        listing.updated_at = timezone.now()
        listing.save(update_fields=["free_private_evaluation", "updated_at"])
    return listing


def listing_submit(*, owner: User, listing_id) -> Listing:
    """draft | rejected → in_review."""
    with transaction.atomic():
        listing = _owned_locked(owner, listing_id)
        _transition(listing, EDITABLE_STATES, ListingStatus.IN_REVIEW, "submit")
        if listing.kind == ListingKind.GARDEN:
            gardens.garden_require_members(listing)
        elif listing.proposed_version is None:
            raise InvalidListing("Choose a model version first.", code="no_version")
        listing.submitted_at = timezone.now()
        listing.save()
    return listing


def listing_propose_version(*, owner: User, listing_id, model_version_id) -> Listing:
    """Offer a new model version on a published listing; it goes to review while the
    live version keeps serving.

    Raises VersionAlreadyListed (409) for a version that is or was live here: a
    listing's numbers name each version once.
    """
    with transaction.atomic():
        listing = _owned_locked(owner, listing_id)
        if listing.kind == ListingKind.GARDEN:
            raise InvalidListing(
                "A garden has no version of its own; its members answer.",
                fields={"model_version": ["Not for a garden."]},
            )
        if listing.status != ListingStatus.PUBLISHED:
            raise InvalidListingTransition(
                "New versions go on published listings; edit a draft instead."
            )
        version = _owned_version(owner, model_version_id)
        if version.task != listing.task:
            raise InvalidListing(
                f"This listing is for {listing.task}.", fields={"model_version": ["Wrong task."]}
            )
        _refuse_listed_version(listing, version)
        listing.proposed_version = version
        listing.submitted_at = timezone.now()
        listing.save()
    return listing


def _refuse_listed_version(listing: Listing, version: ModelVersion) -> None:
    """A listing's numbers name each model version once: `<slug>@<n>` never changes."""
    listed = listing.versions.filter(model_version=version).first()
    if listed is not None:
        raise VersionAlreadyListed(
            f"This model version is already {listing.slug}@{listed.number} "
            f"({listed.status}); propose a new one.",
            fields={"model_version": ["Already listed here."]},
        )


def listing_delist(*, owner: User, listing_id) -> Listing:
    """Any state but delisted → delisted, by its owner. Records `listing.delisted`
    (billing winds its paying buyers' licences down: they keep what they paid for)."""
    with transaction.atomic():
        listing = _owned_locked(owner, listing_id)
        allowed = tuple(s for s in ListingStatus.values if s != ListingStatus.DELISTED)
        _transition(listing, allowed, ListingStatus.DELISTED, "delist")
        listing.save()
        access_epochs.bump(everyone=True)
        event_record(
            type="listing.delisted", subject_type="listing", subject_id=listing.pk, actor=owner
        )
        gardens.garden_members_remove(listing=listing, reason="Its expert delisted it.")
    return listing


# --- moderation -------------------------------------------------------------------


def _require_moderator(actor: User, listing: Listing | None = None) -> None:
    if not actor.is_moderator:
        raise NotAModerator("Only moderators can do this.")
    if listing is not None and listing.owner_id == actor.pk:
        raise NotAModerator(
            "Moderators cannot moderate their own listings.", code="conflict_of_interest"
        )


def _require_reason(reason: str) -> str:
    reason = (reason or "").strip()
    if not reason:
        raise ReasonRequired("Give a reason; the expert will read it.", fields={"reason": []})
    return reason


def _audit(actor: User, action: str, target, *, listing=None, reason: str = "") -> None:
    ModerationAction.objects.create(
        actor=actor,
        action=action,
        target_type=target._meta.model_name,
        target_id=str(target.pk),
        listing=listing,
        reason=reason,
    )


def _scores_of(version: ModelVersion) -> dict:
    """The numbers buyers compare, straight from the platform's evaluation: the score and
    the lift over the STRONGEST baseline the evaluation had (named beside it)."""
    report = studio_selectors.model_version_evaluation(version=version)
    strongest = report.strongest_baseline if report else None
    lift = strongest.lift if strongest else None
    return {
        "score_metric": report.primary_metric if report else "",
        "score": report.score if report else None,
        "lift_over_generalist": lift.delta if lift else None,
        "lift_over_generalist_low": lift.ci_low if lift else None,
        "lift_over_generalist_high": lift.ci_high if lift else None,
        "lift_baseline": strongest.name if lift else "",
        "lift_baseline_label": strongest.display_name if lift else "",
        "graded_metric": card_graded_metric(report.graded_metric if report else None),
    }


def card_graded_metric(graded: dict | None) -> dict | None:
    """What a catalogue card shows of a report's graded metric (None when it has none)."""
    if not graded:
        return None
    strongest = graded.get("strongest_baseline") or {}
    return {
        "name": graded["name"],
        "label": graded["label"],
        "higher_is_better": graded["higher_is_better"],
        "value": graded["value"],
        "ci_low": graded["ci_low"],
        "ci_high": graded["ci_high"],
        "lift": strongest.get("lift"),
        "baseline_label": strongest.get("label", ""),
    }


def _go_live(listing: Listing, version: ModelVersion) -> None:
    now = timezone.now()
    listing.versions.filter(status=ListingVersionStatus.LIVE).update(
        status=ListingVersionStatus.RETIRED, retired_at=now
    )
    listed = ListingVersion.objects.create(
        listing=listing, model_version=version, number=listing.versions.count() + 1
    )
    listing.live_version = version
    listing.proposed_version = None
    # Higher contexts react to a new live version (evidence scores it on its leaderboards).
    event_record(
        type="listing.version_live", subject_type="listing", subject_id=listing.pk,
        data={"model_version_id": str(version.pk), "number": listed.number},
    )  # fmt: skip
    for name, value in _scores_of(version).items():
        setattr(listing, name, value)


def _moderate_listing(
    *,
    moderator: User,
    listing_id,
    allowed: tuple,
    target: str,
    verb: str,
    action: str,
    reason: str,
    on_transition=None,
) -> Listing:
    """Lock, check moderator and state, move, audit: the shape of every listing decision."""
    _require_moderator(moderator)
    with transaction.atomic():
        listing = _locked(listing_id)
        _require_moderator(moderator, listing)
        _transition(listing, allowed, target, verb)
        if on_transition is not None:
            on_transition(listing)
        listing.status_reason = reason
        listing.save()
        _audit(moderator, action, listing, listing=listing, reason=reason)
        access_epochs.bump(everyone=True)  # who may call it changed for all its buyers
    return listing


def listing_approve(*, moderator: User, listing_id, reason: str = "") -> Listing:
    """in_review → published; its proposed version goes live."""

    def publish(listing: Listing) -> None:
        if listing.kind == ListingKind.GARDEN:
            gardens.garden_require_members(listing)  # a garden has no version of its own
        else:
            _go_live(listing, listing.proposed_version)
        listing.published_at = listing.published_at or timezone.now()

    return _moderate_listing(
        moderator=moderator, listing_id=listing_id, allowed=(ListingStatus.IN_REVIEW,),
        target=ListingStatus.PUBLISHED, verb="approve", action=ModerationActionType.APPROVE,
        reason=reason, on_transition=publish,
    )  # fmt: skip


def listing_reject(*, moderator: User, listing_id, reason: str) -> Listing:
    """in_review → rejected, with the reason the expert sees."""
    return _moderate_listing(
        moderator=moderator, listing_id=listing_id, allowed=(ListingStatus.IN_REVIEW,),
        target=ListingStatus.REJECTED, verb="reject", action=ModerationActionType.REJECT,
        reason=_require_reason(reason),
    )  # fmt: skip


def listing_suspend(*, moderator: User, listing_id, reason: str) -> Listing:
    """published → suspended (hidden from the catalogue), with a reason. Records
    `listing.suspended` (billing ends its licences now and refunds the unused part)."""
    reason = _require_reason(reason)

    def record(listing: Listing) -> None:
        event_record(
            type="listing.suspended", subject_type="listing", subject_id=listing.pk,
            actor=moderator, data={"reason": reason},
        )  # fmt: skip
        gardens.garden_members_remove(listing=listing, reason=f"Suspended: {reason}")

    return _moderate_listing(
        moderator=moderator, listing_id=listing_id, allowed=(ListingStatus.PUBLISHED,),
        target=ListingStatus.SUSPENDED, verb="suspend", action=ModerationActionType.SUSPEND,
        reason=reason, on_transition=record,
    )  # fmt: skip


def listing_reinstate(*, moderator: User, listing_id, reason: str = "") -> Listing:
    """suspended → published."""
    return _moderate_listing(
        moderator=moderator, listing_id=listing_id, allowed=(ListingStatus.SUSPENDED,),
        target=ListingStatus.PUBLISHED, verb="reinstate", action=ModerationActionType.REINSTATE,
        reason=reason,
    )  # fmt: skip


def _decide_proposed_version(*, moderator: User, listing_id, accept: bool, reason: str) -> Listing:
    _require_moderator(moderator)
    with transaction.atomic():
        listing = _locked(listing_id)
        _require_moderator(moderator, listing)
        if listing.status != ListingStatus.PUBLISHED or listing.proposed_version is None:
            raise InvalidListingTransition("No new version waits for review on this listing.")
        version = listing.proposed_version
        if accept:
            _refuse_listed_version(listing, version)  # proposed before proposals checked
            _go_live(listing, version)
        else:
            listing.proposed_version = None
        listing.save()
        action = (
            ModerationActionType.APPROVE_VERSION if accept
            else ModerationActionType.REJECT_VERSION
        )  # fmt: skip
        _audit(moderator, action, version, listing=listing, reason=reason)
        access_epochs.bump(everyone=True)  # the live version calls reach changed
    return listing


def listing_version_approve(*, moderator: User, listing_id, reason: str = "") -> Listing:
    """A published listing's proposed version replaces the live one."""
    return _decide_proposed_version(
        moderator=moderator, listing_id=listing_id, accept=True, reason=reason
    )


def listing_version_reject(*, moderator: User, listing_id, reason: str) -> Listing:
    """Drop a proposed version; the live version keeps serving."""
    return _decide_proposed_version(
        moderator=moderator, listing_id=listing_id, accept=False, reason=_require_reason(reason)
    )


def report_create(*, reporter: User, listing: Listing, reason: str, text: str = "") -> Report:
    """Anyone signed in may report a listing they can see; it opens a moderation item.

    Raises InvalidReport (422) for an unknown reason or an over-long text; the API and
    the portal both rely on this check.
    """
    text = (text or "").strip()
    if reason not in ReportReason.values:
        raise InvalidReport(
            "Choose a reason.", fields={"reason": [f"One of {', '.join(ReportReason.values)}."]}
        )
    error = _text_error(text, MAX_REPORT_CHARS)
    if error:
        raise InvalidReport(f"The report's text: {error}", fields={"text": [error]})
    return Report.objects.create(listing=listing, reporter=reporter, reason=reason, text=text)


def report_resolve(*, moderator: User, report_id, actioned: bool, note: str) -> Report:
    """open → actioned | dismissed, with a note."""
    _require_moderator(moderator)
    note = _require_reason(note)
    with transaction.atomic():
        report = Report.objects.select_for_update().filter(pk=report_id).first()
        if report is None:
            raise ListingNotFound("No report with this id.", code="report_not_found")
        if report.status != ReportStatus.OPEN:
            raise InvalidListingTransition(f"The report is already {report.status}.")
        report.status = ReportStatus.ACTIONED if actioned else ReportStatus.DISMISSED
        report.resolved_by, report.resolved_at = moderator, timezone.now()
        report.resolution_note = note
        report.save()
        action = (
            ModerationActionType.REPORT_ACTIONED if actioned
            else ModerationActionType.REPORT_DISMISSED
        )  # fmt: skip
        _audit(moderator, action, report, listing=report.listing, reason=note)
    return report


def user_suspend(*, moderator: User, user: User, reason: str) -> User:
    """A suspended user cannot log in, their API keys stop and their listings are hidden."""
    _require_moderator(moderator)
    reason = _require_reason(reason)
    if user.pk == moderator.pk:
        raise InvalidListing("Moderators cannot suspend themselves.", code="self_suspension")
    if (user.is_superuser or user.is_moderator) and not moderator.is_superuser:
        raise NotAModerator("Only an administrator can suspend a moderator.")
    with transaction.atomic():
        if not User.objects.filter(pk=user.pk, is_active=True).update(is_active=False):
            raise InvalidListingTransition("This user is already suspended.")
        user.is_active = False
        _audit(moderator, ModerationActionType.SUSPEND_USER, user, reason=reason)
        access_epochs.bump(user_id=user.pk, everyone=True)  # their keys, their buyers
        event_record(
            type="user.suspended", subject_type="user", subject_id=user.pk, actor=moderator,
            data={"reason": reason},
        )  # fmt: skip
        for listing in Listing.objects.filter(owner=user, kind=ListingKind.MODEL):
            gardens.garden_members_remove(listing=listing, reason="Its expert was suspended.")
    return user


def user_reinstate(*, moderator: User, user: User, reason: str = "") -> User:
    _require_moderator(moderator)
    with transaction.atomic():
        if not User.objects.filter(pk=user.pk, is_active=False).update(is_active=True):
            raise InvalidListingTransition("This user is not suspended.")
        user.is_active = True
        _audit(moderator, ModerationActionType.REINSTATE_USER, user, reason=reason)
        access_epochs.bump(user_id=user.pk, everyone=True)
    return user


def expert_verify(*, moderator: User, profile: ExpertProfile, note: str) -> ExpertProfile:
    """Mark an expert verified after checking credentials; the note is kept and audited."""
    _require_moderator(moderator)
    note = _require_reason(note)
    if profile.verified:
        raise InvalidListingTransition("This expert is already verified.")
    with transaction.atomic():
        expert_profile_verify(profile=profile, moderator=moderator, note=note)
        _audit(moderator, ModerationActionType.VERIFY_EXPERT, profile, reason=note)
    return profile


# --- reviews and entitlements -----------------------------------------------------


def _lock_listing_numbers(listing: Listing) -> None:
    """Hold the listing row before counting what is copied onto it.

    Without the lock two buyers' transactions each count without the other's
    uncommitted row and the last write wins. NO KEY UPDATE serializes these writers
    (and the transitions, which take FOR UPDATE) without blocking rows that merely
    reference the listing.
    """
    Listing.objects.select_for_update(no_key=True).filter(pk=listing.pk).values("pk").first()


def entitlement_grant(*, listing: Listing, user: User, reference: str) -> Entitlement:
    """Called by billing when a licence activates. Idempotent; counts toward popularity.

    Holds the listing row while it counts, so concurrent grants all count.
    """
    with transaction.atomic():
        _lock_listing_numbers(listing)
        entitlement, created = Entitlement.objects.get_or_create(
            listing=listing, user=user, defaults={"reference": reference}
        )
        if created:
            Listing.objects.filter(pk=listing.pk).update(
                popularity=Entitlement.objects.filter(listing=listing).count()
            )
    return entitlement


def listing_set_price_summary(
    *, listing: Listing, min_price_minor: int | None, currency: str
) -> None:
    """Copy the lowest price on sale onto the listing, for the catalogue's price filter
    and sort. Billing calls it whenever an offer changes (listings never reads offers).

    `min_price_minor` None (with currency "") means nothing is on sale. Raises
    InvalidListing for a negative amount or a currency that is not three lower-case
    letters.
    """
    if min_price_minor is None:
        currency = ""
    elif (
        isinstance(min_price_minor, bool)
        or not isinstance(min_price_minor, int)
        or min_price_minor < 0
        or len(currency) != 3
        or not (currency.isascii() and currency.isalpha() and currency.islower())
    ):
        raise InvalidListing(
            "A price summary is a non-negative amount in minor units and an ISO currency.",
            fields={"min_price_minor": [], "currency": []},
        )
    Listing.objects.filter(pk=listing.pk).update(
        min_price_minor=min_price_minor, price_currency=currency
    )
    listing.min_price_minor, listing.price_currency = min_price_minor, currency


def _refresh_rating(listing: Listing) -> None:
    """Recount the rating; the caller holds the listing row (_lock_listing_numbers)."""
    summary = Review.objects.filter(listing=listing).aggregate(avg=Avg("rating"), n=Count("id"))
    Listing.objects.filter(pk=listing.pk).update(
        rating_avg=round(summary["avg"], 3) if summary["avg"] is not None else None,
        rating_count=summary["n"],
    )


def review_upsert(*, author: User, listing: Listing, rating: int, text: str = "") -> Review:
    """One review per buyer who holds or held a licence; a second call edits it.

    Holds the listing row while it recounts, so concurrent reviews all count.
    """
    if not user_may_review(user=author, listing=listing):
        raise ReviewNotAllowed("Only buyers who hold or held a licence can review this model.")
    if not 1 <= rating <= 5:
        raise InvalidListing("rating must be 1 to 5.", fields={"rating": ["1 to 5."]})
    error = _text_error(text, MAX_REVIEW_CHARS)
    if error:
        raise InvalidListing(f"The review's text: {error}", fields={"text": [error]})
    with transaction.atomic():
        _lock_listing_numbers(listing)
        review, created = Review.objects.get_or_create(
            listing=listing, author=author, defaults={"rating": rating, "text": text}
        )
        if not created:
            review.rating, review.text, review.updated_at = rating, text, timezone.now()
            review.save(update_fields=["rating", "text", "updated_at"])
        _refresh_rating(listing)
    return review


def review_reply(*, owner: User, review_id, text: str) -> Review:
    """The listing's expert answers a review, once."""
    with transaction.atomic():
        review = (
            Review.objects.select_for_update()
            .select_related("listing")
            .filter(pk=review_id, listing__owner=owner)
            .first()
        )
        if review is None:
            raise ListingNotFound("No review of yours to answer here.", code="review_not_found")
        if review.replied_at is not None:
            raise ReplyNotAllowed("You already answered this review.")
        if not text.strip():
            raise InvalidListing("The reply is empty.", fields={"text": ["Required."]})
        error = _text_error(text, MAX_REVIEW_CHARS)
        if error:
            raise InvalidListing(f"The reply: {error}", fields={"text": [error]})
        review.reply, review.replied_at = text.strip(), timezone.now()
        review.save(update_fields=["reply", "replied_at"])
    return review
