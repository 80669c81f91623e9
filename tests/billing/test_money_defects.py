"""Issue 20: the paths where money and access disagreed, each reproduced and closed.

Against the local Stripe (localstripe plus the fake of what it lacks, speaking the
pinned API version), with webhooks handed to Django's test client and the outbox's
writes to Stripe sent when the request's transaction commits, as in production.
"""

from __future__ import annotations

from datetime import timedelta

import pytest
from django.core import mail
from django.db import transaction
from django.test import TestCase
from django.utils import timezone

from billing import models, stripe_gateway
from billing.errors import LicenceRequired, PaymentProviderUnavailable, ReasonRequired
from billing.models import (
    BillingAuditEntry,
    ExportDownload,
    Licence,
    LicenceStatus,
    OfferKind,
    Payment,
    PaymentKind,
    StripeEvent,
)
from billing.refunds import payment_refund
from billing.selectors import licence_for_call, statement_for
from billing.services import licence_revoke, usage_record, usage_settle
from listings.services import listing_delist, listing_suspend, user_suspend
from tests.billing.conftest import make_offer
from tests.billing.stripe_server import post_webhook
from tests.billing.test_checkout_stripe import CHECKOUT
from tests.billing.test_webhooks_stripe import alice_paid_out as alice_paid_out

LICENCES = "/api/v1/billing/licenses"


def outbox():
    """The outbox's names, imported where used: each test here also runs against the code
    before the fix (the closing note's reproduction), which had no outbox."""
    from billing import stripe_outbox, stripe_sync

    return models.StripeIntent, models.IntentKind, models.IntentStatus, stripe_outbox, stripe_sync


def committed(callable_, *args, **kwargs):
    """Run as a request would: its on-commit work (tasks, the outbox) runs after it."""
    with TestCase.captureOnCommitCallbacks(execute=True):
        return callable_(*args, **kwargs)


def start_checkout(api, buyer, offer) -> Licence:
    response = committed(api(buyer).post, CHECKOUT, {"offer_id": str(offer.id)}, format="json")
    assert response.status_code == 201, response.content
    return Licence.objects.get(pk=response.json()["licence_id"])


def pay(stripe_server, client, licence) -> dict:
    """The buyer pays on Stripe's page; its webhook is delivered."""
    licence.refresh_from_db()
    delivery = stripe_server.complete_checkout(licence.stripe_checkout_session_id)
    assert post_webhook(client, delivery).status_code == 200
    licence.refresh_from_db()
    return delivery


def deliver_all(client, stripe_server) -> None:
    for delivery in stripe_server.undelivered_events():
        assert post_webhook(client, delivery).status_code == 200


def refunded(payment: Payment) -> int:
    return -sum(
        Payment.objects.filter(refunds=payment, kind=PaymentKind.REFUND).values_list(
            "amount", flat=True
        )
    )


# --- defect 1: two paid licences for one listing --------------------------------------


def test_a_new_checkout_expires_the_open_one_of_the_same_family(
    alice_paid_out, bob, api, client, listing, stripe_server
):
    first = start_checkout(api, bob, make_offer(listing, OfferKind.PER_CALL))
    second = start_checkout(api, bob, make_offer(listing, OfferKind.SUBSCRIPTION))

    first.refresh_from_db()
    assert first.status == LicenceStatus.CANCELLED
    assert first.end_reason == "Replaced by a newer checkout for this listing."
    assert stripe_server.state.sessions[first.stripe_checkout_session_id]["status"] == "expired"
    assert second.status == LicenceStatus.PENDING
    pay(stripe_server, client, second)
    assert second.status == LicenceStatus.ACTIVE
    # A download is another family: it does not touch the calling checkout.
    download = start_checkout(api, bob, make_offer(listing, OfferKind.DOWNLOAD))
    second.refresh_from_db()
    assert (second.status, download.status) == (LicenceStatus.ACTIVE, LicenceStatus.PENDING)


