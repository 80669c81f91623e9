"""A garden's money: the revenue split of each answered call, and the transfers that pay it.

Every call to a garden writes, with its ledger row (UsageRecord, on the buyer's garden
licence), one GardenShare per party that worked on it: the member that answered (or
each pipeline step, the member share split equally), the curator (the curator share),
and the platform where its generalist answered (the member share it did the work
for). Percentages are of the call's price after the platform fee; `amount_micros` is
that part at the licence's per-call price, in millionths of a minor unit, so a month's
accrual adds up exactly before it is rounded once, to the cent, per line.

Paying it out (real money) is separate charges and transfers: a garden's checkout
charges the buyer on the platform's account (no destination), and when Stripe shows a
payment of the garden licence, `garden_payouts_make` splits what the payment leaves
after the platform fee across the shares it covers (the licence's served shares not
yet paid out), to the cent by largest remainder, and queues one Stripe transfer per
payee and member listing through the outbox, linked to the charge
(`source_transaction`). The statement's garden lines are those transfers.
"""

from __future__ import annotations

import logging
from collections import defaultdict
from dataclasses import dataclass
from datetime import date
from decimal import ROUND_HALF_UP, Decimal

from django.conf import settings
from django.db import transaction
from django.db.models import Count, Q, Sum

from accounts.models import User
from billing.models import (
    ConnectAccount,
    GardenPayout,
    GardenShare,
    IntentKind,
    Licence,
    Offer,
    OfferKind,
    Payment,
    PaymentKind,
    ShareRole,
    UsageRecord,
    UsageStatus,
)
from listings.models import Listing

THOUSANDTH = Decimal("0.001")
logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class ShareSpec:
    """One party's part of a garden call: `listing_id` is the member that worked (the
    garden for the curator, None for the platform), `percent` of the price after fee."""

    role: str
    percent: Decimal
    listing_id: object = None
    payee_id: int | None = None


def split(
    *,
    garden_id,
    curator_id: int,
    member_share_percent: int,
    workers: list[tuple[object, int]],
    generalist_steps: int = 0,
) -> list[ShareSpec]:
    """The shares of one call: `workers` are the (member listing, expert) pairs that
    worked on it, and `generalist_steps` the steps the platform's generalist did; the
    member share is split equally between all the steps."""
    steps = len(workers) + generalist_steps
    member = Decimal(member_share_percent)
    each = (member / steps).quantize(THOUSANDTH) if steps else Decimal(0)
    role = ShareRole.MEMBER if steps == 1 else ShareRole.STEP
    shares = [
        ShareSpec(role=role, percent=each, listing_id=listing_id, payee_id=expert_id)
        for listing_id, expert_id in workers
    ]
    if generalist_steps:
        # the platform's part takes the rounding, so the parts add up to the member share
        shares.append(ShareSpec(role=ShareRole.PLATFORM, percent=member - each * len(workers)))
    elif shares and steps > 1:
        last = shares[-1]
        shares[-1] = ShareSpec(
            role=last.role, percent=member - each * (steps - 1), listing_id=last.listing_id,
            payee_id=last.payee_id,
        )  # fmt: skip
    shares.append(
        ShareSpec(
            role=ShareRole.CURATOR, percent=Decimal(100 - member_share_percent),
            listing_id=garden_id, payee_id=curator_id,
        )
    )  # fmt: skip
    return shares


def call_net_micros(offer: Offer, units: int, price_percent: int = 100) -> int:
    """What `units` calls leave after the platform fee, in millionths of a minor unit:
    a per-call offer's price is per 1,000 calls; a trial's is 0."""
    if offer.kind != OfferKind.PER_CALL:
        return 0
    gross = offer.unit_amount * 1000 * units * price_percent // 100  # micros
    return gross * (100 - settings.PLATFORM_FEE_PERCENT) // 100


