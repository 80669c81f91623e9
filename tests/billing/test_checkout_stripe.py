"""Buying each kind of offer through Stripe Checkout against the local Stripe server.

The real `stripe` SDK talks to localstripe + the fake (tests/billing/stripe_server.py);
webhooks travel over real HTTP to a live Niche server. A licence is active only once
Stripe's webhook says the money arrived.
"""

import importlib
from datetime import timedelta

import pytest
from django.test import TestCase
from django.utils import timezone

from billing import stripe_gateway
from billing.metering import usage_report_to_stripe
from billing.models import (
    ConnectAccount,
    Licence,
    LicenceStatus,
    OfferKind,
    Payment,
    StripeEvent,
    UsageStatus,
)
from billing.refunds import payment_refund
from billing.services import usage_record, usage_settle
from tests.billing.conftest import make_offer
from tests.billing.stripe_server import post_webhook

CHECKOUT = "/api/v1/billing/checkout"


def onboard(api, expert, stripe_server, client=None) -> ConnectAccount:
    """The expert asks for an onboarding link and finishes Stripe's form."""
    response = api(expert).post("/api/v1/billing/connect/onboard", {}, format="json")
    assert response.status_code == 201, response.content
    assert response.json()["url"].startswith(stripe_server.base_url)
    account = ConnectAccount.objects.get(expert=expert)
    delivery = stripe_server.complete_onboarding(account.stripe_account_id)
    if client is not None:
        assert post_webhook(client, delivery).status_code == 200
    account.refresh_from_db()
    return account


@pytest.fixture
def live_database(transactional_db):
    """A live server needs committed rows; a flush empties the tables after each test, so
    the base models the migration registers are put back (no serialized rollback: a
    flush re-creates rows post_migrate makes, which a rollback would insert twice)."""
    from django.apps import apps

    migration = importlib.import_module("training_worker.migrations.0002_register_base_models")
    migration.register(apps, None)


@pytest.mark.usefixtures("live_database")
@pytest.mark.parametrize(
    ("kind", "mode", "fee"),
    [
        (OfferKind.DOWNLOAD, "payment", {"application_fee_amount": "5000"}),
        (OfferKind.SUBSCRIPTION, "subscription", {"application_fee_percent": "20"}),
        (OfferKind.PER_CALL, "subscription", {"application_fee_percent": "20"}),
    ],
)
def test_each_offer_kind_is_bought_end_to_end_and_active_only_after_the_webhook(
    kind, mode, fee, alice, bob, api, listing, stripe_webhooks_to_live_server
):
    stripe = stripe_webhooks_to_live_server
    account = onboard(api, alice, stripe)
    assert account.payouts_enabled and account.details_submitted  # via account.updated
    offer = make_offer(listing, kind)

    response = api(bob).post(CHECKOUT, {"offer_id": str(offer.id)}, format="json")

    assert response.status_code == 201, response.content
    body = response.json()
    assert body["sandbox"] is False and body["url"].startswith(stripe.base_url)
    licence = Licence.objects.get(pk=body["licence_id"])
    assert licence.status == LicenceStatus.PENDING
    session = stripe.state.sessions[licence.stripe_checkout_session_id]
    assert session["mode"] == mode
    charge_data = session["payment_intent_data"] or session["subscription_data"]
    assert charge_data["transfer_data"] == {"destination": account.stripe_account_id}
    assert {k: charge_data[k] for k in fee} == fee
    assert session["client_reference_id"] == str(licence.pk)

    completed = stripe.complete_checkout(session["id"])

    assert completed["delivery_status"] == 200
    licence.refresh_from_db()
    assert licence.status == LicenceStatus.ACTIVE
    assert licence.sandbox is False
    assert StripeEvent.objects.get(pk=completed["event"]["id"]).processed_at is not None
    if kind == OfferKind.DOWNLOAD:
        payment = Payment.objects.get(licence=licence)
        assert (payment.kind, payment.amount, payment.platform_fee) == ("charge", 25_000, 5_000)
        transfer = next(iter(stripe.state.transfers.values()))
        assert transfer["destination"] == account.stripe_account_id
        assert transfer["amount"] == 20_000
    else:
        assert licence.stripe_subscription_id == completed["session"]["subscription"]
        assert licence.current_period_start is not None
        assert licence.current_period_end > licence.current_period_start
    if kind == OfferKind.SUBSCRIPTION:
        payment = Payment.objects.get(licence=licence)
        assert (payment.kind, payment.amount, payment.platform_fee) == ("invoice", 4900, 980)
    if kind == OfferKind.PER_CALL:
        assert licence.stripe_subscription_item_id.startswith("si_")
        assert not Payment.objects.filter(licence=licence).exists()  # billed from usage


