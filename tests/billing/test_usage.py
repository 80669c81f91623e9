"""The usage ledger and the licence check serving makes on every call."""

import threading
import uuid
from datetime import UTC, datetime

import pytest
from django.db import connection, connections
from django.utils import timezone

from billing import selectors, services
from billing.errors import (
    IdempotencyKeyReused,
    LicenceRequired,
    QuotaExceeded,
    VersionNotFound,
)
from billing.models import LicenceUsagePeriod, OfferKind, UsageRecord
from listings.errors import ListingNotFound
from tests.billing.conftest import make_active_licence, make_offer
from tests.listings.conftest import make_listing
from tests.training_worker.conftest import shipped_base_models  # noqa: F401  flushed rows back

postgres_only = pytest.mark.skipif(
    connection.vendor != "postgresql", reason="row locks and the written-out SQL are Postgres"
)


def a_call(licence, **fields):
    return services.usage_record(
        licence_id=licence.id, idempotency_key=fields.pop("key", uuid.uuid4().hex), **fields
    )


def counted(licence) -> int:
    return sum(LicenceUsagePeriod.objects.filter(licence=licence).values_list("calls", flat=True))


# --- the ledger ----------------------------------------------------------------------


@pytest.mark.django_db
def test_a_call_is_written_once_and_counted_in_its_period(bob, listing):
    licence = make_active_licence(bob, make_offer(listing, OfferKind.SUBSCRIPTION))

    outcome = a_call(licence, latency_ms=42, key="req-1")

    record = UsageRecord.objects.get()
    assert (record.licence_id, record.buyer, record.listing_id) == (licence.id, bob, listing.id)
    assert (record.units, record.latency_ms, record.status) == (1, 42, "ok")
    assert (outcome.recorded, outcome.calls_used, outcome.calls_left) == (True, 1, 9_999)
    assert counted(licence) == 1


@pytest.mark.django_db
def test_a_replayed_request_id_is_counted_once(bob, listing):
    licence = make_active_licence(bob, make_offer(listing, OfferKind.PER_CALL))

    outcomes = [a_call(licence, key="req-1") for _ in range(3)]

    assert [o.recorded for o in outcomes] == [True, False, False]
    assert UsageRecord.objects.count() == 1
    assert counted(licence) == 1


@pytest.mark.django_db
def test_a_request_id_cannot_be_reused_for_another_licence(bob, mallory, listing):
    offer = make_offer(listing, OfferKind.PER_CALL)
    bobs, mallorys = make_active_licence(bob, offer), make_active_licence(mallory, offer)
    a_call(bobs, key="req-1")

    with pytest.raises(IdempotencyKeyReused):
        a_call(mallorys, key="req-1")

    assert counted(mallorys) == 0


@pytest.mark.django_db
def test_a_call_past_the_quota_is_refused_and_nothing_is_written(bob, listing):
    licence = make_active_licence(
        bob, make_offer(listing, OfferKind.SUBSCRIPTION, included_calls=2, overage="refuse")
    )
    a_call(licence)
    a_call(licence)

    with pytest.raises(QuotaExceeded) as refused:
        a_call(licence)

    assert refused.value.status == 429
    assert UsageRecord.objects.count() == 2
    assert counted(licence) == 2


@pytest.mark.django_db
def test_billed_overage_is_not_refused(bob, listing):
    offer = make_offer(
        listing, OfferKind.SUBSCRIPTION, included_calls=1, overage="bill", overage_unit_amount=50
    )
    licence = make_active_licence(bob, offer)

    a_call(licence)
    outcome = a_call(licence)

    # Not refused past the quota: billed, up to the buyer's monthly spend cap.
    licence.refresh_from_db()
    assert licence.spend_cap_calls == 1 + 10_000 * 1000 // 50
    assert (outcome.calls_used, outcome.calls_left) == (2, licence.spend_cap_calls - 2)


