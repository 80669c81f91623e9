"""Commerce in the portal: offers on the listing page, checkout and its return page,
My licences, Connect onboarding, earnings; and the platform's public signing key.

Thin views over billing's services and selectors, as the API uses them; a service's
typed error becomes a flash message with the same text.
"""

import uuid
from dataclasses import fields
from datetime import UTC, date, timedelta

from django.contrib import messages
from django.contrib.auth.decorators import login_required
from django.http import JsonResponse
from django.shortcuts import redirect, render
from django.urls import reverse
from django.utils import timezone
from django.views.decorators.cache import never_cache
from django.views.decorators.http import require_GET, require_POST

from billing import checkout as billing_checkout
from billing import selectors as billing
from billing import services as billing_services
from billing import stripe_sync
from billing.errors import LicenceNotFound
from billing.models import (
    LIVE_LICENCE_STATUSES,
    ConnectAccount,
    LicenceStatus,
    OfferKind,
    Overage,
)
from billing.signing import platform_signing_key
from billing.stripe_gateway import sandbox_mode
from billing.terms import LicenceTerms
from frontend.charts import daily_bars, monthly_bars
from frontend.money import parse_major_units
from frontend.snippets import KEY_VARIABLE, call_snippets
from frontend.views import not_found, refused_unless_expert
from listings import selectors as catalogue
from listings.models import Listing
from marketplace.errors import ApplicationError, error_body

# --- the public key of export bundles


@require_GET
def signing_key_document(request):
    """The public half of the key that signs export bundles (`MANIFEST.sig`)."""
    response = JsonResponse(platform_signing_key().public_document())
    response["Cache-Control"] = "public, max-age=3600"
    return response


# --- the listing page's commerce part


# The offers editor's labels for the service's field names.
FIELD_LABELS = {
    "unit_amount": "Price",
    "overage_unit_amount": "Overage price",
    "included_calls": "Included calls",
    "overage": "Past the quota",
}


def _error_text(exc: ApplicationError) -> str:
    """A service's error as one flash line: its message, then each field's problem."""
    details = "; ".join(
        f"{FIELD_LABELS.get(name, name.replace('_', ' ').capitalize())}: "
        f"{' '.join(map(str, errors))}"
        for name, errors in exc.fields.items()
    )
    return f"{exc.message} {details}".strip()


def listing_commerce(request, listing: Listing, *, is_owner: bool) -> dict:
    """What the listing page shows about buying: offers for buyers (and what they hold),
    the offers editor and payout readiness for the owner."""
    user = request.user
    context = {
        "offers": list(billing.offer_list_public(listing=listing)),
        "offer_kinds": OfferKind.choices,
        "overage_choices": Overage.choices,
        "held_licences": [],
    }
    if user.is_authenticated and not is_owner:
        context["held_licences"] = list(
            billing.licence_list_for_buyer(buyer=user).filter(
                listing=listing, status__in=LIVE_LICENCE_STATUSES
            )
        )
    if is_owner:
        context["my_offers"] = list(
            billing.offer_list_mine(owner=user, listing_slug=listing.slug, include_retired=True)
        )
        context["connect_account"] = _connect_account(user)
    return context


def _connect_account(expert) -> ConnectAccount | None:
    return ConnectAccount.objects.filter(expert=expert).first()


def _offer_fields(post, *, kind: str) -> dict:
    """The offers editor's form → the keyword arguments of offer_create/offer_update.
    Prices are typed in major units ("12.50") and stored in minor units."""
    currency = post.get("currency", "usd").strip().lower() or "usd"
    fields = {
        "name": post.get("name", "").strip(),
        "currency": currency,
        "unit_amount": parse_major_units(post.get("price", "0") or "0", currency),
        "included_calls": _whole_number(post.get("included_calls", ""), "Included calls"),
        "overage": post.get("overage", "") if kind == OfferKind.SUBSCRIPTION else "",
        "overage_unit_amount": (
            parse_major_units(post["overage_price"], currency)
            if kind == OfferKind.SUBSCRIPTION and post.get("overage_price")
            else None
        ),
    }
    return fields


