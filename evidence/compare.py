"""Compare 2-4 published listings side by side: the read behind `/compare/` and
`GET /api/v1/compare` (both render the one `Comparison` built here).

For each listing: its verified score on its expert's sealed split with the interval and
the lift over the strongest baseline; its licence terms; its offers with what 1,000 calls
cost at each; its latency (p50/p95 from the gateway's per-listing histogram); and the
caller's own private evaluations that scored it. Sentences are written here, once, so the
API and the portal say the same thing.

What it never does: crown a winner. Sealed scores are measured on different rows (each
expert's own sealed split), so where two intervals overlap it says the evaluations cannot
tell the two apart, and where they do not, it still says that the rows differ. The
like-for-like answers are the buyer's private evaluation (the same rows for every
candidate, with a paired test) and the leaderboards (the same benchmark rows).
"""

from __future__ import annotations

import math
from collections import Counter
from dataclasses import asdict, dataclass, field
from datetime import datetime
from typing import Any

from accounts.models import User
from billing import selectors as billing_selectors
from billing.models import OfferKind
from evidence.errors import InvalidComparison
from evidence.models import EvaluationStatus, PrivateEvaluation
from listings import gardens
from listings import selectors as listing_selectors
from listings.errors import ListingNotFound
from listings.models import Listing, ListingKind
from marketplace.metrics import listing_latency_buckets

MIN_LISTINGS, MAX_LISTINGS = 2, 4
MAX_SLUG_CHARS = 80  # Listing.slug's max_length
# Under this many calls a p95 is one or two calls' luck: the page says "not enough calls".
LATENCY_MIN_CALLS = 20
# The caller's latest private evaluations read per comparison (each holds 1-5 listings).
PRIVATE_EVALUATIONS_READ = 20
# Metrics that are a share of rows: written as percentages, differences as points.
SHARE_METRICS = {"accuracy", "exact_match"}

LIKE_FOR_LIKE = (
    "Each verified score was measured on its own expert's sealed test rows, and those rows "
    "differ from listing to listing, so the scores are not directly comparable. For a "
    "like-for-like answer, score these models on your own rows with a private evaluation "
    "(every model on the same rows, with a paired test), or read the leaderboards, where "
    "every model of a task is scored on the same benchmark rows."
)


# --- the structure both views render ------------------------------------------------------


@dataclass(frozen=True)
class VerifiedScore:
    """The platform's sealed evaluation of a listing's live version, as its page shows it."""

    metric: str  # "accuracy", "exact_match"
    metric_label: str
    value: float
    ci_low: float | None
    ci_high: float | None
    sealed_rows: int | None
    lift: float | None  # over the strongest baseline, on the same sealed rows
    lift_ci_low: float | None
    lift_ci_high: float | None
    lift_baseline: str  # its key
    lift_baseline_label: str
    is_legacy: bool
    graded_metric: dict | None  # generation: partial credit beside exact match
    summary: str  # plain language
    lift_summary: str

    @property
    def has_interval(self) -> bool:
        return self.ci_low is not None and self.ci_high is not None


@dataclass(frozen=True)
class GardenMemberScore:
    slug: str
    title: str
    verified: VerifiedScore | None


@dataclass(frozen=True)
class LicenceTerms:
    commercial_use: bool
    derivatives_allowed: bool
    on_prem_download: bool
    attribution_required: bool
    max_calls_per_month: int | None
    summary: str  # the listing's generated licence summary
    plain: list[str]  # one short line per term


@dataclass(frozen=True)
class OfferCost:
    id: str
    kind: str
    kind_label: str
    name: str
    currency: str
    unit_amount: int  # minor units: per 1,000 calls, per month, once, or 0 (its kind says)
    included_calls: int | None
    overage: str
    overage_unit_amount: int | None
    # What 1,000 calls in a month cost at this offer, in minor units; None: not possible
    # (a download is run on the buyer's machines; a quota or trial under 1,000 calls).
    cost_of_1000_calls: int | None
    explained: str


@dataclass(frozen=True)
class Latency:
    calls: int  # answered calls the histogram holds
    p50_ms: float | None  # None: not enough calls yet
    p95_ms: float | None
    summary: str


