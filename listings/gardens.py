"""Gardens: curated compositions of other experts' listings, sold as one listing.

A curator (an expert) composes listings whose experts allow it (`Listing.composable`):
- a **router** garden sends each request to the member the specialist router picks
  (serving.router), or to the generalist when none is likely to beat it;
- a **pipeline** garden runs a classification member first, and its label picks the
  generation member that answers (triage → the reply drafter for that label).

The garden is a Listing of kind "garden" with no version of its own: it goes through
review like any listing, has its own offers (per call or a free trial: the split is per
answered call), and its licence terms are the intersection of its members' (derived,
never typed). A member that is suspended, delisted or no longer composable leaves at
once (the call path checks the member's state on every call; `garden_members_remove`
records the departure and tells the curator).
"""

from __future__ import annotations

from dataclasses import dataclass, field

from django.conf import settings
from django.core.mail import send_mail
from django.db import IntegrityError, transaction
from django.db.models import Q
from django.utils import timezone
from django.utils.text import slugify

from accounts.models import User
from listings.errors import InvalidListing, ListingNotFound, NotAnExpert, SlugTaken
from listings.models import (
    Garden,
    GardenKind,
    GardenMember,
    Listing,
    ListingKind,
    ListingStatus,
)
from marketplace import access_epochs
from marketplace.events import event_record
from marketplace.models import DomainEvent
from training_worker.models import TaskType

MAX_MEMBERS = 8
MEMBER_LEFT_EVENT = "garden.member_left"


def _member_q(prefix: str = "") -> Q:
    """A listing that may answer in a garden now: published, composable, a model (not
    a garden), with a live version, its expert active."""
    return Q(
        **{
            f"{prefix}status": ListingStatus.PUBLISHED,
            f"{prefix}composable": True,
            f"{prefix}kind": ListingKind.MODEL,
            f"{prefix}live_version__isnull": False,
            f"{prefix}owner__is_active": True,
        }
    )


def _composable(slug, *, field_name: str, task: str | None = None) -> Listing:
    if not isinstance(slug, str) or not slug:
        raise InvalidListing(
            "Name members by their listing slug.", fields={field_name: ["A slug."]}
        )
    listing = Listing.objects.filter(_member_q(), slug=slug).select_related("live_version").first()
    if listing is None:
        raise InvalidListing(
            f"{slug} cannot be composed: a member must be a published model whose expert "
            "allows composition (composable).",
            code="member_not_composable",
            fields={field_name: [f"{slug}: not a published, composable model."]},
        )
    if task is not None and listing.task != task:
        raise InvalidListing(
            f"{slug} is a {listing.task} model; this place needs {task}.",
            code="member_wrong_task",
            fields={field_name: [f"{slug}: a {task} model."]},
        )
    return listing


def garden_terms(members: list[Listing]) -> dict:
    """The intersection of the members' terms: allowed only where every member allows
    it; attribution when any member asks for it; the tightest monthly cap. A garden is
    served, never downloaded."""
    caps = [m.max_calls_per_month for m in members if m.max_calls_per_month]
    return {
        "commercial_use": all(m.commercial_use for m in members),
        "derivatives_allowed": all(m.derivatives_allowed for m in members),
        "on_prem_download": False,
        "attribution_required": any(m.attribution_required for m in members),
        "max_calls_per_month": min(caps) if caps else None,
    }


@dataclass
class _Plan:
    task: str
    classifier: Listing | None
    members: list[tuple[Listing, str]] = field(default_factory=list)  # (listing, label)


