"""Writes of commerce: offers, licence transitions, the usage ledger, the audit log.

Each licence transition locks the licence row (select_for_update), checks the state
and raises InvalidLicenceTransition (409) when the move is not allowed. Offer changes
hold the listing row, so concurrent edits of one listing's prices serialize and the
price summary copied onto the listing is always that of the committed offers.

Ending a licence ends its billing in the same transaction: an open Checkout Session is
expired and a subscription is cancelled through the outbox (billing.stripe_outbox), sent
to Stripe after the commit. What Stripe says back is applied by billing.stripe_sync.
"""

from __future__ import annotations

import uuid
from dataclasses import dataclass, replace
from datetime import datetime, timedelta

from django.conf import settings
from django.db import IntegrityError, connection, transaction
from django.db.models import F, Min, Value
from django.db.models.functions import Greatest
from django.utils import timezone

from accounts.models import User
from accounts.services import user_require_verified_email
from billing.currencies import ISO_4217
from billing.errors import (
    FreeTrialAlreadyUsed,
    IdempotencyKeyReused,
    InvalidLicenceTransition,
    InvalidOffer,
    InvalidUsage,
    LicenceAlreadyHeld,
    LicenceNotFound,
    LicenceRequired,
    ListingNotPurchasable,
    NotListingOwner,
    OfferNotFound,
    OfferRetired,
    QuotaExceeded,
    ReasonRequired,
)
from billing.gardens import shares_write as garden_shares_write
from billing.models import (
    CALL_KINDS,
    LIVE_LICENCE_STATUSES,
    BillingAuditEntry,
    IntentKind,
    Licence,
    LicenceStatus,
    LicenceUsagePeriod,
    Offer,
    OfferKind,
    OfferStatus,
    Overage,
    PlatformUsage,
    UsageRecord,
    UsageStatus,
)
from billing.notices import buyer_notice_send
from billing.selectors import (
    effective_call_limit,
    expert_can_be_paid,
    licence_period_at,
    metered,
    quota_error,
    spend_cap_calls,
)
from billing.stripe_outbox import intent_record
from billing.terms import LicenceTerms
from listings.errors import NotAModerator
from listings.models import Listing, ListingKind, ListingStatus
from listings.services import entitlement_grant, listing_set_price_summary
from marketplace import access_epochs

# Stripe's largest amount for most currencies (8 digits); a typo'd price stops here.
MAX_AMOUNT = 99_999_999
MAX_INCLUDED_CALLS = 100_000_000
MAX_UNITS_PER_RECORD = 10_000
MAX_REASON_CHARS = 2000
# A download licence of a delisted listing may still fetch the bundle it paid for this long.
DOWNLOAD_WIND_DOWN = timedelta(days=30)
# A garden's revenue is split per answered call: it is priced per call (or tried free).
GARDEN_OFFER_KINDS = (OfferKind.PER_CALL, OfferKind.FREE_TRIAL)

# --- offers --------------------------------------------------------------------------


@dataclass(frozen=True)
class OfferSpec:
    """An offer's price as an expert states it, checked before anything is written."""

    kind: str
    currency: str
    unit_amount: int
    included_calls: int | None = None
    overage: str = ""
    overage_unit_amount: int | None = None
    name: str = ""
    batch_price_percent: int = 50  # a batch row's price, in percent of a per-call one

    def normalized(self) -> OfferSpec:
        currency = self.currency.strip().lower() if isinstance(self.currency, str) else ""
        return replace(self, currency=currency, name=(self.name or "").strip())

    def errors(self, *, listing: Listing) -> dict[str, list[str]]:
        """Per-field errors (empty when the spec is valid for this listing)."""
        errors: dict[str, list[str]] = {}
        if self.kind not in OfferKind.values:
            return {"kind": [f"One of {', '.join(OfferKind.values)}."]}
        if listing.kind == ListingKind.GARDEN and self.kind not in GARDEN_OFFER_KINDS:
            # Its revenue is split per answered call, so its price is per call.
            return {"kind": ["A garden is sold per call (per_call) or as a free trial."]}
        if self.currency not in ISO_4217:
            errors["currency"] = ["An ISO-4217 currency code, e.g. usd."]
        if len(self.name) > 60:
            errors["name"] = ["At most 60 characters."]
        _check_amount(errors, "unit_amount", self.unit_amount)
        for name in ("included_calls", "overage_unit_amount"):
            _check_amount(errors, name, getattr(self, name), optional=True)
        percent = self.batch_price_percent
        if isinstance(percent, bool) or not isinstance(percent, int) or not 0 <= percent <= 100:
            errors["batch_price_percent"] = ["A whole percent from 0 to 100."]
        if errors:
            return errors

        def forbid(*names: str) -> None:
            for name in names:
                if getattr(self, name) not in (None, ""):
                    errors[name] = [f"Not used by a {self.kind} offer."]

        if self.kind == OfferKind.FREE_TRIAL:
            if self.unit_amount != 0:
                errors["unit_amount"] = ["A free trial costs 0."]
            if not self.included_calls:
                errors["included_calls"] = ["How many calls the trial includes (at least 1)."]
            forbid("overage", "overage_unit_amount")
        else:
            if self.unit_amount < 1:
                errors["unit_amount"] = ["A paid offer costs at least 1 (minor unit)."]
        if self.kind == OfferKind.PER_CALL:
            forbid("included_calls", "overage", "overage_unit_amount")
        elif self.kind == OfferKind.DOWNLOAD:
            forbid("included_calls", "overage", "overage_unit_amount")
            if not listing.on_prem_download:
                errors["kind"] = ["This listing's licence terms do not allow on-prem download."]
        elif self.kind == OfferKind.SUBSCRIPTION:
            if not self.included_calls:
                errors["included_calls"] = ["Calls included per month (at least 1)."]
            if self.overage not in Overage.values:
                errors["overage"] = ["refuse or bill: what happens past the included calls."]
            elif self.overage == Overage.BILL and not self.overage_unit_amount:
                errors["overage_unit_amount"] = ["Price per 1,000 calls past the quota."]
            elif self.overage == Overage.REFUSE and self.overage_unit_amount is not None:
                errors["overage_unit_amount"] = ["Only with overage=bill."]
        return errors


