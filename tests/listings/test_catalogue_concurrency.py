"""Ratings and popularity stay true when buyers act at the same moment (real Postgres).

The interleaving is made deterministic rather than hoped for: while the test holds the
listing row (a concurrent write to it, as an owner's edit would be), every buyer's
transaction runs as far as it can and waits; only then is the row released. A service
that aggregates before it holds the row has by then counted without its neighbours,
and the last write wins.
"""

import threading
import time
from collections.abc import Callable

import pytest
from django.db import connection, connections, transaction
from django.utils import timezone

from accounts.models import User
from listings import services
from listings.models import Listing
from tests.conftest import make_user
from tests.integration.conftest import shipped_base_models  # noqa: F401  flushed rows back
from tests.listings.conftest import make_listing

pytestmark = [
    pytest.mark.django_db(transaction=True),
    pytest.mark.skipif(connection.vendor != "postgresql", reason="row locks are Postgres"),
]
BUYERS = 4
WAIT_FOR_BLOCKED_S = 20.0  # a bound on a broken setup, not a timing assertion


def _backends_waiting_on_locks() -> int:
    with connection.cursor() as cursor:
        cursor.execute("SELECT pg_stat_clear_snapshot()")  # fresh view inside a transaction
        cursor.execute(
            "SELECT count(*) FROM pg_stat_activity"
            " WHERE datname = current_database() AND wait_event_type = 'Lock'"
        )
        return cursor.fetchone()[0]


def while_the_listing_row_is_held(
    listing: Listing, buyers: list[User], work: Callable[[User], None]
) -> list[BaseException]:
    """Run `work(buyer)` in one thread per buyer while this connection holds the
    listing row; release it once all of them wait on a lock. Returns their errors."""
    errors: list[BaseException] = []

    def run(buyer: User) -> None:
        try:
            work(buyer)
        except BaseException as exc:  # reported by the test, not lost in the thread
            errors.append(exc)
        finally:
            connections.close_all()

    threads = [threading.Thread(target=run, args=(buyer,)) for buyer in buyers]
    with transaction.atomic():
        Listing.objects.filter(pk=listing.pk).update(updated_at=timezone.now())
        for thread in threads:
            thread.start()
        deadline = time.monotonic() + WAIT_FOR_BLOCKED_S
        while _backends_waiting_on_locks() < len(buyers):
            assert time.monotonic() < deadline, "the buyers never reached the listing row"
            assert not errors, errors
            time.sleep(0.02)
    for thread in threads:
        thread.join()
    return errors


@pytest.fixture
def buyers(shipped_base_models) -> list[User]:  # noqa: F811
    return [make_user(f"buyer{n}@example.com", display_name=f"Buyer {n}") for n in range(BUYERS)]


def test_licences_granted_at_the_same_moment_all_count_toward_popularity(alice, carol, buyers):
    listing = make_listing(alice, moderator=carol)

    errors = while_the_listing_row_is_held(
        listing,
        buyers,
        lambda buyer: services.entitlement_grant(
            listing=listing, user=buyer, reference=f"licence-{buyer.pk}"
        ),
    )

    assert errors == []
    listing.refresh_from_db()
    assert listing.entitlements.count() == BUYERS
    assert listing.popularity == BUYERS


def test_reviews_posted_at_the_same_moment_all_count_in_the_rating(alice, carol, buyers):
    listing = make_listing(alice, moderator=carol)
    for buyer in buyers:
        services.entitlement_grant(listing=listing, user=buyer, reference=f"licence-{buyer.pk}")
    ratings = {buyer.pk: rating for buyer, rating in zip(buyers, (5, 4, 2, 1), strict=True)}

    errors = while_the_listing_row_is_held(
        listing,
        buyers,
        lambda buyer: services.review_upsert(
            author=buyer, listing=listing, rating=ratings[buyer.pk], text="Used it for a month."
        ),
    )

    assert errors == []
    listing.refresh_from_db()
    assert listing.reviews.count() == BUYERS
    assert listing.rating_count == BUYERS
    assert listing.rating_avg == pytest.approx(sum(ratings.values()) / BUYERS)
    assert listing.popularity == BUYERS
