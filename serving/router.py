"""The specialist router: `model: "niche/auto"` and `POST /api/v1/route`.

For each input it picks who answers: among the verified specialists of the request's task
that the caller may call (licensed, trials included, or their own), the one whose domain the
input is in (the nearest prototype), when its calibrated probability of beating the
generalist on this input clears ROUTER_THRESHOLD; else the **generalist fallback** (the
un-adapted base prompted, for generation; zero-shot on the embedding base over the labels,
for classification), which the same engine serves and the platform meters at the
operator's price (billing.PlatformUsage).

What it reads of each candidate (training_worker/ml/router_signals.py, computed when the
version was trained, from its training rows only):
- its prototypes: the input's similarity is the cosine of its all-MiniLM-L6-v2 embedding to
  the nearest one;
- its calibration: P(the specialist beats the generalist | similarity) where the two answer
  differently well, an isotonic fit on its validation rows' outcomes and a fixed background
  of out-of-domain requests;
- the lower bound of its verified lift over the generalist it would fall back to (its sealed
  evaluation's zero-shot baseline): a version whose bound is not above zero is not a
  candidate (the router sends traffic to verified specialists only).

A candidate is skipped, with the reason in /api/v1/route's answer, when its version has no
signals (trained before the router) or no calibration (no validation rows), when it has no
verified lift, when it has no calls left this period, or when its labels are not all among
the labels the request names (`labels`). The decision costs one embedding of the inputs
(one forward pass of MiniLM in this process) and a dot product per candidate.
"""

from __future__ import annotations

import functools
from dataclasses import dataclass, field
from typing import Any

import numpy as np
from django.conf import settings

from accounts.models import User
from billing.selectors import LicenceCheck, callable_listings, licence_for_call
from marketplace.errors import ApplicationError
from serving import protocol
from serving.errors import InvalidInferenceInput
from training_worker.ml import router_signals
from training_worker.models import ModelVersion

AUTO_MODEL = "niche/auto"
FALLBACK_NAME = "niche/generalist"
NO_VERIFIED_LIFT = (
    "no verified lift over the generalist: the lower bound of its lift over it on its sealed "
    "rows is not above zero"
)


@dataclass(frozen=True)
class VersionSignals:
    prototypes: np.ndarray
    calibration: dict  # router_signals.calibration_fit's breakpoints
    labels: tuple[str, ...]
    # the lower bound of the verified lift over the generalist the router falls back to
    lift_low: float | None = None


@functools.lru_cache(maxsize=1024)
def version_signals(model_version_id) -> VersionSignals | str:
    """A version's routing signals, or why it cannot be routed to (read once per process:
    a version never changes once written)."""
    row = (
        ModelVersion.objects.filter(pk=model_version_id)
        .values("task", "labels", "router_signals", "evaluation")
        .get()
    )
    signals = row["router_signals"] or {}
    if signals.get("error"):
        return "its routing signals failed to compute when it was trained"
    if not signals.get("prototypes"):
        return "its version was trained before routing signals existed"
    calibration = signals.get("calibration")
    if not calibration:
        return "its version had no validation rows to calibrate on"
    return VersionSignals(
        prototypes=np.asarray(signals["prototypes"], dtype=np.float32),
        calibration={"x": list(calibration["x"]), "y": list(calibration["y"])},
        labels=tuple(row["labels"] or ()),
        lift_low=router_signals.fallback_lift_low(row["evaluation"], row["task"]),
    )


@dataclass(frozen=True)
class Candidate:
    slug: str
    title: str
    check: LicenceCheck
    signals: VersionSignals
    lift_low: float


@dataclass
class CandidateSet:
    task: str
    candidates: list[Candidate]
    skipped: list[dict[str, str]] = field(default_factory=list)
    labels: list[str] = field(default_factory=list)  # the labels the request named, if any


