"""Buying through Stripe Checkout (or the sandbox) and experts' Connect onboarding.

A priced purchase is a destination charge: the buyer pays the platform, Stripe moves
the amount less the platform fee (PLATFORM_FEE_PERCENT) to the expert's Express
account. The licence stays pending until Stripe shows the money (billing.stripe_sync).
A buyer holds at most one open checkout per listing and kind family (calling: per call
or subscription; download): opening a new one cancels the others, whose sessions the
outbox expires, and a session paid anyway in that moment is refunded by the sync. In
sandbox mode (no STRIPE_SECRET_KEY) the purchase completes at once, no money moves and
the licence and its payment are marked sandbox.
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
from billing.errors import (
    ExpertPayoutsNotEnabled,
    OfferNotFound,
    PaymentProviderError,
    PaymentProviderUnavailable,
)
from billing.models import (
    ConnectAccount,
    IntentKind,
    IntentStatus,
    Licence,
    LicenceStatus,
    Offer,
    OfferKind,
    Overage,
    Payment,
    PaymentKind,
    StripeIntent,
)
from billing.selectors import expert_can_be_paid, month_start, platform_fee
from billing.services import (
    licence_activate,
    licence_cancel,
    licence_create,
    licence_start_free_trial,
    offer_refuse_unless_purchasable,
)
from billing.stripe_outbox import intent_record
from billing.stripe_sync import intent_run
from listings.gardens import garden_plan
from listings.models import ListingKind
from marketplace.errors import PermissionDeniedError

# A pending licence's Checkout Session is offered again for this long (Stripe keeps a
# session open 24 h and replays an idempotent request for 24 h).
CHECKOUT_REUSE = timedelta(hours=23)

# Kinds that grant the same thing: a buyer checks out one of a family at a time.
FAMILIES = {
    OfferKind.PER_CALL: (OfferKind.PER_CALL, OfferKind.SUBSCRIPTION),
    OfferKind.SUBSCRIPTION: (OfferKind.PER_CALL, OfferKind.SUBSCRIPTION),
    OfferKind.DOWNLOAD: (OfferKind.DOWNLOAD,),
}


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
    session (the same licence, hence the same idempotency key); asking for another offer
    of the same family replaces it. Raises OfferNotFound (404), OfferRetired /
    ListingNotPurchasable / ExpertPayoutsNotEnabled / LicenceAlreadyHeld /
    FreeTrialAlreadyUsed (409), PaymentProvider* (502/503).
    """
    offer = _offer(offer_id)
    if offer.kind == OfferKind.FREE_TRIAL:
        licence = licence_start_free_trial(buyer=buyer, offer=offer)
        return CheckoutStart(licence, success_url, sandbox=False)
    if gateway.sandbox_mode():
        return CheckoutStart(_sandbox_purchase(buyer, offer), success_url, sandbox=True)

    _refuse_unless_payable(offer)
    offer = offer_stripe_prices_ensure(offer_id=offer.pk)
    for _ in range(2):
        licence, intent = _pending_licence(buyer, offer, success_url, cancel_url)
        if licence.stripe_checkout_session_id:
            # Asked again: the session this licence already has, as Stripe holds it now.
            session = gateway.checkout_session_retrieve(licence.stripe_checkout_session_id)
            if session.status == "open":
                return CheckoutStart(licence, session.url or success_url, sandbox=False)
            if session.status == "complete":  # paid: the webhook is on its way
                return CheckoutStart(licence, success_url, sandbox=False)
            licence_cancel(licence_id=licence.pk, reason="Checkout expired unpaid.", notify=False)
            continue
        intent = intent_run(intent_id=intent.pk)
        if intent.status == IntentStatus.SUCCEEDED:
            licence.stripe_checkout_session_id = intent.result_id
            return CheckoutStart(licence, intent.result.get("url", ""), sandbox=False)
        if intent.status == IntentStatus.PENDING:
            raise PaymentProviderUnavailable("Stripe is unreachable just now; try again shortly.")
        # Stripe refused it (a key it answers the same way for 24 h): this licence is
        # spent, and the next attempt starts a new one.
        licence_cancel(
            licence_id=licence.pk,
            reason=f"Stripe refused the checkout: {intent.last_error}"[:1900],
            notify=False,
        )
        error = intent.result.get("error") or {}
        raise PaymentProviderError(intent.last_error[:500], fields=error.get("fields") or {})
    raise PaymentProviderUnavailable("The checkout could not be opened; try again.")


