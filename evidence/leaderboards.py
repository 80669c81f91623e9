"""Leaderboards: every published listing scored on each active benchmark set it fits,
ranked by the pessimistic end of its interval, ties shown as ties.

What gets scored, and when:
- a version that goes live (``listing.version_live``, recorded by listings when a listing
  is approved or a new version replaces the live one) is queued on every active set of its
  task that it fits (``on_version_live``, a domain-event consumer);
- the beat sweep (``leaderboards_sweep``) queues whatever is still missing, so a lost task,
  a new set or a reinstated listing is scored too;
- the task (``evidence.tasks.leaderboard_score``, inference queue: the engine is in that
  process) scores the listing's live version and the generalist (its bare base) on the set's
  rows at batch priority (evidence.scoring), then writes the entry: the listing's current
  entry is superseded (``superseded_at``), never deleted.

Gardens have no version of their own and are never scored. A queued score is marked in the
cache so the sweep does not queue it twice, a running one holds a lock there, and a version
whose scoring failed ``MAX_FAILURES`` times is left alone for a day (logged).
"""

from __future__ import annotations

import bisect
import itertools
import logging
from collections.abc import Iterator
from dataclasses import dataclass, field, replace
from datetime import datetime

from django.core.cache import cache
from django.db import IntegrityError, transaction
from django.db.models import Count, Q
from django.utils import timezone

from evidence.benchmarks import approved_label_maps, benchmark_rows, contender_label_map
from evidence.errors import BenchmarkNotFound
from evidence.models import BenchmarkLabelMap, BenchmarkSet, LeaderboardEntry
from listings.models import Listing, ListingKind, ListingStatus, ListingVersion
from marketplace.celery import send_after_commit
from marketplace.models import DomainEvent

logger = logging.getLogger(__name__)

SCORE_TASK = "evidence.tasks.leaderboard_score"
VERSION_LIVE_EVENT = "listing.version_live"
QUEUED_SECONDS = 3600  # a queued score no task took is queued again after this
LOCK_SECONDS = 3 * 3600  # longer than any scoring; a dead worker's lock lapses
MAX_FAILURES = 3
FAILURES_SECONDS = 24 * 3600
SWEEP_LIMIT = 100  # scores queued per sweep at most
GENERALIST_KEY = "generalist"
# What a board keeps of the generalist scored beside each entry (its reference row).
GENERALIST_FIGURES = (
    "label", "value", "ci_low", "ci_high", "rows_scored", "errors", "exact_match", "macro_f1",
)  # fmt: skip


def _key(kind: str, benchmark_id: int, version_id) -> str:
    return f"evidence:leaderboard:{kind}:{benchmark_id}:{version_id}"


# --- what fits, what is missing ------------------------------------------------------------


def _scorable_listings(task: str | None = None):
    """Published model listings of active experts with a live version (never gardens)."""
    listings = Listing.objects.filter(
        status=ListingStatus.PUBLISHED,
        kind=ListingKind.MODEL,
        owner__is_active=True,
        live_version__isnull=False,
    ).select_related("live_version")
    return listings.filter(task=task) if task else listings


def _fits(benchmark: BenchmarkSet, listing: Listing, maps: dict) -> dict[str, str] | None:
    return contender_label_map(
        task=benchmark.task,
        set_labels=benchmark.labels,
        model_labels=listing.live_version.labels or [],
        approved=maps.get((benchmark.pk, listing.pk)),
    )


def _missing(listing_id=None) -> Iterator[tuple[int, str, str]]:
    """(benchmark id, listing id, version id) of live versions not scored yet on an active
    set they fit, oldest listing first: every listing's, or the one named. Reads three
    columns a listing (the catalogue may be large)."""
    for benchmark in BenchmarkSet.objects.filter(is_active=True).order_by("pk"):
        candidates = _scorable_listings(benchmark.task).exclude(
            live_version_id__in=LeaderboardEntry.objects.filter(benchmark=benchmark).values(
                "version_id"
            )
        )
        if listing_id is not None:
            candidates = candidates.filter(pk=listing_id)
        maps = dict(
            BenchmarkLabelMap.objects.filter(
                benchmark=benchmark, approved_at__isnull=False
            ).values_list("listing_id", "mapping")
        )
        rows = candidates.order_by("published_at", "pk").values_list(
            "pk", "live_version_id", "live_version__labels"
        )
        for pk, version_id, labels in rows.iterator(chunk_size=2000):
            fit = contender_label_map(
                task=benchmark.task,
                set_labels=benchmark.labels,
                model_labels=labels or [],
                approved=maps.get(pk),
            )
            if fit is not None:
                yield benchmark.pk, str(pk), str(version_id)