@dataclass(frozen=True)
class PrivateScore:
    """One listing's figures in one of the caller's own private evaluations."""

    evaluation_id: str
    created_at: datetime
    rows: int
    metric: str
    metric_label: str
    higher_is_better: bool
    value: float | None
    ci_low: float | None
    ci_high: float | None
    rows_scored: int | None
    errors: int | None
    latency_ms_mean: float | None
    latency_ms_p95: float | None
    summary: str


@dataclass(frozen=True)
class ComparedListing:
    slug: str
    title: str
    summary: str
    kind: str  # model | garden
    task: str
    domain: str
    expert: str
    same_task: bool  # the task of the first listing named
    verified: VerifiedScore | None  # None: a garden, or no evaluation yet
    verified_note: str  # why there is no verified score, when there is none
    garden_members: list[GardenMemberScore]
    licence: LicenceTerms
    offers: list[OfferCost]
    latency: Latency
    private_scores: list[PrivateScore]


@dataclass(frozen=True)
class PairVerdict:
    """Two listings' intervals side by side, in words; never a winner."""

    a: str
    b: str
    source: str  # "sealed": each on its own sealed rows; "private": the same rows of yours
    overlap: bool  # sealed: the intervals overlap; private: the paired test cannot separate
    evaluation_id: str | None
    delta: float | None  # private only: a minus b, positive when a is better
    ci_low: float | None
    ci_high: float | None
    summary: str


@dataclass(frozen=True)
class Comparison:
    task: str  # the first listing's
    listings: list[ComparedListing]
    tasks_differ: bool
    task_notes: list[str]
    verdicts: list[PairVerdict]
    notes: list[str]
    private_evaluations_included: bool
    private_evaluations_note: str = ""
    like_for_like: dict[str, str] = field(default_factory=dict)

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)


# --- input ---------------------------------------------------------------------------------


def _invalid(message: str) -> InvalidComparison:
    return InvalidComparison(message, fields={"listings": [message]})


def compare_slugs_from_params(params) -> list[str]:
    """The listings to compare from request parameters: `listings=a,b,c`, or `listings`
    repeated (the catalogue's "Add to compare" boxes), in the order named.

    Raises InvalidComparison (422, field `listings`) for fewer than 2 or more than 4
    listings, a listing named twice, or a NUL character."""
    values = (
        params.getlist("listings") if hasattr(params, "getlist") else [params.get("listings", "")]
    )
    slugs = [part.strip() for value in values for part in str(value).split(",") if part.strip()]
    if any("\x00" in slug for slug in slugs):
        raise _invalid("Listing names cannot contain NUL characters.")
    chosen = f"{len(slugs)} {'was' if len(slugs) == 1 else 'were'} chosen"
    if len(slugs) < MIN_LISTINGS:
        raise _invalid(f"Choose {MIN_LISTINGS} to {MAX_LISTINGS} listings to compare ({chosen}).")
    if len(slugs) > MAX_LISTINGS:
        raise _invalid(f"Compare at most {MAX_LISTINGS} listings at a time ({chosen}).")
    twice = sorted(slug[:MAX_SLUG_CHARS] for slug, n in Counter(slugs).items() if n > 1)
    if twice:
        raise _invalid(f"Choose each listing once: {', '.join(twice)} appears more than once.")
    return slugs


def _published_listings(slugs: list[str]) -> list[Listing]:
    """The published listings of active experts, in the order named. Unknown and
    unpublished names are one error, so that it reveals no draft."""
    found, missing = [], []
    for slug in slugs:
        try:
            if len(slug) > MAX_SLUG_CHARS:
                raise ListingNotFound("No listing here.")
            found.append(listing_selectors.listing_get_public(slug=slug, viewer=None))
        except ListingNotFound:
            missing.append(slug[:MAX_SLUG_CHARS])
    if missing:
        raise _invalid(
            f"No published listing is named {', '.join(missing)}: check the names, or pick "
            "the listings from the catalogue."
        )
    return found


# --- plain language -------------------------------------------------------------------------


def _is_share(metric: str) -> bool:
    return metric in SHARE_METRICS


def _number(metric: str, value: float | None) -> str:
    if value is None:
        return "—"
    return f"{value * 100:.1f}%" if _is_share(metric) else f"{value:.3f}"


def _difference(metric: str, value: float) -> str:
    return f"{abs(value) * 100:.1f} points" if _is_share(metric) else f"{abs(value):.3f}"


