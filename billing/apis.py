"""API of commerce for experts and buyers: offers, licences, usage, earnings.

Checkout, Connect and the Stripe webhook are in billing/stripe_apis.py.
"""

from dataclasses import asdict
from datetime import date, timedelta

from django.utils import timezone
from drf_spectacular.types import OpenApiTypes
from drf_spectacular.utils import OpenApiParameter, extend_schema
from rest_framework import serializers
from rest_framework.response import Response

from billing import selectors, services
from billing.errors import InvalidPeriod
from billing.models import OfferKind, Overage
from billing.stripe_gateway import sandbox_mode
from listings import selectors as listing_selectors
from marketplace.api import PUBLIC, BaseApi, ObjectTypeField
from marketplace.pagination import CursorIdPagination, list_body, list_schema


class OfferOutput(serializers.Serializer):
    id = serializers.UUIDField()
    object = ObjectTypeField("billing.offer")
    listing = serializers.CharField(source="listing.slug")
    kind = serializers.CharField()
    name = serializers.CharField()
    currency = serializers.CharField()
    unit_amount = serializers.IntegerField(
        help_text="Minor units: per 1,000 calls (per_call), per month (subscription), "
        "once (download), 0 (free_trial)."
    )
    included_calls = serializers.IntegerField(allow_null=True)
    overage = serializers.CharField()
    overage_unit_amount = serializers.IntegerField(allow_null=True)
    batch_price_percent = serializers.IntegerField(
        help_text="What a batch row (POST /v1/batches) bills, in percent of a per-call price."
    )
    status = serializers.CharField()
    replaces = serializers.UUIDField(source="replaces_id", allow_null=True)
    created_at = serializers.DateTimeField()
    retired_at = serializers.DateTimeField(allow_null=True)


class OfferFieldsInput(serializers.Serializer):
    """Shapes only: billing.services.OfferSpec checks each kind's rules."""

    class Meta:
        ref_name = "OfferFieldsInput"

    name = serializers.CharField(required=False, allow_blank=True, max_length=60)
    currency = serializers.CharField(max_length=3, help_text="ISO-4217, e.g. usd.")
    unit_amount = serializers.IntegerField(required=False, help_text="Minor units.")
    included_calls = serializers.IntegerField(required=False, allow_null=True)
    overage = serializers.ChoiceField(choices=Overage.values, required=False, allow_blank=True)
    overage_unit_amount = serializers.IntegerField(required=False, allow_null=True)
    batch_price_percent = serializers.IntegerField(
        required=False, help_text="A batch row's price in percent of a per-call one (50)."
    )


class OfferListCreateApi(BaseApi):
    """GET: the expert's offers (`?listing=<slug>`, `?include_retired=true`).
    POST: a new offer on one of the expert's listings."""

    class CreateInput(OfferFieldsInput):
        class Meta:
            ref_name = "OfferCreateInput"

        listing = serializers.SlugField()
        kind = serializers.ChoiceField(choices=OfferKind.values)

    required_scopes = {"GET": "read", "POST": "train"}

    @extend_schema(
        parameters=[
            OpenApiParameter("listing", OpenApiTypes.STR),
            OpenApiParameter("include_retired", OpenApiTypes.BOOL),
        ],
        responses=list_schema(OfferOutput),
    )
    def get(self, request):
        offers = selectors.offer_list_mine(
            owner=request.user,
            listing_slug=request.query_params.get("listing", ""),
            include_retired=request.query_params.get("include_retired", "").lower()
            in ("1", "true", "yes"),
        )
        return Response(list_body(OfferOutput(offers, many=True).data))

    @extend_schema(request=CreateInput, responses={201: OfferOutput})
    def post(self, request):
        data = self.CreateInput(data=request.data)
        data.is_valid(raise_exception=True)
        values = dict(data.validated_data)
        listing = listing_selectors.listing_get_public(
            slug=values.pop("listing"), viewer=request.user
        )
        offer = services.offer_create(owner=request.user, listing=listing, **values)
        return Response(OfferOutput(offer).data, status=201)