def test_a_checkout_paid_while_it_was_being_replaced_is_refunded_and_its_billing_ended(
    alice_paid_out, bob, api, client, listing, stripe_server
):
    first = start_checkout(api, bob, make_offer(listing, OfferKind.PER_CALL))
    # bob pays the first in another tab; its webhook has not reached Niche yet...
    paid_first = stripe_server.complete_checkout(first.stripe_checkout_session_id)
    # ...when he opens a checkout for the subscription and pays it too.
    second = start_checkout(api, bob, make_offer(listing, OfferKind.SUBSCRIPTION))
    pay(stripe_server, client, second)
    assert post_webhook(client, paid_first).status_code == 200
    deliver_all(client, stripe_server)

    first.refresh_from_db()
    second.refresh_from_db()
    assert (first.status, second.status) == (LicenceStatus.CANCELLED, LicenceStatus.ACTIVE)
    first_sub = stripe_gateway.subscription_retrieve(first.stripe_subscription_id)
    assert first_sub.status == "canceled"  # it bills no more
    assert StripeEvent.objects.filter(processed_at__isnull=True).count() == 0


def test_two_paid_licences_of_one_kind_end_in_one_and_a_refund_never_a_failing_event(
    alice_paid_out, bob, api, client, listing, stripe_server
):
    """The state the old checkout allowed: two pending calling licences, both paid. The
    second to arrive is cancelled and refunded in full (audited as the platform's), its
    subscription cancelled, and its webhook event processed, not failing forever."""
    from billing.checkout import _session_params, offer_stripe_prices_ensure
    from billing.services import licence_create

    _StripeIntent, IntentKind, _status, stripe_outbox, stripe_sync = outbox()
    licences = []
    for kind in (OfferKind.PER_CALL, OfferKind.SUBSCRIPTION):
        offer = offer_stripe_prices_ensure(offer_id=make_offer(listing, kind).pk)
        with transaction.atomic():
            licence = licence_create(buyer=bob, offer=offer)
            intent = stripe_outbox.intent_record(
                kind=IntentKind.CHECKOUT_SESSION_CREATE,
                key_parts=(licence.pk,),
                params=_session_params(licence, offer, bob, "http://t/", "http://t/"),
                licence=licence,
                send=False,
            )
        stripe_sync.intent_run(intent_id=intent.pk)
        licences.append(licence)
    for licence in licences:
        pay(stripe_server, client, licence)
    deliver_all(client, stripe_server)

    kept, duplicate = licences
    assert (kept.status, duplicate.status) == (LicenceStatus.ACTIVE, LicenceStatus.CANCELLED)
    assert duplicate.end_reason == "A second licence of the same kind was paid for this listing."
    payment = Payment.objects.get(licence=duplicate, kind=PaymentKind.INVOICE)
    assert refunded(payment) == payment.amount == 4900
    audit = BillingAuditEntry.objects.get(action="refund_automatic")
    assert (audit.actor, audit.target_id) == (None, str(payment.pk))
    assert stripe_gateway.subscription_retrieve(duplicate.stripe_subscription_id).status == (
        "canceled"
    )
    events = StripeEvent.objects.all()
    assert events and all(e.processed_at is not None and e.last_error == "" for e in events)


# --- defect 2: ending access stops billing; buyers cancel and resume -------------------


def test_revoking_a_licence_cancels_its_subscription_at_stripe(
    alice_paid_out, bob, carol, api, client, listing, stripe_server
):
    licence = start_checkout(api, bob, make_offer(listing, OfferKind.SUBSCRIPTION))
    pay(stripe_server, client, licence)

    committed(licence_revoke, licence_id=licence.pk, actor=carol, reason="Abusive use")

    assert stripe_gateway.subscription_retrieve(licence.stripe_subscription_id).status == (
        "canceled"
    )
    StripeIntent, IntentKind, IntentStatus, _outbox, _sync = outbox()
    intent = StripeIntent.objects.get(licence=licence, kind=IntentKind.SUBSCRIPTION_CANCEL)
    assert intent.status == IntentStatus.SUCCEEDED
    assert intent.idempotency_key == f"niche:subscription_cancel:{licence.pk}"