def missing_scores(*, listing_id=None, limit: int = SWEEP_LIMIT) -> list[tuple[int, str, str]]:
    """The first ``limit`` of what is missing (see ``_missing``)."""
    return list(itertools.islice(_missing(listing_id), limit))


def _queue(benchmark_id: int, listing_id: str, version_id: str) -> bool:
    """Send the scoring task once the caller's transaction commits, unless it is queued,
    running, or failed too often lately."""
    if (cache.get(_key("failures", benchmark_id, version_id)) or 0) >= MAX_FAILURES:
        return False
    if not cache.add(_key("queued", benchmark_id, version_id), 1, timeout=QUEUED_SECONDS):
        return False
    send_after_commit(SCORE_TASK, str(benchmark_id), listing_id, version_id)
    return True


def leaderboards_sweep(*, limit: int = SWEEP_LIMIT) -> int:
    """Beat: queue the missing scores (at most ``limit``; those queued already, running or
    failing lately are skipped); how many were queued."""
    queued = 0
    for missing in _missing():
        queued += _queue(*missing)
        if queued >= limit:
            break
    return queued


def on_version_live(event: DomainEvent) -> None:
    """Consumer of ``listing.version_live``: queue the listing's new version on every
    active set it fits (the task runs after the delivery commits)."""
    for missing in _missing(listing_id=event.subject_id):
        _queue(*missing)


# --- scoring ------------------------------------------------------------------------------


def leaderboard_score(*, benchmark_id: int, listing_id, version_id, engine=None) -> str:
    """Score a listing's live version on a set and record the entry; returns what happened:
    ``scored``, ``already_scored``, ``busy`` (another worker is on it), ``stale`` (the set
    closed, the listing left the catalogue, or another version is live now), ``unfit``,
    ``failed``. Idempotent: a version is scored once per set (a unique constraint)."""
    lock = _key("running", benchmark_id, version_id)
    if not cache.add(lock, 1, timeout=LOCK_SECONDS):
        return "busy"
    try:
        outcome = _score(benchmark_id, listing_id, version_id, engine)
    except Exception:
        logger.exception(
            "leaderboard: scoring version %s on set %s failed", version_id, benchmark_id
        )
        outcome = "failed"
    finally:
        cache.delete(lock)
        cache.delete(_key("queued", benchmark_id, version_id))
    if outcome == "failed":
        failures = _key("failures", benchmark_id, version_id)
        cache.add(failures, 0, timeout=FAILURES_SECONDS)
        cache.incr(failures)
    return outcome


def _current(benchmark_id: int, listing_id, version_id) -> tuple[BenchmarkSet, Listing] | None:
    benchmark = BenchmarkSet.objects.filter(pk=benchmark_id, is_active=True).first()
    listing = _scorable_listings().filter(pk=listing_id, live_version_id=version_id).first()
    if benchmark is None or listing is None or listing.task != benchmark.task:
        return None
    return benchmark, listing


def _score(benchmark_id: int, listing_id, version_id, engine) -> str:
    from evidence.scoring import generalist_contender, score_rows, version_contender

    if LeaderboardEntry.objects.filter(benchmark_id=benchmark_id, version_id=version_id).exists():
        return "already_scored"
    found = _current(benchmark_id, listing_id, version_id)
    if found is None:
        return "stale"
    benchmark, listing = found
    maps = approved_label_maps(listing_ids=[listing.pk])
    label_map = _fits(benchmark, listing, maps)
    if label_map is None:
        return "unfit"
    version = listing.live_version
    contender = version_contender(
        version, key=f"listing:{listing.slug}", label=listing.title, label_map=label_map
    )
    generalist = generalist_contender(base_model=contender.base_model)
    result = score_rows(
        task=benchmark.task,
        rows=benchmark_rows(benchmark),
        contenders=[contender, generalist],
        engine=engine,
        classic_baseline=False,  # a classic model fitted on the set's own rows ranks nothing
    )
    figures = {c["key"]: c for c in result["contenders"]}
    scored = figures[contender.key]
    if not scored.get("rows_scored") or scored.get("value") is None:
        logger.warning(
            "leaderboard: version %s answered no row of set %s (%s errors)",
            version_id,
            benchmark_id,
            scored.get("errors"),
        )
        return "failed"
    pair = next(
        (p for p in result["pairs"] if {p["a"], p["b"]} == {contender.key, generalist.key}), None
    )
    return _entry_write(
        benchmark, listing, version, result, scored, figures.get(generalist.key), pair, contender
    )