def _plan(kind: str, members, classifier, routes) -> _Plan:
    if kind == GardenKind.ROUTER:
        if not isinstance(members, list) or not 1 <= len(members) <= MAX_MEMBERS:
            raise InvalidListing(
                f"A router garden needs 1 to {MAX_MEMBERS} members.",
                fields={"members": [f"1 to {MAX_MEMBERS} listing slugs."]},
            )
        if len(set(map(str, members))) != len(members):
            raise InvalidListing("Name each member once.", fields={"members": ["Duplicates."]})
        chosen = [_composable(slug, field_name="members") for slug in members]
        tasks = {m.task for m in chosen}
        if len(tasks) != 1:
            raise InvalidListing(
                "A router garden's members share one task.",
                code="member_wrong_task",
                fields={"members": ["All text-classification, or all text-generation."]},
            )
        return _Plan(task=tasks.pop(), classifier=None, members=[(m, "") for m in chosen])
    if kind != GardenKind.PIPELINE:
        raise InvalidListing(
            "kind must be router or pipeline.", fields={"kind": ["router or pipeline."]}
        )
    head = _composable(classifier, field_name="classifier", task=TaskType.TEXT_CLASSIFICATION)
    labels = set(head.live_version.labels or [])
    if not isinstance(routes, dict) or not 1 <= len(routes) <= MAX_MEMBERS:
        raise InvalidListing(
            f"A pipeline garden maps 1 to {MAX_MEMBERS} of the classifier's labels to members.",
            fields={"routes": ['{"label": "generation-listing-slug", ...}']},
        )
    unknown = sorted(label for label in routes if label not in labels)
    if unknown:
        raise InvalidListing(
            f"{head.slug} has no label {', '.join(unknown)}; its labels are "
            f"{', '.join(sorted(labels))}.",
            fields={"routes": [f"Labels of {head.slug}."]},
        )
    steps = [
        (_composable(slug, field_name="routes", task=TaskType.TEXT_GENERATION), label)
        for label, slug in sorted(routes.items())
    ]
    return _Plan(task=TaskType.TEXT_GENERATION, classifier=head, members=steps)


def _share(value) -> int:
    if value is None:
        return 70
    if isinstance(value, bool) or not isinstance(value, int) or not 0 <= value <= 100:
        raise InvalidListing(
            "member_share_percent must be a whole number from 0 to 100.",
            fields={"member_share_percent": ["0 to 100."]},
        )
    return value


def garden_create(
    *,
    curator: User,
    kind: str,
    slug: str = "",
    members=None,
    classifier=None,
    routes=None,
    member_share_percent=None,
    **content,
) -> Listing:
    """A draft garden listing over `members` (router) or `classifier` + `routes`
    ({label: generation slug}, pipeline). Content as listing_create's, but never the
    licence terms: they are the members' intersection. Submit it for review as any
    listing (listing_submit), then price it (per call or a free trial)."""
    from listings.services import LICENCE_FLAGS, RESERVED_SLUGS, _apply_content, _clean_content

    if not curator.is_expert:
        raise NotAnExpert("Only experts can curate gardens.")
    share = _share(member_share_percent)
    plan = _plan(kind, members, classifier, routes)
    for name in (*LICENCE_FLAGS, "max_calls_per_month"):
        content.pop(name, None)
    content = _clean_content(content)
    slug = slugify(slug or content.get("title", ""))[:80]
    if not slug or slug in RESERVED_SLUGS:
        raise InvalidListing("Choose another slug.", fields={"slug": ["Required or reserved."]})
    every = ([plan.classifier] if plan.classifier else []) + [m for m, _ in plan.members]
    listing = Listing(owner=curator, slug=slug, task=plan.task, kind=ListingKind.GARDEN)
    _apply_content(listing, content | garden_terms(every))
    try:
        with transaction.atomic():
            listing.save()
            garden = Garden.objects.create(
                listing=listing, kind=kind, member_share_percent=share, classifier=plan.classifier
            )
            GardenMember.objects.bulk_create(
                GardenMember(garden=garden, listing=member, label=label, position=i)
                for i, (member, label) in enumerate(plan.members)
            )
    except IntegrityError:
        raise SlugTaken(f"The slug '{slug}' is taken.", fields={"slug": ["Taken."]}) from None
    return listing


def garden_require_members(listing: Listing) -> None:
    """Before review and publication: a garden with no member that may answer cannot go
    on sale (InvalidListing 422, code garden_empty)."""
    if listing.kind != ListingKind.GARDEN:
        return
    plan = garden_plan(listing_id=listing.pk)
    if plan is None or plan.empty:
        raise InvalidListing(
            "None of this garden's members may answer now (each must be published and composable).",
            code="garden_empty",
        )


