"""Reads of the catalogue."""

from __future__ import annotations

import base64
import functools
import json
import math
import uuid
from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime

from django.db import connection
from django.db.models import F, Q, QuerySet

from accounts.models import User
from listings.errors import InvalidListing, ListingNotFound
from listings.models import (
    LICENCE_FLAGS,
    Entitlement,
    Listing,
    ListingKind,
    ListingStatus,
    ModerationAction,
    Review,
)
from training_worker import selectors as studio_selectors

# Sort name → column, descending with nulls last; ties broken by id.
SORTS = {
    "newest": "published_at",
    "best_lift": "lift_over_generalist",  # since report version 2: over the strongest baseline
    "rating": "rating_avg",
    "popularity": "popularity",
    "price_asc": "min_price_minor",
    "price_desc": "min_price_minor",
}
# Sorts that run ascending (cheapest first); nulls (nothing on sale) still come last.
ASCENDING_SORTS = {"price_asc"}
SORT_CHOICES = ("relevance", *SORTS)
MAX_LIMIT = 100
MAX_CURSOR_CHARS = 512  # the cursors handed out are under 120
MAX_OFFSET = 2**31 - 1
CARD_DEFERRED_FIELDS = (
    "description", "description_html", "intended_use", "example_input", "out_of_scope_use",
    "risk_notes", "status_reason",
)  # fmt: skip


# What an API catalogue card reads: exactly its columns, as plain values (listing_card_search).
CARD_COLUMNS = (
    "id", "slug", "title", "summary", "domain", "task", "tags", "languages", "status",
    "score_metric", "score", "lift_over_generalist", "lift_over_generalist_low",
    "lift_over_generalist_high", "lift_baseline", "lift_baseline_label", "graded_metric",
    "rating_avg", "rating_count", "popularity", "min_price_minor", "price_currency", *LICENCE_FLAGS,
    "max_calls_per_month", "licence_summary", "published_at", "owner__display_name",
    "owner__email", "owner__expert_profile__verified", "owner__expert_profile__headline",
)  # fmt: skip


def _published() -> QuerySet[Listing]:
    """Published listings of active owners: read on every request, never cached, so a
    suspension (of the listing or of its owner) hides it from the very next page."""
    return Listing.objects.filter(status=ListingStatus.PUBLISHED, owner__is_active=True)


def listing_list_published() -> QuerySet[Listing]:
    """Published listings of active owners (read each time; see _published)."""
    return _published()


@functools.cache
def _card_rows_template() -> QuerySet:
    # The query's structure only, never its rows: resolving 32 columns through two joins
    # was a tenth of a list request, so it is done once; callers take `.all()`, a fresh
    # clone with no result cache, and every request still runs its query.
    return _published().values(*CARD_COLUMNS)


def _catalogue() -> QuerySet[Listing]:
    """Published listings of active owners, with what a card shows in one query."""
    # A card shows none of the long texts nor the live version (its evaluation and card
    # JSON are kilobytes a row): at 100,000 listings, moving them cost more than the query.
    return (
        _published().select_related("owner", "owner__expert_profile").defer(*CARD_DEFERRED_FIELDS)
    )


@dataclass(frozen=True)
class CatalogueQuery:
    q: str = ""
    domain: str = ""
    task: str = ""
    commercial_use: bool | None = None
    derivatives_allowed: bool | None = None
    on_prem_download: bool | None = None
    attribution_required: bool | None = None
    min_lift: float | None = None
    min_rating: float | None = None
    tag: str = ""
    min_price: int | None = None
    max_price: int | None = None
    currency: str = ""
    sort: str = ""
    cursor: str = ""
    limit: int = 20