def _range(metric: str, low: float | None, high: float | None) -> str:
    if low is None or high is None:
        return ""
    return f"{_number(metric, low)} and {_number(metric, high)}"


def _signed_range(metric: str, low: float, high: float) -> str:
    if _is_share(metric):
        return f"{low * 100:+.1f} to {high * 100:+.1f} points"
    return f"{low:+.3f} to {high:+.3f}"


def _verified_score(summary: dict | None) -> VerifiedScore | None:
    """A listing's evaluation summary (listings.selectors.evaluation_summary) in words."""
    if not summary or summary.get("score") is None:
        return None
    metric = str(summary.get("primary_metric") or "accuracy")
    label = str(summary.get("primary_metric_label") or metric.replace("_", " "))
    value = float(summary["score"])
    low, high = [*(summary.get("score_interval") or []), None, None][:2]
    rows = summary.get("sealed_rows")
    text = f"{label.capitalize()} {_number(metric, value)}"
    text += f" on {rows} sealed test rows the model never saw" if rows else " on sealed test rows"
    if low is not None and high is not None:
        text += f"; the true figure is likely between {_range(metric, low, high)} (95% interval)"
    text += "."
    if summary.get("is_legacy"):
        text += " An older evaluation, without the classic and LLM baselines."

    strongest = summary.get("strongest_baseline") or {}
    lift = strongest.get("lift") or {}
    delta = lift.get("delta")
    lift_low, lift_high = lift.get("ci_low"), lift.get("ci_high")
    baseline_label = str(strongest.get("label") or "")
    if delta is None:
        lift_text = "No lift over a baseline was measured."
    else:
        direction = "Better" if delta >= 0 else "Worse"
        lift_text = (
            f"{direction} than the strongest simple alternative ({baseline_label}) by "
            f"{_difference(metric, delta)}"
        )
        if lift_low is not None and lift_high is not None:
            lift_text += f" (likely {_signed_range(metric, lift_low, lift_high)})"
            if lift_low <= 0 < delta:
                lift_text += ": not a verified improvement, since the interval includes no gain"
        lift_text += "."
    return VerifiedScore(
        metric=metric,
        metric_label=label,
        value=value,
        ci_low=low,
        ci_high=high,
        sealed_rows=rows if isinstance(rows, int) else None,
        lift=delta,
        lift_ci_low=lift_low,
        lift_ci_high=lift_high,
        lift_baseline=str(strongest.get("name") or ""),
        lift_baseline_label=baseline_label,
        is_legacy=bool(summary.get("is_legacy")),
        graded_metric=summary.get("graded_metric"),
        summary=text,
        lift_summary=lift_text,
    )


def _licence_terms(listing: Listing) -> LicenceTerms:
    cap = listing.max_calls_per_month
    plain = [
        "Commercial use allowed." if listing.commercial_use else "Not for commercial use.",
        "You may build and share derived models."
        if listing.derivatives_allowed
        else "No derived models.",
        "You may download it and run it on your own machines."
        if listing.on_prem_download
        else "API calls only: no download.",
        "You must credit the expert." if listing.attribution_required else "No credit needed.",
        f"At most {cap:,} calls a month." if cap else "No monthly call limit from the licence.",
    ]
    return LicenceTerms(
        commercial_use=listing.commercial_use,
        derivatives_allowed=listing.derivatives_allowed,
        on_prem_download=listing.on_prem_download,
        attribution_required=listing.attribution_required,
        max_calls_per_month=cap,
        summary=listing.licence_summary,
        plain=plain,
    )


def _cost_of_1000_calls(offer, cap: int | None) -> tuple[int | None, str]:
    """What 1,000 calls in one month cost at `offer` (minor units), and why, in words."""
    if offer.kind == OfferKind.DOWNLOAD:
        return None, "A one-off payment for the model file: calls run on your own machines."
    if cap is not None and cap < 1000:
        return None, f"The licence allows at most {cap:,} calls a month."
    if offer.kind == OfferKind.PER_CALL:
        return offer.unit_amount, "Billed by use: the price is per 1,000 calls."
    included = offer.included_calls or 0
    if offer.kind == OfferKind.FREE_TRIAL:
        if included >= 1000:
            return 0, f"Free for the trial's {included:,} calls."
        return None, f"The free trial covers {included:,} calls, fewer than 1,000."
    # A subscription: the monthly fee covers its quota; past it, overage or refusal.
    if included >= 1000:
        return (
            offer.unit_amount,
            f"The monthly fee covers {included:,} calls; 1,000 calls cost the whole fee.",
        )
    if offer.overage == "bill" and offer.overage_unit_amount:
        extra = math.ceil((1000 - included) * offer.overage_unit_amount / 1000)
        return (
            offer.unit_amount + extra,
            f"The monthly fee covers {included:,} calls; the rest are billed as overage.",
        )
    return None, f"Only {included:,} calls a month; calls past that are refused."