def shares_write(record: UsageRecord, licence: Licence, shares: list[ShareSpec]) -> None:
    """In usage_record's transaction: the call's shares, sized at the licence's price."""
    offer = Offer.objects.only("kind", "unit_amount", "currency").get(pk=licence.offer_id)
    net = call_net_micros(offer, record.units, record.price_percent)
    GardenShare.objects.bulk_create(
        GardenShare(
            usage=record,
            licence=licence,
            garden_id=licence.listing_id,
            listing_id=share.listing_id,
            payee_id=share.payee_id,
            role=share.role,
            percent=share.percent,
            amount_micros=int(Decimal(net) * share.percent / 100),
            currency=offer.currency,
            sandbox=licence.sandbox,
            created_at=record.created_at,
        )
        for share in shares
    )


def _served(shares):
    return shares.filter(usage__status=UsageStatus.OK, usage__settled_at__isnull=False)


# --- paying out (real money: separate charges and transfers) ----------------------------


def _largest_remainder(total: int, weights: dict) -> dict:
    """Split `total` minor units in proportion to `weights`: every part rounded down,
    then the units left go to the largest remainders (ties by key), so the parts add up
    to `total` exactly."""
    whole = sum(weights.values())
    if whole <= 0 or total <= 0:
        return dict.fromkeys(weights, 0)
    parts = {k: total * w // whole for k, w in weights.items()}
    order = sorted(weights, key=lambda k: (-(total * weights[k] % whole), str(k)))
    for k in order[: total - sum(parts.values())]:
        parts[k] += 1
    return parts


def garden_payouts_make(*, payment: Payment) -> list[GardenPayout]:
    """Split a garden licence's payment: what it leaves after the platform fee goes to
    the parties of the served shares it covers (the licence's shares not yet paid out,
    weighted by amount, or by percent where the price per call is 0), one transfer per
    payee and listing. The platform's shares are not transferred; with no share to
    cover (a payment before any call) the curator receives the whole. Idempotent: a
    payment is split once."""
    from billing.stripe_outbox import intent_record

    if payment.kind == PaymentKind.REFUND or payment.amount <= 0:
        return []
    with transaction.atomic():
        payment = Payment.objects.select_for_update().select_related("licence").get(pk=payment.pk)
        if payment.garden_payouts.exists():
            return list(payment.garden_payouts.all())
        licence = payment.licence
        pool = payment.amount - payment.platform_fee
        shares = _served(GardenShare.objects.filter(licence=licence, paid_by__isnull=True)).filter(
            created_at__lte=payment.created_at
        )
        rows = list(
            shares.values("listing_id", "payee_id", "role").annotate(
                micros=Sum("amount_micros"), percent=Sum("percent")
            )
        )
        by_amount = any(r["micros"] for r in rows)
        weights = {
            (r["listing_id"], r["payee_id"], r["role"]): (
                r["micros"] if by_amount else int(r["percent"] * 1000)
            )
            for r in rows
        }
        if not weights:
            curator = Listing.objects.values_list("owner_id", flat=True).get(pk=licence.listing_id)
            weights = {(licence.listing_id, curator, ShareRole.CURATOR): 1}
        parts = _largest_remainder(pool, weights)
        payouts = []
        for (listing_id, payee_id, role), amount in sorted(parts.items(), key=str):
            if payee_id is None or amount <= 0:
                continue  # the platform's part stays on its balance
            payout = GardenPayout.objects.create(
                payment=payment, garden_id=licence.listing_id, listing_id=listing_id,
                payee_id=payee_id, role=role, amount=amount, currency=payment.currency,
                period=payment.period, sandbox=payment.sandbox, created_at=payment.created_at,
            )  # fmt: skip
            payouts.append(payout)
            account = ConnectAccount.objects.filter(expert_id=payee_id, sandbox=False).first()
            if not payment.sandbox and account is None:
                # Checkout required every payee to be payable; an account gone since is a
                # payout owed and not sent: the reconciler flags it (no transfer, none
                # in flight) for a moderator.
                logger.warning(
                    "garden payout %s: payee %s has no Connect account", payout.pk, payee_id
                )
            elif not payment.sandbox:
                intent_record(
                    kind=IntentKind.TRANSFER_CREATE,
                    key_parts=("garden-payout", payout.pk),
                    params={
                        "payout_id": payout.pk,
                        "amount": amount,
                        "currency": payment.currency,
                        "destination": account.stripe_account_id,
                        "source_transaction": payment.stripe_charge_id,
                        "transfer_group": f"garden-payment-{payment.pk}",
                    },
                    licence=licence,
                    payment=payment,
                )
        shares.update(paid_by=payment)
        Payment.objects.filter(pk=payment.pk).update(expert_amount=sum(p.amount for p in payouts))
    return payouts


def payout_transfer_recorded(*, payout_id, transfer_id: str) -> None:
    GardenPayout.objects.filter(pk=payout_id, stripe_transfer_id="").update(
        stripe_transfer_id=transfer_id
    )


def payout_reversal_recorded(*, payout_id, reversal_id: str) -> None:
    GardenPayout.objects.filter(pk=payout_id, stripe_reversal_id="").update(
        stripe_reversal_id=reversal_id
    )


def _half_up(numerator: int, denominator: int) -> int:
    return (2 * numerator + denominator) // (2 * denominator)


def garden_payouts_reverse(*, refund: Payment) -> list[GardenPayout]:
    """A refund of a garden payment takes the payouts back in proportion: of what the
    payment paid out, the refunded fraction (rounded half up), split over its payouts by
    largest remainder and never more than a payout has left; one Stripe transfer
    reversal each, through the outbox. The refund row records what came back from the
    payees (expert_amount) and the platform fee given up (platform_fee). Idempotent."""
    from billing.stripe_outbox import intent_record

    if refund.kind != PaymentKind.REFUND or refund.refunds_id is None:
        return []
    with transaction.atomic():
        refund = Payment.objects.select_for_update().get(pk=refund.pk)
        if refund.garden_payouts.exists():
            return list(refund.garden_payouts.all())
        paid = refund.refunds
        payouts = list(paid.garden_payouts.filter(reverses__isnull=True))
        left = {
            p.pk: p.amount + (p.reversals.aggregate(s=Sum("amount"))["s"] or 0) for p in payouts
        }
        fraction = (-refund.amount, paid.amount)
        back_total = min(
            _half_up(sum(p.amount for p in payouts) * fraction[0], fraction[1]), sum(left.values())
        )
        parts = _largest_remainder(back_total, {p.pk: p.amount for p in payouts})
        rows = []
        for payout in payouts:
            back = min(parts[payout.pk], left[payout.pk])
            if back <= 0:
                continue
            row = GardenPayout.objects.create(
                payment=refund, garden_id=payout.garden_id, listing_id=payout.listing_id,
                payee_id=payout.payee_id, role=payout.role, amount=-back,
                currency=payout.currency, period=refund.period, sandbox=refund.sandbox,
                reverses=payout, created_at=refund.created_at,
            )  # fmt: skip
            rows.append(row)
            if not refund.sandbox:
                intent_record(
                    kind=IntentKind.TRANSFER_REVERSAL_CREATE,
                    key_parts=("garden-reversal", row.pk),
                    params={"payout_id": row.pk, "reverses": payout.pk, "amount": back},
                    licence=refund.licence,
                    payment=refund,
                )
        Payment.objects.filter(pk=refund.pk).update(
            expert_amount=-sum(-r.amount for r in rows),
            platform_fee=-_half_up(paid.platform_fee * fraction[0], fraction[1]),
        )
    return rows


def garden_stripe_side(payment: Payment, ours: dict) -> dict:
    """What Stripe holds of a garden payment's payouts, for the reconciler: the
    transfers (made, or still pending in the outbox) and their reversals. Its platform
    fee and fee refunds live on the platform's own balance: nothing at Stripe to compare."""
    from billing import stripe_gateway as gateway
    from billing.models import IntentStatus, StripeIntent

    def in_flight(kind, payment_row) -> set:
        return {
            i.params.get("payout_id")
            for i in StripeIntent.objects.filter(
                kind=kind, payment=payment_row, status=IntentStatus.PENDING
            )
        }

    transferred = 0
    sent_ids = []
    pending = in_flight(IntentKind.TRANSFER_CREATE, payment)
    for payout in payment.garden_payouts.all():
        if payout.stripe_transfer_id:
            sent_ids.append(payout.stripe_transfer_id)
        elif payout.pk in pending:
            transferred += payout.amount
    reversed_ = 0
    for transfer_id in sent_ids:
        transfer = gateway.transfer_retrieve(transfer_id)
        transferred += transfer.amount
        reversed_ += transfer.amount_reversed
    for refund in Payment.objects.filter(refunds=payment, kind=PaymentKind.REFUND):
        waiting = in_flight(IntentKind.TRANSFER_REVERSAL_CREATE, refund)
        reversed_ += sum(-r.amount for r in refund.garden_payouts.all() if r.pk in waiting)
    return {
        "platform_fee": ours["platform_fee"],
        "fee_refunded": ours["fee_refunded"],
        "expert_amount": transferred,
        "reversed": reversed_,
    }


# --- the statement's garden lines -----------------------------------------------------------


@dataclass(frozen=True)
class GardenIncomeLine:
    """One party's garden income in a month, per garden, member listing and role.

    accrued: the served calls' shares at their per-call price, summed exactly and rounded
    once (half up) to the cent; paid: the transfers made for it (real money), each a
    GardenPayout with its Stripe transfer."""

    garden_slug: str
    garden_title: str
    listing_slug: str
    listing_title: str
    role: str
    currency: str
    calls: int
    accrued: int
    paid: int
    transfers: int
    accrued_exact: str = "0"  # minor units, to the millionth: what sub-cent calls add up to


def _cents(micros: int) -> int:
    return int((Decimal(micros) / 1_000_000).quantize(Decimal(1), rounding=ROUND_HALF_UP))


def garden_income(*, payee: User, month: date, sandbox: bool = False) -> list[GardenIncomeLine]:
    """The payee's garden lines for `month` (the first day): two aggregate queries."""
    start = date(month.year, month.month, 1)
    end = _next_month(start)
    accrued = (
        _served(GardenShare.objects.filter(payee=payee, sandbox=sandbox))
        .filter(created_at__date__gte=start, created_at__date__lt=end)
        .values("garden_id", "listing_id", "role", "currency")
        .annotate(micros=Sum("amount_micros"), calls=Sum("usage__units"))
    )
    paid = (
        GardenPayout.objects.filter(payee=payee, sandbox=sandbox, period=start)
        .values("garden_id", "listing_id", "role", "currency")
        .annotate(total=Sum("amount"), n=Count("id", filter=~Q(stripe_transfer_id="")))
    )
    lines: dict[tuple, dict] = defaultdict(lambda: {"calls": 0, "micros": 0, "paid": 0, "n": 0})
    for r in accrued:
        key = (r["garden_id"], r["listing_id"], r["role"], r["currency"])
        lines[key]["calls"] += r["calls"] or 0
        lines[key]["micros"] += r["micros"] or 0
    for r in paid:
        key = (r["garden_id"], r["listing_id"], r["role"], r["currency"])
        lines[key]["paid"] += r["total"] or 0
        lines[key]["n"] += r["n"]
    ids = {k[0] for k in lines} | {k[1] for k in lines}
    names = {
        pk: (slug, title)
        for pk, slug, title in Listing.objects.filter(pk__in=ids).values_list("pk", "slug", "title")
    }
    return sorted(
        (
            GardenIncomeLine(
                garden_slug=names[garden][0],
                garden_title=names[garden][1],
                listing_slug=names[listing][0],
                listing_title=names[listing][1],
                role=role,
                currency=currency,
                calls=v["calls"],
                accrued=_cents(v["micros"]),
                paid=v["paid"],
                transfers=v["n"],
                accrued_exact=str((Decimal(v["micros"]) / 1_000_000).normalize()),
            )
            for (garden, listing, role, currency), v in lines.items()
        ),
        key=lambda line: (line.garden_slug, line.listing_slug, line.role),
    )


def _next_month(day: date) -> date:
    return date(day.year + day.month // 12, day.month % 12 + 1, 1)