def catalogue_query_from_params(params) -> CatalogueQuery:
    """Read a catalogue query from request parameters (API and portal alike).

    Raises InvalidListing (422) for numbers that do not parse or a NUL character
    (Postgres refuses it); flags read as booleans ("1", "true", "yes") and are ignored
    when absent.
    """
    with_nul = sorted(key for key in params if any("\x00" in v for v in params.getlist(key)))
    if with_nul:
        raise InvalidListing(
            "Parameters cannot contain NUL characters.",
            fields={key: ["No NUL characters."] for key in with_nul},
        )
    try:
        return CatalogueQuery(
            q=params.get("q", "").strip(),
            domain=params.get("domain", ""),
            task=params.get("task", ""),
            tag=params.get("tag", ""),
            sort=params.get("sort", ""),
            cursor=params.get("cursor", ""),
            limit=int(params.get("limit") or 20),
            min_lift=float(params["min_lift"]) if params.get("min_lift") else None,
            min_rating=float(params["min_rating"]) if params.get("min_rating") else None,
            min_price=_price_param(params, "min_price"),
            max_price=_price_param(params, "max_price"),
            currency=params.get("currency", "").strip().lower(),
            **{
                flag: params[flag].lower() in ("1", "true", "yes", "on")
                for flag in LICENCE_FLAGS
                if params.get(flag)
            },
        )
    except ValueError:
        raise InvalidListing(
            "limit, min_lift and min_rating must be numbers.",
            fields={"limit": [], "min_lift": [], "min_rating": []},
        ) from None


def _price_param(params, name: str) -> int | None:
    """A price bound in minor units (cents): a whole number from 0."""
    raw = params.get(name, "").strip()
    if not raw:
        return None
    if not raw.isascii() or not raw.isdigit() or len(raw) > 15:
        raise InvalidListing(
            f"{name} must be a whole number of minor units (cents), from 0.",
            fields={name: ["A whole number from 0."]},
        )
    return int(raw)


@dataclass(frozen=True)
class CataloguePage:
    listings: list  # Listing instances (listing_search) or CARD_COLUMNS rows (listing_card_search)
    has_more: bool
    next_cursor: str | None


def _encode_cursor(payload: dict) -> str:
    return base64.urlsafe_b64encode(json.dumps(payload).encode()).decode().rstrip("=")


def _decode_cursor(cursor: str) -> dict:
    try:
        if len(cursor) > MAX_CURSOR_CHARS:
            raise ValueError
        padded = cursor + "=" * (-len(cursor) % 4)
        payload = json.loads(base64.urlsafe_b64decode(padded))
        if not isinstance(payload, dict):
            raise ValueError
        return payload
    except (ValueError, RecursionError):
        raise _invalid_cursor() from None


def _invalid_cursor() -> InvalidListing:
    return InvalidListing("The cursor is not valid.", fields={"cursor": ["Invalid."]})


def _offset_of(cursor: dict) -> int:
    """A relevance cursor: `{"offset": n}` with n a whole number from 0."""
    offset = cursor.get("offset")
    if set(cursor) != {"offset"} or type(offset) is not int or not 0 <= offset <= MAX_OFFSET:
        raise _invalid_cursor()
    return offset


def _keyset_of(cursor: dict, field: str) -> tuple[object, uuid.UUID]:
    """A column cursor: `{"value", "id"}` with a value of the sort column's type."""
    if set(cursor) != {"value", "id"} or not isinstance(cursor["id"], str):
        raise _invalid_cursor()
    try:
        last_id = uuid.UUID(cursor["id"])
    except ValueError:
        raise _invalid_cursor() from None
    value = cursor["value"]
    if value is None:
        return None, last_id
    if field == "published_at":
        try:
            value = datetime.fromisoformat(value) if isinstance(value, str) else None
        except ValueError:
            value = None
        if value is None or value.tzinfo is None:
            raise _invalid_cursor()
    elif field in ("popularity", "min_price_minor"):
        if type(value) is not int:
            raise _invalid_cursor()
    elif type(value) not in (int, float) or not math.isfinite(value):
        raise _invalid_cursor()
    return value, last_id


def _search(queryset: QuerySet[Listing], q: str) -> QuerySet[Listing]:
    """Full-text search with ranking on Postgres; a plain substring match elsewhere."""
    if connection.vendor == "postgresql":
        from django.contrib.postgres.search import SearchQuery, SearchRank, SearchVectorField
        from django.db.models.expressions import RawSQL

        # The stored, GIN-indexed vector of title (A), tags and summary (B) and description
        # (C): a Postgres generated column (migration 0004), not a model field.
        vector = RawSQL('"listings_listing"."search_vector"', [], output_field=SearchVectorField())
        query = SearchQuery(q, search_type="websearch", config="english")
        return queryset.annotate(document=vector, rank=SearchRank(vector, query)).filter(
            document=query
        )
    terms = [t for t in q.split() if t]
    for term in terms:
        queryset = queryset.filter(
            Q(title__icontains=term)
            | Q(summary__icontains=term)
            | Q(description__icontains=term)
            | Q(tags__icontains=term)
        )
    return queryset