def _check_amount(errors: dict, name: str, value, *, optional: bool = False) -> None:
    if value is None and optional:
        return
    limit = MAX_INCLUDED_CALLS if name == "included_calls" else MAX_AMOUNT
    if isinstance(value, bool) or not isinstance(value, int):
        errors[name] = ["A whole number (minor units for amounts)."]
    elif not 0 <= value <= limit:
        errors[name] = [f"From 0 to {limit}."]


def _lock_listing(listing_id) -> Listing:
    """Hold the listing row (NO KEY UPDATE) while its offers change."""
    listing = (
        Listing.objects.select_for_update(no_key=True)
        .select_related("owner")
        .filter(pk=listing_id)
        .first()
    )
    if listing is None:
        raise OfferNotFound("No such listing.")
    return listing


def _refuse_unless_owner(owner: User, listing: Listing) -> None:
    if listing.owner_id != owner.pk:
        raise NotListingOwner("Only the listing's expert sets its offers.")
    if listing.status == ListingStatus.DELISTED:
        raise ListingNotPurchasable("A delisted listing takes no new offers.")


def _validated(spec: OfferSpec, listing: Listing, replacing: Offer | None = None) -> OfferSpec:
    spec = spec.normalized()
    errors = spec.errors(listing=listing)
    if errors:
        raise InvalidOffer("The offer is not valid.", fields=errors)
    others = (
        Offer.objects.filter(listing=listing, status=OfferStatus.ACTIVE)
        .exclude(currency=spec.currency)
        .exclude(pk=replacing.pk if replacing else None)
        .values_list("currency", flat=True)
        .first()
    )
    if others:
        raise InvalidOffer(
            f"This listing's offers are priced in {others}; use one currency per listing.",
            fields={"currency": [f"Use {others}."]},
        )
    return spec


def _refresh_price_summary(listing: Listing) -> None:
    """Copy the lowest active paid price onto the listing (the catalogue's "from …")."""
    paid = Offer.objects.filter(listing=listing, status=OfferStatus.ACTIVE, unit_amount__gt=0)
    summary = paid.values("currency").annotate(low=Min("unit_amount")).order_by("low").first()
    listing_set_price_summary(
        listing=listing,
        min_price_minor=summary["low"] if summary else None,
        currency=summary["currency"] if summary else "",
    )


def offer_create(
    *,
    owner: User,
    listing: Listing,
    kind: str,
    currency: str,
    unit_amount: int = 0,
    included_calls: int | None = None,
    overage: str = "",
    overage_unit_amount: int | None = None,
    name: str = "",
    batch_price_percent: int = 50,
) -> Offer:
    """A new active offer on the owner's listing. Raises NotListingOwner (403) and
    InvalidOffer (422) with per-field errors (a second active free trial is one).
    All of a listing's active offers share one currency; amounts are minor units."""
    spec = OfferSpec(
        kind, currency, unit_amount, included_calls, overage, overage_unit_amount, name,
        batch_price_percent,
    )  # fmt: skip
    with transaction.atomic():
        listing = _lock_listing(listing.pk)
        _refuse_unless_owner(owner, listing)
        spec = _validated(spec, listing)
        if (
            spec.kind == OfferKind.FREE_TRIAL
            and Offer.objects.filter(
                listing=listing, kind=OfferKind.FREE_TRIAL, status=OfferStatus.ACTIVE
            ).exists()
        ):
            raise InvalidOffer(
                "This listing already has a free trial; change or retire it.",
                fields={"kind": ["One free trial per listing."]},
            )
        offer = _insert_offer(listing, spec)
        _refresh_price_summary(listing)
    return offer


def _insert_offer(listing: Listing, spec: OfferSpec, replaces: Offer | None = None) -> Offer:
    return Offer.objects.create(
        listing=listing,
        kind=spec.kind,
        name=spec.name,
        currency=spec.currency,
        unit_amount=spec.unit_amount,
        included_calls=spec.included_calls,
        overage=spec.overage,
        overage_unit_amount=spec.overage_unit_amount,
        batch_price_percent=spec.batch_price_percent,
        replaces=replaces,
    )


def _lock_owned_offer(owner: User, offer_id) -> tuple[Listing, Offer]:
    listing_id = Offer.objects.filter(pk=offer_id).values_list("listing_id", flat=True).first()
    if listing_id is None:
        raise OfferNotFound("No such offer.")
    listing = _lock_listing(listing_id)
    if listing.owner_id != owner.pk:
        raise OfferNotFound("No such offer among your listings.")
    offer = Offer.objects.select_for_update().get(pk=offer_id)
    if offer.status != OfferStatus.ACTIVE:
        raise OfferRetired("This offer is retired; create a new one.")
    return listing, offer


UPDATABLE_OFFER_FIELDS = (
    "name", "currency", "unit_amount", "included_calls", "overage", "overage_unit_amount",
    "batch_price_percent",
)  # fmt: skip


def offer_update(*, owner: User, offer_id, **changes) -> Offer:
    """Change an offer's price or quota. An offer nobody has bought is edited in place;
    one that has a licence is retired and succeeded by a new offer (`replaces`), so
    the terms a buyer paid for never change. Returns the offer now on sale.
    Raises OfferRetired (409) for a retired offer, InvalidOffer (422)."""
    unknown = sorted(set(changes) - set(UPDATABLE_OFFER_FIELDS))
    if unknown:
        raise InvalidOffer(
            "Only the price, currency, quota, overage and name can change.",
            fields={name: ["Cannot change; create a new offer."] for name in unknown},
        )
    with transaction.atomic():
        listing, offer = _lock_owned_offer(owner, offer_id)
        _refuse_unless_owner(owner, listing)
        current = {name: getattr(offer, name) for name in UPDATABLE_OFFER_FIELDS}
        spec = OfferSpec(kind=offer.kind, **(current | changes))
        spec = _validated(spec, listing, replacing=offer)
        if not offer.licences.exists():
            for name in UPDATABLE_OFFER_FIELDS:
                setattr(offer, name, getattr(spec, name))
            # Stripe prices are immutable: the gateway makes new ones on next use.
            offer.stripe_price_id = offer.stripe_overage_price_id = ""
            offer.save()
            result = offer
        else:
            offer.status, offer.retired_at = OfferStatus.RETIRED, timezone.now()
            offer.save(update_fields=["status", "retired_at"])
            result = _insert_offer(listing, spec, replaces=offer)
            # The product (the listing's offer line) stays; only the price is new.
            result.stripe_product_id = offer.stripe_product_id
            result.save(update_fields=["stripe_product_id"])
        _refresh_price_summary(listing)
    return result