def _whole_number(text: str, label: str) -> int | None:
    text = text.strip().replace(",", "")
    if not text:
        return None
    if not text.isdigit():
        raise ValueError(f"{label}: a whole number, e.g. 1000.")
    return int(text)


def _visible_listing(request, slug) -> Listing:
    return catalogue.listing_get_public(slug=slug, viewer=request.user)


@login_required
@require_POST
def offer_create(request, slug):
    try:
        listing = _visible_listing(request, slug)
        kind = request.POST.get("kind", "")
        billing_services.offer_create(
            owner=request.user, listing=listing, kind=kind, **_offer_fields(request.POST, kind=kind)
        )
    except ApplicationError as exc:
        messages.error(request, _error_text(exc))
    except ValueError as exc:
        messages.error(request, str(exc))
    else:
        messages.success(request, "Offer added. Buyers see it on this page.")
    return redirect(reverse("catalogue-listing", args=[slug]) + "#offers")


@login_required
@require_POST
def offer_update(request, slug, offer_id):
    try:
        current = billing.offer_get_mine(owner=request.user, offer_id=offer_id)
        offer = billing_services.offer_update(
            owner=request.user, offer_id=offer_id, **_offer_fields(request.POST, kind=current.kind)
        )
    except ApplicationError as exc:
        messages.error(request, _error_text(exc))
    except ValueError as exc:
        messages.error(request, str(exc))
    else:
        if str(offer.pk) != str(offer_id):
            messages.success(
                request, "Offer changed. It had buyers, so the old one is retired and kept."
            )
        else:
            messages.success(request, "Offer changed.")
    return redirect(reverse("catalogue-listing", args=[slug]) + "#offers")


@login_required
@require_POST
def offer_retire(request, slug, offer_id):
    try:
        billing_services.offer_retire(owner=request.user, offer_id=offer_id)
    except ApplicationError as exc:
        messages.error(request, _error_text(exc))
    else:
        messages.success(request, "Offer retired: nobody can buy it any more; licences stay.")
    return redirect(reverse("catalogue-listing", args=[slug]) + "#offers")


# --- buying


@never_cache
@login_required
@require_POST
def checkout_start(request, slug):
    """Buy an offer: off to Stripe Checkout, or (sandbox) straight to the return page."""
    # Stripe puts the session's id in place of the placeholder when it sends the buyer
    # back. Appended after build_absolute_uri, which would percent-encode the braces.
    success_url = request.build_absolute_uri(reverse("licence-return"))
    success_url += "?session_id={CHECKOUT_SESSION_ID}"
    try:
        started = billing_checkout.checkout_start(
            buyer=request.user,
            offer_id=_uuid_or_none(request.POST.get("offer", "")),
            success_url=success_url,
            cancel_url=request.build_absolute_uri(reverse("catalogue-listing", args=[slug])),
        )
    except ApplicationError as exc:
        messages.error(request, _error_text(exc))
        return redirect("catalogue-listing", slug=slug)
    if started.url != success_url:
        return redirect(started.url)  # Stripe's Checkout page
    # Sandbox or free trial: there is no session; the return page finds it by our id.
    return redirect(f"{reverse('licence-return')}?licence={started.licence.pk}")


def _uuid_or_none(text: str) -> uuid.UUID | None:
    try:
        return uuid.UUID(text)
    except ValueError:
        return None


def _returning_licence(request):
    """The licence a checkout return is about: by our id (sandbox, trial) or by Stripe's
    session id; only the buyer's own. Raises LicenceNotFound."""
    params = request.GET
    licences = billing.licence_list_for_buyer(buyer=request.user)
    licence = None
    if licence_id := _uuid_or_none(params.get("licence", "")):
        licence = licences.filter(pk=licence_id).first()
    elif session_id := params.get("session_id", ""):
        licence = licences.filter(stripe_checkout_session_id=session_id).first()
    if licence is None:
        raise LicenceNotFound("No purchase of yours came back with this reference.")
    return licence