def test_a_priced_offer_cannot_be_bought_before_the_expert_can_receive_payouts(
    alice, bob, api, listing, stripe_server
):
    api(alice).post("/api/v1/billing/connect/onboard", {}, format="json")  # not finished
    offer = make_offer(listing, OfferKind.DOWNLOAD)

    response = api(bob).post(CHECKOUT, {"offer_id": str(offer.id)}, format="json")

    assert response.status_code == 409
    assert response.json()["error"]["code"] == "expert_payouts_not_enabled"
    assert not Licence.objects.exists()
    assert stripe_server.state.sessions == {}


def test_a_retried_checkout_gets_the_same_session_not_a_second_one(
    alice, bob, api, client, listing, stripe_server
):
    onboard(api, alice, stripe_server, client)
    offer = make_offer(listing, OfferKind.DOWNLOAD)
    bob_api = api(bob)

    first = bob_api.post(CHECKOUT, {"offer_id": str(offer.id)}, format="json")
    second = bob_api.post(CHECKOUT, {"offer_id": str(offer.id)}, format="json")

    assert first.status_code == second.status_code == 201
    assert first.json()["checkout_session_id"] == second.json()["checkout_session_id"]
    assert first.json()["licence_id"] == second.json()["licence_id"]
    assert len(stripe_server.state.sessions) == 1
    assert Licence.objects.filter(buyer=bob).count() == 1


def test_every_post_to_stripe_carries_an_idempotency_key_derived_from_our_row(
    alice, bob, carol, api, client, listing, stripe_server
):
    # A whole life of commerce: onboarding, two purchases paid, usage reported, a refund.
    onboard(api, alice, stripe_server, client)
    licences = {}
    for kind in (OfferKind.DOWNLOAD, OfferKind.PER_CALL):
        offer = make_offer(listing, kind)
        response = api(bob).post(CHECKOUT, {"offer_id": str(offer.id)}, format="json")
        assert response.status_code == 201, response.content
        licence = Licence.objects.get(pk=response.json()["licence_id"])
        paid = stripe_server.complete_checkout(licence.stripe_checkout_session_id)
        assert post_webhook(client, paid).status_code == 200
        licences[kind] = licence
    usage_record(licence_id=licences[OfferKind.PER_CALL].pk, idempotency_key="req-1")
    usage_settle(idempotency_key="req-1", status=UsageStatus.OK)
    usage_report_to_stripe(now=timezone.now() + timedelta(minutes=5))
    payment_refund(
        payment=Payment.objects.get(licence=licences[OfferKind.DOWNLOAD]),
        actor=carol,
        reason="Duplicate purchase",
    )

    posts = stripe_server.posts()

    assert {p.path for p in posts} == {
        "/v1/accounts", "/v1/account_links", "/v1/products", "/v1/prices",
        "/v1/billing/meters", "/v1/checkout/sessions", "/v1/billing/meter_events",
        "/v1/refunds",
    }  # fmt: skip
    assert [p for p in posts if not (p.idempotency_key or "").startswith("niche:")] == []
    session_keys = {p.idempotency_key for p in posts if p.path == "/v1/checkout/sessions"}
    assert session_keys == {
        f"niche:checkout_session_create:{licence.pk}" for licence in licences.values()
    }