def offer_costs(*, listing: Listing) -> list[OfferCost]:
    """The listing's active offers, each with what 1,000 calls in a month cost at it."""
    rows = []
    for offer in billing_selectors.offer_list_public(listing=listing):
        cost, explained = _cost_of_1000_calls(offer, listing.max_calls_per_month)
        rows.append(
            OfferCost(
                id=str(offer.id),
                kind=offer.kind,
                kind_label=offer.get_kind_display(),
                name=offer.name,
                currency=offer.currency,
                unit_amount=offer.unit_amount,
                included_calls=offer.included_calls,
                overage=offer.overage,
                overage_unit_amount=offer.overage_unit_amount,
                cost_of_1000_calls=cost,
                explained=explained,
            )
        )
    return rows


# --- latency --------------------------------------------------------------------------------


def quantile_from_buckets(buckets: list[tuple[float, float]], q: float) -> float | None:
    """Prometheus's histogram_quantile: the q-quantile (seconds) of cumulative buckets
    `[(upper bound, count), ..., (inf, total)]`, linear inside its bucket; a quantile in
    the +Inf bucket is the highest finite bound. None without observations."""
    if not buckets or buckets[-1][1] <= 0:
        return None
    rank = q * buckets[-1][1]
    lower_bound, lower_count = 0.0, 0.0
    for upper, count in buckets:
        if count >= rank:
            if math.isinf(upper):
                return lower_bound
            if count == lower_count:
                return upper
            return lower_bound + (upper - lower_bound) * (rank - lower_count) / (
                count - lower_count
            )
        lower_bound, lower_count = upper, count
    return lower_bound


def _milliseconds(seconds: float) -> str:
    return f"{seconds:.1f} s" if seconds >= 1 else f"{seconds * 1000:.0f} ms"


def _latency(buckets: list[tuple[float, float]] | None) -> Latency:
    calls = int(buckets[-1][1]) if buckets else 0
    if calls < LATENCY_MIN_CALLS:
        so_far = f" ({calls} so far)" if calls else ""
        return Latency(
            calls=calls,
            p50_ms=None,
            p95_ms=None,
            summary=f"Not enough calls yet{so_far} to say how fast it answers.",
        )
    p50, p95 = quantile_from_buckets(buckets, 0.5), quantile_from_buckets(buckets, 0.95)
    return Latency(
        calls=calls,
        p50_ms=round(p50 * 1000, 1),
        p95_ms=round(p95 * 1000, 1),
        summary=(
            f"Half of its calls were answered within {_milliseconds(p50)}, and 95 in 100 "
            f"within {_milliseconds(p95)} (from {calls:,} calls, timed at the gateway)."
        ),
    )


# --- the caller's own private evaluations ------------------------------------------------


def _private_evaluations(owner: User | None, listings: list[Listing]) -> list[PrivateEvaluation]:
    """The caller's own succeeded evaluations that scored any of these listings, newest
    first. Filtered on the owner in the query: another buyer's never leave the database."""
    if owner is None or not owner.is_authenticated:
        return []
    return list(
        PrivateEvaluation.objects.filter(
            owner=owner,
            status=EvaluationStatus.SUCCEEDED,
            result__isnull=False,
            candidates__listing__in=[listing.pk for listing in listings],
        )
        .distinct()
        .order_by("-created_at", "-id")[:PRIVATE_EVALUATIONS_READ]
    )


def _contenders(result: dict) -> dict[str, dict]:
    return {
        str(c.get("key")): c
        for c in result.get("contenders") or []
        if isinstance(c, dict) and c.get("key")
    }


def _number_or_none(value: Any) -> float | None:
    is_number = isinstance(value, int | float) and not isinstance(value, bool)
    return float(value) if is_number and math.isfinite(value) else None