def request_labels(raw: Any) -> list[str] | None:
    """The optional `labels` of a request: 2 to 64 distinct non-empty strings."""
    if raw is None:
        return None
    if (
        not isinstance(raw, list)
        or not 2 <= len(raw) <= 64
        or not all(isinstance(x, str) and x.strip() and len(x) <= 100 for x in raw)
        or len(set(raw)) != len(raw)
    ):
        raise InvalidInferenceInput(
            "labels must be a list of 2 to 64 distinct label names.",
            fields={"labels": ["2 to 64 distinct non-empty strings of at most 100 characters."]},
        )
    return list(raw)


def request_task(raw: Any) -> str:
    if raw not in (protocol.TEXT_CLASSIFICATION, protocol.TEXT_GENERATION):
        raise InvalidInferenceInput(
            "task must be text-classification or text-generation.",
            fields={"task": ["text-classification or text-generation."]},
        )
    return raw


def candidate_set(
    *,
    user: User | None,
    task: str,
    labels: list[str] | None = None,
    check_for=None,
    rows: list[dict] | None = None,
) -> CandidateSet:
    """The listings of `task` the user may call now that the router may send a call to,
    and those it may not, each with the reason. `check_for(slug)` is the licence check
    (billing's licence_for_call; the async gateway passes its cached one). A garden
    passes its members as `rows` ({"slug", "title"}) and their stand-in checks."""
    check_for = check_for or (lambda slug: licence_for_call(user=user, listing_slug=slug))
    found = CandidateSet(task=task, candidates=[])
    for row in callable_listings(user=user, task=task) if rows is None else rows:
        slug = row["slug"]
        try:
            check = check_for(slug)
        except ApplicationError as exc:
            found.skipped.append({"listing": slug, "reason": exc.message})
            continue
        signals = version_signals(check.model_version_id)
        reason = signals if isinstance(signals, str) else None
        if reason is None and (signals.lift_low is None or signals.lift_low <= 0):
            reason = NO_VERIFIED_LIFT
        if reason is None and labels is not None and not set(signals.labels) <= set(labels):
            reason = "its labels are not all among the labels the request names"
        if reason is None and check.calls_left == 0:
            reason = "no calls left on its licence this period"
        if reason is not None:
            found.skipped.append({"listing": slug, "reason": reason})
            continue
        found.candidates.append(Candidate(slug, row["title"], check, signals, signals.lift_low))
    found.labels = list(labels or [])
    return found


@dataclass(frozen=True)
class Route:
    """Who answers one input: a candidate's slug, or None for the generalist."""

    listing: str | None
    confidence: float  # P(it beats the generalist); for the generalist, 1 - the best P
    runner_up: dict[str, Any] | None
    reason: str
    similarity: float | None = None
    # A classification answered by the generalist: the labels it chooses from (the
    # request's, else those of the specialist whose domain the input is nearest).
    labels: tuple[str, ...] = ()

    @property
    def name(self) -> str:
        return self.listing or FALLBACK_NAME

    def as_dict(self) -> dict[str, Any]:
        answer = {
            "routed_to": self.name,
            "fallback": self.listing is None,
            "confidence": round(self.confidence, 4),
            "runner_up": self.runner_up,
            "reason": self.reason,
        }
        if self.labels:
            answer["labels"] = list(self.labels)
        return answer


def embed(texts: list[str]) -> np.ndarray:
    return router_signals.embedder().embed(texts)