@pytest.mark.django_db
def test_a_failed_call_is_written_but_not_billed(bob, listing):
    licence = make_active_licence(bob, make_offer(listing, OfferKind.PER_CALL))
    a_call(licence, key="served")
    a_call(licence, key="broken", status="error")

    assert UsageRecord.objects.count() == 2
    assert counted(licence) == 1


@pytest.mark.django_db
def test_a_call_recorded_before_it_ran_and_then_failed_is_given_back(bob, listing):
    licence = make_active_licence(bob, make_offer(listing, OfferKind.PER_CALL))
    a_call(licence, key="req-1")

    services.usage_settle(idempotency_key="req-1", status="error", latency_ms=900)
    services.usage_settle(idempotency_key="req-1", status="error")  # settling twice

    record = UsageRecord.objects.get()
    assert (record.status, record.latency_ms) == ("error", 900)
    assert counted(licence) == 0


@pytest.mark.django_db
def test_an_ended_or_download_licence_records_no_calls(bob, listing):
    download = make_active_licence(bob, make_offer(listing, OfferKind.DOWNLOAD))
    calling = make_active_licence(bob, make_offer(listing, OfferKind.PER_CALL))
    services.licence_cancel(licence_id=calling.id, reason="Subscription deleted.")

    for licence in (download, calling):
        with pytest.raises(LicenceRequired):
            a_call(licence)

    assert not UsageRecord.objects.exists()


@pytest.mark.django_db
def test_calls_count_in_the_month_they_fall_in(bob, listing):
    start, end = datetime(2026, 1, 31, tzinfo=UTC), datetime(2026, 2, 28, tzinfo=UTC)
    licence = make_active_licence(
        bob, make_offer(listing, OfferKind.PER_CALL), period_start=start, period_end=end
    )

    a_call(licence, at=datetime(2026, 2, 10, tzinfo=UTC))
    a_call(licence, at=datetime(2026, 3, 5, tzinfo=UTC))  # no webhook yet: rolls on
    a_call(licence, at=datetime(2026, 4, 30, 12, tzinfo=UTC))

    periods = list(
        LicenceUsagePeriod.objects.order_by("period_start").values_list("period_start", "calls")
    )
    assert periods == [
        (start, 1),
        (datetime(2026, 2, 28, tzinfo=UTC), 1),
        (datetime(2026, 4, 30, tzinfo=UTC), 1),  # the anchor is the 31st
    ]


@pytest.mark.django_db
def test_a_late_renewal_never_opens_a_period_of_our_own_making(bob, listing, payable_alice):
    """Issue 20, defect 12: past a Stripe period's end, before Stripe's renewal arrived,
    calls counted in a month rolled locally (from Feb 28: Mar 28), then the renewal
    opened Stripe's period (Mar 30) with a fresh counter: the quota leaked. The period is
    Stripe's now: the next one starts where Stripe's last one ended."""
    offer = make_offer(listing, OfferKind.SUBSCRIPTION, included_calls=2, overage="refuse")
    start, end = datetime(2026, 2, 28, tzinfo=UTC), datetime(2026, 3, 30, tzinfo=UTC)
    licence = make_active_licence(bob, offer, sandbox=False, period_start=start, period_end=end)
    late = datetime(2026, 4, 2, tzinfo=UTC)  # Stripe renewed on Mar 30; the webhook is late

    a_call(licence, at=late)
    a_call(licence, at=late)
    with pytest.raises(QuotaExceeded):
        a_call(licence, at=late)  # the next period's quota is used up
    services.licence_renew(licence_id=licence.id, period_start=end,
                           period_end=datetime(2026, 4, 30, tzinfo=UTC))  # fmt: skip
    with pytest.raises(QuotaExceeded):
        a_call(licence, at=datetime(2026, 4, 3, tzinfo=UTC))  # still: one counter

    periods = list(
        LicenceUsagePeriod.objects.filter(licence=licence).values_list(
            "period_start", "period_end", "calls"
        )
    )
    assert periods == [(end, datetime(2026, 4, 30, tzinfo=UTC), 2)]


# --- concurrency, on real Postgres with real threads ---------------------------------


