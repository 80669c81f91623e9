"""A buyer reads a leaderboard in Chromium, on a laptop and on a phone: the set's sources and
licence, the ranked listings with their shared rank, the interval chart, and no sideways
scrolling at 390 px."""

import pytest

from evidence.benchmarks import benchmark_set_create
from evidence.leaderboards import leaderboard_score
from tests.conftest import make_user
from tests.evidence.benchmark_fakes import SOURCES, FakeEngine, rows_file
from tests.listings.conftest import make_listing

pytestmark = [pytest.mark.integration]


@pytest.fixture
def scored_board(alice, carol, shipped_base_models):
    eve = make_user("eve@example.com", display_name="Eve", is_expert=True)
    benchmark = benchmark_set_create(
        moderator=carol, title="Planted sentiment words", task="text-classification",
        rows_file=rows_file(), sources=SOURCES,
        description="Words with a planted label, for the browser test.",
    )  # fmt: skip
    listings = [
        make_listing(alice, moderator=carol, title="Perfect triage with a rather long title"),
        make_listing(eve, moderator=carol, title="Close second"),
        make_listing(alice, moderator=carol, title="Coin flip"),
    ]
    engine = FakeEngine(
        {listing.live_version.adapter_sha256: share
         for listing, share in zip(listings, (1.0, 0.95, 0.5), strict=True)}
    )  # fmt: skip
    for listing in listings:
        outcome = leaderboard_score(
            benchmark_id=benchmark.pk, listing_id=listing.pk,
            version_id=listing.live_version_id, engine=engine,
        )  # fmt: skip
        assert outcome == "scored"
    return benchmark, listings


def horizontal_overflow(page) -> int:
    return page.evaluate("document.documentElement.scrollWidth - window.innerWidth")


@pytest.mark.parametrize("width", [1280, 390])
def test_the_leaderboard_ranks_listings_and_fits_the_screen(page, live_server, scored_board, width):
    benchmark, (perfect, close, coin) = scored_board
    page.set_viewport_size({"width": width, "height": 900})

    # From the top bar to the index, then to the set's board
    page.goto(f"{live_server.url}/catalogue/")
    page.click("header >> text=Leaderboards")
    page.wait_for_url("**/leaderboards/")
    assert "3 specialists ranked" in page.inner_text(f"[data-testid=benchmark-{benchmark.slug}]")
    assert horizontal_overflow(page) <= 0
    page.click(f"text={benchmark.title}")
    page.wait_for_url(f"**/leaderboards/text-classification/{benchmark.slug}/")

    # What the set is, where its rows come from, and that no expert sees them
    about = page.inner_text("#about-set")
    assert "No expert ever sees these rows" in about and "CC0-1.0" in about
    assert "share a rank" in page.inner_text("#ties")
    assert "low end of that range" in page.inner_text("#ranking-rule")

    # The ranking: the two whose intervals overlap share rank 1, the coin is third
    rows = page.locator("[data-testid=board-row][data-kind=listing]")
    assert rows.count() == 3
    ranked = [(rows.nth(i).get_attribute("data-listing"), rows.nth(i).get_attribute("data-rank"))
              for i in range(3)]  # fmt: skip
    assert ranked == [(perfect.slug, "1"), (close.slug, "1"), (coin.slug, "3")]
    assert "tie" in rows.nth(0).inner_text() and "v1" in rows.nth(0).inner_text()
    reference = page.locator("[data-testid=board-row][data-kind=generalist]")
    assert reference.count() == 1 and "ref" in reference.inner_text()
    assert page.locator("[data-testid=leaderboard-chart] g[data-kind]").count() == 4

    # Nothing sticks out sideways, on a laptop or a phone
    assert horizontal_overflow(page) <= 0