def _pending_licence(
    buyer: User, offer: Offer, success_url: str, cancel_url: str
) -> tuple[Licence, StripeIntent | None]:
    """The buyer's recent pending licence for this offer, or a new one with the intent
    to open its Checkout Session (committed before Stripe is called, so a retry after a
    timeout finds it and reuses its key). Other open checkouts of the same listing and
    family are cancelled here: their sessions are expired by the outbox."""
    with transaction.atomic():
        User.objects.select_for_update().filter(pk=buyer.pk).first()  # one buyer at a time
        _refuse_unless_payable(offer)
        offer_refuse_unless_purchasable(offer=offer, buyer=buyer, sandbox=False)
        open_checkouts = Licence.objects.filter(
            buyer=buyer,
            listing_id=offer.listing_id,
            kind__in=FAMILIES[offer.kind],
            status=LicenceStatus.PENDING,
            sandbox=False,
        ).order_by("-created_at")
        reuse = None
        for pending in open_checkouts:
            fresh = pending.created_at >= timezone.now() - CHECKOUT_REUSE
            if reuse is None and pending.offer_id == offer.pk and fresh:
                reuse = pending
                continue
            licence_cancel(
                licence_id=pending.pk,
                reason="Replaced by a newer checkout for this listing.",
                notify=False,
            )
        if reuse is not None:
            intent = StripeIntent.objects.filter(
                licence=reuse, kind=IntentKind.CHECKOUT_SESSION_CREATE
            ).first()
            if intent is not None and intent.status != IntentStatus.FAILED:
                return reuse, intent
            licence_cancel(licence_id=reuse.pk, reason="Checkout could not open.", notify=False)
        licence = licence_create(buyer=buyer, offer=offer, sandbox=False)
        intent = intent_record(
            kind=IntentKind.CHECKOUT_SESSION_CREATE,
            key_parts=(licence.pk,),
            params=_session_params(licence, offer, buyer, success_url, cancel_url),
            licence=licence,
            send=False,  # sent inline by checkout_start: the buyer waits for its URL
        )
        return licence, intent


def _session_params(
    licence: Licence, offer: Offer, buyer: User, success_url: str, cancel_url: str
) -> dict:
    garden = offer.listing.kind == ListingKind.GARDEN
    account = ConnectAccount.objects.get(expert_id=offer.listing.owner_id)
    if offer.kind == OfferKind.DOWNLOAD:
        line_items = [{"price": offer.stripe_price_id, "quantity": 1}]
    elif offer.kind == OfferKind.SUBSCRIPTION:
        line_items = [{"price": offer.stripe_price_id, "quantity": 1}]
        if offer.stripe_overage_price_id:
            line_items.append({"price": offer.stripe_overage_price_id})
    else:  # per_call: metered, no quantity
        line_items = [{"price": offer.stripe_price_id}]
    one_time = offer.kind == OfferKind.DOWNLOAD
    return {
        "licence_id": str(licence.pk),
        "mode": "payment" if one_time else "subscription",
        "line_items": line_items,
        "customer_email": buyer.email,
        "success_url": success_url,
        "cancel_url": cancel_url,
        # A garden is charged on the platform's account, then paid out to its curator
        # and members by separate transfers (billing.gardens); a listing, a destination
        # charge to its expert.
        "destination_account_id": None if garden else account.stripe_account_id,
        "application_fee_amount": platform_fee(offer.unit_amount) if one_time else None,
        "application_fee_percent": None if one_time else settings.PLATFORM_FEE_PERCENT,
    }