def _vs_generalist(pair: dict | None, listing_key: str) -> dict | None:
    """The listing's paired lift over the generalist (positive: the listing is better)."""
    if pair is None or pair.get("delta") is None:
        return None
    sign = 1 if pair["a"] == listing_key else -1
    low, high = pair.get("ci_low"), pair.get("ci_high")
    bounds = (
        sorted(x * sign for x in (low, high))
        if low is not None and high is not None
        else [None, None]
    )
    return {
        "delta": pair["delta"] * sign,
        "ci_low": bounds[0],
        "ci_high": bounds[1],
        "separated": pair.get("separated", False),
    }


def _entry_write(benchmark, listing, version, result, scored, generalist, pair, contender) -> str:
    number = (
        ListingVersion.objects.filter(listing=listing, model_version=version)
        .values_list("number", flat=True)
        .first()
    )
    metric = result["metric"]
    detail = {
        "metric": metric,
        "version_number": number,
        "base_model": contender.base_model,
        "label_map": contender.label_map,
        "rows_scored": scored["rows_scored"],
        "errors": scored["errors"],
        "latency_ms_per_row": scored.get("latency_ms_per_row"),
        "macro_f1": scored.get("macro_f1"),
        "exact_match": scored.get("exact_match"),
        "per_class": scored.get("per_class"),
        "vs_generalist": _vs_generalist(pair, contender.key),
        "generalist": {k: generalist.get(k) for k in GENERALIST_FIGURES} if generalist else None,
        "warnings": result.get("warnings", []),
    }
    try:
        with transaction.atomic():
            # Hold the listing while the entry changes: its live version is read under the lock.
            locked = (
                Listing.objects.select_for_update(no_key=True)
                .filter(pk=listing.pk, live_version_id=version.pk, status=ListingStatus.PUBLISHED)
                .first()
            )
            if locked is None:
                return "stale"
            now = timezone.now()
            LeaderboardEntry.objects.filter(
                benchmark=benchmark, listing=listing, superseded_at__isnull=True
            ).update(superseded_at=now)
            LeaderboardEntry.objects.create(
                benchmark=benchmark,
                listing=listing,
                version=version,
                metric=metric["name"],
                higher_is_better=bool(metric["higher_is_better"]),
                value=scored["value"],
                ci_low=scored["ci_low"],
                ci_high=scored["ci_high"],
                rows=result["rows"],
                detail=detail,
                scored_at=now,
            )
    except IntegrityError:  # another worker wrote this version's entry meanwhile
        return "already_scored"
    return "scored"


# --- ranking -------------------------------------------------------------------------------


def pessimistic_bound(ci_low: float, ci_high: float, *, higher_is_better: bool) -> float:
    """The end of the interval a cautious buyer reads: the low end when higher is better."""
    return ci_low if higher_is_better else ci_high


def ranks(intervals: list[tuple[float, float]], *, higher_is_better: bool) -> list[int]:
    """Each interval's rank: 1 + how many others lie entirely on its better side
    (statistically better), so intervals that overlap can share a rank."""
    if higher_is_better:
        lows = sorted(low for low, _ in intervals)
        return [1 + len(lows) - bisect.bisect_right(lows, high) for _, high in intervals]
    highs = sorted(high for _, high in intervals)
    return [1 + bisect.bisect_left(highs, low) for low, _ in intervals]


def better_count(
    interval: tuple[float, float], others: list[tuple[float, float]], *, higher_is_better: bool
) -> int:
    """How many of ``others`` lie entirely on the better side of ``interval``."""
    low, high = interval
    if higher_is_better:
        return sum(other_low > high for other_low, _ in others)
    return sum(other_high < low for _, other_high in others)


# --- reading the boards --------------------------------------------------------------------


@dataclass(frozen=True)
class BoardRow:
    kind: str  # "listing" | "generalist" (a reference row: the bare base, not a listing)
    rank: int | None  # None for the reference row
    tied: bool
    label: str
    value: float
    ci_low: float
    ci_high: float
    bound: float  # the pessimistic end the board sorts by
    scored_at: datetime
    rows_scored: int
    errors: int
    base_model: str
    listing_slug: str = ""
    listing_title: str = ""
    expert: str = ""
    version_number: int | None = None
    newer_version_live: bool = False  # a new version went live; its score is on its way
    vs_generalist: dict | None = None


@dataclass(frozen=True)
class Board:
    benchmark: BenchmarkSet
    metric: dict
    rows: list[BoardRow] = field(default_factory=list)

    @property
    def listings(self) -> list[BoardRow]:
        return [row for row in self.rows if row.kind == "listing"]

    @property
    def higher_is_better(self) -> bool:
        return bool(self.metric.get("higher_is_better", True))


