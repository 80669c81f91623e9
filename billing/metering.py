"""Metered calls to Stripe, from immutable facts, one period at a time.

What a period owes is derived from the ledger: its settled, served calls (a settled
UsageRecord never changes, so the total only grows). What Stripe already holds is
derived from our log of meter events (MeterReport: each row the period's billable total
when it was made, and what it added). A run adds one report for the difference, written
before Stripe is called, then sends every report Stripe has not confirmed, with the
report's own identifier, which Stripe counts once. No two counters are compared, so no
drift between them can freeze a period: a call settled failed after a report is simply
never billed (it was never in a settled-served total), and a report lost in a crash is
sent again with the same identifier.

Each period is reported on its own: a period that Stripe refuses (or that cannot reach
Stripe) backs off and is counted in its row and in /metrics
(niche_metering_failing_periods), while every other period goes on.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from datetime import datetime, timedelta

from django.db import transaction
from django.db.models import BigIntegerField, F, Max, Sum
from django.utils import timezone

from billing import stripe_gateway as gateway
from billing.models import (
    Licence,
    LicenceUsagePeriod,
    MeterReport,
    OfferKind,
    Overage,
    UsageRecord,
    UsageStatus,
)

logger = logging.getLogger(__name__)

# A period closes this long after it ends: calls recorded at its very end are settled
# and in by then.
CLOSE_GRACE = timedelta(minutes=10)
MAX_BACKOFF = timedelta(hours=6)


def billable(licence: Licence, calls: int) -> int:
    """Of `calls` served in a period, how many Stripe bills."""
    if licence.kind == OfferKind.PER_CALL:
        return calls
    if licence.kind == OfferKind.SUBSCRIPTION and licence.offer.overage == Overage.BILL:
        return max(0, calls - (licence.calls_included or 0))
    return 0


def _metered(licence: Licence) -> bool:
    return not licence.sandbox and bool(licence.stripe_customer_id) and billable(licence, 10**9) > 0


def period_served_calls(period: LicenceUsagePeriod) -> int:
    """The period's settled, served calls (the facts billing reads), each at its price: a
    batch row counts its offer's batch_price_percent of a call. Rounded down as a whole,
    so the total only grows as rows settle."""
    hundredths = UsageRecord.objects.filter(
        licence_id=period.licence_id,
        period_start=period.period_start,
        status=UsageStatus.OK,
        settled_at__isnull=False,
    ).aggregate(s=Sum(F("units") * F("price_percent"), output_field=BigIntegerField()))["s"]
    return (hundredths or 0) // 100


def period_reported_total(period: LicenceUsagePeriod) -> int:
    return period.meter_reports.aggregate(m=Max("billable_total"))["m"] or 0


@dataclass
class ReportRun:
    sent: int = 0
    failed: int = 0


def usage_report_to_stripe(*, now: datetime | None = None) -> ReportRun:
    """Report every open metered period that is due; close periods that have ended.
    A period that fails is isolated (backoff on its row); the others go on."""
    now = now or timezone.now()
    run = ReportRun()
    due = (
        LicenceUsagePeriod.objects.filter(
            closed_at__isnull=True,
            licence__kind__in=(OfferKind.PER_CALL, OfferKind.SUBSCRIPTION),
        )
        .exclude(next_report_at__gt=now)
        .values_list("pk", flat=True)
    )
    for period_id in list(due):
        try:
            run.sent += usage_period_report(period_id=period_id, now=now)
        except Exception as exc:
            run.failed += 1
            _note_failure(period_id, exc, now)
    return run


def usage_report_licence(*, licence_id, now: datetime | None = None) -> int:
    """Report a licence's open periods now (before its subscription is cancelled with a
    final invoice). Failures are recorded on the period and not raised."""
    sent = 0
    for period_id in LicenceUsagePeriod.objects.filter(
        licence_id=licence_id, closed_at__isnull=True
    ).values_list("pk", flat=True):
        try:
            sent += usage_period_report(period_id=period_id, now=now, closing=True)
        except Exception as exc:
            _note_failure(period_id, exc, now or timezone.now())
    return sent


def _note_failure(period_id: int, exc: BaseException, now: datetime) -> None:
    logger.warning("metering: period %s failed: %s: %s", period_id, type(exc).__name__, exc)
    period = LicenceUsagePeriod.objects.filter(pk=period_id).first()
    if period is None:
        return
    failures = period.report_failures + 1
    backoff = min(MAX_BACKOFF, timedelta(minutes=2 ** min(failures, 12)))
    LicenceUsagePeriod.objects.filter(pk=period_id).update(
        report_failures=failures,
        next_report_at=now + backoff,
        last_report_error=f"{type(exc).__name__}: {exc}"[:2000],
    )


def _timestamp(period: LicenceUsagePeriod, now: datetime) -> int:
    """Inside the period: Stripe bills an event in the period its timestamp falls in."""
    moment = now
    if period.period_end is not None:
        moment = min(moment, period.period_end - timedelta(seconds=1))
    return int(max(moment, period.period_start).timestamp())


def usage_period_report(
    *, period_id: int, now: datetime | None = None, closing: bool = False
) -> int:
    """Report one period (see the module's docstring); returns the meter events sent.
    Raises what Stripe raised (the caller isolates it)."""
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
        owed = billable(licence, period_served_calls(period))
        reported = period_reported_total(period)
        if owed > reported:
            MeterReport.objects.create(
                period=period,
                value=owed - reported,
                billable_total=owed,
                identifier=f"niche-usage-{period.pk}-{owed}",
                event_timestamp=_timestamp(period, now),
                created_at=now,
            )
    sent = 0
    for report in MeterReport.objects.filter(period_id=period_id, sent_at__isnull=True).order_by(
        "billable_total"
    ):
        gateway.meter_event_create(
            event_name=gateway.meter_event_name(licence.offer_id),
            customer_id=licence.stripe_customer_id,
            value=report.value,
            identifier=report.identifier,
            timestamp=report.event_timestamp,
        )
        MeterReport.objects.filter(pk=report.pk, sent_at__isnull=True).update(
            sent_at=timezone.now()
        )
        sent += 1
    with transaction.atomic():
        period = LicenceUsagePeriod.objects.select_for_update().get(pk=period_id)
        unsettled = UsageRecord.objects.filter(
            licence_id=licence.pk, period_start=period.period_start, settled_at__isnull=True
        ).exists()
        updates = {"report_failures": 0, "next_report_at": None, "last_report_error": ""}
        if (
            ended or (closing and period.period_end is not None and period.period_end <= now)
        ) and not unsettled:
            updates["closed_at"] = now
        LicenceUsagePeriod.objects.filter(pk=period_id).update(**updates)
    return sent
