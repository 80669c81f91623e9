"""Private evaluations in the portal: try listings on your own rows before you buy.

Thin views over evidence.services and evidence.selectors, which the API uses too. Any
signed-in user may evaluate; only they see their evaluations (404 for anyone else).
"""

from __future__ import annotations

from django.conf import settings
from django.contrib import messages
from django.contrib.auth.decorators import login_required
from django.shortcuts import redirect, render
from django.views.decorators.http import require_http_methods, require_POST

from evidence import selectors as evidence_selectors
from evidence import services as evidence_services
from evidence.models import ENDED_EVALUATION_STATUSES, EvaluationStatus
from evidence.services import MAX_CANDIDATES
from frontend.charts import interval_chart
from frontend.money import format_money
from frontend.views import not_found
from listings.models import ListingKind
from listings.selectors import listing_list_published
from marketplace.errors import ApplicationError
from marketplace.middleware import checks_upload_size

TASK_NAMES = {
    "text-classification": "Sorting text into labels (classification)",
    "text-generation": "Writing an answer (generation)",
}


def _choices(selected: list[str]) -> list[dict]:
    """Published models by task, for the form's checkboxes."""
    groups: dict[str, list] = {}
    listings = (
        listing_list_published()
        .exclude(kind=ListingKind.GARDEN)
        .exclude(live_version=None)
        .order_by("task", "title")[:300]
    )
    for listing in listings:
        groups.setdefault(listing.task, []).append(
            {"slug": listing.slug, "title": listing.title, "checked": listing.slug in selected}
        )
    return [
        {"task": task, "name": TASK_NAMES.get(task, task), "listings": items}
        for task, items in groups.items()
    ]


def _form_page(request, *, selected: list[str], status: int = 200, error: str = ""):
    evaluations = evidence_selectors.private_evaluation_list(owner=request.user)[:50]
    return render(
        request,
        "frontend/evaluations.html",
        {
            "evaluations": evaluations,
            "groups": _choices(selected),
            "max_candidates": MAX_CANDIDATES,
            "error": error,
            "keep_days": settings.PRIVATE_EVALUATION_KEEP_DAYS,
            "free_rows": settings.PRIVATE_EVALUATION_FREE_ROWS_PER_DAY,
            "free_used": evidence_services.free_rows_used_today(owner=request.user),
            "max_rows": settings.PRIVATE_EVALUATION_MAX_ROWS,
        },
        status=status,
    )


@login_required
@require_http_methods(["GET", "POST"])
@checks_upload_size(evidence_services.private_evaluation_check_size)
def evaluation_list(request):
    """Your private evaluations, and the form that starts one."""
    if request.method == "GET":
        selected = [s for s in request.GET.get("listings", "").split(",") if s]
        return _form_page(request, selected=selected)
    selected = request.POST.getlist("listings")
    upload = request.FILES.get("file")
    if upload is None:
        return _form_page(
            request, selected=selected, status=422, error="Choose a file of your rows to score."
        )
    try:
        evaluation = evidence_services.private_evaluation_create(
            owner=request.user,
            file=upload,
            listings=selected,
            label_map=_label_map(request.POST.get("label_map", "")),
            keep_rows=request.POST.get("keep_rows") == "on",
        )
    except ApplicationError as exc:
        fields = [m for messages_ in (exc.fields or {}).values() for m in messages_][:5]
        detail = (" " + " ".join(fields)) if fields and fields[0] not in exc.message else ""
        return _form_page(request, selected=selected, status=exc.status, error=exc.message + detail)
    return redirect("evaluation", evaluation_id=evaluation.id)


def _label_map(text: str):
    import json

    text = (text or "").strip()
    if not text:
        return None
    try:
        return json.loads(text)
    except ValueError:
        from evidence.errors import InvalidEvaluation

        raise InvalidEvaluation(
            'The label map is not valid JSON: {"listing-slug": {"its label": "your label"}}.'
        ) from None


def _names(result: dict) -> dict[str, str]:
    return {c["key"]: c["label"] for c in result.get("contenders", [])}


def _pair_sentence(pair: dict, names: dict[str, str], *, higher_is_better: bool) -> dict:
    a, b = names.get(pair["a"], pair["a"]), names.get(pair["b"], pair["b"])
    low, high = pair.get("ci_low"), pair.get("ci_high")
    interval = (
        f"95% interval of the difference: {low:+.3f} to {high:+.3f}"
        if low is not None and high is not None
        else "no interval"
    )
    if pair.get("separated"):
        winner, loser = (a, b) if pair["better"] == pair["a"] else (b, a)
        margin = abs(pair["delta"])
        text = f"{winner} did better than {loser} on your rows, by {margin:.3f} ({interval})."
    else:
        text = (
            f"{a} and {b} cannot be told apart on these rows: the difference "
            f"({pair['delta']:+.3f}) could be luck ({interval})."
        )
    return {"text": text, "separated": pair.get("separated"), "a": a, "b": b}


