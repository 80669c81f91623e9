"""Buying through Stripe Checkout (or the sandbox) and experts' Connect onboarding.

A priced purchase is a destination charge: the buyer pays the platform, Stripe moves
the amount less the platform fee (PLATFORM_FEE_PERCENT) to the expert's Express
account. The licence stays pending until Stripe's webhook says the money arrived
(billing.stripe_events). In sandbox mode (no STRIPE_SECRET_KEY) the purchase completes
at once, no money moves and the licence and its payment are marked sandbox.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from datetime import timedelta
from decimal import Decimal

from django.conf import settings
from django.db import transaction
from django.utils import timezone

from accounts.models import User
from billing import stripe_gateway as gateway
from billing.errors import ExpertPayoutsNotEnabled, OfferNotFound, PaymentProviderError
from billing.models import (
    ConnectAccount,
    Licence,
    LicenceStatus,
    Offer,
    OfferKind,
    Overage,
    Payment,
    PaymentKind,
)
from billing.selectors import expert_can_be_paid, month_start
from billing.services import (
    licence_activate,
    licence_cancel,
    licence_create,
    licence_start_free_trial,
    offer_refuse_unless_purchasable,
)
from marketplace.errors import PermissionDeniedError

# A pending licence's Checkout Session is offered again for this long (Stripe keeps a
# session open 24 h and replays an idempotent request for 24 h).
CHECKOUT_REUSE = timedelta(hours=23)


def platform_fee(amount: int) -> int:
    """The platform's share of `amount` minor units, rounded half up."""
    return (amount * settings.PLATFORM_FEE_PERCENT + 50) // 100


@dataclass(frozen=True)
class CheckoutStart:
    licence: Licence
    url: str  # Stripe's Checkout page; the return page in the sandbox or for a trial
    sandbox: bool


def _offer(offer_id) -> Offer:
    offer = Offer.objects.select_related("listing", "listing__owner").filter(pk=offer_id).first()
    if offer is None:
        raise OfferNotFound("No such offer.")
    return offer


def checkout_start(*, buyer: User, offer_id, success_url: str, cancel_url: str) -> CheckoutStart:
    """Start buying `offer_id`: a Checkout Session for a pending licence, or in sandbox
    mode an active sandbox licence at once; a free trial starts at once in both.

    Asking again for the same offer while its licence is pending returns the same
    session (the same licence, hence the same idempotency key). Raises OfferNotFound
    (404), OfferRetired / ListingNotPurchasable / ExpertPayoutsNotEnabled /
    LicenceAlreadyHeld / FreeTrialAlreadyUsed (409), PaymentProvider* (502/503).
    """
    offer = _offer(offer_id)
    if offer.kind == OfferKind.FREE_TRIAL:
        licence = licence_start_free_trial(buyer=buyer, offer=offer)
        return CheckoutStart(licence, success_url, sandbox=False)
    if gateway.sandbox_mode():
        return CheckoutStart(_sandbox_purchase(buyer, offer), success_url, sandbox=True)

    licence = _pending_licence(buyer, offer)
    if licence.stripe_checkout_session_id:
        # Asked again: the session this licence already has, as Stripe holds it now.
        session = gateway.checkout_session_retrieve(licence.stripe_checkout_session_id)
        if session["status"] == "open":
            return CheckoutStart(licence, session["url"], sandbox=False)
        if session["status"] == "complete":  # paid: the webhook is on its way
            return CheckoutStart(licence, success_url, sandbox=False)
        licence_cancel(licence_id=licence.pk, reason="Checkout expired unpaid.")
        licence = _pending_licence(buyer, offer)
    account = ConnectAccount.objects.get(expert_id=offer.listing.owner_id)
    prices = offer_stripe_prices_ensure(offer_id=offer.pk)
    if offer.kind == OfferKind.DOWNLOAD:
        line_items = [{"price": prices.stripe_price_id, "quantity": 1}]
    elif offer.kind == OfferKind.SUBSCRIPTION:
        line_items = [{"price": prices.stripe_price_id, "quantity": 1}]
        if prices.stripe_overage_price_id:
            line_items.append({"price": prices.stripe_overage_price_id})
    else:  # per_call: metered, no quantity
        line_items = [{"price": prices.stripe_price_id}]
    one_time = offer.kind == OfferKind.DOWNLOAD
    try:
        session = gateway.checkout_session_create(
            licence_id=licence.pk,
            mode="payment" if one_time else "subscription",
            line_items=line_items,
            customer_email=buyer.email,
            success_url=success_url,
            cancel_url=cancel_url,
            destination_account_id=account.stripe_account_id,
            application_fee_amount=platform_fee(offer.unit_amount) if one_time else None,
            application_fee_percent=None if one_time else settings.PLATFORM_FEE_PERCENT,
        )
    except PaymentProviderError as exc:
        # Stripe answers a refused key the same way for 24 h: this licence is spent, and
        # the next attempt starts a new one (an unreachable Stripe keeps it, to retry).
        licence_cancel(licence_id=licence.pk, reason=f"Stripe refused the checkout: {exc}")
        raise
    Licence.objects.filter(pk=licence.pk).update(stripe_checkout_session_id=session["id"])
    licence.stripe_checkout_session_id = session["id"]
    return CheckoutStart(licence, session["url"], sandbox=False)


