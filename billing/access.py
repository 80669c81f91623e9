"""What a buyer who paid is owed when the listing they pay for ends.

Listings records `listing.delisted`, `listing.suspended` and `user.suspended` as domain
events in the transaction of the change; this consumer (registered in billing.apps)
applies one rule per cause to every licence of the listing, exactly once per event:

- **The expert delists** (their choice): the buyer keeps what they paid for. A monthly
  licence keeps serving until its paid period ends and never renews (Stripe's
  cancel_at_period_end); a download licence may fetch its bundle for 30 more days; a
  free trial ends now. Calls and downloads keep working through the wind-down.
- **A moderator suspends the listing, or the expert's account** (the platform deems it
  unfit to serve): access stops at once and billing with it (the subscription is
  cancelled now, the metered calls already served billed on a final invoice). The buyer
  is refunded pro rata for the unused part of the period paid in advance (a
  subscription's price x the unused share of its period), a download never fetched is
  refunded in full (one fetched is kept: the files are the buyer's). Reinstating the
  listing later does not revive ended licences: buyers buy again.

In every case the buyer is told by email, and the licence page says the same.
"""

from __future__ import annotations

import logging

from django.db import transaction
from django.utils import timezone

from billing.models import (
    ENDED_LICENCE_STATUSES,
    LIVE_LICENCE_STATUSES,
    ExportDownload,
    Licence,
    OfferKind,
    Payment,
    PaymentKind,
)
from billing.notices import buyer_notice_send
from billing.services import licence_cancel, licence_wind_down
from billing.stripe_sync import payment_refunded_amount, refund_record_intent
from marketplace.models import DomainEvent

logger = logging.getLogger(__name__)

LISTING_EVENTS = ("listing.delisted", "listing.suspended", "user.suspended")


def on_listing_event(event: DomainEvent) -> None:
    if event.type == "listing.delisted":
        reason = "The expert delisted this model."
        for licence_id in _licence_ids(listing_ids=[event.subject_id]):
            licence_wind_down(licence_id=licence_id, reason=reason)
        return
    if event.type == "listing.suspended":
        listing_ids = [event.subject_id]
        reason = "A moderator suspended this listing: " + (event.data.get("reason") or "")
    else:
        from listings.models import Listing

        listing_ids = list(
            Listing.objects.filter(owner_id=event.subject_id).values_list("pk", flat=True)
        )
        reason = "The expert's account was suspended."
    for licence_id in _licence_ids(listing_ids=listing_ids):
        licence_end_for_suspension(licence_id=licence_id, reason=reason.strip())


def _licence_ids(*, listing_ids: list) -> list:
    return list(
        Licence.objects.filter(listing_id__in=listing_ids)
        .exclude(status__in=ENDED_LICENCE_STATUSES)
        .values_list("pk", flat=True)
    )


def prorated_refund(licence: Licence, now) -> tuple[Payment | None, int]:
    """The latest payment of a licence and what of it pays for time not served: a
    subscription's price times the unused share of its current period (capped at what
    is left of that payment). Per-call licences pay in arrears: nothing."""
    if licence.kind != OfferKind.SUBSCRIPTION:
        return None, 0
    start, end = licence.current_period_start, licence.current_period_end
    if start is None or end is None or now >= end:
        return None, 0
    payment = (
        Payment.objects.filter(licence=licence)
        .exclude(kind=PaymentKind.REFUND)
        .order_by("-created_at", "-id")
        .first()
    )
    if payment is None:
        return None, 0
    unused = (end - max(now, start)).total_seconds() / (end - start).total_seconds()
    owed = int(licence.offer.unit_amount * unused)  # rounded down: never more than unused
    left = payment.amount - payment_refunded_amount(payment)
    return payment, max(0, min(owed, left))


def licence_end_for_suspension(*, licence_id, reason: str) -> Licence:
    """End a licence now because its listing (or expert) was suspended, and refund what
    it owes (see the module docstring). Idempotent: an ended licence is left alone."""
    now = timezone.now()
    with transaction.atomic():
        licence = Licence.objects.select_for_update().select_related("offer").get(pk=licence_id)
        if licence.status in ENDED_LICENCE_STATUSES:
            return licence
        was_live = licence.status in LIVE_LICENCE_STATUSES
        refunds: list[tuple[Payment, int]] = []
        if was_live and licence.kind == OfferKind.DOWNLOAD:
            if not ExportDownload.objects.filter(licence=licence).exists():
                for payment in Payment.objects.filter(licence=licence).exclude(
                    kind=PaymentKind.REFUND
                ):
                    left = payment.amount - payment_refunded_amount(payment)
                    if left > 0:
                        refunds.append((payment, left))
        elif was_live:
            payment, owed = prorated_refund(licence, now)
            if payment is not None and owed > 0:
                refunds.append((payment, owed))
        licence = licence_cancel(licence_id=licence.pk, reason=reason[:1900], at=now)
        for payment, amount in refunds:
            if not payment.sandbox and not payment.stripe_charge_id:
                continue
            refund_record_intent(
                payment=payment,
                amount=amount,
                reason=f"{reason} Unused part refunded."[:1900],
                audit_action="refund_suspension",
            )
            buyer_notice_send(licence=licence, kind="refunded", reason=reason, amount=amount)
    return licence