def test_a_renewal_paid_after_access_ended_is_refunded_and_the_subscription_cancelled(
    alice_paid_out, bob, carol, api, client, listing, stripe_server, monkeypatch
):
    """The renewal invoice recorded on a revoked licence: Stripe unreachable when the
    teardown was sent, the subscription renewed. The money goes back, the teardown is
    sent again, and nothing bills the ended licence."""
    licence = start_checkout(api, bob, make_offer(listing, OfferKind.SUBSCRIPTION))
    pay(stripe_server, client, licence)

    def unreachable(**_fields):
        raise PaymentProviderUnavailable("Stripe is unreachable")

    monkeypatch.setattr(stripe_gateway, "subscription_cancel", unreachable)
    committed(licence_revoke, licence_id=licence.pk, actor=carol, reason="Chargeback")
    monkeypatch.undo()
    stripe_server.advance_subscription(licence.stripe_subscription_id)  # it renewed
    deliver_all(client, stripe_server)

    renewal = Payment.objects.filter(licence=licence, kind=PaymentKind.INVOICE).order_by(
        "-created_at"
    )
    assert renewal.count() == 2
    assert refunded(renewal.first()) == renewal.first().amount  # paid for no access
    assert refunded(renewal.last()) == 0  # the period that was served is kept
    # The teardown waits out its backoff, then the sweep sends it again.
    StripeIntent, _kind, IntentStatus, _outbox, stripe_sync = outbox()
    StripeIntent.objects.filter(status=IntentStatus.PENDING).update(next_attempt_at=timezone.now())
    assert stripe_sync.intents_send_due() == 1
    assert stripe_gateway.subscription_retrieve(licence.stripe_subscription_id).status == (
        "canceled"
    )


def test_a_buyer_cancels_at_period_end_keeps_access_and_resumes_before_it(
    alice_paid_out, bob, api, client, listing, stripe_server
):
    licence = start_checkout(api, bob, make_offer(listing, OfferKind.SUBSCRIPTION))
    pay(stripe_server, client, licence)
    bob_api = api(bob)

    cancelled = committed(bob_api.post, f"{LICENCES}/{licence.pk}/cancel")

    assert cancelled.status_code == 200, cancelled.content
    body = cancelled.json()
    assert (body["status"], body["cancel_at_period_end"]) == ("active", True)
    assert body["access_ends_at"] == body["current_period_end"]
    assert "keep access until" in body["notice"]
    assert stripe_gateway.subscription_retrieve(licence.stripe_subscription_id).cancel_at_period_end
    assert licence_for_call(user=bob, listing_slug=listing.slug).licence_id == licence.pk

    resumed = committed(bob_api.post, f"{LICENCES}/{licence.pk}/resume")

    assert resumed.status_code == 200, resumed.content
    assert (resumed.json()["cancel_at_period_end"], resumed.json()["notice"]) == (False, "")
    sub = stripe_gateway.subscription_retrieve(licence.stripe_subscription_id)
    assert sub.cancel_at_period_end is False

    # Cancelled again, the period ends at Stripe: the licence ends with it.
    committed(bob_api.post, f"{LICENCES}/{licence.pk}/cancel")
    stripe_server.advance_subscription(licence.stripe_subscription_id)
    deliver_all(client, stripe_server)
    licence.refresh_from_db()
    assert licence.status == LicenceStatus.CANCELLED
    assert committed(bob_api.post, f"{LICENCES}/{licence.pk}/resume").status_code == 409
    assert Payment.objects.filter(licence=licence, kind=PaymentKind.REFUND).count() == 0


def test_a_download_has_nothing_to_cancel_and_strangers_cannot_cancel(
    alice_paid_out, bob, mallory, api, client, listing, stripe_server
):
    licence = start_checkout(api, bob, make_offer(listing, OfferKind.DOWNLOAD))
    pay(stripe_server, client, licence)

    assert api(bob).post(f"{LICENCES}/{licence.pk}/cancel").json()["error"]["code"] == (
        "nothing_to_cancel"
    )
    stranger = api(mallory).post(f"{LICENCES}/{licence.pk}/cancel")
    assert (stranger.status_code, stranger.json()["error"]["code"]) == (404, "licence_not_found")


