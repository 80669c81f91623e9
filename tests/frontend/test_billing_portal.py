"""Commerce in the portal: alice prices her listing and gets paid, bob buys, waits for the
payment to land, and finds his licence; mallory touches nothing of theirs."""

import re
from datetime import date

import pytest
from django.core.management import call_command
from django.db import connection
from django.test import Client
from django.test.utils import CaptureQueriesContext
from django.utils import timezone

from accounts.models import User
from billing import services as billing_services
from billing.models import (
    ConnectAccount,
    ExportDownload,
    Licence,
    LicenceStatus,
    Offer,
    OfferKind,
    OfferStatus,
    Payment,
    PaymentKind,
)
from frontend.services import DemoOutcome, demo_listing_publish
from listings.models import Listing
from tests.frontend.test_living_demo import SUPPORT, finish, start
from tests.hostile_inputs.hostile_weights import safetensors_bytes
from tests.listings.conftest import make_listing
from training_worker import artifacts


def portal(user=None) -> Client:
    client = Client()
    if user is not None:
        client.force_login(user)
    return client


def page_of(response) -> str:
    assert response.status_code == 200, response.status_code
    return response.content.decode()


def flashes(response) -> list[str]:
    return [str(m) for m in response.context["messages"]] if response.context else []


@pytest.fixture
def listing(alice, carol):
    return make_listing(alice, moderator=carol, on_prem_download=True, commercial_use=True)


@pytest.fixture
def payouts_ready(alice):
    """alice finished Stripe onboarding (sandbox: the portal's button does it at once)."""
    portal(alice).post("/payouts/onboard/")
    return ConnectAccount.objects.get(expert=alice)


def offer(listing, kind=OfferKind.DOWNLOAD, **fields) -> Offer:
    defaults = {
        OfferKind.DOWNLOAD: {"currency": "usd", "unit_amount": 49_00},
        OfferKind.SUBSCRIPTION: {"currency": "usd", "unit_amount": 20_00,
                                 "included_calls": 1000, "overage": "refuse"},
        OfferKind.PER_CALL: {"currency": "usd", "unit_amount": 2_50},
        OfferKind.FREE_TRIAL: {"currency": "usd", "unit_amount": 0, "included_calls": 50},
    }[kind]  # fmt: skip
    return billing_services.offer_create(
        owner=listing.owner, listing=listing, kind=kind, **(defaults | fields)
    )


# --- the expert's side


def test_alice_prices_her_listing_and_bob_sees_the_offers_with_prices(alice, bob, listing):
    response = portal(alice).post(
        f"/catalogue/{listing.slug}/offers/",
        {"kind": "subscription", "currency": "usd", "price": "20.00", "included_calls": "1,000",
         "overage": "bill", "overage_price": "1.5"},
        follow=True,
    )  # fmt: skip
    portal(alice).post(
        f"/catalogue/{listing.slug}/offers/",
        {"kind": "download", "currency": "usd", "price": "49", "name": "On-prem"},
    )

    assert "Offer added. Buyers see it on this page." in flashes(response)
    subscription, download = Offer.objects.order_by("created_at")
    assert (subscription.unit_amount, subscription.included_calls) == (2000, 1000)
    assert (subscription.overage, subscription.overage_unit_amount) == ("bill", 150)
    assert (download.kind, download.unit_amount, download.name) == ("download", 4900, "On-prem")

    page = page_of(portal(bob).get(f"/catalogue/{listing.slug}/"))
    assert "20.00 USD" in page and "per month" in page and "1000 calls a month" in page
    assert "then 1.50 USD per 1,000" in page
    assert "49.00 USD" in page and 'data-testid="buy-download"' in page
    assert "Your offers" not in page and "Add an offer" not in page  # the editor is alice's
    anonymous = page_of(portal().get(f"/catalogue/{listing.slug}/"))
    assert "49.00 USD" in anonymous and "Log in to buy" in anonymous