def _in_threads(n: int, work) -> list:
    """Run work(i) in n threads released together; returns what each returned or raised."""
    barrier = threading.Barrier(n)
    results: list = [None] * n

    def run(i: int) -> None:
        try:
            barrier.wait()
            results[i] = work(i)
        except Exception as exc:  # each thread's outcome is asserted by the caller
            results[i] = exc
        finally:
            connections.close_all()

    threads = [threading.Thread(target=run, args=(i,)) for i in range(n)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=60)
    return results


@postgres_only
@pytest.mark.django_db(transaction=True)
@pytest.mark.usefixtures("shipped_base_models")
def test_twenty_threads_metering_at_once_count_exactly(bob, listing):
    licence = make_active_licence(bob, make_offer(listing, OfferKind.PER_CALL))

    results = _in_threads(20, lambda i: [a_call(licence, key=f"t{i}-{j}") for j in range(5)])

    assert [r for r in results if isinstance(r, Exception)] == []
    assert UsageRecord.objects.filter(licence=licence).count() == 100
    assert counted(licence) == 100
    assert LicenceUsagePeriod.objects.filter(licence=licence).count() == 1


@postgres_only
@pytest.mark.django_db(transaction=True)
@pytest.mark.usefixtures("shipped_base_models")
def test_twenty_threads_racing_for_the_last_calls_never_pass_the_quota(bob, listing):
    licence = make_active_licence(
        bob, make_offer(listing, OfferKind.SUBSCRIPTION, included_calls=15, overage="refuse")
    )

    results = _in_threads(20, lambda i: a_call(licence, key=f"t{i}"))

    refused = [r for r in results if isinstance(r, QuotaExceeded)]
    served = [r for r in results if isinstance(r, services.UsageOutcome)]
    assert (len(served), len(refused)) == (15, 5)
    assert counted(licence) == 15
    assert UsageRecord.objects.filter(licence=licence).count() == 15


@postgres_only
@pytest.mark.django_db(transaction=True)
@pytest.mark.usefixtures("shipped_base_models")
def test_one_request_id_delivered_by_ten_threads_is_one_row(bob, listing):
    licence = make_active_licence(bob, make_offer(listing, OfferKind.PER_CALL))

    results = _in_threads(10, lambda i: a_call(licence, key="the-same-request"))

    assert [r for r in results if isinstance(r, Exception)] == []
    assert sum(r.recorded for r in results) == 1
    assert UsageRecord.objects.count() == 1
    assert counted(licence) == 1


# --- the licence check -----------------------------------------------------------------


@pytest.mark.django_db
def test_the_licence_check_answers_in_one_query(bob, listing, django_assert_num_queries):
    licence = make_active_licence(
        bob, make_offer(listing, OfferKind.SUBSCRIPTION, included_calls=10, overage="refuse")
    )
    a_call(licence)
    a_call(licence)

    with django_assert_num_queries(1):
        check = selectors.licence_for_call(user=bob, listing_slug=listing.slug)

    assert check.licence_id == licence.id
    assert (check.calls_used, check.calls_left, check.call_quota) == (2, 8, 10)
    assert (check.version_number, check.model_version_id) == (1, listing.live_version_id)
    assert check.kind == "subscription"


@postgres_only
@pytest.mark.django_db
def test_the_orm_lookup_answers_the_same_row_as_the_sql(alice, bob, carol, listing):
    """licence_for_call runs written-out SQL on Postgres and the ORM elsewhere (SQLite)."""
    from billing.selectors import _licence_row_orm, _licence_row_sql

    other = make_listing(alice, moderator=carol, title="Other", on_prem_download=True)
    licence = make_active_licence(bob, make_offer(listing, OfferKind.PER_CALL))
    a_call(licence)
    make_active_licence(bob, make_offer(other, OfferKind.DOWNLOAD))

    for slug, number in [(listing.slug, None), (listing.slug, 1), (listing.slug, 2),
                         (other.slug, None), ("nothing", None)]:  # fmt: skip
        now = timezone.now()
        assert _licence_row_orm(bob, slug, number, now) == _licence_row_sql(bob, slug, number, now)
    assert _licence_row_sql(bob, listing.slug, None, timezone.now())[0] == licence.id