def _private_score(evaluation: PrivateEvaluation, contender: dict) -> PrivateScore:
    result = evaluation.result or {}
    metric = result.get("metric") or {}
    name = str(metric.get("name") or "accuracy")
    label = str(metric.get("label") or name.replace("_", " "))
    value = _number_or_none(contender.get("value"))
    low, high = _number_or_none(contender.get("ci_low")), _number_or_none(contender.get("ci_high"))
    rows = int(result.get("rows") or evaluation.row_count or 0)
    latency = contender.get("latency_ms_per_row") or {}
    text = (
        f"On your {rows:,} rows ({evaluation.created_at:%d %b %Y}): {label} {_number(name, value)}"
    )
    if low is not None and high is not None:
        text += f", likely between {_range(name, low, high)}"
    text += "."
    if metric.get("higher_is_better") is False:
        text += " Lower is better."
    return PrivateScore(
        evaluation_id=evaluation.id,
        created_at=evaluation.created_at,
        rows=rows,
        metric=name,
        metric_label=label,
        higher_is_better=metric.get("higher_is_better") is not False,
        value=value,
        ci_low=low,
        ci_high=high,
        rows_scored=contender.get("rows_scored"),
        errors=contender.get("errors"),
        latency_ms_mean=_number_or_none(latency.get("mean")),
        latency_ms_p95=_number_or_none(latency.get("p95")),
        summary=text,
    )


def _private_verdicts(
    evaluations: list[PrivateEvaluation], titles: dict[str, str]
) -> list[PairVerdict]:
    """The paired differences of each evaluation between two of the compared listings."""
    verdicts = []
    for evaluation in evaluations:
        result = evaluation.result or {}
        metric = str((result.get("metric") or {}).get("name") or "accuracy")
        rows = int(result.get("rows") or evaluation.row_count or 0)
        for pair in result.get("pairs") or []:
            if not isinstance(pair, dict):
                continue
            a, b = str(pair.get("a", "")), str(pair.get("b", ""))
            slug_a, slug_b = a.removeprefix("listing:"), b.removeprefix("listing:")
            if not (a.startswith("listing:") and b.startswith("listing:")):
                continue
            if slug_a not in titles or slug_b not in titles:
                continue
            delta = _number_or_none(pair.get("delta"))
            low, high = _number_or_none(pair.get("ci_low")), _number_or_none(pair.get("ci_high"))
            separated = bool(pair.get("separated"))
            interval = (
                f" (95% interval {_signed_range(metric, low, high)})"
                if low is not None and high is not None
                else ""
            )
            if separated and delta is not None:
                better, worse = (slug_a, slug_b) if delta > 0 else (slug_b, slug_a)
                text = (
                    f"On the same {rows:,} rows of yours, {titles[better]} scored better than "
                    f"{titles[worse]} by {_difference(metric, delta)}{interval}: a like-for-like "
                    "difference the paired test can see."
                )
            else:
                text = (
                    f"On the same {rows:,} rows of yours, {titles[slug_a]} and {titles[slug_b]} "
                    f"cannot be told apart{interval}: the difference could be zero."
                )
            verdicts.append(
                PairVerdict(
                    a=slug_a, b=slug_b, source="private", overlap=not separated,
                    evaluation_id=evaluation.id, delta=delta, ci_low=low, ci_high=high,
                    summary=text,
                )
            )  # fmt: skip
    return verdicts


# --- sealed intervals, pair by pair ---------------------------------------------------------


def _sealed_verdicts(listings: list[ComparedListing]) -> list[PairVerdict]:
    """Each pair of listings of one task with sealed intervals: overlap, in words."""
    scored = [x for x in listings if x.verified is not None and x.verified.has_interval]
    verdicts = []
    for i, first in enumerate(scored):
        for second in scored[i + 1 :]:
            one, two = first.verified, second.verified
            if first.task != second.task or one.metric != two.metric:
                continue
            overlap = one.ci_low <= two.ci_high and two.ci_low <= one.ci_high
            if overlap:
                text = (
                    f"{first.title} and {second.title}: these intervals overlap: the "
                    "evaluations cannot tell these two apart."
                )
            else:
                high, low = (first, second) if one.value > two.value else (second, first)
                text = (
                    f"{high.title}'s interval lies above {low.title}'s, but each was measured "
                    "on its own expert's sealed rows: this does not show which would do "
                    "better on your data."
                )
            verdicts.append(
                PairVerdict(
                    a=first.slug, b=second.slug, source="sealed", overlap=overlap,
                    evaluation_id=None, delta=None, ci_low=None, ci_high=None, summary=text,
                )
            )  # fmt: skip
    return verdicts