def test_a_bad_offer_is_refused_with_the_field_and_nothing_is_written(alice, listing):
    client = portal(alice)

    typo = client.post(
        f"/catalogue/{listing.slug}/offers/",
        {"kind": "download", "currency": "usd", "price": "4O.00"},
        follow=True,
    )
    no_quota = client.post(
        f"/catalogue/{listing.slug}/offers/",
        {"kind": "subscription", "currency": "usd", "price": "20", "overage": "refuse"},
        follow=True,
    )
    too_precise = client.post(
        f"/catalogue/{listing.slug}/offers/",
        {"kind": "download", "currency": "jpy", "price": "100.5"},
        follow=True,
    )

    assert "“4O.00” is not an amount." in flashes(typo)
    assert any("Included calls: Calls included per month" in m for m in flashes(no_quota))
    assert "JPY has 0 decimal places at most." in flashes(too_precise)
    assert not Offer.objects.exists()


def test_changing_a_bought_offer_retires_it_and_adds_its_successor(
    alice, bob, listing, payouts_ready
):
    download = offer(listing)
    portal(bob).post(f"/catalogue/{listing.slug}/buy/", {"offer": download.id})  # sandbox
    held = Licence.objects.get(buyer=bob)

    response = portal(alice).post(
        f"/catalogue/{listing.slug}/offers/{download.id}/",
        {"currency": "usd", "price": "59.00"},
        follow=True,
    )

    assert "Offer changed. It had buyers, so the old one is retired and kept." in flashes(response)
    download.refresh_from_db()
    successor = Offer.objects.get(replaces=download)
    assert download.status == OfferStatus.RETIRED and successor.unit_amount == 5900
    held.refresh_from_db()
    assert held.offer == download  # bob's licence keeps what he paid for
    page = page_of(portal(bob).get(f"/catalogue/{listing.slug}/"))
    assert "59.00 USD" in page and "49.00 USD" not in page


def test_alice_retires_an_offer_and_buyers_no_longer_see_it(alice, bob, listing):
    trial = offer(listing, OfferKind.FREE_TRIAL)

    portal(alice).post(f"/catalogue/{listing.slug}/offers/{trial.id}/retire/")

    trial.refresh_from_db()
    assert trial.status == OfferStatus.RETIRED
    assert "Start trial" not in page_of(portal(bob).get(f"/catalogue/{listing.slug}/"))


def test_mallory_cannot_change_or_retire_alices_offers(alice, mallory, listing):
    download = offer(listing)

    changed = portal(mallory).post(
        f"/catalogue/{listing.slug}/offers/{download.id}/",
        {"currency": "usd", "price": "0.01"},
        follow=True,
    )
    retired = portal(mallory).post(
        f"/catalogue/{listing.slug}/offers/{download.id}/retire/", follow=True
    )
    added = portal(mallory).post(
        f"/catalogue/{listing.slug}/offers/",
        {"kind": "download", "currency": "usd", "price": "1"},
        follow=True,
    )

    assert "No such offer among your listings." in flashes(changed)
    assert "No such offer among your listings." in flashes(retired)
    assert flashes(added) and "Offer added" not in flashes(added)[0]
    download.refresh_from_db()
    assert (download.unit_amount, download.status) == (4900, OfferStatus.ACTIVE)
    assert Offer.objects.count() == 1


def test_alice_onboards_to_payouts_in_the_sandbox_and_sees_her_status(alice, listing):
    assert "Not set up yet." in page_of(portal(alice).get("/payouts/"))

    response = portal(alice).post("/payouts/onboard/")

    assert response.status_code == 302 and response["Location"].endswith("/payouts/return/")
    account = ConnectAccount.objects.get(expert=alice)
    assert account.sandbox and account.payouts_enabled
    after = portal(alice).get(response["Location"], follow=True)
    assert re.search(r'id="payouts-enabled">yes<', page_of(after))


def test_buyers_cannot_open_the_expert_pages(bob):
    for path in ("/earnings/", "/payouts/"):
        assert portal(bob).get(path).status_code == 403
    assert portal(bob).post("/payouts/onboard/").status_code == 403
    assert not ConnectAccount.objects.exists()
    assert portal().get("/earnings/").status_code == 302  # to the login page