def _filter_price(listings: QuerySet[Listing], query: CatalogueQuery) -> QuerySet[Listing]:
    """Price range in one currency: amounts in different currencies do not compare."""
    if query.currency:
        if len(query.currency) != 3 or not (query.currency.isascii() and query.currency.isalpha()):
            raise InvalidListing(
                "currency must be an ISO-4217 code such as usd.",
                fields={"currency": ["Three letters."]},
            )
        listings = listings.filter(price_currency=query.currency)
    if query.min_price is None and query.max_price is None:
        return listings
    if not query.currency:
        raise InvalidListing(
            "A price range needs a currency, e.g. currency=usd.",
            fields={"currency": ["Required with min_price or max_price."]},
        )
    if query.min_price is not None:
        listings = listings.filter(min_price_minor__gte=query.min_price)
    if query.max_price is not None:
        listings = listings.filter(min_price_minor__lte=query.max_price)
    return listings


def listing_search(*, query: CatalogueQuery) -> CataloguePage:
    """The catalogue as Listing instances (the portal's pages): published only; filters,
    a sort, and cursor pages.

    Sorts by a column use a keyset cursor (value, id), stable as listings arrive;
    relevance pages by offset, since a rank is not a column.
    """
    return _catalogue_page(query, _catalogue(), getattr)


def listing_card_search(*, query: CatalogueQuery) -> CataloguePage:
    """The same page as listing_search, as dicts of CARD_COLUMNS (the API's list).

    One query of exactly the columns a card shows: no model instances, no owner password
    or profile texts moved for nothing (at 20 rows a page, building instances cost more
    than the query; bench/catalogue.py).
    """
    return _catalogue_page(query, _card_rows_template().all(), dict.__getitem__)


def _catalogue_page(
    query: CatalogueQuery, listings: QuerySet, read: Callable[[object, str], object]
) -> CataloguePage:
    """Filter, sort and page `listings`; `read(row, column)` reads a row's sort value."""
    if query.sort and query.sort not in SORT_CHOICES:
        raise InvalidListing(
            f"sort must be one of {', '.join(SORT_CHOICES)}.", fields={"sort": ["Unknown."]}
        )
    if not 1 <= query.limit <= MAX_LIMIT:
        raise InvalidListing(
            f"limit must be 1 to {MAX_LIMIT}.", fields={"limit": ["Out of range."]}
        )
    if query.domain:
        listings = listings.filter(domain=query.domain)
    if query.task:
        listings = listings.filter(task=query.task)
    for flag in LICENCE_FLAGS:
        value = getattr(query, flag)
        if value is not None:
            listings = listings.filter(**{flag: value})
    if query.min_lift is not None:
        listings = listings.filter(lift_over_generalist__gte=query.min_lift)
    if query.min_rating is not None:
        listings = listings.filter(rating_avg__gte=query.min_rating)
    if query.tag:
        listings = listings.filter(tags__icontains=query.tag.lower())
    listings = _filter_price(listings, query)

    sort = query.sort or ("relevance" if query.q else "newest")
    if query.q:
        listings = _search(listings, query.q)
    cursor = _decode_cursor(query.cursor) if query.cursor else None

    if sort == "relevance":
        if connection.vendor == "postgresql" and query.q:
            listings = listings.order_by("-rank", "-published_at", "-id")
        else:
            listings = listings.order_by("-published_at", "-id")
        offset = _offset_of(cursor) if cursor is not None else 0
        rows = list(listings[offset : offset + query.limit + 1])
        has_more = len(rows) > query.limit
        next_cursor = _encode_cursor({"offset": offset + query.limit}) if has_more else None
        return CataloguePage(rows[: query.limit], has_more, next_cursor)

    field = SORTS[sort]
    if sort in ASCENDING_SORTS:
        listings = listings.order_by(F(field).asc(nulls_last=True), "id")
        after, id_after = f"{field}__gt", "id__gt"
    else:
        listings = listings.order_by(F(field).desc(nulls_last=True), "-id")
        after, id_after = f"{field}__lt", "id__lt"
    if cursor is not None:
        value, last_id = _keyset_of(cursor, field)
        if value is None:
            listings = listings.filter(**{f"{field}__isnull": True, id_after: last_id})
        else:
            listings = listings.filter(
                Q(**{after: value})
                | Q(**{field: value, id_after: last_id})
                | Q(**{f"{field}__isnull": True})
            )
    rows = list(listings[: query.limit + 1])
    has_more = len(rows) > query.limit
    rows = rows[: query.limit]
    next_cursor = None
    if has_more:
        last = rows[-1]
        value = read(last, field)
        next_cursor = _encode_cursor(
            {"value": value.isoformat() if hasattr(value, "isoformat") else value,
             "id": str(read(last, "id"))}
        )  # fmt: skip
    return CataloguePage(rows, has_more, next_cursor)