# --- the selector ---------------------------------------------------------------------------


def _garden_members(listing: Listing) -> list[GardenMemberScore]:
    public = gardens.garden_public(listing) or {}
    members = []
    for member in public.get("members") or []:
        try:
            found = listing_selectors.listing_get_public(slug=member["listing"], viewer=None)
        except ListingNotFound:
            continue  # a member no longer published: its garden does not call it
        summary = listing_selectors.evaluation_summary(found.live_version)
        members.append(
            GardenMemberScore(slug=found.slug, title=found.title, verified=_verified_score(summary))
        )
    return members


def comparison_build(*, slugs: list[str], viewer: User | None, include_private: bool) -> Comparison:
    """The side-by-side of `slugs` (already checked by compare_slugs_from_params).

    Raises InvalidComparison (422, field `listings`) when a name is not a published
    listing. `include_private`: add the viewer's own succeeded private evaluations of
    these listings; never anyone else's (the query filters on the viewer)."""
    listings = _published_listings(slugs)
    task = listings[0].task
    latency = listing_latency_buckets([listing.slug for listing in listings])
    evaluations = _private_evaluations(viewer, listings) if include_private else []

    compared = []
    for listing in listings:
        is_garden = listing.kind == ListingKind.GARDEN
        verified = None
        note = ""
        members: list[GardenMemberScore] = []
        if is_garden:
            members = _garden_members(listing)
            note = (
                "A garden has no sealed evaluation of its own: each call is answered by one "
                "of its members (or a general-purpose model), so its members' verified "
                "scores are shown instead."
                if members
                else "A garden has no sealed evaluation of its own, and none of its members "
                "is published now."
            )
        else:
            verified = _verified_score(listing_selectors.evaluation_summary(listing.live_version))
            if verified is None:
                note = "No verified evaluation yet."
        key = f"listing:{listing.slug}"
        private = []
        for evaluation in evaluations:
            contender = _contenders(evaluation.result or {}).get(key)
            if contender is not None:
                private.append(_private_score(evaluation, contender))
        compared.append(
            ComparedListing(
                slug=listing.slug,
                title=listing.title,
                summary=listing.summary,
                kind=listing.kind,
                task=listing.task,
                domain=listing.get_domain_display(),
                expert=listing.owner.name,
                same_task=listing.task == task,
                verified=verified,
                verified_note=note,
                garden_members=members,
                licence=_licence_terms(listing),
                offers=offer_costs(listing=listing),
                latency=_latency(latency.get(listing.slug)),
                private_scores=private,
            )
        )

    others = [x for x in compared if not x.same_task]
    task_notes = [
        f"{x.title} is a {x.task} model, unlike {compared[0].title} ({task}): their scores "
        "measure different things, so they are not compared with each other."
        for x in others
    ]
    titles = {x.slug: x.title for x in compared}
    verdicts = _sealed_verdicts(compared) + _private_verdicts(evaluations, titles)
    notes = []
    if sum(1 for x in compared if x.verified is not None) >= 2:
        notes.append(LIKE_FOR_LIKE)
    if any(x.kind == ListingKind.GARDEN for x in compared):
        notes.append(
            "Gardens have no sealed evaluation of their own: compare their members' scores, "
            "or score the garden on your own rows."
        )
    if include_private:
        private_note = (
            "" if evaluations else "You have no finished private evaluation of these listings yet."
        )
    elif viewer is not None and viewer.is_authenticated:
        private_note = "Your private evaluations need an API key with the read scope."
    else:
        private_note = "Sign in to see your own private evaluations of these listings."
    return Comparison(
        task=task,
        listings=compared,
        tasks_differ=bool(others),
        task_notes=task_notes,
        verdicts=verdicts,
        notes=notes,
        private_evaluations_included=include_private,
        private_evaluations_note=private_note,
        like_for_like={
            "private_evaluation": "/api/v1/evaluations",
            "leaderboards": "/api/v1/leaderboards",
        },
    )