def offer_retire(*, owner: User, offer_id) -> Offer:
    """Take an offer off sale; licences bought under it keep their terms.
    Raises OfferRetired (409) when it already is."""
    with transaction.atomic():
        listing, offer = _lock_owned_offer(owner, offer_id)
        offer.status, offer.retired_at = OfferStatus.RETIRED, timezone.now()
        offer.save(update_fields=["status", "retired_at"])
        _refresh_price_summary(listing)
    return offer


# --- licences ------------------------------------------------------------------------


def _call_quota(kind: str, offer: Offer, terms: LicenceTerms) -> int | None:
    """The hard limit per period: the offer's quota where calls past it are refused,
    and the listing's monthly cap agreed in the terms."""
    if kind == OfferKind.DOWNLOAD:
        return 0  # a download licence grants the bundle, not calls
    cap = terms.max_calls_per_month
    limits: list[int] = [cap] if cap is not None else []
    if kind == OfferKind.FREE_TRIAL or (
        kind == OfferKind.SUBSCRIPTION and offer.overage == Overage.REFUSE
    ):
        limits.append(offer.included_calls or 0)
    return min(limits) if limits else None


def offer_refuse_unless_purchasable(*, offer: Offer, buyer: User, sandbox: bool) -> None:
    """Raise unless `buyer` may buy `offer` now: the offer active, the listing published
    and its expert active and not the buyer, and (for a priced, non-sandbox purchase)
    the expert's Connect account able to receive payouts."""
    listing = offer.listing
    if offer.status != OfferStatus.ACTIVE:
        raise OfferRetired("This offer is no longer on sale.")
    if listing.status != ListingStatus.PUBLISHED or not listing.owner.is_active:
        raise ListingNotPurchasable("This listing is not on sale.")
    if listing.owner_id == buyer.pk:
        raise ListingNotPurchasable("You cannot buy a licence to your own listing.")
    if offer.unit_amount > 0 and not sandbox and not expert_can_be_paid(expert_id=listing.owner_id):
        raise ListingNotPurchasable(
            "The expert cannot receive payouts yet; this offer cannot be bought."
        )


def _refuse_if_held(buyer: User, offer: Offer) -> None:
    live = Licence.objects.filter(
        buyer=buyer, listing_id=offer.listing_id, status__in=LIVE_LICENCE_STATUSES
    )
    if offer.kind == OfferKind.FREE_TRIAL:
        if Licence.objects.filter(
            buyer=buyer, listing_id=offer.listing_id, kind=OfferKind.FREE_TRIAL
        ).exists():
            raise FreeTrialAlreadyUsed("You have already had this listing's free trial.")
        if live.filter(kind__in=CALL_KINDS).exists():
            raise LicenceAlreadyHeld("You already hold a licence to call this listing.")
    elif offer.kind == OfferKind.DOWNLOAD:
        if live.filter(kind=OfferKind.DOWNLOAD).exists():
            raise LicenceAlreadyHeld("You already hold a download licence for this listing.")
    elif live.filter(kind__in=(OfferKind.PER_CALL, OfferKind.SUBSCRIPTION)).exists():
        raise LicenceAlreadyHeld("You already hold a licence to call this listing.")


def licence_create(*, buyer: User, offer: Offer, sandbox: bool = False) -> Licence:
    """A pending licence for a purchase about to start (Checkout or the sandbox), with
    the listing's terms snapshotted now. Raises OfferRetired / ListingNotPurchasable /
    LicenceAlreadyHeld / FreeTrialAlreadyUsed (409). A live trial does not block
    buying: activation supersedes it."""
    with transaction.atomic():
        offer = Offer.objects.select_related("listing", "listing__owner").get(pk=offer.pk)
        offer_refuse_unless_purchasable(offer=offer, buyer=buyer, sandbox=sandbox)
        _refuse_if_held(buyer, offer)
        terms = LicenceTerms.of_listing(offer.listing)
        cap = settings.BILLING_DEFAULT_SPEND_CAP if metered(offer.kind, offer) else None
        try:
            with transaction.atomic():
                return Licence.objects.create(
                    buyer=buyer,
                    listing=offer.listing,
                    offer=offer,
                    kind=offer.kind,
                    terms=terms.to_json(),
                    sandbox=sandbox,
                    calls_included=offer.included_calls,
                    call_quota=_call_quota(offer.kind, offer, terms),
                    spend_cap_amount=cap,
                    spend_cap_calls=spend_cap_calls(offer, cap),
                )
        except IntegrityError:
            raise FreeTrialAlreadyUsed("You have already had this listing's free trial.") from None


def _locked_licence(licence_id) -> Licence:
    licence = (
        Licence.objects.select_for_update(of=("self",))
        .select_related("listing", "buyer")
        .filter(pk=licence_id)
        .first()
    )
    if licence is None:
        raise LicenceNotFound("No such licence.")
    return licence


def _require_state(licence: Licence, allowed: tuple, verb: str) -> None:
    if licence.status not in allowed:
        raise InvalidLicenceTransition(
            f"A {licence.status} licence cannot be {verb}.",
            fields={"status": [licence.status]},
        )


