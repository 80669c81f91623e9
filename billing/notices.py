"""Telling a buyer what happened to a licence they paid for, by email, exactly once.

A service records a domain event (`licence.ended`, `licence.winding_down`,
`licence.refunded`) in the transaction of the change; the consumer registered here
(billing.apps) sends the email through Django's email backend (the console in the
embedded default, SMTP by settings) once per event. The licence page shows the same
words (billing.selectors.licence_notice).
"""

from __future__ import annotations

from django.conf import settings
from django.core.mail import send_mail

from billing.models import Licence
from marketplace.events import event_record
from marketplace.models import DomainEvent

EVENT_TYPES = {
    "ended": "licence.ended",
    "winding_down": "licence.winding_down",
    "refunded": "licence.refunded",
}


def buyer_notice_send(*, licence: Licence, kind: str, reason: str = "", amount: int = 0) -> None:
    """Record that the buyer must be told (in the caller's transaction)."""
    event_record(
        type=EVENT_TYPES[kind],
        subject_type="licence",
        subject_id=licence.pk,
        data={"reason": reason or licence.end_reason, "amount": amount},
    )


def _money(amount: int, currency: str) -> str:
    return f"{amount / 100:.2f} {currency.upper()}"


def notice_text(licence: Licence, event_type: str, data: dict) -> tuple[str, str]:
    """(subject, body) of the email about `licence`."""
    listing = licence.listing
    name = f"“{listing.title}”"
    reason = data.get("reason") or licence.end_reason
    if event_type == "licence.winding_down":
        until = licence.access_ends_at
        when = f"{until:%d %B %Y, %H:%M} UTC" if until else "the end of the paid period"
        return (
            f"Your licence to {listing.title} ends on {when}",
            f"{reason}\n\nYou keep what you paid for: access to {name} continues until "
            f"{when}, and you will not be billed again.",
        )
    if event_type == "licence.refunded":
        return (
            f"A refund for {listing.title}",
            f"{reason}\n\nWe refunded {_money(data.get('amount', 0), licence.offer.currency)}"
            " to your card; banks take 5 to 10 days to show it.",
        )
    return (
        f"Your licence to {listing.title} has ended",
        f"{reason}\n\nAccess to {name} has stopped and billing for it has been cancelled.",
    )


def on_licence_event(event: DomainEvent) -> None:
    licence = (
        Licence.objects.select_related("buyer", "listing", "offer")
        .filter(pk=event.subject_id)
        .first()
    )
    if licence is None:
        return
    subject, body = notice_text(licence, event.type, event.data)
    footer = "\n\nYour licences: /licences/ on Niche.\n"
    send_mail(
        subject=f"[Niche] {subject}",
        message=body + footer,
        from_email=getattr(settings, "DEFAULT_FROM_EMAIL", None),
        recipient_list=[licence.buyer.email],
    )