class OfferDetailApi(BaseApi):
    """GET: one of the expert's offers. PATCH: change it (a bought offer is retired and
    succeeded: the answer is the offer now on sale, maybe with a new id). DELETE:
    retire it (licences bought under it keep their terms)."""

    class UpdateInput(OfferFieldsInput):
        class Meta:
            ref_name = "OfferUpdateInput"

    required_scopes = {"GET": "read", "PATCH": "train", "DELETE": "train"}

    @extend_schema(responses=OfferOutput)
    def get(self, request, offer_id):
        return Response(
            OfferOutput(selectors.offer_get_mine(owner=request.user, offer_id=offer_id)).data
        )

    @extend_schema(request=UpdateInput, responses=OfferOutput)
    def patch(self, request, offer_id):
        offer = selectors.offer_get_mine(owner=request.user, offer_id=offer_id)
        data = self.UpdateInput(data=request.data, partial=True)
        data.is_valid(raise_exception=True)
        updated = services.offer_update(
            owner=request.user, offer_id=offer.id, **data.validated_data
        )
        return Response(OfferOutput(updated).data)

    @extend_schema(request=None, responses={200: OfferOutput})  # the retired offer
    def delete(self, request, offer_id):
        offer = selectors.offer_get_mine(owner=request.user, offer_id=offer_id)
        return Response(
            OfferOutput(services.offer_retire(owner=request.user, offer_id=offer.id)).data
        )


class PublicOfferOutput(OfferOutput):
    purchasable = serializers.SerializerMethodField(
        help_text="False while the expert cannot receive payouts (free trials always can)."
    )

    def get_purchasable(self, offer) -> bool:
        return self.context["payable"] or offer.kind == OfferKind.FREE_TRIAL


class ListingOffersApi(BaseApi):
    """GET: what a buyer may buy on a published listing, cheapest first."""

    required_scopes = {"GET": PUBLIC}

    @extend_schema(responses=list_schema(PublicOfferOutput, sandbox=serializers.BooleanField()))
    def get(self, request, slug):
        listing = listing_selectors.listing_get_public(slug=slug, viewer=request.user)
        offers = selectors.offer_list_public(listing=listing).select_related("listing")
        payable = sandbox_mode() or selectors.expert_can_be_paid(expert_id=listing.owner_id)
        data = PublicOfferOutput(offers, many=True, context={"payable": payable}).data
        return Response(list_body(data, sandbox=sandbox_mode()))


class BuyerLicenceOutput(serializers.Serializer):
    id = serializers.UUIDField()
    object = ObjectTypeField("billing.licence")
    listing = serializers.CharField(source="listing.slug")
    listing_title = serializers.CharField(source="listing.title")
    offer = OfferOutput()
    kind = serializers.CharField()
    status = serializers.CharField()
    sandbox = serializers.BooleanField()
    terms = serializers.JSONField(help_text="The licence terms agreed at purchase.")
    calls_included = serializers.IntegerField(allow_null=True)
    call_quota = serializers.IntegerField(allow_null=True, help_text="Null: no limit.")
    calls_used = serializers.SerializerMethodField(help_text="In the current period.")
    current_period_start = serializers.DateTimeField(allow_null=True)
    current_period_end = serializers.DateTimeField(allow_null=True)
    cancel_at_period_end = serializers.BooleanField(
        help_text="Winding down: access lasts until access_ends_at, billing never renews."
    )
    access_ends_at = serializers.DateTimeField(allow_null=True)
    monthly_spend_cap = serializers.IntegerField(
        source="spend_cap_amount",
        allow_null=True,
        help_text="Metered licences: the most calls may bill per period (minor units).",
    )
    spend_cap_calls = serializers.IntegerField(allow_null=True)
    created_at = serializers.DateTimeField()
    activated_at = serializers.DateTimeField(allow_null=True)
    ended_at = serializers.DateTimeField(allow_null=True)
    end_reason = serializers.CharField()
    notice = serializers.SerializerMethodField(
        help_text="What is happening to this licence, in plain words (empty: nothing)."
    )

    def get_calls_used(self, licence) -> int:
        return selectors.licence_calls_used(licence)

    def get_notice(self, licence) -> str:
        return selectors.licence_notice(licence)