def composable_listings() -> list[Listing]:
    """What a curator may compose into a garden: published models whose experts allow it,
    with a live version, by title."""
    return list(
        Listing.objects.filter(
            status=ListingStatus.PUBLISHED, composable=True, kind=ListingKind.MODEL,
            live_version__isnull=False, owner__is_active=True,
        )
        .select_related("owner", "live_version")
        .order_by("title")
    )  # fmt: skip


def listing_get_public(*, slug: str, viewer: User | None = None) -> Listing:
    """A published listing, or any listing of the viewer's own; others are 404."""
    listing = (
        Listing.objects.select_related("owner", "owner__expert_profile", "live_version")
        .filter(slug=slug)
        .first()
    )
    if listing is None:
        raise ListingNotFound("No listing here.")
    is_owner = viewer is not None and viewer.is_authenticated and listing.owner_id == viewer.pk
    visible = listing.status == ListingStatus.PUBLISHED and listing.owner.is_active
    if not (visible or is_owner):
        raise ListingNotFound("No listing here.")
    return listing


def listing_list_mine(*, owner: User) -> QuerySet[Listing]:
    return Listing.objects.filter(owner=owner).select_related("live_version")


def user_may_review(*, user: User, listing: Listing) -> bool:
    """Holds or held a licence: billing grants an Entitlement when one activates."""
    if not user.is_authenticated or user.pk == listing.owner_id:
        return False
    return Entitlement.objects.filter(listing=listing, user=user).exists()


def review_list(*, listing: Listing) -> QuerySet[Review]:
    return Review.objects.filter(listing=listing).select_related("author")


def moderation_history(*, listing: Listing) -> QuerySet[ModerationAction]:
    """What moderators did to this listing and why; shown to its expert."""
    return ModerationAction.objects.filter(listing=listing).order_by("created_at", "id")


def review_queue() -> QuerySet[Listing]:
    """Listings waiting for a moderator, oldest first: new ones and new versions."""
    return (
        Listing.objects.filter(
            Q(status=ListingStatus.IN_REVIEW)
            | Q(status=ListingStatus.PUBLISHED, proposed_version__isnull=False)
        )
        .select_related("owner", "proposed_version", "proposed_version__job__dataset")
        .order_by("submitted_at", "id")
    )


def evaluation_summary(version) -> dict | None:
    """The platform's numbers for a version through the studio's typed reader: every
    baseline with its interval and lift, the strongest one, honest about older reports."""
    if version is None:
        return None
    report = studio_selectors.model_version_evaluation(version=version)
    summary = report.as_public_dict() if report else {"task": version.task, "baselines": []}
    return {
        "model_version": str(version.id),
        **summary,
        "task": version.task,
        "adapter_sha256": version.adapter_sha256,
        "lexical_head_sha256": version.lexical_head_sha256 or None,
    }


def evaluation_attempts(version) -> dict:
    """How many sealed evaluations the expert ran on the version's data family before its
    own, and how its lift's interval is named (Bonferroni-corrected for all of them). A
    report from before attempts were counted reads as the first."""
    report = studio_selectors.model_version_evaluation(version=version)
    return {
        "sealed_evaluations_before": report.prior_sealed_evaluations if report else 0,
        "interval_label": report.lift_interval_label if report else "95% interval",
    }