def decide(
    texts: list[str],
    found: CandidateSet,
    *,
    threshold: float | None = None,
    embeddings: np.ndarray | None = None,
) -> list[Route]:
    """One Route per text (see the module docstring)."""
    threshold = settings.ROUTER_THRESHOLD if threshold is None else threshold
    classification = found.task == protocol.TEXT_CLASSIFICATION
    if not found.candidates:
        reason = "no specialist you may call fits this request; the generalist answers"
        labels = tuple(found.labels) if classification else ()
        return [Route(None, 1.0, None, reason, labels=labels) for _ in texts]
    embeddings = embed(texts) if embeddings is None else embeddings
    sims = np.stack(
        [router_signals.similarity(embeddings, c.signals.prototypes) for c in found.candidates]
    )  # candidates by texts
    probabilities = np.stack(
        [
            router_signals.win_probability(sims[i], c.signals.calibration)
            for i, c in enumerate(found.candidates)
        ]
    )
    routes = []
    for j in range(len(texts)):
        # Whose domain the input is in: the candidate with the nearest prototype (each
        # candidate's calibration knows its own domain and the background, not the other
        # candidates', so their probabilities do not tell two specialists apart); then
        # that candidate's calibrated P decides between it and the generalist.
        order = np.argsort(-sims[:, j], kind="stable")
        best = order[0]
        p_best = float(probabilities[best, j])
        best_slug = found.candidates[best].slug
        if p_best >= threshold:
            if len(order) > 1:
                second = order[1]
                runner_up = {
                    "listing": found.candidates[second].slug,
                    "confidence": round(float(probabilities[second, j]), 4),
                }
            else:
                runner_up = {"listing": FALLBACK_NAME, "confidence": round(1 - p_best, 4)}
            reason = (
                f"nearest {best_slug}'s training inputs (similarity {sims[best, j]:.2f}), and "
                f"P(it beats the generalist on this input) = {p_best:.2f}, at least the "
                f"threshold {threshold:.2f}"
            )
            routes.append(Route(best_slug, p_best, runner_up, reason, float(sims[best, j])))
        else:
            reason = (
                f"nearest {best_slug}'s training inputs (similarity {sims[best, j]:.2f}), but "
                f"P(it beats the generalist on this input) = {p_best:.2f}, below the threshold "
                f"{threshold:.2f}: the generalist answers"
            )
            runner_up = {"listing": best_slug, "confidence": round(p_best, 4)}
            labels = ()
            if classification:
                labels = tuple(found.labels or found.candidates[best].signals.labels)
            routes.append(Route(None, 1 - p_best, runner_up, reason, float(sims[best, j]), labels))
    return routes


def by_destination(routes: list[Route]) -> list[list[int]]:
    """The inputs' indices grouped by who answers them (and, for the generalist, the labels
    it chooses among): each group is one call, one ledger row."""
    groups: dict[tuple, list[int]] = {}
    for index, route in enumerate(routes):
        groups.setdefault((route.name, route.labels), []).append(index)
    return list(groups.values())


def labels_required(whom: str) -> InvalidInferenceInput:
    """A classification the generalist would answer without labels to choose among."""
    return InvalidInferenceInput(
        f"No {whom} fits this request, and the generalist needs the labels to choose "
        'from: send "labels".',
        code="labels_required",
        fields={"labels": ["2 or more label names."]},
    )


def candidate_for(found: CandidateSet, route: Route) -> Candidate | None:
    return next((c for c in found.candidates if c.slug == route.listing), None)


def fallback_check() -> LicenceCheck:
    """The generalist's stand-in for a licence check: no licence, no quota (the platform's
    own metering applies, billing.PlatformUsage)."""
    return LicenceCheck(
        listing_id=None,
        listing_slug=FALLBACK_NAME,
        listing_version_id=0,
        version_number=0,
        model_version_id=None,
        licence_id=None,
        kind="platform",
        status="active",
        sandbox=False,
        period_start=None,
        calls_used=0,
        call_quota=None,
    )


def fallback_base(task: str) -> str:
    if task == protocol.TEXT_CLASSIFICATION:
        return settings.ROUTER_FALLBACK_CLASSIFICATION_BASE
    return settings.ROUTER_FALLBACK_GENERATION_BASE


def routing_text(prompt: str | None, messages: list) -> str:
    """What a generation request is routed on: the prompt, or the last user message."""
    if prompt is not None:
        return prompt
    users = [m.content for m in messages if m.role == "user"]
    return (users or [m.content for m in messages])[-1]
