"""Licences: bob's right to alice's listing, pending → active → past_due | cancelled |
expired | revoked, one locked, state-checked service per transition."""

from datetime import UTC, datetime

import pytest

from billing import services
from billing.errors import (
    FreeTrialAlreadyUsed,
    InvalidLicenceTransition,
    LicenceAlreadyHeld,
    ListingNotPurchasable,
    OfferRetired,
    ReasonRequired,
)
from billing.models import BillingAuditEntry, Licence, LicenceStatus, OfferKind
from billing.terms import LicenceTerms
from listings.errors import NotAModerator
from listings.models import Entitlement, Listing
from tests.billing.conftest import make_active_licence, make_offer

pytestmark = pytest.mark.django_db


def test_a_purchase_starts_pending_with_the_listings_terms_snapshotted(bob, listing, payable_alice):
    offer = make_offer(listing, OfferKind.SUBSCRIPTION, included_calls=500)

    licence = services.licence_create(buyer=bob, offer=offer)

    stored = Licence.objects.get(pk=licence.pk)
    assert stored.status == LicenceStatus.PENDING
    assert (stored.kind, stored.calls_included, stored.call_quota) == ("subscription", 500, 500)
    assert LicenceTerms.from_json(stored.terms) == LicenceTerms(
        commercial_use=True,
        derivatives_allowed=False,
        on_prem_download=True,
        attribution_required=True,
        max_calls_per_month=None,
    )
    assert not Entitlement.objects.exists()  # nothing granted before payment


def test_the_terms_bob_agreed_to_never_change_under_him(bob, listing, payable_alice):
    licence = make_active_licence(bob, make_offer(listing, OfferKind.PER_CALL), sandbox=False)

    # alice's listing later tightens its terms (however that comes about)
    Listing.objects.filter(pk=listing.pk).update(commercial_use=False, max_calls_per_month=10)

    terms = LicenceTerms.from_json(Licence.objects.get(pk=licence.pk).terms)
    assert terms.commercial_use is True
    assert terms.max_calls_per_month is None


def test_the_monthly_cap_in_the_terms_bounds_the_quota(alice, bob, carol):
    from tests.listings.conftest import make_listing

    capped = make_listing(alice, moderator=carol, title="Capped", max_calls_per_month=300)

    per_call = services.licence_create(
        buyer=bob, offer=make_offer(capped, OfferKind.PER_CALL), sandbox=True
    )
    assert per_call.call_quota == 300


def test_activation_grants_the_entitlement_reviews_and_popularity_count(bob, listing):
    licence = services.licence_create(
        buyer=bob, offer=make_offer(listing, OfferKind.DOWNLOAD), sandbox=True
    )

    services.licence_activate(licence_id=licence.id, stripe_payment_intent_id="pi_123")

    stored = Licence.objects.get(pk=licence.pk)
    assert stored.status == LicenceStatus.ACTIVE
    assert stored.activated_at is not None
    assert stored.stripe_payment_intent_id == "pi_123"
    assert Entitlement.objects.filter(listing=listing, user=bob).exists()
    assert Listing.objects.get(pk=listing.pk).popularity == 1


def test_a_monthly_licence_takes_the_period_stripe_gives(bob, listing):
    start, end = datetime(2026, 11, 3, tzinfo=UTC), datetime(2026, 12, 3, tzinfo=UTC)
    licence = services.licence_create(
        buyer=bob, offer=make_offer(listing, OfferKind.SUBSCRIPTION), sandbox=True
    )

    services.licence_activate(licence_id=licence.id, period_start=start, period_end=end)

    stored = Licence.objects.get(pk=licence.pk)
    assert (stored.current_period_start, stored.current_period_end) == (start, end)


def test_a_priced_offer_cannot_be_bought_until_alice_can_be_paid(bob, listing):
    offer = make_offer(listing, OfferKind.PER_CALL)

    with pytest.raises(ListingNotPurchasable):
        services.licence_create(buyer=bob, offer=offer, sandbox=False)

    assert not Licence.objects.exists()


def test_alice_cannot_buy_her_own_listing(alice, listing):
    with pytest.raises(ListingNotPurchasable):
        services.licence_create(
            buyer=alice, offer=make_offer(listing, OfferKind.PER_CALL), sandbox=True
        )


def test_a_retired_offer_cannot_be_bought(alice, bob, listing):
    offer = make_offer(listing, OfferKind.PER_CALL)
    services.offer_retire(owner=alice, offer_id=offer.id)

    with pytest.raises(OfferRetired):
        services.licence_create(buyer=bob, offer=offer, sandbox=True)


def test_an_abandoned_checkout_does_not_block_a_retry(bob, listing):
    offer = make_offer(listing, OfferKind.PER_CALL)
    services.licence_create(buyer=bob, offer=offer, sandbox=True)

    retry = services.licence_create(buyer=bob, offer=offer, sandbox=True)

    assert Licence.objects.filter(status=LicenceStatus.PENDING).count() == 2
    services.licence_activate(licence_id=retry.id)
    assert Licence.objects.filter(status=LicenceStatus.ACTIVE).count() == 1


def test_one_live_calling_licence_per_buyer_and_listing(bob, listing):
    offer = make_offer(listing, OfferKind.PER_CALL)
    first = services.licence_create(buyer=bob, offer=offer, sandbox=True)
    second = services.licence_create(buyer=bob, offer=offer, sandbox=True)
    services.licence_activate(licence_id=first.id)

    with pytest.raises(LicenceAlreadyHeld):
        services.licence_create(buyer=bob, offer=offer, sandbox=True)
    with pytest.raises(LicenceAlreadyHeld):
        services.licence_activate(licence_id=second.id)  # both checkouts got paid

    assert Licence.objects.get(pk=second.pk).status == LicenceStatus.PENDING


