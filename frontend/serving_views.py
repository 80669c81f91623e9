"""Serving in the portal: the listing page's try-it box.

A try is a real call through the serving gateway, the same path as the API's (licence
check, rate limit, engine, ledger); the portal passes the signed-in user instead of an
API key. The answer is rendered on the server as a fragment: the page's script puts it
in the box, and a browser without scripts gets it on a page of its own.
"""

from django.conf import settings
from django.contrib.auth.decorators import login_required
from django.shortcuts import render
from django.views.decorators.cache import never_cache
from django.views.decorators.http import require_POST

from billing import selectors as billing
from frontend.views import not_found
from listings import selectors as catalogue
from listings.models import Listing, ListingKind, ListingStatus
from marketplace.errors import ApplicationError
from serving import gateway
from serving.protocol import TEXT_CLASSIFICATION

DEFAULT_NEW_TOKENS = 64


def try_it_context(request, listing: Listing, *, is_owner: bool) -> dict | None:
    """What the try-it box shows: None (no box) for a listing with nothing live to call;
    the form for the owner and for a holder of a live calling licence (a free trial
    included); otherwise a pointer to the offers."""
    if listing.status != ListingStatus.PUBLISHED or (
        listing.live_version_id is None and listing.kind != ListingKind.GARDEN
    ):
        return None
    context = {
        "allowed": False,
        "is_owner": is_owner,
        "classification": listing.task == TEXT_CLASSIFICATION,
        "max_inputs": settings.SERVING_MAX_INPUTS,
        "max_chars": settings.SERVING_MAX_INPUT_CHARS,
        "max_chars_total": settings.SERVING_MAX_INPUT_CHARS * settings.SERVING_MAX_INPUTS,
        "max_new_tokens": settings.SERVING_MAX_NEW_TOKENS,
        "default_new_tokens": min(DEFAULT_NEW_TOKENS, settings.SERVING_MAX_NEW_TOKENS),
        # The expert's example input starts the box, so a first Run shows what it does.
        "text": request.POST.get("text", "") if request.method == "POST" else listing.example_input,
    }
    if not request.user.is_authenticated:
        return context
    try:
        check = billing.licence_for_call(user=request.user, listing_slug=listing.slug)
    except ApplicationError:
        return context  # no licence that allows calls: the box points to the offers
    return context | {
        "allowed": True,
        "licence_kind": check.kind.replace("_", " "),
        "calls_left": check.calls_left,
    }


def try_payload(listing: Listing, post) -> dict:
    """The form → the body the API would get for this listing's task."""
    text = post.get("text", "")
    if listing.task == TEXT_CLASSIFICATION:
        return {"inputs": [line.strip() for line in text.splitlines() if line.strip()]}
    try:
        max_new_tokens = int(post.get("max_new_tokens") or DEFAULT_NEW_TOKENS)
    except ValueError:
        max_new_tokens = DEFAULT_NEW_TOKENS
    return {"inputs": text, "parameters": {"max_new_tokens": max_new_tokens}}


def try_call(*, user, listing: Listing, payload: dict) -> tuple[dict, int]:
    """One call through the gateway as `user`, without an API key (the rate limit counts
    per user): (what the box shows, HTTP status)."""
    try:
        try:
            answer = gateway.predict(
                user=user, api_key=None, listing_ref=listing.slug, payload=payload
            )
        except gateway.GardenOnTheEventLoop:
            return _garden_try(user, listing, payload)
    except ApplicationError as exc:
        return {"error": {"code": exc.code, "message": exc.message}}, exc.status
    result = answer.result
    shown = {
        "latency_ms": answer.latency_ms,
        "engine_ms": round(result.engine_ms),
        "version": answer.target.check.version_number,
        "adapter_sha256": result.adapter_sha256 or answer.target.adapter.sha256,
    }
    if isinstance(result.outputs, list):
        shown["predictions"] = [
            {
                "input": text,
                "label": output.label,
                "scores": sorted(output.scores.items(), key=lambda item: -item[1]),
            }
            for text, output in zip(payload["inputs"], result.outputs, strict=True)
        ]
    else:
        shown["text"] = result.outputs.text
        shown["finish_reason"] = result.outputs.finish_reason
    return shown, 200


def _garden_try(user, listing: Listing, payload: dict) -> tuple[dict, int]:
    """A garden's try: its call path is the event loop's (serving.garden_calls); the box
    shows who answered each input."""
    from asgiref.sync import async_to_sync

    from serving import gateway_async

    answer = async_to_sync(gateway_async.predict)(
        caller=gateway_async.Caller(user_id=user.pk), listing_ref=listing.slug, payload=payload
    )
    if isinstance(answer, gateway_async.AutoPrediction):  # classification, routed per input
        predictions: list = [None] * len(payload["inputs"])
        for indices, part in answer.answers:
            for index, output in zip(indices, part.result.outputs, strict=True):
                predictions[index] = {
                    "input": payload["inputs"][index],
                    "label": output.label,
                    "scores": sorted(output.scores.items(), key=lambda item: -item[1]),
                    "answered_by": part.target.garden.answered_by,
                }
        latency = max(part.latency_ms for _, part in answer.answers)
        return {"latency_ms": latency, "engine_ms": None, "predictions": predictions}, 200
    result = answer.result
    return {
        "latency_ms": answer.latency_ms,
        "engine_ms": round(result.engine_ms),
        "answered_by": answer.target.garden.answered_by,
        "reason": answer.target.route.reason,
        "text": result.outputs.text,
        "finish_reason": result.outputs.finish_reason,
    }, 200


@never_cache
@login_required
@require_POST
def listing_try(request, slug):
    """Run the try-it form: the answer fragment for the page's script, or a page with
    the answer for a browser without scripts."""
    try:
        listing = catalogue.listing_get_public(slug=slug, viewer=request.user)
    except ApplicationError as exc:
        return not_found(request, exc)
    result, status = try_call(
        user=request.user, listing=listing, payload=try_payload(listing, request.POST)
    )
    if request.headers.get("X-Requested-With") == "fetch":
        return render(request, "frontend/_try_result.html", {"try_result": result}, status=status)
    return render(
        request,
        "frontend/try_result.html",
        {"listing": listing, "try_result": result},
        status=status,
    )