def _refuse_unless_payable(offer: Offer) -> None:
    payees = {offer.listing.owner_id}
    if offer.listing.kind == ListingKind.GARDEN:
        plan = garden_plan(listing_id=offer.listing_id)
        payees |= {m.owner_id for m in (plan.members if plan else ())}
        if plan and plan.classifier:
            payees.add(plan.classifier.owner_id)
    if not all(expert_can_be_paid(expert_id=payee) for payee in payees):
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
            fee = platform_fee(offer.unit_amount)
            Payment.objects.create(
                licence=licence,
                kind=PaymentKind.CHARGE if one_time else PaymentKind.INVOICE,
                amount=offer.unit_amount,
                currency=offer.currency,
                stripe_fee=0,
                platform_fee=fee,
                expert_amount=offer.unit_amount - fee,
                period=month_start(now),
                sandbox=True,
                created_at=now,
            )
    return licence


def offer_stripe_prices_ensure(*, offer_id) -> Offer:
    """The offer's Stripe product and price(s), created on first purchase and kept.

    download: a one-time price; subscription: a monthly price (plus a metered price
    for calls past the quota when overage is billed); per_call: a monthly metered price
    per call (the offer's price per 1,000 calls / 1,000) on a meter of its own. No row
    is locked while Stripe answers: every POST is keyed by the offer and its price, so
    two buyers racing create one set, and the first to record it wins.
    """
    offer = Offer.objects.select_related("listing").get(pk=offer_id)
    if offer.stripe_price_id:
        return offer
    product_id = (
        offer.stripe_product_id
        or gateway.product_create(
            offer_id=offer.pk, name=f"{offer.listing.title} ({offer.get_kind_display()})"
        ).id
    )
    common = {"offer_id": offer.pk, "product_id": product_id, "currency": offer.currency}
    version = f"{offer.currency}-{offer.unit_amount}-{offer.overage_unit_amount}"
    meter_id = offer.stripe_meter_id
    overage_id = ""
    if offer.kind == OfferKind.DOWNLOAD:
        price = gateway.price_create(
            **common, unit_amount=offer.unit_amount, purpose=f"price-{version}"
        )
    elif offer.kind == OfferKind.SUBSCRIPTION:
        price = gateway.price_create(
            **common,
            unit_amount=offer.unit_amount,
            recurring="licensed",
            purpose=f"price-{version}",
        )
        if offer.overage == Overage.BILL and offer.overage_unit_amount:
            meter_id = meter_id or gateway.meter_create(offer_id=offer.pk).id
            overage_id = gateway.price_create(
                **common,
                unit_amount_decimal=_per_call(offer.overage_unit_amount),
                recurring="metered",
                meter_id=meter_id,
                purpose=f"overage-price-{version}",
            ).id
    else:
        meter_id = meter_id or gateway.meter_create(offer_id=offer.pk).id
        price = gateway.price_create(
            **common,
            unit_amount_decimal=_per_call(offer.unit_amount),
            recurring="metered",
            meter_id=meter_id,
            purpose=f"price-{version}",
        )
    Offer.objects.filter(pk=offer.pk, stripe_price_id="").update(
        stripe_product_id=product_id,
        stripe_price_id=price.id,
        stripe_overage_price_id=overage_id,
        stripe_meter_id=meter_id,
    )
    return Offer.objects.select_related("listing").get(pk=offer.pk)


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
            expert=expert, defaults={"stripe_account_id": created.id}
        )
    link = gateway.account_link_create(
        connect_account_id=account.pk,
        account_id=account.stripe_account_id,
        refresh_url=refresh_url,
        return_url=return_url,
        nonce=str(int(time.time() // 60)),
    )
    return link.url