class LicenceListApi(BaseApi):
    """GET: the signed-in buyer's licences, newest first (`?after=`, `?limit=`)."""

    required_scopes = {"GET": "read"}

    @extend_schema(responses=list_schema(BuyerLicenceOutput))
    def get(self, request):
        paginator = CursorIdPagination()
        licences = selectors.licence_list_for_buyer(buyer=request.user).select_related(
            "offer__listing"
        )
        page = paginator.paginate_queryset(licences, request)
        return paginator.get_paginated_response(BuyerLicenceOutput(page, many=True).data)


class LicenceDetailApi(BaseApi):
    """GET: one of the buyer's licences. PATCH: set its monthly spend cap
    (`{"monthly_spend_cap": 5000}`, minor units; metered licences only)."""

    class UpdateInput(serializers.Serializer):
        monthly_spend_cap = serializers.IntegerField(
            help_text="Minor units of the offer's currency; calls past it are refused (429)."
        )

    required_scopes = {"GET": "read", "PATCH": "infer"}

    @extend_schema(responses=BuyerLicenceOutput)
    def get(self, request, licence_id):
        licence = selectors.licence_get_for_buyer(buyer=request.user, licence_id=licence_id)
        return Response(BuyerLicenceOutput(licence).data)

    @extend_schema(request=UpdateInput, responses=BuyerLicenceOutput)
    def patch(self, request, licence_id):
        selectors.licence_get_for_buyer(buyer=request.user, licence_id=licence_id)
        data = self.UpdateInput(data=request.data)
        data.is_valid(raise_exception=True)
        services.licence_set_spend_cap(
            buyer=request.user,
            licence_id=licence_id,
            amount=data.validated_data["monthly_spend_cap"],
        )
        licence = selectors.licence_get_for_buyer(buyer=request.user, licence_id=licence_id)
        return Response(BuyerLicenceOutput(licence).data)


class LicenceCancelApi(BaseApi):
    """POST: cancel. A monthly licence keeps its access until the end of the period
    already paid for and is never billed again (resume undoes it until then); a free
    trial ends now; a download licence has nothing to cancel (409)."""

    required_scopes = {"POST": "infer"}

    @extend_schema(request=None, responses=BuyerLicenceOutput)
    def post(self, request, licence_id):
        selectors.licence_get_for_buyer(buyer=request.user, licence_id=licence_id)
        services.licence_cancel_by_buyer(buyer=request.user, licence_id=licence_id)
        licence = selectors.licence_get_for_buyer(buyer=request.user, licence_id=licence_id)
        return Response(BuyerLicenceOutput(licence).data)


class LicenceResumeApi(BaseApi):
    """POST: undo a cancellation before the paid period ends (billing renews again)."""

    required_scopes = {"POST": "infer"}

    @extend_schema(request=None, responses=BuyerLicenceOutput)
    def post(self, request, licence_id):
        selectors.licence_get_for_buyer(buyer=request.user, licence_id=licence_id)
        services.licence_resume(buyer=request.user, licence_id=licence_id)
        licence = selectors.licence_get_for_buyer(buyer=request.user, licence_id=licence_id)
        return Response(BuyerLicenceOutput(licence).data)


class UsageRowOutput(serializers.Serializer):
    day = serializers.DateField()
    listing = serializers.CharField(source="listing_slug")
    api_key = serializers.UUIDField(source="api_key_id", allow_null=True)
    api_key_prefix = serializers.CharField(allow_null=True)
    calls = serializers.IntegerField(help_text="Served (billable) calls.")
    errors = serializers.IntegerField(help_text="Failed calls, not billed.")
    avg_latency_ms = serializers.FloatField(allow_null=True)


def _date_param(params, name: str, default: date) -> date:
    raw = params.get(name, "")
    if not raw:
        return default
    try:
        return date.fromisoformat(raw)
    except ValueError:
        raise InvalidPeriod(f"{name} must be a date like 2026-11-29.", fields={name: []}) from None


