"""Reporting metered calls to Stripe (the beat task), exactly once, and closing periods.

Per-call licences are billed on every served call; a subscription whose overage is
billed, on the calls past its quota. Each run claims the period's ledger rows not yet
reported (`UsageRecord.reported_at`, committed before Stripe is called), then sends
one meter event whose identifier is the period and the claimed total. A run that dies
after Stripe accepted the event sends the same identifier and value again, which
Stripe counts once; `stripe_reported_calls` then records what Stripe holds.
"""

from __future__ import annotations

from datetime import datetime, timedelta

from django.db import transaction
from django.db.models import Max, Sum
from django.utils import timezone

from billing import stripe_gateway as gateway
from billing.models import (
    Licence,
    LicenceUsagePeriod,
    OfferKind,
    Overage,
    UsageRecord,
    UsageStatus,
)

# A call is settled (served or failed) within this time of its record; only then it is
# claimed for reporting, so a claimed batch never changes.
SETTLE_SECONDS = 120
# A period closes this long after it ends: calls recorded at its very end are in.
CLOSE_GRACE = timedelta(minutes=10)


def _billable(licence: Licence, calls: int) -> int:
    """Of `calls` served in a period, how many Stripe bills."""
    if licence.kind == OfferKind.PER_CALL:
        return calls
    if licence.kind == OfferKind.SUBSCRIPTION and licence.offer.overage == Overage.BILL:
        return max(0, calls - (licence.calls_included or 0))
    return 0


def _metered(licence: Licence) -> bool:
    return (
        not licence.sandbox and bool(licence.stripe_customer_id) and _billable(licence, 10**9) > 0
    )


def usage_report_to_stripe(*, now: datetime | None = None) -> int:
    """Report every open period's unreported calls; close periods that have ended.
    Returns the number of meter events sent."""
    now = now or timezone.now()
    sent = 0
    open_periods = LicenceUsagePeriod.objects.filter(
        closed_at__isnull=True,
        licence__kind__in=(OfferKind.PER_CALL, OfferKind.SUBSCRIPTION),
    ).values_list("pk", flat=True)
    for period_id in list(open_periods):
        sent += usage_period_report(period_id=period_id, now=now)
    return sent


def _claimed(period: LicenceUsagePeriod) -> tuple[int, datetime | None]:
    """Calls claimed for reporting so far, and when the latest batch was claimed."""
    totals = UsageRecord.objects.filter(
        licence_id=period.licence_id,
        period_start=period.period_start,
        reported_at__isnull=False,
        status=UsageStatus.OK,
    ).aggregate(calls=Sum("units"), at=Max("reported_at"))
    return totals["calls"] or 0, totals["at"]


def usage_period_report(*, period_id: int, now: datetime | None = None) -> int:
    """Report one period (see the module's docstring); returns 1 if an event was sent."""
    now = now or timezone.now()
    with transaction.atomic():
        period = (
            LicenceUsagePeriod.objects.select_for_update(skip_locked=True)
            .select_related("licence", "licence__offer")
            .filter(pk=period_id, closed_at__isnull=True)
            .first()
        )
        if period is None:  # closed, or another run holds it
            return 0
        licence = period.licence
        ended = period.period_end is not None and period.period_end + CLOSE_GRACE <= now
        if not _metered(licence) or gateway.sandbox_mode():
            if ended:
                period.closed_at = now
                period.save(update_fields=["closed_at"])
            return 0
        claimed, claimed_at = _claimed(period)
        if claimed == period.stripe_reported_calls:
            # Nothing in flight: claim the settled calls not yet reported.
            settled_before = now if ended else now - timedelta(seconds=SETTLE_SECONDS)
            UsageRecord.objects.filter(
                licence_id=licence.pk,
                period_start=period.period_start,
                reported_at__isnull=True,
                created_at__lte=settled_before,
            ).update(reported_at=now)
            claimed, claimed_at = _claimed(period)
    value = _billable(licence, claimed) - _billable(licence, period.stripe_reported_calls)
    sent = 0
    if value > 0:
        # The batch's claim time: a resent batch repeats its parameters exactly.
        end = period.period_end or claimed_at
        moment = min(claimed_at, end - timedelta(seconds=1))
        gateway.meter_event_create(
            event_name=gateway.meter_event_name(licence.offer_id),
            customer_id=licence.stripe_customer_id,
            value=value,
            identifier=f"niche-usage-{period.pk}-{claimed}",
            timestamp=int(max(moment, period.period_start).timestamp()),
        )
        sent = 1
    with transaction.atomic():
        period = LicenceUsagePeriod.objects.select_for_update().get(pk=period.pk)
        period.stripe_reported_calls = max(period.stripe_reported_calls, claimed)
        unclaimed = UsageRecord.objects.filter(
            licence_id=licence.pk, period_start=period.period_start, reported_at__isnull=True
        ).exists()
        if ended and not unclaimed:
            period.closed_at = now
        period.save(update_fields=["stripe_reported_calls", "closed_at"])
    return sent
