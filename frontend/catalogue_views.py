"""Catalogue pages: search and compare specialists, read a listing, review, report;
and the expert's side: list a model version, submit it for review."""

from django.contrib import messages
from django.contrib.auth.decorators import login_required
from django.shortcuts import redirect, render
from django.views.decorators.http import require_POST

from evidence import selectors as evidence_selectors
from frontend.billing_views import listing_commerce
from frontend.charts import comparison_chart, confusion_heatmap
from frontend.serving_views import try_it_context
from frontend.views import not_found, refused_unless_expert
from listings import gardens
from listings import selectors as catalogue
from listings import services as catalogue_services
from listings.models import LICENCE_FLAGS, Domain, ReportReason
from marketplace.errors import ApplicationError
from training_worker import selectors as studio

SORT_LABELS = {
    "relevance": "Relevance",
    "newest": "Newest",
    "best_lift": "Best lift over the strongest baseline",
    "rating": "Rating",
    "popularity": "Popularity",
    "price_asc": "Price: low to high",
    "price_desc": "Price: high to low",
}


def catalogue_home(request):
    params = request.GET
    try:
        query = catalogue.catalogue_query_from_params(params)
        page = catalogue.listing_search(query=query)
        error = ""
    except ApplicationError as exc:
        page, error = None, exc.message
    return render(
        request,
        "frontend/catalogue.html",
        {
            "page": page,
            "error": error,
            "params": params,
            "domains": Domain.choices,
            "sorts": SORT_LABELS.items(),
        },
    )


def listing_page(request, slug):
    try:
        listing = catalogue.listing_get_public(slug=slug, viewer=request.user)
    except ApplicationError as exc:
        return not_found(request, exc)
    evaluation = catalogue.evaluation_summary(listing.live_version or listing.proposed_version)
    is_owner = request.user.is_authenticated and listing.owner_id == request.user.pk
    return render(
        request,
        "frontend/listing.html",
        {
            **listing_commerce(request, listing, is_owner=is_owner),
            "listing": listing,
            "evaluation": evaluation,
            "chart": comparison_chart(evaluation),
            "heatmap": confusion_heatmap(evaluation),
            "reviews": catalogue.review_list(listing=listing),
            "may_review": catalogue.user_may_review(user=request.user, listing=listing),
            "is_owner": is_owner,
            "history": catalogue.moderation_history(listing=listing),
            "report_reasons": ReportReason.choices,
            "try_it": try_it_context(request, listing, is_owner=is_owner),
            "garden": gardens.garden_public(listing) if listing.kind == "garden" else None,
            "private_evaluations": (
                evidence_selectors.private_evaluation_counts(listing=listing)
                if is_owner and listing.kind == "model"
                else None
            ),
        },
    )


@login_required
@require_POST
def listing_review(request, slug):
    try:
        listing = catalogue.listing_get_public(slug=slug, viewer=request.user)
        catalogue_services.review_upsert(
            author=request.user,
            listing=listing,
            rating=int(request.POST.get("rating", 0)),
            text=request.POST.get("text", ""),
        )
        messages.success(request, "Thanks for your review.")
    except ApplicationError as exc:
        messages.error(request, exc.message)
    except ValueError:
        messages.error(request, "Choose a rating from 1 to 5.")
    return redirect("catalogue-listing", slug=slug)


@login_required
@require_POST
def listing_report(request, slug):
    try:
        listing = catalogue.listing_get_public(slug=slug, viewer=request.user)
    except ApplicationError as exc:
        return not_found(request, exc)
    try:
        catalogue_services.report_create(
            reporter=request.user,
            listing=listing,
            reason=request.POST.get("reason", ""),
            text=request.POST.get("text", ""),
        )
    except ApplicationError as exc:
        messages.error(request, exc.message)
    else:
        messages.success(request, "Reported. A moderator will look at it.")
    return redirect("catalogue-listing", slug=slug)


