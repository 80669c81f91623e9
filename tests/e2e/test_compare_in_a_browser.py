"""bob picks two specialists in the catalogue, compares them in Chromium, and reads the
comparison on a desktop and on a phone (390 px) without the page scrolling sideways."""

import pytest

from billing.models import OfferKind
from tests.billing.conftest import make_offer
from tests.e2e.test_buy_in_a_browser import log_in
from tests.evidence.test_compare import OVERLAP, private_evaluation
from tests.listings.conftest import make_listing

pytestmark = [pytest.mark.integration]

NO_SIDEWAYS_SCROLL = "document.documentElement.scrollWidth <= window.innerWidth"


@pytest.fixture
def shelf(alice, carol, bob, shipped_base_models):
    """Two listings whose sealed intervals overlap, priced, and bob's own evaluation."""
    triage = make_listing(
        alice, moderator=carol, title="Radiology report triage with a long name", accuracy=0.9
    )
    make_offer(triage, OfferKind.PER_CALL, unit_amount=200)
    make_offer(triage, OfferKind.SUBSCRIPTION, unit_amount=4900, included_calls=10_000)
    router = make_listing(alice, moderator=carol, title="Report router", accuracy=0.88)
    make_offer(router, OfferKind.FREE_TRIAL, included_calls=100)
    private_evaluation(bob, [triage, router], [0.8125, 0.7875])
    return triage, router


def test_bob_compares_two_listings_on_a_desktop_and_a_phone(page, live_server, shelf):
    triage, router = shelf
    log_in(page, live_server, "bob@example.com")

    # In the catalogue, he ticks "Add to compare" on both and compares them
    page.goto(f"{live_server.url}/catalogue/")
    page.check(f"input[data-testid=add-to-compare][value={triage.slug}]")
    page.check(f"input[data-testid=add-to-compare][value={router.slug}]")
    page.click("[data-testid=compare-selected]")
    page.wait_for_url("**/compare/?**")

    # The evidence in words, his own evaluation, the costs
    assert OVERLAP in page.inner_text("#compare-verdicts")
    assert "not directly comparable" in page.inner_text("#compare-verdicts")
    assert "On your 120 rows" in page.inner_text(f"[data-testid=private-{triage.slug}]")
    assert "2.00 USD" in page.inner_text(f"[data-testid=offers-{triage.slug}]")
    assert page.locator("[data-testid=compare-sealed-chart] [data-bar=listing]").count() == 2
    assert page.evaluate(NO_SIDEWAYS_SCROLL), "the page scrolls sideways at 1280 px"

    # On a phone: the page itself never scrolls sideways; the table scrolls in its box
    page.set_viewport_size({"width": 390, "height": 844})
    page.reload()
    assert page.evaluate("window.innerWidth") == 390
    assert page.evaluate(NO_SIDEWAYS_SCROLL), "the page scrolls sideways at 390 px: " + str(
        page.evaluate("document.documentElement.scrollWidth")
    )
    box = page.locator("[data-testid=compare-table-box]")
    assert box.evaluate("el => el.scrollWidth > el.clientWidth")  # it scrolls, inside
    assert page.locator("[data-testid=compare-sealed-chart]").bounding_box()["width"] <= 390