def _pending_licence(buyer: User, offer: Offer) -> Licence:
    """The buyer's recent pending licence for this offer, or a new one (committed before
    Stripe is called, so a retry after a timeout finds it and reuses its key)."""
    with transaction.atomic():
        User.objects.select_for_update().filter(pk=buyer.pk).first()  # one buyer at a time
        recent = (
            Licence.objects.filter(
                buyer=buyer,
                offer=offer,
                status=LicenceStatus.PENDING,
                sandbox=False,
                created_at__gte=timezone.now() - CHECKOUT_REUSE,
            )
            .order_by("-created_at")
            .first()
        )
        _refuse_unless_payable(offer)
        offer_refuse_unless_purchasable(offer=offer, buyer=buyer, sandbox=False)
        if recent is not None:
            return recent
        return licence_create(buyer=buyer, offer=offer, sandbox=False)


def _refuse_unless_payable(offer: Offer) -> None:
    if not expert_can_be_paid(expert_id=offer.listing.owner_id):
        raise ExpertPayoutsNotEnabled(
            "The expert has not finished setting up payouts; this offer cannot be bought yet."
        )


def _sandbox_purchase(buyer: User, offer: Offer) -> Licence:
    """Sandbox: the licence is active at once and its (sandbox) payment recorded."""
    with transaction.atomic():
        licence = licence_create(buyer=buyer, offer=offer, sandbox=True)
        licence = licence_activate(licence_id=licence.pk)
        if offer.kind in (OfferKind.DOWNLOAD, OfferKind.SUBSCRIPTION):
            now = timezone.now()
            one_time = offer.kind == OfferKind.DOWNLOAD
            Payment.objects.create(
                licence=licence,
                kind=PaymentKind.CHARGE if one_time else PaymentKind.INVOICE,
                amount=offer.unit_amount,
                currency=offer.currency,
                stripe_fee=0,
                platform_fee=platform_fee(offer.unit_amount),
                period=month_start(now),
                sandbox=True,
                created_at=now,
            )
    return licence