def licence_activate(
    *,
    licence_id,
    period_start: datetime | None = None,
    period_end: datetime | None = None,
    stripe_customer_id: str = "",
    stripe_subscription_id: str = "",
    stripe_subscription_item_id: str = "",
    stripe_payment_intent_id: str = "",
    stripe_subscription_status: str = "",
    at: datetime | None = None,
) -> Licence:
    """pending → active, once payment is confirmed (or at once for a trial or sandbox).

    Holds the licence row; supersedes (expires) the buyer's live free trial of the
    listing when a paid calling licence starts; grants the listing's entitlement
    (reviews, popularity) in the same transaction. A monthly licence bought through
    Stripe takes Stripe's period (the subscription item's); a sandbox one starts its
    months now. Raises InvalidLicenceTransition (409) unless pending, LicenceAlreadyHeld
    (409) if another live licence of the same kind appeared meanwhile (the caller
    refunds the duplicate)."""
    now = at or timezone.now()
    with transaction.atomic():
        licence = _locked_licence(licence_id)
        _require_state(licence, (LicenceStatus.PENDING,), "activated")
        live = Licence.objects.select_for_update().filter(
            buyer_id=licence.buyer_id,
            listing_id=licence.listing_id,
            status__in=LIVE_LICENCE_STATUSES,
        )
        same = (
            live.filter(kind=OfferKind.DOWNLOAD)
            if licence.kind == OfferKind.DOWNLOAD
            else live.filter(kind__in=(OfferKind.PER_CALL, OfferKind.SUBSCRIPTION))
            if licence.kind != OfferKind.FREE_TRIAL
            else live.filter(kind__in=CALL_KINDS)
        )
        if same.exclude(pk=licence.pk).exists():
            raise LicenceAlreadyHeld("The buyer already holds a live licence of this kind.")
        if licence.kind in (OfferKind.PER_CALL, OfferKind.SUBSCRIPTION):
            for trial in live.filter(kind=OfferKind.FREE_TRIAL):
                _end(trial, LicenceStatus.EXPIRED, f"Superseded by licence {licence.id}.", now)
        licence.status = LicenceStatus.ACTIVE
        licence.activated_at = now
        if licence.kind in (OfferKind.PER_CALL, OfferKind.SUBSCRIPTION):
            licence.current_period_start = period_start or now
            licence.current_period_end = period_end or licence_period_at(licence, now)[1]
        elif licence.kind == OfferKind.FREE_TRIAL:
            licence.current_period_start = now
        for name, value in (
            ("stripe_customer_id", stripe_customer_id),
            ("stripe_subscription_id", stripe_subscription_id),
            ("stripe_subscription_item_id", stripe_subscription_item_id),
            ("stripe_payment_intent_id", stripe_payment_intent_id),
            ("stripe_subscription_status", stripe_subscription_status),
        ):
            if value:
                setattr(licence, name, value)
        licence.save()
        entitlement_grant(listing=licence.listing, user=licence.buyer, reference=str(licence.id))
        access_epochs.bump(user_id=licence.buyer_id)
    return licence


def licence_start_free_trial(*, buyer: User, offer: Offer) -> Licence:
    """Take a listing's free trial: no card, no Stripe; active at once through the same
    path as a paid licence (entitlement included), with the trial's own quota. Only for a
    buyer whose email address is verified (EmailNotVerified, 403)."""
    user_require_verified_email(user=buyer, action="take a free trial")
    if offer.kind != OfferKind.FREE_TRIAL:
        raise InvalidOffer("This offer is not a free trial.", fields={"offer": ["Not a trial."]})
    with transaction.atomic():
        licence = licence_create(buyer=buyer, offer=offer, sandbox=False)
        return licence_activate(licence_id=licence.id)


# --- how a licence ends, and what ending it does to billing ----------------------------


def _teardown_billing(licence: Licence, was: str, now: datetime) -> None:
    """Every end of access ends its billing (in the caller's transaction, sent after
    commit): an unpaid Checkout Session is expired so it can no longer be paid, and a
    subscription is cancelled at once, billing the metered calls served so far
    (invoice_now) and crediting nothing by itself (a refund owed is issued by the policy
    that owes it, explicitly). A subscription that Stripe already ended, or that ends by
    itself at this period's end (cancel_at_period_end reached), is left alone."""
    if licence.sandbox:
        return
    if was == LicenceStatus.PENDING and licence.stripe_checkout_session_id:
        intent_record(
            kind=IntentKind.CHECKOUT_SESSION_EXPIRE,
            key_parts=(licence.pk,),
            params={"session_id": licence.stripe_checkout_session_id},
            licence=licence,
        )
    if not licence.stripe_subscription_id:
        return
    if licence.stripe_subscription_status in ("canceled", "incomplete_expired"):
        return
    if licence.cancel_at_period_end and licence.access_ends_at and now >= licence.access_ends_at:
        return
    intent_record(
        kind=IntentKind.SUBSCRIPTION_CANCEL,
        key_parts=(licence.pk,),
        params={
            "subscription_id": licence.stripe_subscription_id,
            "invoice_now": metered(licence.kind, licence.offer),
        },
        licence=licence,
    )


def _end(licence: Licence, status: str, reason: str, now: datetime, *, notify: bool = True):
    was = licence.status
    licence.status, licence.ended_at, licence.end_reason = status, now, reason
    licence.save(update_fields=["status", "ended_at", "end_reason"])
    access_epochs.bump(user_id=licence.buyer_id)  # the very next call is refused
    _teardown_billing(licence, was, now)
    if notify and was != LicenceStatus.PENDING:
        buyer_notice_send(licence=licence, kind="ended")


def licence_mark_past_due(*, licence_id) -> Licence:
    """active → past_due (a renewal failed; Stripe retries). Calls still serve."""
    with transaction.atomic():
        licence = _locked_licence(licence_id)
        _require_state(licence, (LicenceStatus.ACTIVE,), "marked past due")
        licence.status = LicenceStatus.PAST_DUE
        licence.save(update_fields=["status"])
        access_epochs.bump(user_id=licence.buyer_id)
    return licence


def licence_renew(*, licence_id, period_start: datetime, period_end: datetime) -> Licence:
    """active | past_due → active with the period Stripe just invoiced (invoice.paid)."""
    if period_end <= period_start:
        raise InvalidUsage("period_end must be after period_start.")
    with transaction.atomic():
        licence = _locked_licence(licence_id)
        _require_state(licence, LIVE_LICENCE_STATUSES, "renewed")
        if licence.kind not in (OfferKind.PER_CALL, OfferKind.SUBSCRIPTION):
            raise InvalidLicenceTransition("Only monthly licences renew.")
        licence.status = LicenceStatus.ACTIVE
        licence.current_period_start, licence.current_period_end = period_start, period_end
        if licence.cancel_at_period_end:
            licence.access_ends_at = period_end
        licence.save(
            update_fields=["status", "current_period_start", "current_period_end", "access_ends_at"]
        )
        access_epochs.bump(user_id=licence.buyer_id)
        # The counter of a period counted before Stripe's renewal arrived gets its end.
        LicenceUsagePeriod.objects.filter(
            licence=licence, period_start=period_start, period_end__isnull=True
        ).update(period_end=period_end)
    return licence