@never_cache
@login_required
@require_GET
def licence_return(request):
    """Where Checkout sends the buyer back. The licence activates when Stripe's webhook
    arrives (moments later): until then the page polls and says it is waiting."""
    try:
        licence = _returning_licence(request)
    except ApplicationError as exc:
        return not_found(request, exc)
    return render(
        request,
        "frontend/licence_return.html",
        {
            "licence": licence,
            "waiting": licence.status == LicenceStatus.PENDING,
            "status_url": reverse("licence-status", args=[licence.pk]),
        },
    )


@never_cache
@login_required
@require_GET
def licence_status(request, licence_id):
    """The return page's poll: the licence's status, nothing else."""
    try:
        licence = billing.licence_get_for_buyer(buyer=request.user, licence_id=licence_id)
    except ApplicationError as exc:
        return JsonResponse(error_body(exc.code, exc.message), status=404)
    return JsonResponse({"id": str(licence.pk), "status": licence.status})


def _terms_rows(snapshot: dict) -> list[tuple[str, object]]:
    """The terms agreed at purchase as (what it means, value) lines."""
    terms = LicenceTerms.from_json(snapshot)
    return [(f.metadata["help"], getattr(terms, f.name)) for f in fields(terms)]


USAGE_CHART_DAYS = 30


def _calls_per_day(*, buyer, days: list[date]) -> dict[str, dict[date, int]]:
    """Served calls per listing slug and UTC day over `days`, summed over API keys (one
    query for the whole page)."""
    per_listing: dict[str, dict[date, int]] = {}
    for row in billing.usage_by_day(buyer=buyer, since=days[0], until=days[-1]):
        by_day = per_listing.setdefault(row.listing_slug, {})
        by_day[row.day] = by_day.get(row.day, 0) + row.calls
    return per_listing


@login_required
@require_GET
def licence_list(request):
    """My licences: each with its terms, this period's calls against the quota, and the
    export bundle's download button for download licences; calling licences get code
    to paste (the slug filled in, the key a placeholder) and their calls per day."""
    today = timezone.now().astimezone(UTC).date()
    days = [today - timedelta(days=n) for n in range(USAGE_CHART_DAYS - 1, -1, -1)]
    calls_per_day = _calls_per_day(buyer=request.user, days=days)
    site = request.build_absolute_uri("/").rstrip("/")
    granting = billing.licence_ids_granting_access(buyer=request.user)
    rows = []
    for licence in billing.licence_list_for_buyer(buyer=request.user).select_related(
        "listing__live_version"
    ):
        live = licence.status in LIVE_LICENCE_STATUSES
        access = licence.pk in granting
        calling = access and licence.kind != OfferKind.DOWNLOAD
        listing = licence.listing
        monthly = licence.kind in (OfferKind.PER_CALL, OfferKind.SUBSCRIPTION)
        rows.append(
            {
                "licence": licence,
                "live": live,
                "notice": billing.licence_notice(licence),
                "can_cancel": live
                and licence.kind != OfferKind.DOWNLOAD
                and not licence.cancel_at_period_end,
                "can_resume": live
                and monthly
                and licence.cancel_at_period_end
                and listing.status == "published",
                "spend_cap": licence.spend_cap_amount if live else None,
                "calls": billing.licence_calls_used(licence) if calling else None,
                "terms": _terms_rows(licence.terms),
                "download_version": (
                    listing.live_version if access and licence.kind == OfferKind.DOWNLOAD else None
                ),
                "snippets": (
                    call_snippets(
                        site=site,
                        slug=listing.slug,
                        task=listing.task,
                        example=listing.example_input,
                    )
                    if calling
                    else []
                ),
                "usage_bars": (
                    daily_bars(days, calls_per_day.get(listing.slug, {}))
                    if licence.kind != OfferKind.DOWNLOAD
                    else []
                ),
                "usage_total": sum(calls_per_day.get(listing.slug, {}).values()),
            }
        )
    return render(
        request,
        "frontend/licences.html",
        {"rows": rows, "usage_days": USAGE_CHART_DAYS, "key_variable": KEY_VARIABLE},
    )