def test_a_download_licence_and_a_calling_licence_can_be_held_together(bob, listing):
    make_active_licence(bob, make_offer(listing, OfferKind.DOWNLOAD))
    make_active_licence(bob, make_offer(listing, OfferKind.PER_CALL))

    assert Licence.objects.filter(buyer=bob, status=LicenceStatus.ACTIVE).count() == 2


def test_a_free_trial_needs_no_card_and_is_active_at_once(bob, listing):
    trial = make_offer(listing, OfferKind.FREE_TRIAL, included_calls=25)

    licence = services.licence_start_free_trial(buyer=bob, offer=trial)

    stored = Licence.objects.get(pk=licence.pk)
    assert (stored.status, stored.sandbox, stored.call_quota) == ("active", False, 25)
    assert Entitlement.objects.filter(listing=listing, user=bob).exists()


def test_a_free_trial_is_taken_once(bob, listing):
    trial = make_offer(listing, OfferKind.FREE_TRIAL)
    licence = services.licence_start_free_trial(buyer=bob, offer=trial)
    services.licence_expire(licence_id=licence.id, reason="Used up.")

    with pytest.raises(FreeTrialAlreadyUsed) as again:
        services.licence_start_free_trial(buyer=bob, offer=trial)

    assert again.value.status == 409
    assert Licence.objects.filter(kind=OfferKind.FREE_TRIAL).count() == 1


def test_buying_a_subscription_supersedes_the_free_trial(bob, listing):
    trial = services.licence_start_free_trial(
        buyer=bob, offer=make_offer(listing, OfferKind.FREE_TRIAL)
    )

    paid = make_active_licence(bob, make_offer(listing, OfferKind.SUBSCRIPTION))

    trial = Licence.objects.get(pk=trial.pk)
    assert trial.status == LicenceStatus.EXPIRED
    assert str(paid.id) in trial.end_reason
    assert Licence.objects.get(pk=paid.pk).status == LicenceStatus.ACTIVE


def test_past_due_then_paid_again(bob, listing):
    licence = make_active_licence(bob, make_offer(listing, OfferKind.SUBSCRIPTION))

    services.licence_mark_past_due(licence_id=licence.id)
    assert Licence.objects.get(pk=licence.pk).status == LicenceStatus.PAST_DUE

    start, end = datetime(2027, 1, 1, tzinfo=UTC), datetime(2027, 2, 1, tzinfo=UTC)
    services.licence_renew(licence_id=licence.id, period_start=start, period_end=end)
    stored = Licence.objects.get(pk=licence.pk)
    assert (stored.status, stored.current_period_start) == (LicenceStatus.ACTIVE, start)


@pytest.mark.parametrize(
    "transition",
    [
        lambda licence: services.licence_activate(licence_id=licence.id),
        lambda licence: services.licence_mark_past_due(licence_id=licence.id),
        lambda licence: services.licence_cancel(licence_id=licence.id, reason="again"),
        lambda licence: services.licence_expire(licence_id=licence.id, reason="again"),
        lambda licence: services.licence_revoke(licence_id=licence.id, reason="again"),
    ],
    ids=["activate", "past_due", "cancel", "expire", "revoke"],
)
def test_an_ended_licence_refuses_every_transition_with_409(bob, listing, transition):
    licence = make_active_licence(bob, make_offer(listing, OfferKind.SUBSCRIPTION))
    services.licence_cancel(licence_id=licence.id, reason="Subscription deleted.")

    with pytest.raises(InvalidLicenceTransition) as refused:
        transition(licence)

    assert refused.value.status == 409
    assert Licence.objects.get(pk=licence.pk).status == LicenceStatus.CANCELLED


def test_a_pending_licence_cannot_be_marked_past_due(bob, listing):
    licence = services.licence_create(
        buyer=bob, offer=make_offer(listing, OfferKind.SUBSCRIPTION), sandbox=True
    )

    with pytest.raises(InvalidLicenceTransition):
        services.licence_mark_past_due(licence_id=licence.id)


def test_carol_revokes_a_licence_and_the_reason_is_audited(bob, carol, listing):
    licence = make_active_licence(bob, make_offer(listing, OfferKind.PER_CALL))

    services.licence_revoke(licence_id=licence.id, actor=carol, reason="Resold the model.")

    stored = Licence.objects.get(pk=licence.pk)
    assert (stored.status, stored.end_reason) == (LicenceStatus.REVOKED, "Resold the model.")
    assert stored.ended_at is not None
    entry = BillingAuditEntry.objects.get()
    assert (entry.actor, entry.action, entry.target_id) == (
        carol,
        "licence_revoke",
        str(licence.id),
    )


def test_mallory_cannot_revoke_and_a_reason_is_required(bob, carol, mallory, listing):
    licence = make_active_licence(bob, make_offer(listing, OfferKind.PER_CALL))

    with pytest.raises(NotAModerator):
        services.licence_revoke(licence_id=licence.id, actor=mallory, reason="Because.")
    with pytest.raises(ReasonRequired):
        services.licence_revoke(licence_id=licence.id, actor=carol, reason="  ")

    assert Licence.objects.get(pk=licence.pk).status == LicenceStatus.ACTIVE
    assert not BillingAuditEntry.objects.exists()
