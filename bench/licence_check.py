"""Time per call of billing's licence check (selectors.licence_for_call), the lookup
serving makes before every inference.

Usage: ``python bench/licence_check.py [--listings 200] [--buyers 500] [--calls 2000]``.
Builds a throwaway test database (test_<name> from DATABASE_URL, destroyed after),
fills it with listings, live licences and usage, then times the check for random
(buyer, listing) pairs, the path serving takes for a licensed call. Prints the time per
call, the queries per call and the plan Postgres chose; writes
bench/results/licence_check.json.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import random
import statistics
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
os.environ.setdefault("DJANGO_SETTINGS_MODULE", "marketplace.settings.test")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--listings", type=int, default=2000)
    parser.add_argument("--buyers", type=int, default=5000)
    parser.add_argument("--licences-per-buyer", type=int, default=4)
    parser.add_argument("--calls", type=int, default=2000)
    args = parser.parse_args()

    import django

    django.setup()
    from django.db import connection
    from django.test.utils import CaptureQueriesContext, setup_test_environment

    setup_test_environment()
    test_db = connection.creation.create_test_db(verbosity=0, autoclobber=True)
    try:
        pairs = seed(args)
        result = measure(pairs, args.calls, CaptureQueriesContext, connection)
    finally:
        connection.creation.destroy_test_db(test_db, verbosity=0)
    result |= {
        "listings": args.listings,
        "buyers": args.buyers,
        "licences": len(pairs),
        "database": connection.vendor,
        "python": platform.python_version(),
    }
    out = ROOT / "bench" / "results" / "licence_check.json"
    out.write_text(json.dumps(result, indent=2) + "\n")
    print(
        f"licence_for_call: {result['mean_us']:.0f} µs per call (median "
        f"{result['median_us']:.0f} µs, p99 {result['p99_us']:.0f} µs) over {args.calls} "
        f"calls; {result['queries_per_call']} query per call; {len(pairs)} live licences"
    )
    print(
        f"the same lookup through the ORM (the SQLite path): median "
        f"{result['orm_equivalent_median_us']:.0f} µs"
    )
    print("plan:\n" + result["plan"])


def seed(args) -> list[tuple]:
    """Published listings with a live version, buyers each licensed to a few of them,
    one usage counter per licence. Rows are written in bulk; the services that write
    them one by one are exercised by the tests."""
    from django.db import connection
    from django.utils import timezone

    from accounts.models import User
    from billing.models import Licence, LicenceUsagePeriod, Offer
    from listings.models import Listing, ListingVersion
    from tests.listings.conftest import make_version

    rng = random.Random(7)
    now = timezone.now()
    expert = User.objects.create_user(email="alice@example.com", password=None, is_expert=True)
    version = make_version(expert)
    listings = Listing.objects.bulk_create(
        Listing(owner=expert, slug=f"model-{n}", title=f"Model {n}", summary="s",
                domain="other", task=version.task, status="published", live_version=version,
                published_at=now)
        for n in range(args.listings)
    )  # fmt: skip
    ListingVersion.objects.bulk_create(
        ListingVersion(listing=x, model_version=version, number=1) for x in listings
    )
    offers = Offer.objects.bulk_create(
        Offer(listing=x, kind="per_call", currency="usd", unit_amount=200) for x in listings
    )
    buyers = User.objects.bulk_create(
        User(email=f"buyer{n}@example.com") for n in range(args.buyers)
    )
    licences = []
    for buyer in buyers:
        for index in rng.sample(range(args.listings), args.licences_per_buyer):
            licences.append(
                Licence(buyer=buyer, listing=listings[index], offer=offers[index], kind="per_call",
                        status="active", terms={}, activated_at=now, current_period_start=now)
            )  # fmt: skip
    licences = Licence.objects.bulk_create(licences, batch_size=2000)
    LicenceUsagePeriod.objects.bulk_create(
        (LicenceUsagePeriod(licence=x, period_start=now, calls=rng.randint(0, 999))
         for x in licences),
        batch_size=2000,
    )  # fmt: skip
    with connection.cursor() as cursor:
        cursor.execute("ANALYZE")
    slugs = {x.pk: x.slug for x in listings}
    return [(x.buyer, slugs[x.listing_id]) for x in licences]


def measure(pairs, calls: int, CaptureQueriesContext, connection) -> dict:
    from django.utils import timezone

    from billing.selectors import _licence_row_orm, licence_for_call

    rng = random.Random(11)
    sample = [rng.choice(pairs) for _ in range(calls)]
    for user, slug in sample[:50]:  # warm the connection and the plan cache
        licence_for_call(user=user, listing_slug=slug)
    timings = []
    with CaptureQueriesContext(connection) as queries:
        for user, slug in sample:
            started = time.perf_counter()
            licence_for_call(user=user, listing_slug=slug)
            timings.append((time.perf_counter() - started) * 1e6)
    orm_timings = []  # the same row through the ORM (the SQLite path), for comparison
    for user, slug in sample:
        started = time.perf_counter()
        _licence_row_orm(user, slug, None, timezone.now())
        orm_timings.append((time.perf_counter() - started) * 1e6)
    sql = queries.captured_queries[0]["sql"]
    with connection.cursor() as cursor:
        cursor.execute("EXPLAIN (ANALYZE, BUFFERS) " + sql)
        plan = "\n".join(row[0] for row in cursor.fetchall())
    timings.sort()
    return {
        "calls": calls,
        "mean_us": statistics.fmean(timings),
        "median_us": statistics.median(timings),
        "p99_us": timings[int(len(timings) * 0.99) - 1],
        "queries_per_call": len(queries.captured_queries) / calls,
        "orm_equivalent_median_us": statistics.median(orm_timings),
        "plan": plan,
    }


if __name__ == "__main__":
    main()