@login_required
def listing_new(request, version_id):
    try:
        version = studio.model_version_get(owner=request.user, version_id=version_id)
    except ApplicationError as exc:
        return not_found(request, exc)
    if request.method == "POST":
        post = request.POST
        try:
            listing = catalogue_services.listing_create(
                owner=request.user,
                model_version_id=version.id,
                title=post.get("title", ""),
                slug=post.get("slug", ""),
                summary=post.get("summary", ""),
                description=post.get("description", ""),
                domain=post.get("domain", ""),
                tags=[t for t in post.get("tags", "").split(",") if t.strip()],
                intended_use=post.get("intended_use", ""),
                example_input=post.get("example_input", ""),
                out_of_scope_use=post.get("out_of_scope_use", ""),
                risk_notes=post.get("risk_notes", ""),
                **{flag: bool(post.get(flag)) for flag in LICENCE_FLAGS},
            )
        except ApplicationError as exc:
            details = "; ".join(
                f"{name}: {' '.join(errors)}" for name, errors in exc.fields.items()
            )
            messages.error(request, f"{exc.message} {details}".strip())
        else:
            messages.success(request, "Draft saved. Submit it for review when it reads well.")
            return redirect("catalogue-listing", slug=listing.slug)
    return render(
        request, "frontend/listing_new.html", {"version": version, "domains": Domain.choices}
    )


def _routes_from(text: str) -> dict[str, str]:
    """The pipeline form's lines "label: listing-slug" → {label: slug}."""
    routes = {}
    for line in text.splitlines():
        label, _, slug = line.partition(":")
        if label.strip() and slug.strip():
            routes[label.strip()] = slug.strip()
    return routes


@login_required
def garden_new(request):
    """An expert curates a garden from composable listings: saved as a draft listing."""
    refused = refused_unless_expert(
        request, "Only experts curate gardens: become one in your profile."
    )
    if refused is not None:
        return refused
    composable = catalogue.composable_listings()
    values = {"kind": "router", "member_share_percent": "70"}
    if request.method == "POST":
        post = request.POST
        values = post.dict()
        kind = post.get("kind", "")
        try:
            share = int(post.get("member_share_percent") or 70)
        except ValueError:
            share = -1
        try:
            garden = gardens.garden_create(
                curator=request.user,
                kind=kind,
                members=post.getlist("members") if kind == "router" else None,
                classifier=post.get("classifier") or None if kind == "pipeline" else None,
                routes=_routes_from(post.get("routes", "")) if kind == "pipeline" else None,
                member_share_percent=share,
                title=post.get("title", ""),
                slug=post.get("slug", ""),
                summary=post.get("summary", ""),
                description=post.get("description", ""),
                domain=post.get("domain", ""),
                example_input=post.get("example_input", ""),
            )
        except ApplicationError as exc:
            messages.error(request, exc.message)
        else:
            messages.success(
                request, "Saved as a draft. Submit it for review, then price it (per call)."
            )
            return redirect("catalogue-listing", slug=garden.slug)
    return render(
        request,
        "frontend/garden_new.html",
        {
            "composable": composable,
            "classifiers": [x for x in composable if x.task == "text-classification"],
            "domains": Domain.choices,
            "values": values,
            "chosen": request.POST.getlist("members") if request.method == "POST" else [],
        },
    )


@login_required
@require_POST
def garden_restore(request, slug):
    """The curator brings back a member that left (published and composable again)."""
    try:
        garden = catalogue.listing_get_public(slug=slug, viewer=request.user)
        gardens.garden_member_restore(
            curator=request.user, garden_id=garden.pk, member_slug=request.POST.get("listing", "")
        )
        messages.success(request, "The member is back in the garden.")
    except ApplicationError as exc:
        messages.error(request, exc.message)
    return redirect("catalogue-listing", slug=slug)


@login_required
@require_POST
def listing_composable(request, slug):
    """The expert allows curators to compose the listing into gardens, or stops."""
    try:
        listing = catalogue.listing_get_public(slug=slug, viewer=request.user)
        allow = request.POST.get("composable") == "on"
        gardens.listing_set_composable(owner=request.user, listing_id=listing.id, composable=allow)
        messages.success(
            request,
            "Curators may now compose it into gardens."
            if allow
            else "It is no longer composable, and it left every garden it was in.",
        )
    except ApplicationError as exc:
        messages.error(request, exc.message)
    return redirect("catalogue-listing", slug=slug)


@login_required
@require_POST
def listing_submit(request, slug):
    try:
        listing = catalogue.listing_get_public(slug=slug, viewer=request.user)
        catalogue_services.listing_submit(owner=request.user, listing_id=listing.id)
        messages.success(request, "Submitted for review.")
    except ApplicationError as exc:
        messages.error(request, exc.message)
    return redirect("catalogue-listing", slug=slug)