def listing_set_composable(*, owner: User, listing_id, composable: bool) -> Listing:
    """The expert allows (or stops allowing) curators to compose this listing. Turning it
    off takes the listing out of every garden at once."""
    if not isinstance(composable, bool):
        raise InvalidListing("composable is true or false.", fields={"composable": ["A boolean."]})
    with transaction.atomic():
        listing = Listing.objects.select_for_update().filter(pk=listing_id, owner=owner).first()
        if listing is None:
            raise ListingNotFound("No listing here.")
        if listing.kind == ListingKind.GARDEN and composable:
            raise InvalidListing(
                "A garden cannot be a member of another garden.",
                fields={"composable": ["Gardens are not composable."]},
            )
        listing.composable = composable
        listing.updated_at = timezone.now()
        listing.save(update_fields=["composable", "updated_at"])
        if not composable:
            garden_members_remove(
                listing=listing, reason="Its expert stopped allowing composition."
            )
    return listing


def garden_members_remove(*, listing: Listing, reason: str) -> int:
    """`listing` leaves every garden it answers in (in the caller's transaction), and
    each garden's curator is told. The call path already refuses it (it checks the
    member's state on every call); this records when and why."""
    now = timezone.now()
    left = 0
    memberships = GardenMember.objects.filter(listing=listing, removed_at__isnull=True)
    gardens = set(memberships.values_list("garden_id", flat=True))
    left += memberships.update(removed_at=now, removed_reason=reason)
    heads = Garden.objects.filter(classifier=listing, classifier_removed_at__isnull=True)
    gardens |= set(heads.values_list("listing_id", flat=True))
    left += heads.update(classifier_removed_at=now)
    for garden_id in sorted(gardens, key=str):
        event_record(
            type=MEMBER_LEFT_EVENT, subject_type="listing", subject_id=garden_id,
            data={"member": listing.slug, "reason": reason},
        )  # fmt: skip
    if gardens:
        access_epochs.bump(everyone=True)
    return left


def garden_member_restore(*, curator: User, garden_id, member_slug: str) -> Listing:
    """Bring back a member that left this garden (suspended, delisted or no longer
    composable, and now published and composable again): the same place, label and
    terms it had when the garden was reviewed. Only a former member: a new one would
    change what moderators approved (curate a new garden for that)."""
    with transaction.atomic():
        garden = (
            Garden.objects.select_for_update(of=("self",))
            .filter(listing_id=garden_id, listing__owner=curator)
            .select_related("listing")
            .first()
        )
        if garden is None:
            raise ListingNotFound("No garden here.")
        member = _composable(member_slug, field_name="listing")
        restored = False
        if garden.classifier_id == member.pk and garden.classifier_removed_at is not None:
            garden.classifier_removed_at = None
            garden.save(update_fields=["classifier_removed_at"])
            restored = True
        left = GardenMember.objects.filter(garden=garden, listing=member, removed_at__isnull=False)
        present = GardenMember.objects.filter(garden=garden, removed_at__isnull=True)
        for label, position in sorted(set(left.values_list("label", "position"))):
            if present.filter(listing=member, label=label).exists():
                continue
            if label and present.filter(label=label).exists():
                continue  # the label is answered by another member now
            GardenMember.objects.create(
                garden=garden, listing=member, label=label, position=position
            )
            restored = True
        if not restored:
            raise InvalidListing(
                f"{member_slug} is not a former member of this garden (or is in it already).",
                code="not_a_former_member",
                fields={"listing": ["A member that left this garden."]},
            )
    return garden.listing


def on_member_left(event: DomainEvent) -> None:
    """Tell the curator, by email, once per event."""
    garden = Listing.objects.select_related("owner").filter(pk=event.subject_id).first()
    if garden is None:
        return
    member, reason = event.data.get("member", ""), event.data.get("reason", "")
    plan = garden_plan(listing_id=garden.pk)
    after = (
        "No member is left to answer: calls to the garden are refused (503) until you "
        "restore one (on the garden's page, once it is published and composable again)."
        if plan is None or plan.empty
        else "The garden goes on with its other members (or the generalist) for now."
    )
    send_mail(
        subject=f"{member} left your garden {garden.title}",
        message=f"{member} left “{garden.title}”: {reason}\n\n{after}",
        from_email=settings.DEFAULT_FROM_EMAIL,
        recipient_list=[garden.owner.email],
    )


# --- what a call to a garden needs ------------------------------------------------------


@dataclass(frozen=True)
class MemberRow:
    listing_id: object
    slug: str
    title: str
    owner_id: int
    label: str
    model_version_id: object