# --- defect 5: unpaid ends access; a per-call licence has a spend cap -------------------


@pytest.mark.parametrize("stripe_status", ["unpaid", "incomplete_expired"])
def test_stripe_giving_up_on_payment_ends_access_and_billing(
    alice_paid_out, bob, api, client, listing, stripe_server, stripe_status
):
    licence = start_checkout(api, bob, make_offer(listing, OfferKind.SUBSCRIPTION))
    pay(stripe_server, client, licence)

    stripe_server.set_subscription_status(licence.stripe_subscription_id, stripe_status)
    deliver_all(client, stripe_server)

    licence.refresh_from_db()
    assert licence.status == LicenceStatus.CANCELLED
    with pytest.raises(LicenceRequired):
        licence_for_call(user=bob, listing_slug=listing.slug)
    if stripe_status == "unpaid":  # Stripe keeps an unpaid subscription: we end it
        assert stripe_gateway.subscription_retrieve(licence.stripe_subscription_id).status == (
            "canceled"
        )


def test_a_per_call_licence_stops_at_the_spend_cap_the_buyer_sets(
    alice_paid_out, bob, api, client, listing, stripe_server
):
    licence = start_checkout(api, bob, make_offer(listing, OfferKind.PER_CALL, unit_amount=200))
    pay(stripe_server, client, licence)
    assert (licence.spend_cap_amount, licence.spend_cap_calls) == (10_000, 50_000)

    capped = api(bob).patch(
        f"{LICENCES}/{licence.pk}", {"monthly_spend_cap": 1}, format="json"
    )  # 0.01 USD at 2.00 per 1,000 calls: 5 calls

    assert capped.status_code == 200, capped.content
    assert (capped.json()["monthly_spend_cap"], capped.json()["spend_cap_calls"]) == (1, 5)
    for n in range(5):
        usage_record(licence_id=licence.pk, idempotency_key=f"call-{n}")
        usage_settle(idempotency_key=f"call-{n}", status="ok")
    refused = api(bob).post(
        f"/api/v1/models/{listing.slug}/predict", {"inputs": ["one more"]}, format="json"
    )
    assert refused.status_code == 429
    assert refused.json()["error"]["code"] == "spend_cap_reached"
    bad = api(bob).patch(f"{LICENCES}/{licence.pk}", {"monthly_spend_cap": 0}, format="json")
    assert bad.status_code == 422


# --- defect 8: no Stripe call inside a transaction; the outbox finishes what a crash left


def test_a_refund_whose_reason_we_would_refuse_never_reaches_stripe(
    alice_paid_out, bob, carol, api, client, listing, stripe_server
):
    licence = start_checkout(api, bob, make_offer(listing, OfferKind.DOWNLOAD))
    pay(stripe_server, client, licence)
    payment = Payment.objects.get(licence=licence)

    with pytest.raises(ReasonRequired):
        payment_refund(payment=payment, actor=carol, reason="x" * 5000)

    assert [p for p in stripe_server.posts() if p.path == "/v1/refunds"] == []
    StripeIntent, IntentKind, _status, _outbox, _sync = outbox()
    assert not StripeIntent.objects.filter(kind=IntentKind.REFUND_CREATE).exists()
    assert refunded(payment) == 0


