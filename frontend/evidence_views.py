"""The buyer's evidence in the portal: compare 2-4 listings side by side (`/compare/`)."""

from django.shortcuts import render
from django.urls import Resolver404, resolve

from evidence import compare
from frontend.charts import interval_chart
from marketplace.errors import ApplicationError


def _sealed_chart(comparison: compare.Comparison) -> dict | None:
    return interval_chart(
        [
            {"name": x.title, "value": x.verified.value, "low": x.verified.ci_low,
             "high": x.verified.ci_high, "kind": "listing"}
            for x in comparison.listings
            if x.verified is not None
        ]
    )  # fmt: skip


def _private_chart(comparison: compare.Comparison) -> dict | None:
    """The newest of the caller's evaluations that scored two or more of these listings:
    the same rows for each, so this chart is like for like."""
    by_evaluation: dict[str, list[dict]] = {}
    for listing in comparison.listings:
        for score in listing.private_scores:
            by_evaluation.setdefault(score.evaluation_id, []).append(
                {"name": listing.title, "value": score.value, "low": score.ci_low,
                 "high": score.ci_high, "kind": "listing", "created_at": score.created_at,
                 "higher_is_better": score.higher_is_better}
            )  # fmt: skip
    shared = [rows for rows in by_evaluation.values() if len(rows) >= 2]
    if not shared:
        return None
    newest = max(shared, key=lambda rows: rows[0]["created_at"])
    return interval_chart(newest, higher_is_better=newest[0]["higher_is_better"])


def _served(path: str) -> str:
    """`path` when this deployment serves a page there (the private evaluation and the
    leaderboard pages are the lead's), else ""."""
    try:
        resolve(path)
    except Resolver404:
        return ""
    return path


def compare_page(request):
    """Anyone may compare; a signed-in buyer also sees their own private evaluations."""
    named = request.GET.getlist("listings")
    context = {
        "named": named,
        "evaluations_url": _served("/evaluations/"),
        "leaderboards_url": _served("/leaderboards/"),
    }
    if not any(value.strip() for value in named):
        return render(request, "frontend/compare.html", context)
    try:
        slugs = compare.compare_slugs_from_params(request.GET)
        comparison = compare.comparison_build(
            slugs=slugs, viewer=request.user, include_private=request.user.is_authenticated
        )
    except ApplicationError as exc:
        context["error"] = exc.message
        return render(request, "frontend/compare.html", context, status=exc.status)
    context |= {
        "comparison": comparison,
        "sealed_chart": _sealed_chart(comparison),
        "private_chart": _private_chart(comparison),
        "any_private": any(x.private_scores for x in comparison.listings),
    }
    return render(request, "frontend/compare.html", context)
