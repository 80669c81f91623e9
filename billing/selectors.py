"""Reads of commerce: licence checks for serving, offers, usage and earnings statements."""

from __future__ import annotations

import calendar
import uuid
from collections import defaultdict
from dataclasses import dataclass, field
from datetime import UTC, date, datetime, timedelta

from django.conf import settings
from django.db import connection
from django.db.models import (
    Avg,
    Count,
    F,
    Min,
    OuterRef,
    Q,
    QuerySet,
    Subquery,
    Sum,
    UUIDField,
)
from django.db.models.functions import Coalesce, TruncDay
from django.utils import timezone

from accounts.models import User
from billing.errors import (
    InvalidPeriod,
    LicenceNotFound,
    LicenceRequired,
    OfferNotFound,
    QuotaExceeded,
    VersionNotFound,
)
from billing.models import (
    CALL_KINDS,
    ENDED_LICENCE_STATUSES,
    LIVE_LICENCE_STATUSES,
    ConnectAccount,
    Licence,
    LicenceUsagePeriod,
    Offer,
    OfferKind,
    OfferStatus,
    Payment,
    PaymentKind,
    StripeEvent,
    UsageRecord,
    UsageStatus,
)
from listings.errors import ListingNotFound
from listings.models import (
    Listing,
    ListingKind,
    ListingStatus,
    ListingVersion,
    ListingVersionStatus,
)

# --- periods ------------------------------------------------------------------------


def add_months(moment: datetime, months: int) -> datetime:
    """The same day and time `months` later, clamped to the month's last day (Stripe's
    rule for a billing anchor on the 29th to 31st)."""
    index = moment.month - 1 + months
    year, month = moment.year + index // 12, index % 12 + 1
    return moment.replace(
        year=year, month=month, day=min(moment.day, calendar.monthrange(year, month)[1])
    )


def licence_period_at(licence: Licence, at: datetime) -> tuple[datetime, datetime | None]:
    """The period a call at `at` counts in: (start, end); end None while unknown.

    A trial is one period from activation. A licence billed by Stripe counts in Stripe's
    period (its subscription's, copied by the sync) and never in a period of our own
    making: past the period's end, before Stripe's renewal arrives, a call counts in
    the next period, which starts exactly where Stripe's last one ended (Stripe's
    periods are contiguous) and whose end Stripe tells us with the renewal. A sandbox
    licence (no Stripe) has months of its own, from its activation, each computed from
    that anchor with Stripe's rule for a 29th-31st anchor (clamped to the month's end).
    """
    anchor = licence.current_period_start or licence.activated_at or licence.created_at
    if licence.kind == OfferKind.FREE_TRIAL:
        return anchor, None
    end = licence.current_period_end
    if not licence.sandbox and end is not None:
        if at < end:
            return anchor, end
        return end, None  # Stripe's next period; its end arrives with the renewal
    if end is not None and anchor <= at < end:
        return anchor, end
    months = max(0, (at.year - anchor.year) * 12 + at.month - anchor.month)
    while months > 0 and add_months(anchor, months) > at:
        months -= 1
    return add_months(anchor, months), add_months(anchor, months + 1)


# --- metered licences and the buyer's spend cap ----------------------------------------


def metered(kind: str, offer: Offer) -> bool:
    """Whether a licence of this kind and offer bills calls (per call, or a
    subscription's calls past its quota)."""
    return kind == OfferKind.PER_CALL or (
        kind == OfferKind.SUBSCRIPTION
        and offer.overage == "bill"
        and bool(offer.overage_unit_amount)
    )