def _result_view(evaluation) -> dict | None:
    result = evaluation.result
    if not result:
        return None
    metric = result["metric"]
    costs = {
        c.listing.slug: [
            {
                "offer": cost.offer,
                # None: the offer cannot serve 1,000 calls; its sentence says why
                "price": (
                    cost.basis
                    if cost.amount is None
                    else "free"
                    if cost.amount == 0
                    else format_money(cost.amount, cost.currency)
                ),
                "basis": cost.basis,
            }
            for cost in evidence_selectors.thousand_calls_costs(listing=c.listing)
        ]
        for c in evaluation.candidates.all()
    }
    rows = []
    for contender in result["contenders"]:
        key = contender["key"]
        kind = "listing" if key.startswith("listing:") else key
        slug = key.split(":", 1)[1] if kind == "listing" else ""
        rows.append(
            {
                **contender,
                "kind": kind,
                "slug": slug,
                "costs": costs.get(slug, []),
                "latency": contender.get("latency_ms_per_row") or {},
            }
        )
    chart = interval_chart(
        [
            {
                "name": r["label"],
                "value": r["value"],
                "low": r["ci_low"],
                "high": r["ci_high"],
                "kind": r["kind"],
            }
            for r in rows
        ],
        higher_is_better=metric.get("higher_is_better", True),
    )
    names = _names(result)
    pairs = [
        _pair_sentence(pair, names, higher_is_better=metric.get("higher_is_better", True))
        for pair in result.get("pairs", [])
    ]
    listing_keys = {r["key"] for r in rows if r["kind"] == "listing"}
    return {
        "metric": metric,
        "rows": rows,
        "chart": chart,
        "listing_pairs": [
            p
            for p, raw in zip(pairs, result["pairs"], strict=True)
            if raw["a"] in listing_keys and raw["b"] in listing_keys
        ],
        "baseline_pairs": [
            p
            for p, raw in zip(pairs, result["pairs"], strict=True)
            if not (raw["a"] in listing_keys and raw["b"] in listing_keys)
        ],
        "warnings": result.get("warnings", []),
        "labels": result.get("labels", []),
        "is_classification": result["task"] == "text-classification",
    }


@login_required
def evaluation_detail(request, evaluation_id):
    try:
        evaluation = evidence_selectors.private_evaluation_get(
            owner=request.user, evaluation_id=evaluation_id
        )
    except ApplicationError as exc:
        return not_found(request, exc)
    total = evaluation.progress_total or 1
    return render(
        request,
        "frontend/evaluation.html",
        {
            "evaluation": evaluation,
            "running": evaluation.status not in ENDED_EVALUATION_STATUSES,
            "succeeded": evaluation.status == EvaluationStatus.SUCCEEDED,
            "percent": round(100 * evaluation.progress_done / total),
            "view": _result_view(evaluation),
            "candidates": list(evaluation.candidates.all()),
        },
    )


def _act(request, evaluation_id, action, done: str):
    try:
        outcome = action(owner=request.user, evaluation_id=evaluation_id)
    except ApplicationError as exc:
        if exc.status == 404:
            return not_found(request, exc)
        messages.error(request, exc.message)
        return redirect("evaluation", evaluation_id=evaluation_id)
    messages.success(request, done)
    return outcome


@login_required
@require_POST
def evaluation_delete(request, evaluation_id):
    outcome = _act(
        request,
        evaluation_id,
        evidence_services.private_evaluation_delete,
        "The evaluation, its rows and its result are deleted.",
    )
    return (
        outcome
        if outcome is not None and hasattr(outcome, "status_code")
        else redirect("evaluations")
    )


@login_required
@require_POST
def evaluation_rows_delete(request, evaluation_id):
    outcome = _act(
        request,
        evaluation_id,
        evidence_services.private_evaluation_rows_delete,
        "Your rows are deleted; the result stays.",
    )
    if hasattr(outcome, "status_code"):
        return outcome
    return redirect("evaluation", evaluation_id=evaluation_id)


@login_required
@require_POST
def evaluation_rerun(request, evaluation_id):
    outcome = _act(
        request,
        evaluation_id,
        evidence_services.private_evaluation_rerun,
        "Scoring your kept rows again with the listings' live versions.",
    )
    if hasattr(outcome, "status_code"):
        return outcome
    return redirect("evaluation", evaluation_id=outcome.id)


@login_required
@require_POST
def listing_private_evaluation(request, slug):
    """The expert offers free private evaluation of their listing, or stops."""
    from listings.services import listing_set_free_private_evaluation

    listing = listing_list_mine_slug(request.user, slug)
    if listing is None:
        return render(
            request,
            "errors/error.html",
            {"status": 404, "message": "No listing of yours here."},
            status=404,
        )
    listing_set_free_private_evaluation(
        owner=request.user, listing_id=listing.pk, free=request.POST.get("free") == "on"
    )
    messages.success(
        request,
        "Buyers may score it on their rows for free."
        if request.POST.get("free") == "on"
        else "Free private evaluation is off; buyers with a licence can still evaluate it, "
        "each row billed as a call.",
    )
    return redirect("catalogue-listing", slug=slug)


def listing_list_mine_slug(user, slug):
    from listings.selectors import listing_list_mine

    return listing_list_mine(owner=user).filter(slug=slug).first()