@login_required
@require_POST
def licence_cancel(request, licence_id):
    """Cancel: a monthly licence keeps its access to the end of the paid period."""
    try:
        licence = billing_services.licence_cancel_by_buyer(
            buyer=request.user, licence_id=licence_id
        )
    except ApplicationError as exc:
        messages.error(request, _error_text(exc))
    else:
        messages.success(request, billing.licence_notice(licence) or "Cancelled.")
    return redirect(reverse("licences") + f"#licence-{licence_id}")


@login_required
@require_POST
def licence_resume(request, licence_id):
    try:
        billing_services.licence_resume(buyer=request.user, licence_id=licence_id)
    except ApplicationError as exc:
        messages.error(request, _error_text(exc))
    else:
        messages.success(request, "Resumed: your licence renews as before.")
    return redirect(reverse("licences") + f"#licence-{licence_id}")


@login_required
@require_POST
def licence_spend_cap(request, licence_id):
    """The monthly spend cap, typed in major units ("50" or "49.99")."""
    try:
        licence = billing.licence_get_for_buyer(buyer=request.user, licence_id=licence_id)
        amount = parse_major_units(request.POST.get("spend_cap", ""), licence.offer.currency)
        billing_services.licence_set_spend_cap(
            buyer=request.user, licence_id=licence_id, amount=amount
        )
    except ValueError as exc:
        messages.error(request, f"Spend cap: {exc}")
    except ApplicationError as exc:
        messages.error(request, _error_text(exc))
    else:
        messages.success(request, "Spend cap saved: calls past it are refused until next period.")
    return redirect(reverse("licences") + f"#licence-{licence_id}")


# --- expert: payouts and earnings


def _require_expert(request):
    return refused_unless_expert(request, "Only experts are paid: become one in your profile.")


@login_required
@require_GET
def payouts(request):
    if (refused := _require_expert(request)) is not None:
        return refused
    return render(
        request,
        "frontend/payouts.html",
        {"account": _connect_account(request.user)},
    )


@never_cache
@login_required
@require_POST
def payouts_onboard(request):
    """Start (or resume) Stripe Connect onboarding: Stripe's hosted form, or the sandbox."""
    if (refused := _require_expert(request)) is not None:
        return refused
    try:
        url = billing_checkout.connect_account_onboard(
            expert=request.user,
            return_url=request.build_absolute_uri(reverse("payouts-return")),
            refresh_url=request.build_absolute_uri(reverse("payouts")),
        )
    except ApplicationError as exc:
        messages.error(request, _error_text(exc))
        return redirect("payouts")
    return redirect(url)


@never_cache
@login_required
@require_GET
def payouts_return(request):
    """Back from Stripe's form: re-read the account so the page shows its real state."""
    if (refused := _require_expert(request)) is not None:
        return refused
    account = _connect_account(request.user)
    if account is not None and not account.sandbox:
        try:
            stripe_sync.account_sync(stripe_account_id=account.stripe_account_id)
        except ApplicationError as exc:
            messages.error(request, _error_text(exc))
    return redirect("payouts")


def _last_months(count: int) -> list[date]:
    today = timezone.now().date()
    index = today.year * 12 + today.month - 1
    return [date(i // 12, i % 12 + 1, 1) for i in range(index - count + 1, index + 1)]


@login_required
@require_GET
def earnings(request):
    """The month's statement (per listing, itemised by licence) and net per month."""
    if (refused := _require_expert(request)) is not None:
        return refused
    sandbox = sandbox_mode()
    months = _last_months(12)
    month = months[-1]
    if request.GET.get("month"):
        try:
            month = billing.parse_month(request.GET["month"])
        except ApplicationError as exc:
            messages.error(request, exc.message)
    statement = billing.statement_for(expert=request.user, month=month, sandbox=sandbox)
    totals: dict[str, dict[date, int]] = {}
    for row in billing.earnings_by_month(expert=request.user, months=12, sandbox=sandbox):
        totals.setdefault(row.currency, {})[row.month] = row.net
    charts = [
        {"currency": currency, "bars": monthly_bars(months, by_month, currency)}
        for currency, by_month in sorted(totals.items())
    ]
    return render(
        request,
        "frontend/earnings.html",
        {
            "statement": statement,
            "month": month,
            "months": months,
            "charts": charts,
            "sandbox": sandbox,
        },
    )