def test_a_refund_left_by_a_crash_before_stripe_is_finished_by_the_sweep(
    alice_paid_out, bob, carol, api, client, listing, stripe_server, monkeypatch
):
    from billing import refunds

    StripeIntent, IntentKind, IntentStatus, _outbox, stripe_sync = outbox()
    licence = start_checkout(api, bob, make_offer(listing, OfferKind.DOWNLOAD))
    pay(stripe_server, client, licence)
    payment = Payment.objects.get(licence=licence)

    def crash(**_fields):
        raise SystemExit("the web process died")

    monkeypatch.setattr(refunds, "intent_run", crash)
    with pytest.raises(SystemExit):
        payment_refund(payment=payment, actor=carol, reason="Duplicate")
    monkeypatch.undo()
    intent = StripeIntent.objects.get(kind=IntentKind.REFUND_CREATE)
    assert intent.status == IntentStatus.PENDING  # decided and committed, not sent
    StripeIntent.objects.filter(pk=intent.pk).update(
        created_at=timezone.now() - timedelta(minutes=5)
    )

    assert stripe_sync.intents_send_due() == 1

    intent.refresh_from_db()
    assert intent.status == IntentStatus.SUCCEEDED
    assert refunded(payment) == payment.amount
    assert stripe_sync.intents_send_due() == 0  # once


# --- defect 9: fees and refunds as Stripe recorded them ---------------------------------


def test_fees_of_partial_refunds_are_stripes_whichever_path_records_them(
    alice_paid_out, bob, carol, api, client, listing, stripe_server
):
    """The webhook path computed the fee back by flooring each part: after a full refund
    in parts the platform kept 1 and the expert's net was -1. Both now read Stripe."""
    licence = start_checkout(api, bob, make_offer(listing, OfferKind.DOWNLOAD, unit_amount=999))
    pay(stripe_server, client, licence)
    payment = Payment.objects.get(licence=licence)
    fee = stripe_gateway.application_fee_retrieve(payment.stripe_application_fee_id)
    assert (payment.platform_fee, payment.expert_amount) == (fee.amount, 999 - fee.amount)

    payment_refund(payment=payment, actor=carol, reason="Part of it", amount=333)
    for part in (333, 333):  # and the rest from Stripe's dashboard, through the webhook
        stripe_gateway.refund_create(
            charge_id=payment.stripe_charge_id, amount=part, key=f"dash-{part}-{timezone.now()}",
            metadata={},
        )  # fmt: skip
    assert (
        post_webhook(
            client, stripe_server.send_event("charge.refunded", payment.stripe_charge_id)
        ).status_code
        == 200
    )

    rows = Payment.objects.filter(licence=licence)
    fee_after = stripe_gateway.application_fee_retrieve(payment.stripe_application_fee_id)
    transfer = stripe_gateway.transfer_retrieve(payment.stripe_transfer_id)
    assert sum(r.amount for r in rows) == 0
    assert sum(r.platform_fee for r in rows) == fee_after.amount - fee_after.amount_refunded
    assert sum(r.expert_amount for r in rows) == transfer.amount - transfer.amount_reversed
    statement = statement_for(expert=licence.listing.owner, month=payment.period)
    totals = statement.totals["usd"]
    assert totals["net"] == transfer.amount - transfer.amount_reversed
    assert totals["platform_fee"] == fee_after.amount - fee_after.amount_refunded


# --- defect 14 (and 2, 10): what a paying buyer is owed when a listing ends -----------


def test_a_delisted_listing_serves_its_buyers_until_their_paid_period_ends(
    alice, alice_paid_out, bob, api, client, listing, stripe_server
):
    licence = start_checkout(api, bob, make_offer(listing, OfferKind.SUBSCRIPTION))
    pay(stripe_server, client, licence)
    mail.outbox.clear()

    committed(listing_delist, owner=alice, listing_id=listing.pk)

    licence.refresh_from_db()
    assert (licence.status, licence.cancel_at_period_end) == (LicenceStatus.ACTIVE, True)
    assert licence.access_ends_at == licence.current_period_end
    sub = stripe_gateway.subscription_retrieve(licence.stripe_subscription_id)
    assert sub.cancel_at_period_end is True and sub.status == "active"  # never renews
    assert licence_for_call(user=bob, listing_slug=listing.slug).licence_id == licence.pk
    page = api(bob).get(f"{LICENCES}/{licence.pk}").json()
    assert page["notice"].startswith("The expert delisted this model. You keep access until")
    assert [m.to for m in mail.outbox] == [[bob.email]]
    assert "ends on" in mail.outbox[0].subject

    # The period ends (Stripe ends the subscription): so does access.
    stripe_server.advance_subscription(licence.stripe_subscription_id)
    deliver_all(client, stripe_server)
    licence.refresh_from_db()
    assert licence.status == LicenceStatus.CANCELLED
    assert licence.end_reason == "The expert delisted this model."
    with pytest.raises(LicenceRequired):
        licence_for_call(user=bob, listing_slug=listing.slug)
    assert Payment.objects.filter(licence=licence, kind=PaymentKind.REFUND).count() == 0