def offer_stripe_prices_ensure(*, offer_id) -> Offer:
    """The offer's Stripe product and price(s), created on first purchase and kept.

    download: a one-time price; subscription: a monthly price (plus a metered price
    for calls past the quota when overage is billed); per_call: a monthly metered price
    per call (the offer's price per 1,000 calls / 1,000) on a meter of its own. Holds
    the offer row; every POST is keyed by the offer id, so a retry creates nothing new.
    """
    with transaction.atomic():
        offer = Offer.objects.select_for_update().select_related("listing").get(pk=offer_id)
        if offer.stripe_price_id:
            return offer
        product = gateway.product_create(
            offer_id=offer.pk, name=f"{offer.listing.title} ({offer.get_kind_display()})"
        )
        common = {"offer_id": offer.pk, "product_id": product["id"], "currency": offer.currency}
        if offer.kind == OfferKind.DOWNLOAD:
            price = gateway.price_create(**common, unit_amount=offer.unit_amount)
        elif offer.kind == OfferKind.SUBSCRIPTION:
            price = gateway.price_create(
                **common, unit_amount=offer.unit_amount, recurring="licensed"
            )
            if offer.overage == Overage.BILL and offer.overage_unit_amount:
                meter = gateway.meter_create(offer_id=offer.pk)
                overage = gateway.price_create(
                    **common,
                    unit_amount_decimal=_per_call(offer.overage_unit_amount),
                    recurring="metered",
                    meter_id=meter["id"],
                    purpose="overage-price",
                )
                offer.stripe_overage_price_id = overage["id"]
        else:
            meter = gateway.meter_create(offer_id=offer.pk)
            price = gateway.price_create(
                **common,
                unit_amount_decimal=_per_call(offer.unit_amount),
                recurring="metered",
                meter_id=meter["id"],
            )
        offer.stripe_product_id, offer.stripe_price_id = product["id"], price["id"]
        offer.save(
            update_fields=["stripe_product_id", "stripe_price_id", "stripe_overage_price_id"]
        )
    return offer


def _per_call(amount_per_thousand: int) -> str:
    return format(Decimal(amount_per_thousand) / 1000, "f")


# --- Connect --------------------------------------------------------------------------


def connect_account_onboard(*, expert: User, return_url: str, refresh_url: str) -> str:
    """The URL where the expert fills in Stripe's Express onboarding (a fresh account
    link each time; the account itself is created once). In sandbox mode the expert's
    sandbox account is ready at once and the return URL comes back."""
    if not expert.is_expert:
        raise PermissionDeniedError(
            "Only experts receive payouts; apply to become one first.", code="not_an_expert"
        )
    if gateway.sandbox_mode():
        ConnectAccount.objects.get_or_create(
            expert=expert,
            defaults={
                "stripe_account_id": f"acct_sandbox_{expert.pk}",
                "sandbox": True,
                "charges_enabled": True,
                "payouts_enabled": True,
                "details_submitted": True,
            },
        )
        return return_url
    account = ConnectAccount.objects.filter(expert=expert).first()
    if account is not None and account.sandbox:
        account.delete()  # made before Stripe was configured: no money ever went there
        account = None
    if account is None:
        created = gateway.account_create(expert_id=expert.pk, email=expert.email)
        account, _ = ConnectAccount.objects.get_or_create(
            expert=expert, defaults={"stripe_account_id": created["id"]}
        )
    link = gateway.account_link_create(
        connect_account_id=account.pk,
        account_id=account.stripe_account_id,
        refresh_url=refresh_url,
        return_url=return_url,
        nonce=str(int(time.time() // 60)),
    )
    return link["url"]


def connect_account_sync(*, stripe_account_id: str) -> ConnectAccount | None:
    """Re-read the account from Stripe and copy its flags (account.updated). None when
    the account is not one of ours."""
    if not ConnectAccount.objects.filter(stripe_account_id=stripe_account_id).exists():
        return None
    data = gateway.account_retrieve(stripe_account_id)
    with transaction.atomic():
        account = ConnectAccount.objects.select_for_update().get(
            stripe_account_id=stripe_account_id
        )
        account.charges_enabled = bool(data.get("charges_enabled"))
        account.payouts_enabled = bool(data.get("payouts_enabled"))
        account.details_submitted = bool(data.get("details_submitted"))
        account.updated_at = timezone.now()
        account.save(
            update_fields=["charges_enabled", "payouts_enabled", "details_submitted", "updated_at"]
        )
    return account