def _finish(
    licence_id, status: str, reason: str, verb: str, at: datetime | None, notify: bool = True
) -> Licence:
    with transaction.atomic():
        licence = _locked_licence(licence_id)
        _require_state(licence, (LicenceStatus.PENDING, *LIVE_LICENCE_STATUSES), verb)
        _end(licence, status, reason, at or timezone.now(), notify=notify)
    return licence


def licence_cancel(
    *, licence_id, reason: str = "", at: datetime | None = None, notify: bool = True
) -> Licence:
    """pending | active | past_due → cancelled (subscription ended at Stripe, checkout
    abandoned or replaced, the listing suspended). Access ends at once; so does billing."""
    return _finish(licence_id, LicenceStatus.CANCELLED, reason, "cancelled", at, notify)


def licence_expire(*, licence_id, reason: str = "", at: datetime | None = None) -> Licence:
    """pending | active | past_due → expired (ran its course, or superseded)."""
    return _finish(licence_id, LicenceStatus.EXPIRED, reason, "expired", at)


def _require_reason(reason: str) -> str:
    reason = (reason or "").strip()
    if not reason:
        raise ReasonRequired("Give a reason; it goes in the audit log.")
    if len(reason) > MAX_REASON_CHARS:
        raise ReasonRequired(f"The reason is over {MAX_REASON_CHARS} characters.")
    return reason


def billing_audit(
    *, actor: User | None, action: str, target_type: str, target_id, reason: str
) -> BillingAuditEntry:
    """Append to the billing audit log (refunds, revocations; actor None: the platform
    acted by itself, e.g. refunding a duplicate purchase)."""
    return BillingAuditEntry.objects.create(
        actor=actor,
        action=action,
        target_type=target_type,
        target_id=str(target_id),
        reason=_require_reason(reason),
    )


def licence_revoke(
    *, licence_id, reason: str, actor: User | None = None, at: datetime | None = None
) -> Licence:
    """pending | active | past_due → revoked: access, downloads and billing stop at once.
    With an actor (a moderator acting by hand) the reason is audited; without one it
    is the system's (a refund, a dispute). Revocation is for cause: it refunds nothing
    by itself (a moderator refunds separately). Raises NotAModerator (403),
    ReasonRequired (422), InvalidLicenceTransition (409)."""
    reason = _require_reason(reason)
    if actor is not None and not actor.is_moderator:
        raise NotAModerator("Only moderators revoke licences.")
    with transaction.atomic():
        licence = _finish(licence_id, LicenceStatus.REVOKED, reason, "revoked", at)
        if actor is not None:
            billing_audit(
                actor=actor,
                action="licence_revoke",
                target_type="licence",
                target_id=licence.id,
                reason=reason,
            )
    return licence


def _buyers_licence(buyer: User, licence_id) -> Licence:
    licence = _locked_licence(licence_id)
    if licence.buyer_id != buyer.pk:
        raise LicenceNotFound("No such licence of yours.")
    return licence


def licence_cancel_by_buyer(*, buyer: User, licence_id, at: datetime | None = None) -> Licence:
    """The buyer cancels. A monthly licence (per_call, subscription) winds down: access
    lasts until the end of the period already paid for, billing never renews
    (Stripe's cancel_at_period_end), and `licence_resume` undoes it until then. A free
    trial ends at once (nothing is paid). A download licence was paid once and has
    nothing to cancel (409). Idempotent for a licence already winding down."""
    now = at or timezone.now()
    with transaction.atomic():
        licence = _buyers_licence(buyer, licence_id)
        _require_state(licence, LIVE_LICENCE_STATUSES, "cancelled")
        if licence.kind == OfferKind.DOWNLOAD:
            raise InvalidLicenceTransition(
                "A download licence is paid once; there is no billing to cancel.",
                code="nothing_to_cancel",
            )
        if licence.kind == OfferKind.FREE_TRIAL:
            _end(licence, LicenceStatus.CANCELLED, "Cancelled by the buyer.", now, notify=False)
            return licence
        if licence.cancel_at_period_end:
            return licence
        _wind_down(licence, ends_at=licence.current_period_end or now)
    return licence


def licence_resume(*, buyer: User, licence_id, at: datetime | None = None) -> Licence:
    """Undo the buyer's cancellation before the paid period ends: billing renews again.
    Refused (409) once the period is over, or when the listing is no longer on sale
    (a delisted listing winds down for good)."""
    now = at or timezone.now()
    with transaction.atomic():
        licence = _buyers_licence(buyer, licence_id)
        _require_state(licence, LIVE_LICENCE_STATUSES, "resumed")
        if not licence.cancel_at_period_end:
            raise InvalidLicenceTransition("This licence is not cancelled.", code="not_cancelled")
        if licence.access_ends_at is not None and now >= licence.access_ends_at:
            raise InvalidLicenceTransition(
                "The paid period is over; buy the licence again.", code="period_over"
            )
        if licence.listing.status != ListingStatus.PUBLISHED or not licence.listing.owner.is_active:
            raise InvalidLicenceTransition(
                "This listing is no longer on sale; the licence ends with its paid period.",
                code="listing_not_on_sale",
            )
        licence.cancel_at_period_end, licence.access_ends_at = False, None
        licence.save(update_fields=["cancel_at_period_end", "access_ends_at"])
        access_epochs.bump(user_id=licence.buyer_id)
        if not licence.sandbox and licence.stripe_subscription_id:
            intent_record(
                kind=IntentKind.SUBSCRIPTION_RESUME,
                key_parts=(licence.pk, _decision_stamp()),
                params={"subscription_id": licence.stripe_subscription_id},
                licence=licence,
            )
    return licence


def _decision_stamp() -> str:
    """Distinguishes one decision from the next on the same licence (cancel, resume,
    cancel again): each is its own Stripe request, while a retry of one reuses its key."""
    return uuid.uuid4().hex