@pytest.mark.django_db
def test_a_new_period_starts_with_all_its_calls(bob, listing):
    start, end = datetime(2026, 1, 1, tzinfo=UTC), datetime(2026, 2, 1, tzinfo=UTC)
    licence = make_active_licence(
        bob,
        make_offer(listing, OfferKind.SUBSCRIPTION, included_calls=10, overage="refuse"),
        period_start=start,
        period_end=end,
    )
    a_call(licence, at=datetime(2026, 1, 20, tzinfo=UTC))

    january = selectors.licence_for_call(
        user=bob, listing_slug=listing.slug, at=datetime(2026, 1, 21, tzinfo=UTC)
    )
    february = selectors.licence_for_call(
        user=bob, listing_slug=listing.slug, at=datetime(2026, 2, 2, tzinfo=UTC)
    )

    assert (january.calls_left, february.calls_left) == (9, 10)


@pytest.mark.django_db
def test_a_used_up_trial_is_refused_with_429(bob, listing):
    licence = services.licence_start_free_trial(
        buyer=bob, offer=make_offer(listing, OfferKind.FREE_TRIAL, included_calls=1)
    )
    a_call(licence)

    check = selectors.licence_for_call(user=bob, listing_slug=listing.slug)

    assert check.calls_left == 0
    with pytest.raises(QuotaExceeded):
        check.require_calls()


@pytest.mark.django_db
def test_without_a_licence_bob_is_refused_with_403(bob, listing):
    with pytest.raises(LicenceRequired) as refused:
        selectors.licence_for_call(user=bob, listing_slug=listing.slug)

    assert (refused.value.status, refused.value.code) == (403, "licence_required")


@pytest.mark.django_db
def test_a_download_licence_does_not_admit_calls(bob, listing):
    make_active_licence(bob, make_offer(listing, OfferKind.DOWNLOAD))

    with pytest.raises(LicenceRequired) as refused:
        selectors.licence_for_call(user=bob, listing_slug=listing.slug)

    assert "download" in refused.value.message


@pytest.mark.django_db
def test_a_revoked_licence_stops_serving_at_once(bob, carol, listing):
    licence = make_active_licence(bob, make_offer(listing, OfferKind.PER_CALL))
    selectors.licence_for_call(user=bob, listing_slug=listing.slug)

    services.licence_revoke(licence_id=licence.id, actor=carol, reason="Refunded.")

    with pytest.raises(LicenceRequired):
        selectors.licence_for_call(user=bob, listing_slug=listing.slug)


@pytest.mark.django_db
def test_past_due_still_serves(bob, listing):
    licence = make_active_licence(bob, make_offer(listing, OfferKind.SUBSCRIPTION))
    services.licence_mark_past_due(licence_id=licence.id)

    check = selectors.licence_for_call(user=bob, listing_slug=listing.slug)

    assert check.status == "past_due"


@pytest.mark.django_db
def test_an_unknown_or_unpublished_listing_is_404(alice, bob):
    draft = make_listing(alice)  # never submitted

    for slug in ("no-such-listing", draft.slug):
        with pytest.raises(ListingNotFound):
            selectors.licence_for_call(user=bob, listing_slug=slug)


@pytest.mark.django_db
def test_a_pinned_version_must_be_live(bob, listing):
    make_active_licence(bob, make_offer(listing, OfferKind.PER_CALL))

    assert selectors.licence_for_call(user=bob, listing_slug=listing.slug, version_number=1)
    with pytest.raises(VersionNotFound):
        selectors.licence_for_call(user=bob, listing_slug=listing.slug, version_number=7)


@pytest.mark.django_db
def test_alice_calls_her_own_listing_without_a_licence(alice, listing):
    check = selectors.licence_for_call(user=alice, listing_slug=listing.slug)

    assert check.is_owner
    assert (check.licence_id, check.calls_left) == (None, None)