def test_in_sandbox_mode_a_purchase_completes_at_once_and_says_sandbox(
    alice, bob, api, listing, settings
):
    settings.STRIPE_SECRET_KEY = ""
    offer = make_offer(listing, OfferKind.DOWNLOAD)  # alice never onboarded: no money moves

    with TestCase.captureOnCommitCallbacks(execute=True):
        response = api(bob).post(CHECKOUT, {"offer_id": str(offer.id)}, format="json")

    assert response.status_code == 201, response.content
    assert response.json()["sandbox"] is True
    licence = Licence.objects.get(pk=response.json()["licence_id"])
    assert (licence.status, licence.sandbox) == (LicenceStatus.ACTIVE, True)
    payment = Payment.objects.get(licence=licence)
    assert (payment.sandbox, payment.amount, payment.platform_fee) == (True, 25_000, 5_000)


def test_return_addresses_must_be_on_this_site(alice, bob, api, listing, settings):
    settings.STRIPE_SECRET_KEY = ""
    offer = make_offer(listing, OfferKind.DOWNLOAD)

    response = api(bob).post(
        CHECKOUT,
        {"offer_id": str(offer.id), "success_url": "https://evil.example/phish"},
        format="json",
    )

    assert response.status_code == 422
    assert response.json()["error"]["fields"] == {"success_url": ["A path on this site."]}
    assert not Licence.objects.exists()


def test_a_checkout_asked_for_again_after_its_session_expired_starts_a_fresh_one(
    alice, bob, api, client, listing, stripe_server
):
    onboard(api, alice, stripe_server, client)
    offer = make_offer(listing, OfferKind.DOWNLOAD)
    first = api(bob).post(CHECKOUT, {"offer_id": str(offer.id)}, format="json").json()
    stripe_gateway.checkout_session_expire(
        session_id=first["checkout_session_id"], key="test:expire"
    )

    second = api(bob).post(CHECKOUT, {"offer_id": str(offer.id)}, format="json")

    assert second.status_code == 201
    assert second.json()["checkout_session_id"] != first["checkout_session_id"]
    old = Licence.objects.get(pk=first["licence_id"])
    assert (old.status, old.end_reason) == (LicenceStatus.CANCELLED, "Checkout expired unpaid.")
    assert Licence.objects.get(pk=second.json()["licence_id"]).status == LicenceStatus.PENDING


def test_stripe_sends_the_buyer_back_to_the_return_page_with_its_session_id(
    alice, bob, api, client, listing, stripe_server
):
    onboard(api, alice, stripe_server, client)
    offer = make_offer(listing, OfferKind.DOWNLOAD)

    response = api(bob).post(CHECKOUT, {"offer_id": str(offer.id)}, format="json")

    session = stripe_server.state.sessions[response.json()["checkout_session_id"]]
    assert session["success_url"] == (
        f"http://testserver/licences/return/?session_id={session['id']}"
    )


def test_a_checkout_stripe_refuses_is_a_typed_error_and_the_next_try_starts_afresh(
    alice, bob, api, client, listing, stripe_server
):
    account = onboard(api, alice, stripe_server, client)
    stripe_server.state.accounts[account.stripe_account_id]["charges_enabled"] = False
    offer = make_offer(listing, OfferKind.DOWNLOAD)

    refused = api(bob).post(CHECKOUT, {"offer_id": str(offer.id)}, format="json")

    assert refused.status_code == 502
    error = refused.json()["error"]
    assert error["code"] == "payment_provider_error"
    assert error["fields"]["stripe_code"] == ["insufficient_capabilities_for_transfer"]
    spent = Licence.objects.get(buyer=bob)
    assert spent.status == LicenceStatus.CANCELLED

    stripe_server.state.accounts[account.stripe_account_id]["charges_enabled"] = True
    again = api(bob).post(CHECKOUT, {"offer_id": str(offer.id)}, format="json")

    assert again.status_code == 201
    assert again.json()["licence_id"] != str(spent.pk)
    assert len(stripe_server.state.sessions) == 1


def test_a_free_trial_starts_at_once_without_stripe(alice, bob, api, listing, stripe_server):
    offer = make_offer(listing, OfferKind.FREE_TRIAL)

    response = api(bob).post(CHECKOUT, {"offer_id": str(offer.id)}, format="json")

    assert response.status_code == 201, response.content
    licence = Licence.objects.get(pk=response.json()["licence_id"])
    assert (licence.status, licence.sandbox, licence.call_quota) == ("active", False, 100)
    assert stripe_server.posts() == []