@dataclass(frozen=True)
class GardenPlan:
    """A garden's members that may answer now (re-read on every call)."""

    garden_id: object
    slug: str
    kind: str
    task: str
    curator_id: int
    member_share_percent: int
    classifier: MemberRow | None
    members: tuple[MemberRow, ...]

    @property
    def empty(self) -> bool:
        if self.kind == GardenKind.PIPELINE:
            return self.classifier is None or not self.members
        return not self.members

    def member_for_label(self, label: str) -> MemberRow | None:
        return next((m for m in self.members if m.label == label), None)


def _row(values: dict, prefix: str, label: str = "") -> MemberRow:
    return MemberRow(
        listing_id=values[f"{prefix}id"],
        slug=values[f"{prefix}slug"],
        title=values[f"{prefix}title"],
        owner_id=values[f"{prefix}owner_id"],
        label=label,
        model_version_id=values[f"{prefix}live_version_id"],
    )


_FIELDS = ("id", "slug", "title", "owner_id", "live_version_id")


def garden_plan(*, listing_id) -> GardenPlan | None:
    """The garden's plan for one call: two queries. None when `listing_id` is no garden."""
    garden = (
        Garden.objects.filter(listing_id=listing_id)
        .values(
            "kind", "member_share_percent", "classifier_removed_at", "listing__slug",
            "listing__task", "listing__owner_id",
            *(f"classifier__{name}" for name in _FIELDS),
        )
        .first()
    )  # fmt: skip
    if garden is None:
        return None
    classifier = None
    head_id = garden["classifier__id"]
    if (
        head_id is not None
        and garden["classifier_removed_at"] is None
        and Listing.objects.filter(_member_q(), pk=head_id).exists()
    ):
        classifier = _row(garden, "classifier__")
    rows = (
        GardenMember.objects.filter(_member_q("listing__"), garden_id=listing_id, removed_at=None)
        .order_by("position", "id")
        .values("label", *(f"listing__{name}" for name in _FIELDS))
    )
    return GardenPlan(
        garden_id=listing_id,
        slug=garden["listing__slug"],
        kind=garden["kind"],
        task=garden["listing__task"],
        curator_id=garden["listing__owner_id"],
        member_share_percent=garden["member_share_percent"],
        classifier=classifier,
        members=tuple(_row(r, "listing__", r["label"]) for r in rows),
    )


def garden_public(listing: Listing) -> dict | None:
    """What a buyer sees of a garden: its kind, the split, and every member (those that
    left too, marked), with each member's expert and verified lift."""
    garden = Garden.objects.filter(listing=listing).select_related("classifier").first()
    if garden is None:
        return None
    members = GardenMember.objects.filter(garden=garden).select_related("listing", "listing__owner")

    def member(m: Listing, *, label: str = "", removed_at=None) -> dict:
        return {
            "listing": m.slug,
            "title": m.title,
            "expert": m.owner.display_name or m.owner.email.split("@")[0],
            "task": m.task,
            "label": label,
            "lift_over_strongest_baseline": m.lift_over_generalist,
            "lift_low": m.lift_over_generalist_low,
            "active": removed_at is None and m.status == ListingStatus.PUBLISHED and m.composable,
        }

    return {
        "kind": garden.kind,
        "split": {
            "platform_fee_percent": settings.PLATFORM_FEE_PERCENT,
            "member_share_percent": garden.member_share_percent,
            "curator_share_percent": garden.curator_share_percent,
            "explained": (
                f"Of each call's price, the platform keeps {settings.PLATFORM_FEE_PERCENT}%. "
                f"Of the rest, {garden.member_share_percent}% goes to the member that "
                "answered (split equally between a pipeline's steps) and "
                f"{garden.curator_share_percent}% to the curator. When the generalist "
                "answers, the members' part stays with the platform."
            ),
        },
        "classifier": (
            member(garden.classifier, removed_at=garden.classifier_removed_at)
            if garden.classifier
            else None
        ),
        "members": [
            member(m.listing, label=m.label, removed_at=m.removed_at)
            for m in members
            if m.removed_at is None
        ],
        "left": [
            {"listing": m.listing.slug, "left_at": m.removed_at, "reason": m.removed_reason}
            for m in members
            if m.removed_at is not None
        ],
    }