class UsageApi(BaseApi):
    """GET: the buyer's calls per day (UTC), listing and API key; `since`/`until`
    (inclusive dates, default the last 30 days), `listing=<slug>`, `api_key=<id>`."""

    required_scopes = {"GET": "read"}

    @extend_schema(
        parameters=[
            OpenApiParameter("since", OpenApiTypes.DATE),
            OpenApiParameter("until", OpenApiTypes.DATE),
            OpenApiParameter("listing", OpenApiTypes.STR),
            OpenApiParameter("api_key", OpenApiTypes.UUID),
        ],
        responses=list_schema(
            UsageRowOutput,
            name="UsageOutput",
            cursor=False,
            object=serializers.CharField(),
            since=serializers.DateField(),
            until=serializers.DateField(),
            total_calls=serializers.IntegerField(),
        ),
    )
    def get(self, request):
        params = request.query_params
        today = timezone.now().date()
        until = _date_param(params, "until", today)
        since = _date_param(params, "since", until - timedelta(days=29))
        api_key = params.get("api_key") or None
        if api_key is not None:
            key_field = serializers.UUIDField()
            try:
                api_key = key_field.to_internal_value(api_key)
            except serializers.ValidationError:
                raise InvalidPeriod(
                    "api_key must be an API key id.", fields={"api_key": []}
                ) from None
        rows = selectors.usage_by_day(
            buyer=request.user,
            since=since,
            until=until,
            listing_slug=params.get("listing", ""),
            api_key_id=api_key,
        )
        return Response(
            {
                "object": "list",
                "since": since,
                "until": until,
                "data": UsageRowOutput(rows, many=True).data,
                "total_calls": sum(r.calls for r in rows),
            }
        )


class StatementLineOutput(serializers.Serializer):
    licence = serializers.UUIDField(source="licence_id")
    buyer = serializers.CharField()
    offer_kind = serializers.CharField()
    gross = serializers.IntegerField()
    refunds = serializers.IntegerField()
    platform_fee = serializers.IntegerField()
    stripe_fee = serializers.IntegerField()
    stripe_fee_known = serializers.BooleanField()
    net = serializers.IntegerField()


class ListingStatementOutput(serializers.Serializer):
    listing = serializers.CharField(source="listing_slug")
    title = serializers.CharField(source="listing_title")
    currency = serializers.CharField()
    gross = serializers.IntegerField()
    refunds = serializers.IntegerField()
    platform_fee = serializers.IntegerField()
    stripe_fee = serializers.IntegerField()
    stripe_fee_known = serializers.BooleanField()
    net = serializers.IntegerField()
    lines = StatementLineOutput(many=True)


class MonthTotalOutput(serializers.Serializer):
    month = serializers.DateField()
    currency = serializers.CharField()
    gross = serializers.IntegerField()
    refunds = serializers.IntegerField()
    platform_fee = serializers.IntegerField()
    net = serializers.IntegerField()


class EarningsApi(BaseApi):
    """GET: the expert's earnings. Without `month`: totals for each of the last 12
    months (the chart). With `month=2026-11`: that month's statement per listing,
    itemised by licence (`listing=<slug>` for one). Minor units; net = gross + refunds
    - platform_fee; Stripe's fee is paid by the platform and shown where known.
    Sandbox money is reported only in sandbox mode, never mixed with real money."""

    required_scopes = {"GET": "read"}

    @extend_schema(
        parameters=[
            OpenApiParameter("month", OpenApiTypes.STR, description="YYYY-MM"),
            OpenApiParameter("listing", OpenApiTypes.STR),
        ],
        responses=OpenApiTypes.OBJECT,
    )
    def get(self, request):
        sandbox = sandbox_mode()
        month = request.query_params.get("month", "")
        if not month:
            months = selectors.earnings_by_month(expert=request.user, sandbox=sandbox)
            return Response(
                {
                    "object": "billing.earnings",
                    "sandbox": sandbox,
                    "months": MonthTotalOutput(months, many=True).data,
                }
            )
        listing = None
        if request.query_params.get("listing"):
            listing = listing_selectors.listing_get_public(
                slug=request.query_params["listing"], viewer=request.user
            )
        statement = selectors.statement_for(
            expert=request.user,
            month=selectors.parse_month(month),
            listing=listing,
            sandbox=sandbox,
        )
        return Response(
            {
                "object": "billing.statement",
                "month": statement.month.strftime("%Y-%m"),
                "sandbox": statement.sandbox,
                "listings": ListingStatementOutput(statement.listings, many=True).data,
                "totals": statement.totals,
                "gardens": [asdict(line) for line in statement.gardens],
            }
        )