def _wind_down(licence: Licence, *, ends_at: datetime) -> None:
    """Access until `ends_at`; billing never renews (held licence row)."""
    licence.cancel_at_period_end, licence.access_ends_at = True, ends_at
    licence.save(update_fields=["cancel_at_period_end", "access_ends_at"])
    access_epochs.bump(user_id=licence.buyer_id)
    if not licence.sandbox and licence.stripe_subscription_id:
        intent_record(
            kind=IntentKind.SUBSCRIPTION_CANCEL_AT_PERIOD_END,
            key_parts=(licence.pk, _decision_stamp()),
            params={"subscription_id": licence.stripe_subscription_id},
            licence=licence,
        )


def licence_wind_down(*, licence_id, reason: str, at: datetime | None = None) -> Licence:
    """The listing ended by its expert's choice (delisted): what a paying buyer is owed
    is the rest of what they paid for. A monthly licence keeps serving until its paid
    period ends and never renews; a download licence may fetch its bundle for
    DOWNLOAD_WIND_DOWN more; a free trial (nothing paid) ends now. The buyer is told.
    A licence already ended or winding down is left as it is."""
    now = at or timezone.now()
    with transaction.atomic():
        licence = _locked_licence(licence_id)
        if licence.status == LicenceStatus.PENDING:
            _end(licence, LicenceStatus.CANCELLED, reason, now, notify=False)
            return licence
        if licence.status not in LIVE_LICENCE_STATUSES:
            return licence
        if licence.kind == OfferKind.FREE_TRIAL:
            _end(licence, LicenceStatus.EXPIRED, reason, now)
            return licence
        if licence.access_ends_at is not None and licence.cancel_at_period_end:
            return licence
        if licence.kind == OfferKind.DOWNLOAD:
            licence.cancel_at_period_end, licence.access_ends_at = True, now + DOWNLOAD_WIND_DOWN
            licence.save(update_fields=["cancel_at_period_end", "access_ends_at"])
            access_epochs.bump(user_id=licence.buyer_id)
        else:
            _wind_down(licence, ends_at=licence.current_period_end or now)
        Licence.objects.filter(pk=licence.pk).update(end_reason=reason)
        buyer_notice_send(licence=licence, kind="winding_down", reason=reason)
    return licence


def licences_end_wound_down(*, now: datetime | None = None) -> int:
    """The sweep: a licence whose wind-down is over expires (Stripe has ended its
    subscription at the period's end; if its webhook is late, access ends anyway)."""
    now = now or timezone.now()
    due = Licence.objects.filter(
        status__in=LIVE_LICENCE_STATUSES, cancel_at_period_end=True, access_ends_at__lte=now
    ).values_list("pk", flat=True)
    ended = 0
    for licence_id in list(due):
        with transaction.atomic():
            licence = _locked_licence(licence_id)
            if licence.status in LIVE_LICENCE_STATUSES and licence.access_ends_at <= now:
                reason = licence.end_reason or "Cancelled; the paid period is over."
                _end(licence, LicenceStatus.EXPIRED, reason, licence.access_ends_at)
                ended += 1
    return ended


def licence_set_spend_cap(*, buyer: User, licence_id, amount: int) -> Licence:
    """The buyer's monthly cap on what a metered licence may bill for calls (minor
    units of the offer's currency), from 1 to MAX_AMOUNT. Calls past it are refused
    (429 spend_cap_reached) until the next period. Raises InvalidUsage (422),
    InvalidLicenceTransition (409) for a licence that bills no calls."""
    if isinstance(amount, bool) or not isinstance(amount, int) or not 1 <= amount <= MAX_AMOUNT:
        raise InvalidUsage(
            "The spend cap is a whole amount in minor units.",
            fields={"monthly_spend_cap": [f"From 1 to {MAX_AMOUNT}."]},
        )
    with transaction.atomic():
        licence = _buyers_licence(buyer, licence_id)
        _require_state(licence, (LicenceStatus.PENDING, *LIVE_LICENCE_STATUSES), "capped")
        if not metered(licence.kind, licence.offer):
            raise InvalidLicenceTransition(
                "This licence does not bill per call; it has no spend cap.", code="not_metered"
            )
        licence.spend_cap_amount = amount
        licence.spend_cap_calls = spend_cap_calls(licence.offer, amount)
        licence.save(update_fields=["spend_cap_amount", "spend_cap_calls"])
        access_epochs.bump(user_id=licence.buyer_id)
    return licence


# --- the usage ledger ----------------------------------------------------------------


@dataclass(frozen=True)
class UsageOutcome:
    record: UsageRecord
    recorded: bool  # False: this idempotency key was already in the ledger
    calls_used: int  # in the record's period, after this call
    calls_left: int | None  # None: no limit


def _validate_usage(
    idempotency_key: str, units: int, status: str, price_percent: int = 100
) -> None:
    fields = {}
    if not isinstance(idempotency_key, str) or not 1 <= len(idempotency_key) <= 128:
        fields["idempotency_key"] = ["1 to 128 characters."]
    if isinstance(units, bool) or not isinstance(units, int):
        fields["units"] = ["A whole number."]
    elif not 1 <= units <= MAX_UNITS_PER_RECORD:
        fields["units"] = [f"1 to {MAX_UNITS_PER_RECORD}."]
    if status not in UsageStatus.values:
        fields["status"] = [f"One of {', '.join(UsageStatus.values)}."]
    if isinstance(price_percent, bool) or not isinstance(price_percent, int):
        fields["price_percent"] = ["A whole number."]
    elif not 0 <= price_percent <= 100:
        fields["price_percent"] = ["0 to 100."]
    if fields:
        raise InvalidUsage("The usage record is not valid.", fields=fields)


def _count(licence_id, period_start: datetime, units: int, quota: int | None) -> int | None:
    """Add `units` to the period's counter unless it would pass `quota`: one conditional
    UPDATE ... RETURNING, so concurrent callers serialize on the row (re-checking the
    condition on the row they waited for) and none is lost. Returns the new count, or
    None when refused or when the period has no counter yet. The caller's transaction
    holds the row until it commits."""
    table = connection.ops.quote_name(LicenceUsagePeriod._meta.db_table)
    condition = "" if quota is None else " AND calls <= %s"
    params = [
        units,
        Licence._meta.pk.get_db_prep_value(licence_id, connection),
        connection.ops.adapt_datetimefield_value(period_start),
    ] + ([] if quota is None else [quota - units])
    with connection.cursor() as cursor:
        cursor.execute(
            f"UPDATE {table} SET calls = calls + %s "  # noqa: S608  (names from _meta)
            f"WHERE licence_id = %s AND period_start = %s{condition} RETURNING calls",
            params,
        )
        row = cursor.fetchone()
    return None if row is None else row[0]