def _visible_entries(benchmark: BenchmarkSet):
    """Current entries of listings a buyer can see now (published, of an active expert)."""
    return (
        LeaderboardEntry.objects.filter(
            benchmark=benchmark,
            superseded_at__isnull=True,
            listing__status=ListingStatus.PUBLISHED,
            listing__owner__is_active=True,
            listing__kind=ListingKind.MODEL,
        )
        .select_related("listing", "listing__owner")
        .order_by("-scored_at", "pk")
    )


def leaderboard_list():
    """The active sets, each with ``entry_count``: its board's listings."""
    visible = Q(
        entries__superseded_at__isnull=True,
        entries__listing__status=ListingStatus.PUBLISHED,
        entries__listing__owner__is_active=True,
        entries__listing__kind=ListingKind.MODEL,
    )
    return BenchmarkSet.objects.filter(is_active=True).annotate(
        entry_count=Count("entries", filter=visible)
    )


def leaderboard_get(*, slug: str, task: str | None = None) -> Board:
    """An active set's board, ranked. Raises BenchmarkNotFound (404)."""
    benchmark = BenchmarkSet.objects.filter(slug=slug, is_active=True).first()
    if benchmark is None or (task is not None and benchmark.task != task):
        raise BenchmarkNotFound("No leaderboard here.")
    entries = list(_visible_entries(benchmark))
    metric = benchmark.metric or (entries[0].detail.get("metric") if entries else {}) or {}
    higher = bool(metric.get("higher_is_better", True))
    rows = [_listing_row(entry) for entry in entries]
    references = _generalist_rows(entries)
    intervals = [(row.ci_low, row.ci_high) for row in rows]
    ranked = ranks(intervals, higher_is_better=higher)
    counts: dict[int, int] = {}
    for rank in ranked:
        counts[rank] = counts.get(rank, 0) + 1
    rows = [
        replace(row, rank=rank, tied=counts[rank] > 1)
        for row, rank in zip(rows, ranked, strict=True)
    ]
    placed = [(row.rank, row) for row in rows]
    for reference in references:  # placed where its rank would be, never numbered
        place = 1 + better_count(
            (reference.ci_low, reference.ci_high), intervals, higher_is_better=higher
        )
        placed.append((place, reference))
    direction = -1 if higher else 1
    placed.sort(
        key=lambda item: (
            item[0],
            direction * item[1].bound,
            item[1].kind != "listing",
            item[1].label,
        )
    )
    return Board(benchmark=benchmark, metric=metric, rows=[row for _, row in placed])


def _listing_row(entry: LeaderboardEntry) -> BoardRow:
    detail = entry.detail or {}
    listing = entry.listing
    return BoardRow(
        kind="listing",
        rank=None,
        tied=False,
        label=listing.title,
        value=entry.value,
        ci_low=entry.ci_low,
        ci_high=entry.ci_high,
        bound=pessimistic_bound(
            entry.ci_low, entry.ci_high, higher_is_better=entry.higher_is_better
        ),
        scored_at=entry.scored_at,
        rows_scored=detail.get("rows_scored", entry.rows),
        errors=detail.get("errors", 0),
        base_model=detail.get("base_model", ""),
        listing_slug=listing.slug,
        listing_title=listing.title,
        expert=listing.owner.name,
        version_number=detail.get("version_number"),
        newer_version_live=listing.live_version_id != entry.version_id,
        vs_generalist=detail.get("vs_generalist"),
    )


def _generalist_rows(entries: list[LeaderboardEntry]) -> list[BoardRow]:
    """One reference row per base model on the board: the bare base, as scored beside the
    newest entry on it (the engine answers it the same way each time)."""
    from training_worker.models import BaseModel

    newest: dict[str, LeaderboardEntry] = {}
    for entry in entries:  # newest first
        base = (entry.detail or {}).get("base_model")
        if base and (entry.detail or {}).get("generalist") and base not in newest:
            newest[base] = entry
    names = dict(BaseModel.objects.filter(slug__in=newest).values_list("slug", "display_name"))
    rows = []
    for base, entry in sorted(newest.items()):
        figures = entry.detail["generalist"]
        if figures.get("value") is None or figures.get("ci_low") is None:
            continue
        rows.append(
            BoardRow(
                kind=GENERALIST_KEY,
                rank=None,
                tied=False,
                label=f"Generalist: {names.get(base, base)} alone, no specialist",
                value=figures["value"],
                ci_low=figures["ci_low"],
                ci_high=figures["ci_high"],
                bound=pessimistic_bound(
                    figures["ci_low"], figures["ci_high"], higher_is_better=entry.higher_is_better
                ),
                scored_at=entry.scored_at,
                rows_scored=figures.get("rows_scored") or 0,
                errors=figures.get("errors") or 0,
                base_model=base,
            )
        )
    return rows