def test_a_suspended_listing_stops_access_at_once_and_refunds_the_unused_part(
    alice_paid_out, bob, carol, api, client, listing, stripe_server
):
    licence = start_checkout(api, bob, make_offer(listing, OfferKind.SUBSCRIPTION))
    pay(stripe_server, client, licence)
    payment = Payment.objects.get(licence=licence, kind=PaymentKind.INVOICE)
    mail.outbox.clear()

    committed(listing_suspend, moderator=carol, listing_id=listing.pk, reason="Misleading claims")

    licence.refresh_from_db()
    assert licence.status == LicenceStatus.CANCELLED
    assert licence.end_reason == "A moderator suspended this listing: Misleading claims"
    assert stripe_gateway.subscription_retrieve(licence.stripe_subscription_id).status == (
        "canceled"
    )
    # Bought a moment ago: nearly all of the month is unused, and refunded.
    back = refunded(payment)
    assert 4890 <= back <= 4900
    audit = BillingAuditEntry.objects.get(action="refund_suspension")
    assert audit.actor is None
    subjects = sorted(m.subject for m in mail.outbox)
    assert subjects == [
        "[Niche] A refund for Radiology report triage",
        "[Niche] Your licence to Radiology report triage has ended",
    ]


def test_a_suspended_expert_refunds_a_download_never_fetched_and_keeps_one_fetched(
    alice, alice_paid_out, bob, carol, mallory, api, client, listing, stripe_server
):
    offer = make_offer(listing, OfferKind.DOWNLOAD)
    fetched = start_checkout(api, bob, offer)
    pay(stripe_server, client, fetched)
    never = start_checkout(api, mallory, offer)
    pay(stripe_server, client, never)
    version_id = listing.live_version_id
    assert api(bob).head(f"/api/v1/models/{version_id}/export").status_code == 200
    # bob fetched his bundle (the download is recorded as export_bundle_download does).
    ExportDownload.objects.create(
        user=bob, licence=fetched, model_version_id=version_id, manifest_sha256="0" * 64
    )

    committed(user_suspend, moderator=carol, user=alice, reason="Fraud")

    for licence in (fetched, never):
        licence.refresh_from_db()
        assert licence.status == LicenceStatus.CANCELLED
    paid = PaymentKind.CHARGE
    assert refunded(Payment.objects.get(licence=fetched, kind=paid)) == 0
    assert refunded(Payment.objects.get(licence=never, kind=paid)) == 25_000
    # defect 10: the bundle follows the listing's state, as calls do.
    assert api(bob).head(f"/api/v1/models/{version_id}/export").status_code == 403


def test_a_download_of_a_delisted_listing_is_fetched_for_thirty_days_then_refused(
    alice, alice_paid_out, bob, api, client, listing, stripe_server
):
    licence = start_checkout(api, bob, make_offer(listing, OfferKind.DOWNLOAD))
    pay(stripe_server, client, licence)
    version_id = listing.live_version_id

    committed(listing_delist, owner=alice, listing_id=listing.pk)

    assert api(bob).head(f"/api/v1/models/{version_id}/export").status_code == 200
    licence.refresh_from_db()
    assert licence.access_ends_at - timezone.now() > timedelta(days=29)
    Licence.objects.filter(pk=licence.pk).update(access_ends_at=timezone.now())
    assert api(bob).head(f"/api/v1/models/{version_id}/export").status_code == 403
