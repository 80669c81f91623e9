"""A garden in Chromium: alice lets curators compose her model from its page, bob reads
the garden's members and split and buys it in the sandbox, and after his calls both
experts' earnings pages show their shares."""

import pytest
from django.conf import settings
from django.utils import timezone

from billing import services as billing_services
from billing.gardens import split
from billing.models import Licence, OfferKind
from billing.selectors import month_start, statement_for
from billing.services import usage_record, usage_settle_served
from frontend.money import format_money, format_money_exact
from listings import gardens, services
from listings.models import Listing
from tests.conftest import make_user
from tests.e2e.test_buy_in_a_browser import log_in
from tests.listings.conftest import make_listing

pytestmark = [pytest.mark.integration]


def test_a_garden_from_composing_to_both_experts_statements(
    page, live_server, alice, bob, carol, shipped_base_models
):
    member = make_listing(alice, moderator=carol, title="Radiology triage")
    cy = make_user("cy@example.com", display_name="Cy Curator", is_expert=True)

    # alice allows composition from her listing's page
    log_in(page, live_server, "alice@example.com")
    page.goto(f"{live_server.url}/catalogue/{member.slug}/")
    page.check("#composable-form input[name=composable]")
    page.click("#composable-form button[type=submit]")
    page.wait_for_selector("text=Curators may now compose it into gardens.")
    assert Listing.objects.get(pk=member.pk).composable

    garden = gardens.garden_create(
        curator=cy, kind="router", members=[member.slug], title="Radiology garden",
        summary="The best radiology model for each report.", domain="healthcare",
    )  # fmt: skip
    services.listing_submit(owner=cy, listing_id=garden.pk)
    services.listing_approve(moderator=carol, listing_id=garden.pk)
    billing_services.offer_create(
        owner=cy, listing=garden, kind=OfferKind.PER_CALL, currency="usd", unit_amount=50_00
    )
    page.context.clear_cookies()

    # bob reads who answers and who is paid, then buys
    log_in(page, live_server, "bob@example.com")
    page.goto(f"{live_server.url}/catalogue/{garden.slug}/")
    shown = page.inner_text("#garden")
    assert "A garden of 1 specialist" in shown and "Radiology triage" in shown
    assert "Alice" in shown
    assert "70% goes to the member that answered" in page.inner_text("#garden-split")
    page.click("[data-testid=buy-per_call]")
    page.wait_for_selector("#licence-active")
    licence = Licence.objects.get(buyer=bob, listing=garden)

    # 4 of his calls answered by alice's model (5 cents each)
    (row,) = gardens.garden_plan(listing_id=garden.pk).members
    for n in range(4):
        shares = split(
            garden_id=garden.pk, curator_id=cy.pk, member_share_percent=70,
            workers=[(row.listing_id, row.owner_id)],
        )  # fmt: skip
        usage_record(licence_id=licence.pk, idempotency_key=f"b-{n}", shares=shares)
        usage_settle_served(idempotency_key=f"b-{n}")
    page.context.clear_cookies()

    # 20 cents, less the platform fee, 70 % to alice and 30 % to cy, to the cent
    net = 20 * (100 - settings.PLATFORM_FEE_PERCENT) / 100
    for who, listing_title, role, part in (
        (alice, "Radiology triage", "member", 0.7),
        (cy, "Radiology garden", "curator", 0.3),
    ):
        (line,) = statement_for(expert=who, month=month_start(timezone.now()), sandbox=True).gardens
        assert line.accrued == round(net * part) > 0
        log_in(page, live_server, who.email)
        page.goto(f"{live_server.url}/earnings/")
        cells = page.locator("#garden-income + p + table tbody tr td").all_inner_texts()
        exact = format_money_exact(line.accrued_exact, "usd")
        assert cells == [
            "Radiology garden", listing_title, role, "4",
            f"{format_money(line.accrued, 'usd')} (exactly {exact})", format_money(0, "usd"),
        ]  # fmt: skip
        page.context.clear_cookies()
