"""Calling a garden (listings.gardens): who answers, on the garden's licence.

The buyer holds a licence to the garden, not to its members: every call is metered on
the garden licence (one ledger row), and the row carries the revenue split
(billing.gardens) of those who worked on it. The members are re-read on every call, so
a member that was suspended, delisted or made non-composable never answers again,
whatever any cache holds.

- **Router garden**: the specialist router (serving.router) over the garden's members,
  with their routing signals and calibration, exactly as "niche/auto" over a buyer's
  licences; when no member is likely to beat the generalist, the generalist answers and
  the members' part of the price stays with the platform.
- **Pipeline garden** (generation): the classifier member labels the request (its
  prompt, or the last user message), and the member mapped to that label answers; a
  label mapped to no member present is answered by the generalist.

A garden whose members have all left answers 503 garden_empty.
"""

from __future__ import annotations

import time
import uuid
from dataclasses import dataclass

from asgiref.sync import sync_to_async
from django.conf import settings

from billing.gardens import ShareSpec, split
from billing.selectors import LicenceCheck
from listings.gardens import GardenPlan, MemberRow, garden_plan
from listings.models import GardenKind
from serving import protocol, router
from serving.errors import GardenEmpty, InvalidInferenceInput
from serving.gateway import Target


@dataclass(frozen=True)
class GardenCall:
    """What Target.garden holds: the plan, who answered, and the call's shares."""

    plan: GardenPlan
    answered_by: str  # the member's slug, or "niche/generalist"
    shares: tuple[ShareSpec, ...]


async def plan_of(check: LicenceCheck, task: str | None = None) -> GardenPlan:
    plan = await sync_to_async(garden_plan)(listing_id=check.listing_id)
    if plan is None or plan.empty:
        raise GardenEmpty(
            f"None of {check.listing_slug}'s members may answer now; its curator has been "
            "told. Try again later."
        )
    if task is not None and plan.task != task:
        raise InvalidInferenceInput(
            f"{check.listing_slug} is a {plan.task} garden; this call needs {task}.",
            code="wrong_task",
            fields={"model": [f"A {task} model."]},
        )
    return plan


def _member_check(member: MemberRow) -> LicenceCheck:
    """The stand-in check a member is routed with: the garden licence meters the call."""
    return LicenceCheck(
        listing_id=member.listing_id, listing_slug=member.slug, listing_version_id=None,
        version_number=None, model_version_id=member.model_version_id, licence_id=None,
        kind="garden_member", status="active", sandbox=False, period_start=None,
        calls_used=0, call_quota=None,
    )  # fmt: skip


def candidates(plan: GardenPlan, labels: list[str] | None = None) -> router.CandidateSet:
    """The router's candidates among a router garden's members (their signals and
    verified lift decide, as for niche/auto), with those skipped and why."""
    members = {m.slug: m for m in plan.members}
    return router.candidate_set(
        user=None, task=plan.task, labels=labels,
        rows=[{"slug": m.slug, "title": m.title} for m in plan.members],
        check_for=lambda slug: _member_check(members[slug]),
    )  # fmt: skip


def _shares(plan: GardenPlan, workers: list[MemberRow], generalist_steps: int) -> tuple:
    return tuple(
        split(
            garden_id=plan.garden_id, curator_id=plan.curator_id,
            member_share_percent=plan.member_share_percent,
            workers=[(m.listing_id, m.owner_id) for m in workers],
            generalist_steps=generalist_steps,
        )
    )  # fmt: skip


async def target_for(
    check: LicenceCheck,
    plan: GardenPlan,
    member: MemberRow | None,
    route: router.Route,
    *,
    steps: list[MemberRow] = (),
    labels: tuple[str, ...] = (),
) -> Target:
    """The garden licence's target answered by `member` (None: the generalist), after
    the pipeline `steps` that came before it."""
    from serving.gateway_async import _version

    workers = [*steps, *([member] if member else [])]
    call = GardenCall(
        plan=plan,
        answered_by=member.slug if member else router.FALLBACK_NAME,
        shares=_shares(plan, workers, 0 if member else 1),
    )
    if member is None:
        return Target(
            check=check, task=plan.task, base_model=router.fallback_base(plan.task),
            adapter=None, labels=labels, route=route, garden=call,
        )  # fmt: skip
    task, base_model, adapter = await _version(member.model_version_id)
    return Target(
        check=check, task=task, base_model=base_model, adapter=adapter, route=route, garden=call
    )


async def generation_target(check: LicenceCheck, text: str) -> Target:
    """Who answers a generation call to a garden (router or pipeline)."""
    from serving.gateway_async import _routes

    plan = await plan_of(check, protocol.TEXT_GENERATION)
    check.require_calls(1)
    if plan.kind == GardenKind.ROUTER:
        found = await sync_to_async(candidates)(plan)
        (route,) = await _routes([text], found)
        member = next((m for m in plan.members if m.slug == route.listing), None)
        return await target_for(check, plan, member, route)
    return await _pipeline_target(check, plan, text)


async def _pipeline_target(check: LicenceCheck, plan: GardenPlan, text: str) -> Target:
    """Label the text with the classifier member, then the member for that label."""
    from serving.gateway_async import _engine_call, _new_request, _version

    head = plan.classifier
    task, base_model, adapter = await _version(head.model_version_id)
    classify = Target(check=check, task=task, base_model=base_model, adapter=adapter)
    request = _new_request(classify, str(uuid.uuid4()), inputs=[text])
    result = await _engine_call(request, time.monotonic() + settings.SERVING_TIMEOUT_SECONDS)
    (output,) = result.outputs
    member = plan.member_for_label(output.label)
    confidence = float(output.scores.get(output.label, 0.0))
    if member is None:
        reason = (
            f"{head.slug} labelled it '{output.label}', which no member of this garden "
            "answers: the generalist answers"
        )
    else:
        reason = f"{head.slug} labelled it '{output.label}', which {member.slug} answers"
    route = router.Route(
        member.slug if member else None, confidence,
        {"listing": head.slug, "label": output.label}, reason,
    )  # fmt: skip
    return await target_for(check, plan, member, route, steps=[head])


async def classification_targets(
    check: LicenceCheck, inputs: list[str], labels: list[str] | None
) -> tuple[list[tuple[list[int], Target]], list[router.Route]]:
    """A classification call to a router garden: each input routed among the members;
    the inputs that go to one destination are one call (one ledger row, its shares).
    Returns the destinations and each input's route."""
    from serving.gateway_async import _routes

    plan = await plan_of(check, protocol.TEXT_CLASSIFICATION)
    found = await sync_to_async(candidates)(plan, labels)
    routes = await _routes(inputs, found)
    check.require_calls(len(inputs))
    planned = []
    for indices in router.by_destination(routes):
        route = routes[indices[0]]
        member = next((m for m in plan.members if m.slug == route.listing), None)
        if member is None and len(route.labels) < 2:
            raise router.labels_required("member of this garden")
        target = await target_for(check, plan, member, route, labels=route.labels)
        planned.append((indices, target))
    return planned, routes
