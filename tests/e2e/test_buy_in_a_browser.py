"""bob buys a specialist in the sandbox from the portal, in Chromium, and sees his licence;
a real checkout's return page waits for the webhook by itself."""

import pytest

from billing import services as billing_services
from billing.models import ConnectAccount, Licence, OfferKind
from tests.listings.conftest import make_listing

pytestmark = [pytest.mark.integration]


def log_in(page, live_server, email: str) -> None:
    page.goto(f"{live_server.url}/login/")
    page.fill("input[name=username]", email)
    page.fill("input[name=password]", "correct horse battery")  # tests.conftest.make_user
    page.click("button[type=submit]")
    page.wait_for_url("**/dashboard/")


@pytest.fixture
def priced_listing(alice, carol, shipped_base_models):
    listing = make_listing(alice, moderator=carol, title="Radiology triage")
    billing_services.offer_create(
        owner=alice, listing=listing, kind=OfferKind.SUBSCRIPTION, currency="usd",
        unit_amount=20_00, included_calls=1000, overage="refuse",
    )  # fmt: skip
    return listing


def test_bob_buys_in_the_sandbox_and_sees_his_licence(page, live_server, bob, priced_listing):
    log_in(page, live_server, "bob@example.com")
    page.goto(f"{live_server.url}/catalogue/{priced_listing.slug}/")

    # The portal says plainly that no money moves
    assert "Sandbox payments" in page.inner_text("#sandbox-banner")
    assert "20.00 USD" in page.inner_text("#offers")

    page.click("[data-testid=buy-subscription]")

    page.wait_for_selector("#licence-active")
    assert "Subscription licence to Radiology triage" in page.inner_text("#licence-active")
    assert "sandbox" in page.inner_text("#licence-active")
    licence = Licence.objects.get(buyer=bob)
    assert (licence.status, licence.sandbox) == ("active", True)

    page.click("text=My licences")
    page.wait_for_url("**/licences/")
    card = page.locator(f"#licence-{licence.id}")
    assert "Radiology triage" in card.inner_text()
    assert "Calls this period: 0 of 1000" in card.inner_text()


def test_the_return_page_waits_for_the_webhook_and_then_shows_the_licence(
    page, live_server, alice, bob, priced_listing
):
    # Given a real checkout bob finished at Stripe whose webhook has not arrived yet
    ConnectAccount.objects.create(
        expert=alice, stripe_account_id="acct_1alice", payouts_enabled=True
    )
    offer = priced_listing.offers.get()
    licence = billing_services.licence_create(buyer=bob, offer=offer)
    Licence.objects.filter(pk=licence.pk).update(stripe_checkout_session_id="cs_test_bob")
    log_in(page, live_server, "bob@example.com")

    page.goto(f"{live_server.url}/licences/return/?session_id=cs_test_bob")
    assert "Confirming your payment" in page.inner_text("h1")

    # When the webhook activates it, the open page notices by itself
    billing_services.licence_activate(licence_id=licence.pk, stripe_subscription_id="sub_1")

    page.wait_for_selector("#licence-active", timeout=15_000)
    assert "Your licence is active" in page.inner_text("h1")