def test_earnings_page_shows_the_month_itemised_and_a_bar_per_month(
    alice, bob, mallory, listing, payouts_ready
):
    download = offer(listing)
    portal(bob).post(f"/catalogue/{listing.slug}/buy/", {"offer": download.id})
    portal(mallory).post(f"/catalogue/{listing.slug}/buy/", {"offer": download.id})
    # and a sale three months ago
    earlier = Licence.objects.get(buyer=mallory)
    this_month = timezone.now().date().replace(day=1)
    index = this_month.year * 12 + this_month.month - 1 - 3
    three_months_ago = date(index // 12, index % 12 + 1, 1)
    Payment.objects.create(
        licence=earlier, kind=PaymentKind.CHARGE, amount=10_00, currency="usd", stripe_fee=0,
        platform_fee=2_00, period=three_months_ago, sandbox=True,
    )  # fmt: skip

    page = page_of(portal(alice).get("/earnings/"))

    # This month: two sales of 49.00, 20% platform fee each → 78.40 net
    assert Payment.objects.filter(period=this_month, sandbox=True).count() == 2
    assert "<td>Bob</td>" in page and "<td>Mallory</td>" in page  # names, never emails
    assert "bob@example.com" not in page
    assert '<th class="net">78.40 USD</th>' in page
    bars = dict(re.findall(r'data-month="(\d{4}-\d\d)" data-value="(-?\d+)"', page))
    assert len(bars) == 12
    assert bars[f"{this_month:%Y-%m}"] == "7840"
    assert bars[f"{three_months_ago:%Y-%m}"] == "800"
    assert sum(int(v) for v in bars.values()) == 7840 + 800
    older = page_of(portal(alice).get(f"/earnings/?month={three_months_ago:%Y-%m}"))
    assert '<th class="net">8.00 USD</th>' in older


# --- the buyer's side


def test_bob_buys_in_the_sandbox_and_the_return_page_shows_his_licence(
    alice, bob, listing, payouts_ready
):
    subscription = offer(listing, OfferKind.SUBSCRIPTION)

    response = portal(bob).post(f"/catalogue/{listing.slug}/buy/", {"offer": subscription.id})

    licence = Licence.objects.get(buyer=bob)
    assert (licence.status, licence.sandbox, licence.offer) == ("active", True, subscription)
    assert response["Location"] == f"/licences/return/?licence={licence.id}"
    page = page_of(portal(bob).get(response["Location"]))
    assert 'id="licence-active"' in page and "sandbox: no money moved" in page
    assert str(licence.id) in page
    assert 'id="held-licence"' in page_of(portal(bob).get(f"/catalogue/{listing.slug}/"))
    # nobody else can look at it
    assert portal(alice).get(response["Location"]).status_code == 404


def test_with_stripe_configured_nobody_can_buy_until_the_expert_can_be_paid(
    alice, bob, listing, settings
):
    settings.STRIPE_SECRET_KEY = "sk_test_configured"  # refused before Stripe is called
    download = offer(listing)  # alice never set up payouts

    response = portal(bob).post(
        f"/catalogue/{listing.slug}/buy/", {"offer": download.id}, follow=True
    )

    assert flashes(response) == [
        "The expert has not finished setting up payouts; this offer cannot be bought yet."
    ]
    assert not Licence.objects.exists()
    assert 'id="payouts-needed"' in page_of(portal(alice).get(f"/catalogue/{listing.slug}/"))
    ConnectAccount.objects.create(expert=alice, stripe_account_id="acct_1a", payouts_enabled=True)
    assert 'id="payouts-needed"' not in page_of(portal(alice).get(f"/catalogue/{listing.slug}/"))


def test_the_return_page_waits_for_the_webhook_then_shows_the_licence(alice, bob, mallory, listing):
    # Given a real (not sandbox) checkout bob completed at Stripe, not yet confirmed
    ConnectAccount.objects.create(
        expert=alice, stripe_account_id="acct_1alice", payouts_enabled=True, charges_enabled=True
    )
    download = offer(listing)
    licence = billing_services.licence_create(buyer=bob, offer=download)
    Licence.objects.filter(pk=licence.pk).update(stripe_checkout_session_id="cs_test_bob")
    back_from_stripe = "/licences/return/?session_id=cs_test_bob"

    # When Stripe sends bob back before its webhook has arrived, the page waits
    waiting = page_of(portal(bob).get(back_from_stripe))
    assert "Confirming your payment" in waiting and 'data-status="pending"' in waiting
    status_url = f"/licences/{licence.id}/status/"
    assert portal(bob).get(status_url).json() == {"id": str(licence.id), "status": "pending"}

    # Then the webhook activates the licence and the page shows it
    billing_services.licence_activate(licence_id=licence.id, stripe_payment_intent_id="pi_1")
    assert portal(bob).get(status_url).json()["status"] == "active"
    shown = page_of(portal(bob).get(back_from_stripe))
    assert 'id="licence-active"' in shown and "sandbox" not in shown.split("<main>")[1]

    # mallory cannot read bob's purchase by its session id or its licence id
    assert portal(mallory).get(back_from_stripe).status_code == 404
    refused = portal(mallory).get(status_url)
    assert refused.status_code == 404
    assert refused.json()["error"]["code"] == "licence_not_found"


def test_my_licences_shows_usage_against_the_quota_and_a_download_button(
    alice, bob, listing, payouts_ready
):
    subscription = offer(listing, OfferKind.SUBSCRIPTION)
    download = offer(listing, OfferKind.DOWNLOAD)
    client = portal(bob)
    client.post(f"/catalogue/{listing.slug}/buy/", {"offer": subscription.id})
    client.post(f"/catalogue/{listing.slug}/buy/", {"offer": download.id})
    calling = Licence.objects.get(buyer=bob, kind=OfferKind.SUBSCRIPTION)
    for n in range(3):
        billing_services.usage_record(licence_id=calling.id, idempotency_key=f"req-{n}")

    page = page_of(client.get("/licences/"))

    assert "Calls this period: <strong>3</strong> of 1000" in page
    assert "Outputs may be used commercially. <strong>yes</strong>" in page  # terms at purchase
    export_url = f"/api/v1/models/{listing.live_version_id}/export"
    assert f'href="{export_url}"' in page and 'data-testid="download-bundle"' in page
    assert page.count('data-testid="download-bundle"') == 1  # only the download licence
    # a revoked licence shows as such and loses its button at once
    held = Licence.objects.get(buyer=bob, kind=OfferKind.DOWNLOAD)
    billing_services.licence_revoke(licence_id=held.id, reason="chargeback")
    after = page_of(client.get("/licences/"))
    assert 'data-testid="download-bundle"' not in after
    assert f'id="licence-{held.id}" data-status="revoked"' in after
    assert client.get(export_url).status_code == 403


def test_my_licences_reads_every_licences_calls_without_a_query_per_licence(
    alice, bob, carol, listing, payouts_ready
):
    # given bob calls one specialist, then two more of alice's
    client = portal(bob)

    def subscribe_and_call(to: Listing) -> None:
        client.post(f"/catalogue/{to.slug}/buy/", {"offer": offer(to, OfferKind.SUBSCRIPTION).id})
        held = Licence.objects.get(buyer=bob, listing=to)
        billing_services.usage_record(licence_id=held.id, idempotency_key=f"req-{to.slug}")

    subscribe_and_call(listing)
    with CaptureQueriesContext(connection) as one_licence:
        page_of(client.get("/licences/"))
    for title in ("Contract clause finder", "Claims fraud triage"):
        subscribe_and_call(make_listing(alice, moderator=carol, title=title))

    # when he opens My licences
    with CaptureQueriesContext(connection) as three_licences:
        page = page_of(client.get("/licences/"))

    # then each licence shows its call, and the page costs no more queries than with one
    assert page.count("Calls this period: <strong>1</strong> of 1000") == 3
    assert Licence.objects.filter(buyer=bob, status=LicenceStatus.ACTIVE).count() == 3
    assert len(three_licences) == len(one_licence)


def test_the_sandbox_banner_shows_on_every_page_only_in_sandbox_mode(bob, settings):
    settings.STRIPE_SECRET_KEY = ""
    for path in ("/", "/catalogue/", "/licences/"):
        assert 'id="sandbox-banner"' in page_of(portal(bob).get(path))

    settings.STRIPE_SECRET_KEY = "sk_test_configured"
    assert 'id="sandbox-banner"' not in page_of(portal(bob).get("/"))


def test_the_signing_key_is_public_at_its_well_known_url(db):
    response = portal().get("/.well-known/niche-signing-key")

    assert response.status_code == 200
    body = response.json()
    assert body["algorithm"] == "Ed25519" and len(body["key_id"]) == 16
    assert body["public_key_pem"].startswith("-----BEGIN PUBLIC KEY-----")


# --- the same flow against the local Stripe server (real SDK, webhooks over HTTP)


# A live server, so a transactional database. Not serialized_rollback: a transactional
# test before this one flushes, and the flush's post_migrate re-creates the moderators
# group under a new id, which the serialized copy would then collide with.
@pytest.mark.django_db(transaction=True)
def test_bob_buys_through_stripe_checkout_and_the_portal_follows_the_webhooks(
    alice, bob, carol, shipped_base_models, stripe_webhooks_to_live_server
):
    stripe = stripe_webhooks_to_live_server
    listing = make_listing(alice, moderator=carol, on_prem_download=True)

    # alice onboards: Stripe's hosted form, then account.updated reaches Niche
    response = portal(alice).post("/payouts/onboard/")
    assert response.status_code == 302 and response["Location"].startswith(stripe.base_url)
    account = ConnectAccount.objects.get(expert=alice)
    assert not account.payouts_enabled and not account.sandbox
    assert stripe.complete_onboarding(account.stripe_account_id)["delivery_status"] == 200
    back = portal(alice).get("/payouts/return/", follow=True)
    assert re.search(r'id="payouts-enabled">yes<', page_of(back))
    portal(alice).post(
        f"/catalogue/{listing.slug}/offers/",
        {"kind": "download", "currency": "usd", "price": "250"},
    )

    # bob buys: off to Stripe's Checkout page, his licence pending
    download = Offer.objects.get(listing=listing)
    response = portal(bob).post(f"/catalogue/{listing.slug}/buy/", {"offer": download.id})
    assert response.status_code == 302 and response["Location"].startswith(stripe.base_url)
    licence = Licence.objects.get(buyer=bob)
    assert licence.status == "pending"
    session = stripe.state.sessions[licence.stripe_checkout_session_id]
    return_path = session["success_url"].removeprefix("http://testserver")
    assert return_path == f"/licences/return/?session_id={session['id']}"
    assert "Confirming your payment" in page_of(portal(bob).get(return_path))

    # Stripe takes the money and tells Niche; the page (and its poll) shows the licence
    assert stripe.complete_checkout(session["id"])["delivery_status"] == 200
    status = portal(bob).get(f"/licences/{licence.id}/status/").json()
    assert status["status"] == "active"
    shown = page_of(portal(bob).get(return_path))
    assert 'id="licence-active"' in shown and "no money moved" not in shown
    payment = Payment.objects.get(licence=licence)
    assert (payment.amount, payment.platform_fee, payment.sandbox) == (25_000, 5_000, False)
    assert 'data-testid="download-bundle"' in page_of(portal(bob).get("/licences/"))


# --- make run: the demo's specialists are for sale


def test_a_demo_specialist_is_listed_with_offers_once_and_the_demo_buyer_can_buy_it(
    db, django_capture_on_commit_callbacks
):
    call_command("seed_demo", "--skip-models", "--skip-training", stdout=None, stderr=None)
    expert = User.objects.get(email="expert@demo.niche")
    jobs, _ = start(expert, django_capture_on_commit_callbacks)
    job = finish(next(j for j in jobs if j.suffix == SUPPORT.job_suffix))

    assert demo_listing_publish(job_id=job.pk) == DemoOutcome.PUBLISHED

    listing = Listing.objects.get(slug=SUPPORT.listing["slug"])
    offers = {o.kind: o for o in Offer.objects.filter(listing=listing)}
    assert set(offers) == {"free_trial", "subscription", "download"}
    assert (offers["subscription"].unit_amount, offers["download"].unit_amount) == (1900, 4900)
    # the expert retires one; a second watcher and a later start do not put it back
    billing_services.offer_retire(owner=expert, offer_id=offers["download"].id)
    assert demo_listing_publish(job_id=job.pk) == DemoOutcome.PUBLISHED
    start(expert, django_capture_on_commit_callbacks)
    assert Offer.objects.filter(listing=listing).count() == 3
    assert Offer.objects.filter(listing=listing, status=OfferStatus.ACTIVE).count() == 2

    # The demo buyer buys the subscription from the page in the sandbox
    bea = User.objects.get(email="buyer@demo.niche")
    page = page_of(portal(bea).get(f"/catalogue/{listing.slug}/"))
    assert "19.00 USD" in page and 'id="sandbox-banner"' in page
    response = portal(bea).post(
        f"/catalogue/{listing.slug}/buy/", {"offer": offers["subscription"].id}, follow=True
    )
    assert "Your licence is active" in page_of(response)
    assert Licence.objects.get(buyer=bea).status == "active"


def test_alice_downloads_her_own_version_from_the_studio_page(alice, listing, tmp_path):
    # The catalogue factory's version names files that are not there: store a well-formed
    # safetensors file (not a real adapter) so the export has weights that pass its check.
    version = listing.live_version
    for field, name, content in (
        ("adapter", "adapter_model.safetensors", safetensors_bytes()),
        ("config", "adapter_config.json", b'{"r": 8}'),
    ):
        (tmp_path / name).write_bytes(content)
        path, sha256, size = artifacts.store_content_addressed(tmp_path / name)
        setattr(version, f"{field}_path", path)
        setattr(version, f"{field}_sha256", sha256)
        setattr(version, f"{field}_size", size)
    version.save()

    page = page_of(portal(alice).get(f"/studio/models/{listing.live_version_id}/"))

    export_url = f"/api/v1/models/{listing.live_version_id}/export"
    assert f'href="{export_url}"' in page and 'data-testid="download-bundle"' in page
    response = portal(alice).get(export_url)  # the portal's session is enough
    assert response.status_code == 200 and response["Content-Type"] == "application/zip"
    assert ExportDownload.objects.get().user == alice


def test_bob_cancels_and_resumes_from_my_licences_and_sets_a_spend_cap(
    alice, bob, listing, payouts_ready
):
    subscription = offer(listing, OfferKind.SUBSCRIPTION)
    per_call = offer(listing, OfferKind.PER_CALL)
    bob_portal = portal(bob)
    bob_portal.post(f"/catalogue/{listing.slug}/buy/", {"offer": subscription.id})
    licence = Licence.objects.get(buyer=bob)
    page = page_of(bob_portal.get("/licences/"))
    assert 'data-testid="licence-cancel"' in page and 'data-testid="licence-resume"' not in page

    cancelled = bob_portal.post(f"/licences/{licence.id}/cancel/", follow=True)

    licence.refresh_from_db()
    assert (licence.status, licence.cancel_at_period_end) == ("active", True)
    page = page_of(cancelled)
    assert "keep access until" in page and 'data-testid="licence-resume"' in page
    assert any("keep access until" in m for m in flashes(cancelled))

    resumed = bob_portal.post(f"/licences/{licence.id}/resume/", follow=True)

    licence.refresh_from_db()
    assert licence.cancel_at_period_end is False
    assert "Resumed" in " ".join(flashes(resumed))
    # Per call instead: a metered licence, with the monthly spend cap in major units.
    bob_portal.post(f"/licences/{licence.id}/cancel/")
    Licence.objects.filter(pk=licence.pk).update(status="cancelled", ended_at=timezone.now())
    bob_portal.post(f"/catalogue/{listing.slug}/buy/", {"offer": per_call.id})
    metered = Licence.objects.get(buyer=bob, kind=OfferKind.PER_CALL)
    assert 'data-testid="spend-cap"' in page_of(bob_portal.get("/licences/"))

    capped = bob_portal.post(
        f"/licences/{metered.id}/spend-cap/", {"spend_cap": "12.50"}, follow=True
    )

    metered.refresh_from_db()
    assert (metered.spend_cap_amount, metered.spend_cap_calls) == (1250, 1250 * 1000 // 250)
    assert "Spend cap saved" in " ".join(flashes(capped))
    refused = bob_portal.post(
        f"/licences/{metered.id}/spend-cap/", {"spend_cap": "lots"}, follow=True
    )
    assert any("Spend cap" in m for m in flashes(refused))
    metered.refresh_from_db()
    assert metered.spend_cap_amount == 1250
    # mallory cannot touch bob's licence
    assert (
        portal(User.objects.create_user(email="m@x.com", password="pw-pw-pw-pw-1"))
        .post(f"/licences/{metered.id}/cancel/", follow=True)
        .status_code
        == 200
    )
    metered.refresh_from_db()
    assert metered.cancel_at_period_end is False