def usage_record(
    *,
    licence_id,
    idempotency_key: str,
    units: int = 1,
    api_key_id=None,
    listing_version_id: int | None = None,
    latency_ms: int | None = None,
    status: str = UsageStatus.OK,
    at: datetime | None = None,
    shares: list | None = None,
) -> UsageOutcome:
    """Write a call to the ledger and count it in its period: exactly once per
    idempotency key (a replay returns the first row, counted once), atomically (no
    lost or double counts under concurrency), refused past the licence's quota
    (QuotaExceeded 429, nothing written). A failed call (`status="error"`) is
    written but not counted, and settled at once. Serving records before running the
    model and settles the outcome after (usage_settle); a row nobody settles is settled
    failed by the sweep (usage_settle_stale). Raises LicenceRequired (403) unless the
    licence is live and allows calls, QuotaExceeded (429) past the quota or the buyer's
    spend cap.

    A served call costs the database one read of the licence and one transaction of two
    statements (the row, then the counter); a replay costs a failed insert and a read."""
    _validate_usage(idempotency_key, units, status)
    now = at or timezone.now()
    licence = Licence.objects.filter(pk=licence_id).first()
    if licence is None:
        raise LicenceNotFound("No such licence.")
    if licence.status not in LIVE_LICENCE_STATUSES or licence.kind not in CALL_KINDS:
        existing = UsageRecord.objects.filter(idempotency_key=idempotency_key).first()
        if existing is not None:
            return _replayed(existing, licence)
        raise LicenceRequired("This licence does not allow calls now.")
    start, end = licence_period_at(licence, now)
    limit = effective_call_limit(licence.call_quota, licence.spend_cap_calls)
    try:
        with transaction.atomic():
            record = UsageRecord.objects.create(
                licence=licence,
                buyer_id=licence.buyer_id,
                listing_id=licence.listing_id,
                api_key_id=api_key_id,
                listing_version_id=listing_version_id,
                units=units,
                latency_ms=latency_ms,
                status=status,
                idempotency_key=idempotency_key,
                period_start=start,
                created_at=now,
                settled_at=now if status == UsageStatus.ERROR else None,
            )
            # A failed call is written, not counted: it takes nothing, so no limit applies.
            counted, quota = (0, None) if status == UsageStatus.ERROR else (units, limit)
            calls = _count(licence.pk, start, counted, quota)
            if calls is None:
                # No counter for this period yet (its first call), or the quota is used.
                LicenceUsagePeriod.objects.get_or_create(
                    licence=licence, period_start=start, defaults={"period_end": end}
                )
                calls = _count(licence.pk, start, counted, quota)
            if calls is None:
                raise quota_error(licence.call_quota, licence.spend_cap_calls, left=0)
            if shares:  # a garden call: who worked on it, and their parts of the price
                garden_shares_write(record, licence, shares)
    except IntegrityError:
        # This idempotency key is in the ledger already (a replay; everything above
        # rolled back), or a concurrent first call created the counter: read which.
        existing = UsageRecord.objects.filter(idempotency_key=idempotency_key).first()
        if existing is not None:
            return _replayed(existing, licence)
        raise
    left = None if limit is None else max(0, limit - calls)
    return UsageOutcome(record=record, recorded=True, calls_used=calls, calls_left=left)


def _replayed(record: UsageRecord, licence: Licence) -> UsageOutcome:
    if record.licence_id != licence.pk:
        raise IdempotencyKeyReused("This idempotency key was used for another licence.")
    calls = (
        LicenceUsagePeriod.objects.filter(licence=licence, period_start=record.period_start)
        .values_list("calls", flat=True)
        .first()
    ) or 0
    limit = effective_call_limit(licence.call_quota, licence.spend_cap_calls)
    left = None if limit is None else max(0, limit - calls)
    return UsageOutcome(record=record, recorded=False, calls_used=calls, calls_left=left)


@dataclass(frozen=True)
class FinishedCall:
    """A call whose outcome is known when it is written (a batch row)."""

    idempotency_key: str
    units: int = 1
    status: str = UsageStatus.OK
    listing_version_id: int | None = None
    latency_ms: int | None = None


def usage_record_finished(
    *,
    licence_id,
    calls: list[FinishedCall],
    api_key_id=None,
    price_percent: int = 100,
    at: datetime | None = None,
) -> list[QuotaExceeded | None]:
    """Write calls that already ran to the ledger, settled, in one step (the rows of a
    batch, written with their answers in the caller's transaction): the period's counter
    row is locked, each served call is counted in order unless it would pass the quota
    or the buyer's spend cap (its entry is then the QuotaExceeded the call would get,
    and nothing is written for it), failed calls are written and not counted. A key
    already in the ledger is not written again (None). Raises LicenceNotFound,
    LicenceRequired (403) when the licence does not allow calls now, InvalidUsage."""
    for call in calls:
        _validate_usage(call.idempotency_key, call.units, call.status, price_percent)
    now = at or timezone.now()
    licence = Licence.objects.filter(pk=licence_id).first()
    if licence is None:
        raise LicenceNotFound("No such licence.")
    if licence.status not in LIVE_LICENCE_STATUSES or licence.kind not in CALL_KINDS:
        raise LicenceRequired("This licence does not allow calls now.")
    start, end = licence_period_at(licence, now)
    limit = effective_call_limit(licence.call_quota, licence.spend_cap_calls)
    outcomes: list[QuotaExceeded | None] = []
    with transaction.atomic():
        LicenceUsagePeriod.objects.get_or_create(
            licence=licence, period_start=start, defaults={"period_end": end}
        )
        period = LicenceUsagePeriod.objects.select_for_update().get(
            licence=licence, period_start=start
        )
        keys = [call.idempotency_key for call in calls]
        written = set(
            UsageRecord.objects.filter(idempotency_key__in=keys).values_list(
                "idempotency_key", flat=True
            )
        )
        counted, records = period.calls, []
        for call in calls:
            if call.idempotency_key in written:
                outcomes.append(None)
                continue
            if call.status == UsageStatus.OK:
                if limit is not None and counted + call.units > limit:
                    left = max(0, limit - counted)
                    refusal = quota_error(licence.call_quota, licence.spend_cap_calls, left=left)
                    outcomes.append(refusal)
                    continue
                counted += call.units
            written.add(call.idempotency_key)
            outcomes.append(None)
            records.append(
                UsageRecord(
                    licence=licence, buyer_id=licence.buyer_id, listing_id=licence.listing_id,
                    api_key_id=api_key_id, listing_version_id=call.listing_version_id,
                    units=call.units, price_percent=price_percent, latency_ms=call.latency_ms,
                    status=call.status, idempotency_key=call.idempotency_key,
                    period_start=start, created_at=now, settled_at=now,
                )
            )  # fmt: skip
        UsageRecord.objects.bulk_create(records)
        if counted != period.calls:
            LicenceUsagePeriod.objects.filter(pk=period.pk).update(
                calls=F("calls") + (counted - period.calls)
            )
    return outcomes


