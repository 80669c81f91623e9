"""Reads of the buyer's evidence. A private evaluation is read by its owner only: anyone
else, the listing's expert included, gets 404 (its existence is not revealed)."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import timedelta

from django.db.models import Count, QuerySet
from django.db.models.functions import TruncMonth
from django.utils import timezone

from accounts.models import User
from evidence.errors import EvaluationNotFound
from evidence.models import PrivateEvaluation, PrivateEvaluationCandidate
from listings.models import Listing


def private_evaluation_list(*, owner: User) -> QuerySet[PrivateEvaluation]:
    return PrivateEvaluation.objects.filter(owner=owner).prefetch_related("candidates__listing")


def private_evaluation_get(*, owner: User, evaluation_id: str) -> PrivateEvaluation:
    evaluation = (
        PrivateEvaluation.objects.filter(pk=str(evaluation_id), owner=owner)
        .prefetch_related("candidates__listing")
        .first()
    )
    if evaluation is None:
        raise EvaluationNotFound("No private evaluation here.")
    return evaluation


def private_evaluation_counts(*, listing: Listing, months: int = 12) -> list[dict]:
    """How many private evaluations named ``listing`` each month (newest first): the one
    thing its expert learns of them. Never who asked, their rows or the figures."""
    since = (timezone.now() - timedelta(days=31 * months)).replace(day=1)
    rows = (
        PrivateEvaluationCandidate.objects.filter(listing=listing, created_at__gte=since)
        .annotate(month=TruncMonth("created_at"))
        .values("month")
        .annotate(evaluations=Count("id"))
        .order_by("-month")
    )
    return [
        {"month": row["month"].strftime("%Y-%m"), "evaluations": row["evaluations"]} for row in rows
    ]


@dataclass(frozen=True)
class ThousandCalls:
    """What 1,000 calls in a month cost under one offer: ``amount`` in minor units (None:
    the offer cannot serve them), and a sentence saying how it was worked out."""

    offer: str
    kind: str
    currency: str
    amount: int | None
    basis: str


def thousand_calls_costs(*, listing: Listing) -> list[ThousandCalls]:
    """The cost of 1,000 calls at each of the listing's active offers, worked out as the
    compare page works it out (evidence.compare.offer_costs)."""
    from evidence.compare import offer_costs

    return [
        ThousandCalls(
            offer=cost.name or cost.kind_label,
            kind=cost.kind,
            currency=cost.currency,
            amount=cost.cost_of_1000_calls,
            basis=cost.explained,
        )
        for cost in offer_costs(listing=listing)
    ]
