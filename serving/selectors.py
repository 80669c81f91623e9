"""Reads of serving: what a caller may call."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime

from django.db.models import Q

from accounts.models import User
from billing.models import CALL_KINDS, LIVE_LICENCE_STATUSES, Licence
from listings.models import Listing, ListingKind, ListingStatus


@dataclass(frozen=True)
class CallableModel:
    slug: str
    task: str
    owner_name: str
    created_at: datetime


def callable_models(*, user: User) -> list[CallableModel]:
    """Published listings this user may call: those with a live calling licence (free
    trials included) and the user's own, gardens included; by slug."""
    licensed = Licence.objects.filter(
        buyer=user, status__in=LIVE_LICENCE_STATUSES, kind__in=CALL_KINDS
    ).values("listing_id")
    listings = (
        Listing.objects.filter(
            Q(pk__in=licensed) | Q(owner=user),
            status=ListingStatus.PUBLISHED,
            owner__is_active=True,
        )
        .filter(Q(live_version__isnull=False) | Q(kind=ListingKind.GARDEN))
        .select_related("owner")
    )
    return [
        CallableModel(
            slug=listing.slug,
            task=listing.task,
            owner_name=listing.owner.name,
            created_at=listing.created_at,
        )
        for listing in listings.order_by("slug")
    ]