def spend_cap_calls(offer: Offer, amount: int | None) -> int | None:
    """The calls per period a spend cap of `amount` minor units allows: what is billed
    for them never passes the cap (calls x price per call <= amount)."""
    if amount is None:
        return None
    if offer.kind == OfferKind.PER_CALL and offer.unit_amount:
        return min(amount * 1000 // offer.unit_amount, 2**31 - 1)
    if offer.kind == OfferKind.SUBSCRIPTION and offer.overage_unit_amount:
        paid = amount * 1000 // offer.overage_unit_amount
        return min((offer.included_calls or 0) + paid, 2**31 - 1)
    return None


def licence_batch_price_percent(*, licence_id) -> int:
    """What a batch row bills under this licence, in percent of a per-call price (its
    offer's batch_price_percent; offers are immutable once bought)."""
    percent = (
        Licence.objects.filter(pk=licence_id).values_list("offer__batch_price_percent").first()
    )
    return 100 if percent is None else percent[0]


def effective_call_limit(call_quota: int | None, cap_calls: int | None) -> int | None:
    """The tighter of the licence's quota and its spend cap (None: no limit)."""
    limits = [x for x in (call_quota, cap_calls) if x is not None]
    return min(limits) if limits else None


def quota_error(call_quota: int | None, cap_calls: int | None, *, left: int) -> QuotaExceeded:
    """429 naming the limit that binds: the spend cap the buyer set, or the quota."""
    if cap_calls is not None and (call_quota is None or cap_calls < call_quota):
        return QuotaExceeded(
            "This licence's monthly spend cap is reached; raise it on the licence "
            "(PATCH /api/v1/billing/licenses/{id}) or wait for the next period.",
            code="spend_cap_reached",
            fields={"calls_left": [str(left)]},
        )
    return QuotaExceeded(
        f"This licence's {call_quota} calls for the period are used up.",
        fields={"calls_left": [str(left)]},
    )


def licence_grants_access_q(now: datetime) -> Q:
    """Licences that grant access now (calls or downloads, by kind): live, not past a
    wind-down's end, their expert active, and their listing published, or delisted
    while the licence winds down (the buyer keeps what they paid for). A suspended
    listing grants nothing."""
    return (
        Q(status__in=LIVE_LICENCE_STATUSES, listing__owner__is_active=True)
        & (Q(access_ends_at__isnull=True) | Q(access_ends_at__gt=now))
        & (
            Q(listing__status=ListingStatus.PUBLISHED)
            | Q(listing__status=ListingStatus.DELISTED, cancel_at_period_end=True)
        )
    )


# --- the licence check serving makes on every call -----------------------------------


@dataclass(frozen=True)
class LicenceCheck:
    """May this user call this listing now, under which licence, with how many calls
    left this period, and which version answers. `licence_id` is None for the owner."""

    listing_id: uuid.UUID
    listing_slug: str
    listing_version_id: int
    version_number: int
    model_version_id: uuid.UUID
    licence_id: uuid.UUID | None
    kind: str
    status: str
    sandbox: bool
    period_start: datetime | None
    calls_used: int
    call_quota: int | None
    spend_cap_calls: int | None = None
    # A garden (listings.gardens): no version of its own (the version fields are None);
    # its members answer, and calls are metered on this licence.
    garden: bool = False

    @property
    def is_owner(self) -> bool:
        return self.licence_id is None

    @property
    def calls_left(self) -> int | None:
        """None: no limit. The quota or the buyer's spend cap, whichever is tighter."""
        limit = effective_call_limit(self.call_quota, self.spend_cap_calls)
        if limit is None:
            return None
        return max(0, limit - self.calls_used)

    def require_calls(self, units: int = 1) -> None:
        """Raise QuotaExceeded (429: quota_exceeded or spend_cap_reached) when fewer than
        `units` calls are left."""
        left = self.calls_left
        if left is not None and left < units:
            raise quota_error(self.call_quota, self.spend_cap_calls, left=left)


def _version_subqueries(version_number: int | None) -> dict:
    """ListingVersion id, number and model version of the live or the pinned version."""
    versions = ListingVersion.objects.filter(listing=OuterRef("listing_id")).order_by()
    if version_number is None:
        versions = versions.filter(model_version=OuterRef("listing__live_version_id"))
    else:
        versions = versions.filter(number=version_number, status=ListingVersionStatus.LIVE)
    return {
        "v_id": Subquery(versions.values("id")[:1]),
        "v_number": Subquery(versions.values("number")[:1]),
        "v_model": Subquery(versions.values("model_version_id")[:1], output_field=UUIDField()),
    }


@dataclass(frozen=True)
class _PeriodFields:
    """What licence_period_at reads of a licence, from the check's row."""

    kind: str
    current_period_start: datetime | None
    current_period_end: datetime | None
    activated_at: datetime | None
    created_at: datetime
    sandbox: bool


# One statement, written out: the ORM spent longer compiling the equivalent query (five
# correlated subqueries) than Postgres spends running it. Every step is an index probe:
# listings' unique slug, one_live_calling_licence (buyer, listing), the counter's
# one_counter_per_period (licence, period_start) and listing versions by listing.
_LICENCE_FOR_CALL_SQL = f"""
SELECT lic.id, lic.listing_id, lic.kind, lic.status, lic.sandbox, lic.call_quota,
       lic.current_period_start, lic.current_period_end, lic.activated_at, lic.created_at,
       period.period_start, period.calls, version.id, version.number, version.model_version_id,
       lic.spend_cap_calls, listing.kind
FROM {Licence._meta.db_table} lic
JOIN {Listing._meta.db_table} listing ON listing.id = lic.listing_id
JOIN {User._meta.db_table} owner ON owner.id = listing.owner_id
LEFT JOIN LATERAL (
    SELECT period_start, calls FROM {LicenceUsagePeriod._meta.db_table}
    WHERE licence_id = lic.id ORDER BY period_start DESC LIMIT 1
) period ON TRUE
LEFT JOIN LATERAL (
    SELECT id, number, model_version_id FROM {ListingVersion._meta.db_table}
    WHERE listing_id = lic.listing_id AND (
        (%(number)s::integer IS NULL AND model_version_id = listing.live_version_id)
        OR (number = %(number)s::integer AND status = %(version_live)s)
    )
    LIMIT 1
) version ON TRUE
WHERE lic.buyer_id = %(buyer)s AND listing.slug = %(slug)s AND owner.is_active
  AND (listing.status = %(published)s
       OR (listing.status = %(delisted)s AND lic.cancel_at_period_end))
  AND (lic.access_ends_at IS NULL OR lic.access_ends_at > %(now)s)
  AND lic.status = ANY(%(live)s) AND lic.kind = ANY(%(kinds)s)
LIMIT 1
"""  # noqa: S608  (table names from the models; every value is a parameter)


def _licence_row_sql(user: User, slug: str, number: int | None, now: datetime) -> tuple | None:
    with connection.cursor() as cursor:
        cursor.execute(
            _LICENCE_FOR_CALL_SQL,
            {
                "buyer": user.pk,
                "slug": slug,
                "number": number,
                "now": now,
                "published": ListingStatus.PUBLISHED,
                "delisted": ListingStatus.DELISTED,
                "live": list(LIVE_LICENCE_STATUSES),
                "kinds": list(CALL_KINDS),
                "version_live": ListingVersionStatus.LIVE,
            },
        )
        return cursor.fetchone()


def _licence_row_orm(user: User, slug: str, number: int | None, now: datetime) -> tuple | None:
    """The same row as _LICENCE_FOR_CALL_SQL, in the ORM (SQLite for `make run`)."""
    latest = LicenceUsagePeriod.objects.filter(licence=OuterRef("pk")).order_by("-period_start")
    rows = (
        Licence.objects.filter(licence_grants_access_q(now))
        .filter(buyer=user, listing__slug=slug, kind__in=CALL_KINDS)
        .annotate(
            p_start=Subquery(latest.values("period_start")[:1]),
            p_calls=Subquery(latest.values("calls")[:1]),
            **_version_subqueries(number),
        )
        .order_by()
        .values_list(
            "id", "listing_id", "kind", "status", "sandbox", "call_quota",
            "current_period_start", "current_period_end", "activated_at", "created_at",
            "p_start", "p_calls", "v_id", "v_number", "v_model", "spend_cap_calls",
            "listing__kind",
        )[:1]
    )  # fmt: skip
    return rows[0] if rows else None


def licence_for_call(
    *,
    user: User,
    listing_slug: str,
    version_number: int | None = None,
    at: datetime | None = None,
) -> LicenceCheck:
    """The check serving makes before every call: one query when the caller holds a
    live calling licence (index one_live_calling_licence on (buyer, listing) and the
    period counter's unique (licence, period_start)).

    past_due still serves (Stripe is retrying the payment); pending, cancelled, expired
    and revoked do not; a download licence grants the bundle, not calls. Raises
    ListingNotFound (404) for a listing that is not on sale, VersionNotFound (404) for
    a version number that is not live, LicenceRequired (403) without a licence. The
    listing's owner may call it without one. Quota is not enforced here (see
    LicenceCheck.require_calls; usage_record enforces it atomically).
    """
    at = at or timezone.now()
    if connection.vendor == "postgresql":
        row = _licence_row_sql(user, listing_slug, version_number, at)
    else:
        row = _licence_row_orm(user, listing_slug, version_number, at)
    if row is not None:
        (licence_id, listing_id, kind, status, sandbox, quota, cp_start, cp_end, activated,
         created, p_start, p_calls, v_id, v_number, v_model, cap_calls, kind_of) = row  # fmt: skip
        garden = kind_of == ListingKind.GARDEN
        if (v_id is None and not garden) or (garden and version_number is not None):
            raise _version_not_found(listing_slug, version_number)
        period = _PeriodFields(kind, cp_start, cp_end, activated, created, sandbox)
        start, _ = licence_period_at(period, at)
        return LicenceCheck(
            listing_id=listing_id,
            listing_slug=listing_slug,
            listing_version_id=v_id,
            version_number=v_number,
            model_version_id=v_model,
            licence_id=licence_id,
            kind=kind,
            status=status,
            sandbox=sandbox,
            period_start=start,
            calls_used=p_calls if p_start == start else 0,
            call_quota=quota,
            spend_cap_calls=cap_calls,
            garden=garden,
        )
    return _refusal_or_owner(user=user, listing_slug=listing_slug, version_number=version_number)


def _version_not_found(slug: str, number: int | None) -> VersionNotFound:
    if number is None:
        return VersionNotFound(f"{slug} has no live version.")
    return VersionNotFound(f"{slug}@{number} is not a live version.")


def _refusal_or_owner(*, user: User, listing_slug: str, version_number: int | None):
    """The slow path (no live calling licence): explain the refusal, or admit the owner."""
    listing = Listing.objects.filter(
        slug=listing_slug, status=ListingStatus.PUBLISHED, owner__is_active=True
    ).first()
    if listing is None:
        held = (
            Licence.objects.filter(
                buyer=user, listing__slug=listing_slug, status__in=ENDED_LICENCE_STATUSES
            )
            .order_by("-ended_at")
            .first()
        )
        if held is None:
            raise ListingNotFound(f"No published listing {listing_slug}.")
        # A former buyer learns why, rather than that the listing never existed.
        raise LicenceRequired(
            f"Your licence to {listing_slug} has ended: {licence_notice(held)}",
            code="licence_ended",
        )
    if listing.owner_id != user.pk:
        holds_download = Licence.objects.filter(
            buyer=user, listing=listing, status__in=LIVE_LICENCE_STATUSES
        ).exists()
        hint = " A download licence grants the bundle, not API calls." if holds_download else ""
        raise LicenceRequired(f"You need a licence to call {listing_slug}.{hint}")
    if listing.kind == ListingKind.GARDEN:  # its curator calls it unbilled
        if version_number is not None:
            raise _version_not_found(listing_slug, version_number)
        return LicenceCheck(
            listing_id=listing.id, listing_slug=listing_slug, listing_version_id=None,
            version_number=None, model_version_id=None, licence_id=None, kind="owner",
            status="owner", sandbox=False, period_start=None, calls_used=0, call_quota=None,
            garden=True,
        )  # fmt: skip
    versions = ListingVersion.objects.filter(listing=listing)
    if version_number is None:
        version = versions.filter(model_version_id=listing.live_version_id).first()
    else:
        version = versions.filter(number=version_number, status=ListingVersionStatus.LIVE).first()
    if version is None:
        raise _version_not_found(listing_slug, version_number)
    return LicenceCheck(
        listing_id=listing.id,
        listing_slug=listing_slug,
        listing_version_id=version.id,
        version_number=version.number,
        model_version_id=version.model_version_id,
        licence_id=None,
        kind="owner",
        status="owner",
        sandbox=False,
        period_start=None,
        calls_used=0,
        call_quota=None,
    )


def licence_for_download(*, user: User, listing: Listing, at: datetime | None = None):
    """The buyer's download licence of this listing that grants access now, if any: the
    rule calls follow (licence_grants_access_q)."""
    return (
        Licence.objects.filter(licence_grants_access_q(at or timezone.now()))
        .filter(buyer=user, listing=listing, kind=OfferKind.DOWNLOAD)
        .first()
    )


# --- offers and licences -------------------------------------------------------------


def expert_can_be_paid(*, expert_id) -> bool:
    """The expert's live (not sandbox) Connect account can receive payouts."""
    return ConnectAccount.objects.filter(
        expert_id=expert_id, payouts_enabled=True, sandbox=False
    ).exists()


def offer_list_public(*, listing: Listing) -> QuerySet[Offer]:
    """What a buyer may buy on a listing: its active offers, cheapest first."""
    return Offer.objects.filter(listing=listing, status=OfferStatus.ACTIVE).order_by(
        "unit_amount", "created_at"
    )


def offer_list_mine(*, owner: User, listing_slug: str = "", include_retired: bool = False):
    offers = Offer.objects.filter(listing__owner=owner).select_related("listing")
    if listing_slug:
        offers = offers.filter(listing__slug=listing_slug)
    if not include_retired:
        offers = offers.filter(status=OfferStatus.ACTIVE)
    return offers.order_by("listing__slug", "created_at")


def offer_get_mine(*, owner: User, offer_id) -> Offer:
    offer = Offer.objects.filter(pk=offer_id, listing__owner=owner).select_related("listing")
    found = offer.first()
    if found is None:
        raise OfferNotFound("No such offer among your listings.")
    return found


def licence_list_for_buyer(*, buyer: User) -> QuerySet[Licence]:
    """The buyer's licences, newest first, with their latest period counter (read
    with licence_calls_used) so a page is one query."""
    latest = LicenceUsagePeriod.objects.filter(licence=OuterRef("pk")).order_by("-period_start")
    return (
        Licence.objects.filter(buyer=buyer)
        .select_related("listing", "offer")
        .annotate(
            p_start=Subquery(latest.values("period_start")[:1]),
            p_calls=Subquery(latest.values("calls")[:1]),
        )
    )


def licence_calls_used(licence: Licence, at: datetime | None = None) -> int:
    """Calls counted in the licence's current period, from licence_list_for_buyer's
    annotations (or one query without them)."""
    if not hasattr(licence, "p_start"):
        return licence_calls_this_period(licence=licence, at=at)
    if licence.kind not in CALL_KINDS or licence.p_start is None:
        return 0
    start, _ = licence_period_at(licence, at or timezone.now())
    return licence.p_calls if licence.p_start == start else 0


def licence_ids_granting_access(*, buyer: User, at: datetime | None = None) -> set:
    """The buyer's licences that grant access now (the rule calls and downloads follow)."""
    return set(
        Licence.objects.filter(licence_grants_access_q(at or timezone.now()))
        .filter(buyer=buyer)
        .values_list("pk", flat=True)
    )


def licence_get_for_buyer(*, buyer: User, licence_id) -> Licence:
    licence = licence_list_for_buyer(buyer=buyer).filter(pk=licence_id).first()
    if licence is None:
        raise LicenceNotFound("No such licence of yours.")
    return licence


def licence_calls_this_period(*, licence: Licence, at: datetime | None = None) -> int:
    start, _ = licence_period_at(licence, at or timezone.now())
    period = LicenceUsagePeriod.objects.filter(licence=licence, period_start=start).first()
    return period.calls if period else 0


# --- usage ---------------------------------------------------------------------------


@dataclass(frozen=True)
class UsageRow:
    day: date
    listing_slug: str
    api_key_id: uuid.UUID | None
    api_key_prefix: str | None
    calls: int
    errors: int
    avg_latency_ms: float | None


MAX_USAGE_DAYS = 366


def usage_by_day(
    *,
    buyer: User,
    since: date,
    until: date,
    listing_slug: str = "",
    api_key_id: uuid.UUID | None = None,
) -> list[UsageRow]:
    """A buyer's calls per day (UTC), listing and key, from the ledger; `until` inclusive.
    Served calls count in `calls`; failed ones (not billed) in `errors`."""
    if until < since:
        raise InvalidPeriod("until is before since.", fields={"until": ["Before since."]})
    if (until - since).days >= MAX_USAGE_DAYS:
        raise InvalidPeriod(
            f"At most {MAX_USAGE_DAYS} days at a time.", fields={"since": [], "until": []}
        )
    start = datetime(since.year, since.month, since.day, tzinfo=UTC)
    end = datetime(until.year, until.month, until.day, tzinfo=UTC) + timedelta(days=1)
    records = UsageRecord.objects.filter(buyer=buyer, created_at__gte=start, created_at__lt=end)
    if listing_slug:
        records = records.filter(listing__slug=listing_slug)
    if api_key_id is not None:
        records = records.filter(api_key_id=api_key_id)
    rows = (
        records.annotate(day=TruncDay("created_at", tzinfo=UTC))
        .values("day", "listing__slug", "api_key_id", "api_key__prefix")
        .annotate(
            calls=Sum("units", filter=Q(status=UsageStatus.OK), default=0),
            errors=Count("id", filter=Q(status=UsageStatus.ERROR)),
            avg_latency=Avg("latency_ms"),
        )
        .order_by("day", "listing__slug", "api_key__prefix")
    )
    return [
        UsageRow(
            day=r["day"].date(),
            listing_slug=r["listing__slug"],
            api_key_id=r["api_key_id"],
            api_key_prefix=r["api_key__prefix"],
            calls=r["calls"],
            errors=r["errors"],
            avg_latency_ms=round(r["avg_latency"], 1) if r["avg_latency"] is not None else None,
        )
        for r in rows
    ]


# --- earnings statements -------------------------------------------------------------


@dataclass(frozen=True)
class StatementLine:
    """One licence's money in the month. net = gross + refunds - platform_fee."""

    licence_id: uuid.UUID
    buyer: str  # the buyer's display name (an expert does not see buyers' emails)
    offer_kind: str
    gross: int
    refunds: int
    platform_fee: int
    stripe_fee: int
    stripe_fee_known: bool
    net: int
    rounding: int = 0


@dataclass(frozen=True)
class ListingStatement:
    listing_id: uuid.UUID
    listing_slug: str
    listing_title: str
    currency: str
    lines: list[StatementLine]
    gross: int
    refunds: int
    platform_fee: int
    stripe_fee: int
    stripe_fee_known: bool
    net: int
    rounding: int = 0


@dataclass(frozen=True)
class Statement:
    """An expert's month: per listing and currency, itemised by licence.

    Amounts are minor units, every one as Stripe recorded it. gross: what buyers paid;
    refunds: what went back (negative); platform_fee: the application fee kept, net of
    the fee refunds returned; net: what reached the expert's Connect account (the
    transfers, less the reversals refunds took back). net = gross + refunds -
    platform_fee, but for Stripe's rounding when it splits a partial refund between the
    reversal and the fee refund: `rounding` shows it (net minus that sum), and the
    platform absorbs it. stripe_fee is Stripe's processing fee where known; with
    destination charges the platform pays it out of its fee, so it is shown, not
    deducted.
    """

    expert_id: int
    month: date
    sandbox: bool
    listings: list[ListingStatement]
    totals: dict[str, dict[str, int]] = field(default_factory=dict)
    # Garden income (billing.gardens): per garden, member listing and role, what the
    # month's served calls earned (accrued, to the cent) and the transfers that paid it.
    gardens: list = field(default_factory=list)


def platform_fee(amount: int) -> int:
    """The platform's share of `amount` minor units, rounded half up (what we ask
    Stripe to take; what it took is read back from Stripe)."""
    return (amount * settings.PLATFORM_FEE_PERCENT + 50) // 100


def month_start(value: date | datetime) -> date:
    return date(value.year, value.month, 1)


def parse_month(text: str) -> date:
    """'2026-11' → date(2026, 11, 1); InvalidPeriod otherwise."""
    try:
        year, month = text.split("-")
        if len(year) != 4 or len(month) != 2:
            raise ValueError
        return date(int(year), int(month), 1)
    except ValueError:
        raise InvalidPeriod(
            "month must look like 2026-11.", fields={"month": ["YYYY-MM."]}
        ) from None


def _sum_lines(lines: list[StatementLine]) -> dict:
    return {
        "gross": sum(x.gross for x in lines),
        "refunds": sum(x.refunds for x in lines),
        "platform_fee": sum(x.platform_fee for x in lines),
        "stripe_fee": sum(x.stripe_fee for x in lines),
        "stripe_fee_known": all(x.stripe_fee_known for x in lines),
        "net": sum(x.net for x in lines),
        "rounding": sum(x.rounding for x in lines),
    }


# What reached the expert: Stripe's transfer (or reversal); for a row written before it
# was recorded, the amount less the platform fee.
_EXPERT_AMOUNT = Coalesce(F("expert_amount"), F("amount") - F("platform_fee"))


def statement_for(
    *, expert: User, month: date, listing: Listing | None = None, sandbox: bool = False
) -> Statement:
    """The expert's statement for `month` (a date in it), from Payment rows whose
    `period` is that month. Sandbox payments make a statement of their own
    (`sandbox=True`), never mixed with real money. One aggregate query."""
    from billing.gardens import garden_income

    month = month_start(month)
    # A garden's payments are paid out by transfers to its curator and members: they
    # appear as garden lines (below), never as the curator's own sales.
    payments = Payment.objects.filter(
        licence__listing__owner=expert, period=month, sandbox=sandbox
    ).exclude(licence__listing__kind=ListingKind.GARDEN)
    if listing is not None:
        payments = payments.filter(licence__listing=listing)
    rows = (
        payments.values(
            "licence_id",
            "licence__kind",
            "licence__buyer__email",
            "licence__buyer__display_name",
            "licence__listing_id",
            "licence__listing__slug",
            "licence__listing__title",
            "currency",
        )
        .annotate(
            # Names unlike the columns': an annotation would shadow them in FILTER.
            s_gross=Sum("amount", filter=~Q(kind=PaymentKind.REFUND), default=0),
            s_refunds=Sum("amount", filter=Q(kind=PaymentKind.REFUND), default=0),
            s_platform_fee=Sum("platform_fee", default=0),
            s_stripe_fee=Sum("stripe_fee", default=0),
            s_net=Sum(_EXPERT_AMOUNT, default=0),
            unknown_fees=Count(
                "id", filter=Q(stripe_fee__isnull=True) & ~Q(kind=PaymentKind.REFUND)
            ),
        )
        .order_by("licence__listing__slug", "currency", "licence_id")
    )
    grouped: dict[tuple, list[StatementLine]] = defaultdict(list)
    names: dict[uuid.UUID, tuple[str, str]] = {}
    for r in rows:
        key = (r["licence__listing_id"], r["currency"])
        names[r["licence__listing_id"]] = (
            r["licence__listing__slug"],
            r["licence__listing__title"],
        )
        grouped[key].append(
            StatementLine(
                licence_id=r["licence_id"],
                buyer=r["licence__buyer__display_name"] or r["licence__buyer__email"].split("@")[0],
                offer_kind=r["licence__kind"],
                gross=r["s_gross"],
                refunds=r["s_refunds"],
                platform_fee=r["s_platform_fee"],
                stripe_fee=r["s_stripe_fee"],
                stripe_fee_known=r["unknown_fees"] == 0,
                net=r["s_net"],
                rounding=r["s_net"] - (r["s_gross"] + r["s_refunds"] - r["s_platform_fee"]),
            )
        )
    listings = []
    totals: dict[str, dict[str, int]] = {}
    for (listing_id, currency), lines in grouped.items():
        sums = _sum_lines(lines)
        slug, title = names[listing_id]
        listings.append(
            ListingStatement(
                listing_id=listing_id,
                listing_slug=slug,
                listing_title=title,
                currency=currency,
                lines=lines,
                **sums,
            )
        )
        total = totals.setdefault(
            currency,
            {"gross": 0, "refunds": 0, "platform_fee": 0, "stripe_fee": 0, "net": 0, "rounding": 0},
        )
        for name in total:
            total[name] += sums[name]
    gardens = garden_income(payee=expert, month=month, sandbox=sandbox)
    if listing is not None:
        gardens = [g for g in gardens if listing.slug in (g.garden_slug, g.listing_slug)]
    return Statement(
        expert_id=expert.pk, month=month, sandbox=sandbox, listings=listings, totals=totals,
        gardens=gardens,
    )  # fmt: skip


@dataclass(frozen=True)
class MonthTotal:
    month: date
    currency: str
    gross: int
    refunds: int
    platform_fee: int
    net: int


def earnings_by_month(*, expert: User, months: int = 12, sandbox: bool = False) -> list[MonthTotal]:
    """The last `months` months (this one included) with money, per currency: the
    earnings chart. One aggregate query."""
    this_month = month_start(timezone.now())
    index = this_month.year * 12 + this_month.month - 1 - (months - 1)
    first = date(index // 12, index % 12 + 1, 1)
    rows = (
        Payment.objects.filter(licence__listing__owner=expert, period__gte=first, sandbox=sandbox)
        .exclude(licence__listing__kind=ListingKind.GARDEN)
        .values("period", "currency")
        .annotate(
            s_gross=Sum("amount", filter=~Q(kind=PaymentKind.REFUND), default=0),
            s_refunds=Sum("amount", filter=Q(kind=PaymentKind.REFUND), default=0),
            s_platform_fee=Sum("platform_fee", default=0),
            s_net=Sum(_EXPERT_AMOUNT, default=0),
        )
        .order_by("period", "currency")
    )
    return [
        MonthTotal(
            month=r["period"],
            currency=r["currency"],
            gross=r["s_gross"],
            refunds=r["s_refunds"],
            platform_fee=r["s_platform_fee"],
            net=r["s_net"],
        )
        for r in rows
    ]


@dataclass(frozen=True)
class WebhookLag:
    """Stripe's `created` to our `processed_at`, over events processed since a moment."""

    processed: int
    lag_p50_s: float | None
    lag_p95_s: float | None
    lag_max_s: float | None
    unprocessed: int
    oldest_unprocessed_age_s: float | None


def stripe_webhook_lag(*, since: datetime, limit: int = 5000) -> WebhookLag:
    """For /metrics: the lag of the (at most `limit`) latest events processed since
    `since`, and the backlog not processed yet."""
    now = timezone.now()
    rows = (
        StripeEvent.objects.filter(processed_at__gte=since)
        .order_by("-processed_at")
        .values_list("processed_at", "payload__created")[:limit]
    )
    lags = sorted(
        max(0.0, processed.timestamp() - float(created))
        for processed, created in rows
        if isinstance(created, int | float)
    )

    def quantile(q: float) -> float | None:
        return lags[min(len(lags) - 1, int(q * len(lags)))] if lags else None

    backlog = StripeEvent.objects.filter(processed_at__isnull=True).aggregate(
        n=Count("id"), oldest=Min("received_at")
    )
    oldest = backlog["oldest"]
    return WebhookLag(
        processed=len(lags),
        lag_p50_s=quantile(0.5),
        lag_p95_s=quantile(0.95),
        lag_max_s=lags[-1] if lags else None,
        unprocessed=backlog["n"],
        oldest_unprocessed_age_s=(now - oldest).total_seconds() if oldest else None,
    )


# --- what the buyer reads on a licence, and what operators watch -----------------------


def _day(moment: datetime | None) -> str:
    return f"{moment:%d %B %Y}" if moment else "the end of the paid period"


def licence_notice(licence: Licence, *, now: datetime | None = None) -> str:
    """What is happening to a licence, in plain words, for its buyer (API and portal)."""
    now = now or timezone.now()
    if licence.status == "pending":
        return "Waiting for Stripe to confirm your payment."
    if licence.status in LIVE_LICENCE_STATUSES and licence.cancel_at_period_end:
        until = _day(licence.access_ends_at)
        if licence.listing.status == ListingStatus.DELISTED:
            return (
                f"The expert delisted this model. You keep access until {until}, and you "
                "will not be billed again."
            )
        return (
            f"Cancelled: you keep access until {until} and will not be billed again. "
            "You can resume before then."
        )
    if licence.status == "past_due":
        return (
            "Your last payment failed and Stripe is retrying it; update your card to keep access."
        )
    if licence.status in ("cancelled", "expired", "revoked"):
        return f"Ended on {_day(licence.ended_at)}: {licence.end_reason or licence.status}."
    return ""


@dataclass(frozen=True)
class BillingHealth:
    """For /metrics and the admin: what needs an operator."""

    drift_by_kind: dict[str, int]
    intents_by_status: dict[str, int]
    failing_periods: int
    failing_event_deliveries: int
    last_reconciliation_age_s: float | None


def billing_health() -> BillingHealth:
    from billing.models import ReconciliationIssue, ReconciliationRun, StripeIntent
    from marketplace.models import DeliveryStatus, DomainEventDelivery

    drift = dict(
        ReconciliationIssue.objects.filter(status="open")
        .values_list("kind")
        .annotate(n=Count("id"))
        .values_list("kind", "n")
    )
    intents = dict(
        StripeIntent.objects.exclude(status="succeeded")
        .values_list("status")
        .annotate(n=Count("id"))
        .values_list("status", "n")
    )
    last = (
        ReconciliationRun.objects.filter(finished_at__isnull=False)
        .order_by("-finished_at")
        .values_list("finished_at", flat=True)
        .first()
    )
    return BillingHealth(
        drift_by_kind=drift,
        intents_by_status=intents,
        failing_periods=LicenceUsagePeriod.objects.filter(
            closed_at__isnull=True, report_failures__gt=0
        ).count(),
        failing_event_deliveries=DomainEventDelivery.objects.filter(
            status=DeliveryStatus.FAILED
        ).count(),
        last_reconciliation_age_s=(timezone.now() - last).total_seconds() if last else None,
    )


def callable_listings(*, user: User, task: str, at: datetime | None = None) -> list[dict]:
    """The published listings of ``task`` with a live version that ``user`` may call now: a
    live calling licence (a trial included), or their own. The specialist router's
    candidates, each ``{"slug", "title"}``, by slug."""
    now = at or timezone.now()
    licensed = Licence.objects.filter(
        licence_grants_access_q(now), buyer=user, kind__in=CALL_KINDS
    ).values("listing_id")
    return list(
        Listing.objects.filter(Q(pk__in=licensed) | Q(owner=user))
        .filter(status=ListingStatus.PUBLISHED, task=task, owner__is_active=True)
        .exclude(live_version__isnull=True)
        .order_by("slug")
        .values("slug", "title")
    )