def usage_settle(
    *, idempotency_key: str, status: str, latency_ms: int | None = None
) -> UsageRecord:
    """Record how a call recorded before it ran turned out, once: the first settlement
    is final (a settled row never changes, so the metered billing computed from settled
    rows only ever grows), a later one changes nothing and returns the row. A failed
    call gives its units back to the period's quota counter and is never billed."""
    _validate_usage(idempotency_key, 1, status)
    if status == UsageStatus.OK and usage_settle_served(
        idempotency_key=idempotency_key, latency_ms=latency_ms
    ):
        return UsageRecord.objects.get(idempotency_key=idempotency_key)
    with transaction.atomic():
        record = (
            UsageRecord.objects.select_for_update().filter(idempotency_key=idempotency_key).first()
        )
        if record is None:
            raise InvalidUsage(
                "No call with this idempotency key.", fields={"idempotency_key": ["Unknown."]}
            )
        if record.settled_at is not None:
            return record
        if status == UsageStatus.ERROR:
            LicenceUsagePeriod.objects.filter(
                licence_id=record.licence_id, period_start=record.period_start
            ).update(calls=Greatest(F("calls") - record.units, Value(0)))
        record.status = status
        record.settled_at = timezone.now()
        if latency_ms is not None:
            record.latency_ms = latency_ms
        record.save(update_fields=["status", "latency_ms", "settled_at"])
    return record


def usage_settle_served(*, idempotency_key: str, latency_ms: int | None = None) -> bool:
    """usage_settle(status="ok") in one statement, for serving's hot path: the row is
    settled served unless it was settled already (the first settlement is final).
    Returns whether this call settled it (False: unknown or already settled)."""
    fields = {"status": UsageStatus.OK, "settled_at": timezone.now()}
    if latency_ms is not None:
        fields["latency_ms"] = latency_ms
    pending = UsageRecord.objects.filter(idempotency_key=idempotency_key, settled_at__isnull=True)
    return bool(pending.update(**fields))


def usage_settle_if_recorded(*, idempotency_key: str, status: str) -> UsageRecord | None:
    """usage_settle for a caller that may hold a call without a ledger row (the listing
    owner's own calls): None then."""
    if not UsageRecord.objects.filter(idempotency_key=idempotency_key).exists():
        return None
    return usage_settle(idempotency_key=idempotency_key, status=status)


def usage_settle_stale(*, older_than: timedelta, now: datetime | None = None) -> int:
    """The sweep: a call still unsettled long after any answer could have come (its web
    process or worker died) is settled failed: a call whose outcome the platform never
    learned is not billed. Returns how many it settled."""
    cutoff = (now or timezone.now()) - older_than
    keys = UsageRecord.objects.filter(settled_at__isnull=True, created_at__lt=cutoff).values_list(
        "idempotency_key", flat=True
    )
    settled = 0
    for key in list(keys[:5000]):
        record = usage_settle(idempotency_key=key, status=UsageStatus.ERROR)
        settled += record.status == UsageStatus.ERROR
    return settled


def reconciliation_issue_resolve(*, issue_id, moderator: User, note: str):
    """A moderator settles a reconciliation issue by hand (after acting in Stripe or
    here), with a note; audited. Raises NotAModerator (403), ReasonRequired (422),
    InvalidLicenceTransition (409) for an issue already resolved."""
    from billing.models import IssueStatus, ReconciliationIssue

    if not moderator.is_moderator:
        raise NotAModerator("Only moderators resolve reconciliation issues.")
    note = _require_reason(note)
    with transaction.atomic():
        issue = ReconciliationIssue.objects.select_for_update().filter(pk=issue_id).first()
        if issue is None or issue.status != IssueStatus.OPEN:
            raise InvalidLicenceTransition("This issue is not open.", code="issue_not_open")
        issue.status, issue.resolved_at = IssueStatus.RESOLVED, timezone.now()
        issue.resolved_by, issue.resolution_note = moderator, note
        issue.save(update_fields=["status", "resolved_at", "resolved_by", "resolution_note"])
        billing_audit(
            actor=moderator,
            action="reconciliation_resolve",
            target_type="reconciliation_issue",
            target_id=issue.pk,
            reason=note,
        )
    return issue


# --- the platform's own calls (the router's generalist fallback) ---------------------------


def platform_usage_record(
    *, buyer_id: int, idempotency_key: str, task: str, units: int = 1, api_key_id=None
) -> PlatformUsage:
    """A call the platform's generalist answers, written before the engine runs at the
    operator's price; once per idempotency key (a replay returns the first row)."""
    _validate_usage(idempotency_key, units, UsageStatus.OK)
    record, _ = PlatformUsage.objects.get_or_create(
        idempotency_key=idempotency_key,
        defaults={
            "buyer_id": buyer_id,
            "api_key_id": api_key_id,
            "task": task,
            "units": units,
            "unit_amount": settings.ROUTER_FALLBACK_UNIT_AMOUNT,
            "currency": settings.ROUTER_FALLBACK_CURRENCY,
        },
    )
    return record


def platform_usage_settle(*, idempotency_key: str, status: str, latency_ms: int) -> bool:
    """Settle a platform call once: served (billed) or failed (not billed)."""
    return bool(
        PlatformUsage.objects.filter(
            idempotency_key=idempotency_key, settled_at__isnull=True
        ).update(status=status, latency_ms=latency_ms, settled_at=timezone.now())
    )
