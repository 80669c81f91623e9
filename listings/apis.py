"""API of the catalogue: listings (owners and buyers), reviews, reports."""

from datetime import datetime, tzinfo

from django.utils import timezone
from drf_spectacular.types import OpenApiTypes
from drf_spectacular.utils import OpenApiParameter, extend_schema
from rest_framework import serializers
from rest_framework.response import Response

from listings import gardens, selectors, services
from listings.models import Domain, GardenKind, ListingKind, ReportReason
from marketplace.api import PUBLIC, BaseApi, ObjectTypeField
from marketplace.pagination import list_body, list_schema


class LicenceOutput(serializers.Serializer):
    commercial_use = serializers.BooleanField()
    derivatives_allowed = serializers.BooleanField()
    on_prem_download = serializers.BooleanField()
    attribution_required = serializers.BooleanField()
    max_calls_per_month = serializers.IntegerField(allow_null=True)
    summary = serializers.CharField(source="licence_summary")


class ExpertSummaryOutput(serializers.Serializer):
    name = serializers.CharField()
    verified = serializers.SerializerMethodField()
    headline = serializers.SerializerMethodField()

    def get_verified(self, user) -> bool:
        profile = getattr(user, "expert_profile", None)
        return bool(profile and profile.verified)

    def get_headline(self, user) -> str:
        profile = getattr(user, "expert_profile", None)
        return profile.headline if profile else ""


class ListingCardOutput(serializers.Serializer):
    """What a catalogue row shows: one query for the whole page."""

    id = serializers.UUIDField()
    object = ObjectTypeField("listing")
    slug = serializers.CharField()
    title = serializers.CharField()
    summary = serializers.CharField()
    domain = serializers.CharField()
    task = serializers.CharField()
    tags = serializers.ListField(child=serializers.CharField())
    languages = serializers.ListField(child=serializers.CharField())
    status = serializers.CharField()
    score_metric = serializers.CharField()
    score = serializers.FloatField(allow_null=True)
    lift_over_strongest_baseline = serializers.SerializerMethodField()
    graded_metric = serializers.JSONField(
        allow_null=True,
        help_text="Generation: the graded metric beside exact match (name, label, "
        "higher_is_better, value, ci_low, ci_high, lift over the strongest baseline on it).",
    )
    rating = serializers.SerializerMethodField()
    popularity = serializers.IntegerField()
    price = serializers.SerializerMethodField()
    licence = LicenceOutput(source="*")
    expert = ExpertSummaryOutput(source="owner")
    published_at = serializers.DateTimeField(allow_null=True)

    def get_lift_over_strongest_baseline(self, listing) -> dict | None:
        """Specialist minus the strongest baseline on the sealed split, with its 95 %
        paired-bootstrap interval and which baseline that was."""
        if listing.lift_over_generalist is None:
            return None
        return {
            "delta": listing.lift_over_generalist,
            "ci_low": listing.lift_over_generalist_low,
            "ci_high": listing.lift_over_generalist_high,
            "baseline": listing.lift_baseline,
            "label": listing.lift_baseline_label,
        }

    def get_rating(self, listing) -> dict:
        return {"average": listing.rating_avg, "count": listing.rating_count}

    def get_price(self, listing) -> dict | None:
        """The lowest price on sale, "from …"; null when nothing is on sale."""
        if listing.min_price_minor is None:
            return None
        return {"from_minor": listing.min_price_minor, "currency": listing.price_currency}


def _iso_8601(value: datetime | None, zone: tzinfo) -> str | None:
    """DRF's DateTimeField output: ISO 8601 in the current time zone, "Z" for UTC."""
    if value is None:
        return None
    text = value.astimezone(zone).isoformat()
    return text[:-6] + "Z" if text.endswith("+00:00") else text


def listing_card(row: dict, zone: tzinfo) -> dict:
    """ListingCardOutput's body, written out for a listing_card_search row.

    The list serves 20-100 cards a request, and DRF's field-by-field serializer was the
    largest cost of it (bench/catalogue.py); this builds the same keys in the same order
    with the same values, and a test holds it equal to ListingCardOutput, which stays the
    schema and the single-listing serializer.
    """
    lift = row["lift_over_generalist"]
    price = row["min_price_minor"]
    return {
        "id": str(row["id"]),
        "object": "listing",
        "slug": row["slug"],
        "title": row["title"],
        "summary": row["summary"],
        "domain": row["domain"],
        "task": row["task"],
        "tags": row["tags"],
        "languages": row["languages"],
        "status": row["status"],
        "score_metric": row["score_metric"],
        "score": row["score"],
        "lift_over_strongest_baseline": None
        if lift is None
        else {
            "delta": lift,
            "ci_low": row["lift_over_generalist_low"],
            "ci_high": row["lift_over_generalist_high"],
            "baseline": row["lift_baseline"],
            "label": row["lift_baseline_label"],
        },
        "graded_metric": row["graded_metric"],
        "rating": {"average": row["rating_avg"], "count": row["rating_count"]},
        "popularity": row["popularity"],
        "price": None
        if price is None
        else {"from_minor": price, "currency": row["price_currency"]},
        "licence": {
            "commercial_use": row["commercial_use"],
            "derivatives_allowed": row["derivatives_allowed"],
            "on_prem_download": row["on_prem_download"],
            "attribution_required": row["attribution_required"],
            "max_calls_per_month": row["max_calls_per_month"],
            "summary": row["licence_summary"],
        },
        "expert": {
            # User.name and ExpertSummaryOutput, from the columns (no profile: unverified).
            "name": row["owner__display_name"] or row["owner__email"].split("@")[0],
            "verified": bool(row["owner__expert_profile__verified"]),
            "headline": row["owner__expert_profile__headline"] or "",
        },
        "published_at": _iso_8601(row["published_at"], zone),
    }


class ListingDetailOutput(ListingCardOutput):
    kind = serializers.CharField(help_text="model, or garden (a composition of listings).")
    composable = serializers.BooleanField(
        help_text="Its expert lets curators compose it into gardens (paid per answered call)."
    )
    garden = serializers.SerializerMethodField()
    description = serializers.CharField()
    description_html = serializers.CharField()
    intended_use = serializers.CharField()
    example_input = serializers.CharField()
    out_of_scope_use = serializers.CharField()
    risk_notes = serializers.CharField()
    evaluation = serializers.SerializerMethodField()
    evaluation_attempts = serializers.SerializerMethodField()
    versions = serializers.SerializerMethodField()

    def get_evaluation_attempts(self, listing) -> dict | None:
        """The sealed evaluations its expert ran on the same data before the live version's
        (``sealed_evaluations_before``), and the name of the lift's interval
        (``interval_label``), which is Bonferroni-corrected for all of them."""
        if listing.live_version_id is None:
            return None
        return selectors.evaluation_attempts(listing.live_version)

    def get_evaluation(self, listing) -> dict | None:
        return selectors.evaluation_summary(listing.live_version)

    def get_garden(self, listing) -> dict | None:
        """A garden's kind, its revenue split and its members (None for a model)."""
        return gardens.garden_public(listing) if listing.kind == ListingKind.GARDEN else None

    def get_versions(self, listing) -> list[dict]:
        return [
            {
                "name": f"{listing.slug}@{v.number}",
                "number": v.number,
                "status": v.status,
                "model_version": str(v.model_version_id),
                "published_at": v.published_at,
            }
            for v in listing.versions.all()
        ]


class OwnerListingOutput(ListingDetailOutput):
    status_reason = serializers.CharField()
    proposed_version = serializers.UUIDField(source="proposed_version_id", allow_null=True)
    proposed_evaluation = serializers.SerializerMethodField()
    moderation_history = serializers.SerializerMethodField()

    def get_proposed_evaluation(self, listing) -> dict | None:
        return selectors.evaluation_summary(listing.proposed_version)

    def get_moderation_history(self, listing) -> list[dict]:
        return [
            {"action": a.action, "reason": a.reason, "created_at": a.created_at}
            for a in selectors.moderation_history(listing=listing)
        ]


class ListingContentInput(serializers.Serializer):
    class Meta:
        ref_name = "ListingContentInput"

    title = serializers.CharField(max_length=120)
    summary = serializers.CharField(max_length=300)
    description = serializers.CharField(required=False, allow_blank=True, max_length=50_000)
    domain = serializers.ChoiceField(choices=Domain.values)
    tags = serializers.ListField(child=serializers.CharField(max_length=40), required=False)
    languages = serializers.ListField(child=serializers.CharField(max_length=20), required=False)
    intended_use = serializers.CharField(required=False, allow_blank=True)
    example_input = serializers.CharField(
        required=False,
        allow_blank=True,
        max_length=500,
        help_text="An input buyers can try (the Try it box and snippets start from it); "
        "write a new one, never a row of your dataset.",
    )
    out_of_scope_use = serializers.CharField(required=False, allow_blank=True)
    risk_notes = serializers.CharField(required=False, allow_blank=True)
    commercial_use = serializers.BooleanField(required=False)
    derivatives_allowed = serializers.BooleanField(required=False)
    on_prem_download = serializers.BooleanField(required=False)
    attribution_required = serializers.BooleanField(required=False)
    max_calls_per_month = serializers.IntegerField(required=False, allow_null=True, min_value=1)


def _owner_view(listing) -> dict:
    return OwnerListingOutput(listing).data


class ListingCatalogueApi(BaseApi):
    """GET: the public catalogue. POST: an expert creates a draft."""

    class CreateInput(ListingContentInput):
        class Meta:
            ref_name = "ListingCreateInput"

        model_version = serializers.UUIDField()
        slug = serializers.SlugField(max_length=80, required=False, allow_blank=True)

    required_scopes = {"GET": PUBLIC, "POST": "train"}

    @extend_schema(
        parameters=[
            OpenApiParameter(name, OpenApiTypes.STR)
            for name in ("q", "domain", "task", "tag", "sort", "cursor", "currency")
        ]
        + [OpenApiParameter(f, OpenApiTypes.BOOL) for f in selectors.LICENCE_FLAGS]
        + [
            OpenApiParameter("min_lift", OpenApiTypes.FLOAT),
            OpenApiParameter("min_rating", OpenApiTypes.FLOAT),
            OpenApiParameter("limit", OpenApiTypes.INT),
            OpenApiParameter("min_price", OpenApiTypes.INT, description="Minor units."),
            OpenApiParameter("max_price", OpenApiTypes.INT, description="Minor units."),
        ],
        responses=list_schema(
            ListingCardOutput, next_cursor=serializers.CharField(allow_null=True)
        ),
    )
    def get(self, request):
        query = selectors.catalogue_query_from_params(request.query_params)
        page = selectors.listing_card_search(query=query)
        zone = timezone.get_current_timezone()
        data = [listing_card(row, zone) for row in page.listings]
        return Response(list_body(data, has_more=page.has_more, next_cursor=page.next_cursor))

    @extend_schema(request=CreateInput, responses={201: OwnerListingOutput})
    def post(self, request):
        data = self.CreateInput(data=request.data)
        data.is_valid(raise_exception=True)
        values = dict(data.validated_data)
        listing = services.listing_create(
            owner=request.user,
            model_version_id=values.pop("model_version"),
            slug=values.pop("slug", ""),
            **values,
        )
        return Response(_owner_view(listing), status=201)


class ListingMineApi(BaseApi):
    required_scopes = {"GET": "read"}

    @extend_schema(responses=list_schema(OwnerListingOutput))
    def get(self, request):
        listings = selectors.listing_list_mine(owner=request.user).prefetch_related("versions")
        return Response(list_body([_owner_view(x) for x in listings]))


class ListingDetailApi(BaseApi):
    """GET: a published listing (anyone) or your own (any state). PATCH: edit a draft."""

    class UpdateInput(ListingContentInput):
        class Meta:
            ref_name = "ListingUpdateInput"

        model_version = serializers.UUIDField(required=False)

    required_scopes = {"GET": PUBLIC, "PATCH": "train"}

    @extend_schema(responses=ListingDetailOutput)
    def get(self, request, slug):
        listing = selectors.listing_get_public(slug=slug, viewer=request.user)
        if request.user.is_authenticated and listing.owner_id == request.user.pk:
            return Response(_owner_view(listing))
        return Response(ListingDetailOutput(listing).data)

    @extend_schema(request=UpdateInput, responses=OwnerListingOutput)
    def patch(self, request, slug):
        listing = selectors.listing_get_public(slug=slug, viewer=request.user)
        data = self.UpdateInput(data=request.data, partial=True)
        data.is_valid(raise_exception=True)
        values = dict(data.validated_data)
        listing = services.listing_update(
            owner=request.user,
            listing_id=listing.pk,
            model_version_id=values.pop("model_version", None),
            **values,
        )
        return Response(_owner_view(listing))


class _OwnerActionApi(BaseApi):
    required_scopes = {"POST": "train"}

    def _listing(self, request, slug):
        return selectors.listing_get_public(slug=slug, viewer=request.user)


class ListingSubmitApi(_OwnerActionApi):
    @extend_schema(request=None, responses=OwnerListingOutput)
    def post(self, request, slug):
        listing = services.listing_submit(
            owner=request.user, listing_id=self._listing(request, slug).pk
        )
        return Response(_owner_view(listing))


class ListingDelistApi(_OwnerActionApi):
    @extend_schema(request=None, responses=OwnerListingOutput)
    def post(self, request, slug):
        listing = services.listing_delist(
            owner=request.user, listing_id=self._listing(request, slug).pk
        )
        return Response(_owner_view(listing))


class ListingVersionProposeApi(_OwnerActionApi):
    class Input(serializers.Serializer):
        class Meta:
            ref_name = "ListingVersionProposeInput"

        model_version = serializers.UUIDField()

    @extend_schema(request=Input, responses=OwnerListingOutput)
    def post(self, request, slug):
        data = self.Input(data=request.data)
        data.is_valid(raise_exception=True)
        listing = services.listing_propose_version(
            owner=request.user,
            listing_id=self._listing(request, slug).pk,
            model_version_id=data.validated_data["model_version"],
        )
        return Response(_owner_view(listing))


class ReviewOutput(serializers.Serializer):
    id = serializers.IntegerField()
    author = serializers.CharField(source="author.name")
    rating = serializers.IntegerField()
    text = serializers.CharField()
    reply = serializers.CharField()
    created_at = serializers.DateTimeField()
    updated_at = serializers.DateTimeField()
    replied_at = serializers.DateTimeField(allow_null=True)


class ReviewListCreateApi(BaseApi):
    class Input(serializers.Serializer):
        class Meta:
            ref_name = "ReviewInput"

        rating = serializers.IntegerField(min_value=1, max_value=5)
        text = serializers.CharField(required=False, allow_blank=True, max_length=5000)

    required_scopes = {"GET": PUBLIC, "POST": "read"}

    @extend_schema(responses=list_schema(ReviewOutput))
    def get(self, request, slug):
        listing = selectors.listing_get_public(slug=slug, viewer=request.user)
        reviews = selectors.review_list(listing=listing)
        return Response(list_body(ReviewOutput(reviews, many=True).data))

    @extend_schema(request=Input, responses={200: ReviewOutput})
    def post(self, request, slug):
        listing = selectors.listing_get_public(slug=slug, viewer=request.user)
        data = self.Input(data=request.data)
        data.is_valid(raise_exception=True)
        review = services.review_upsert(author=request.user, listing=listing, **data.validated_data)
        return Response(ReviewOutput(review).data)


class ReviewReplyApi(BaseApi):
    required_scopes = {"POST": "train"}

    class Input(serializers.Serializer):
        class Meta:
            ref_name = "ReviewReplyInput"

        text = serializers.CharField(max_length=5000)

    @extend_schema(request=Input, responses=ReviewOutput)
    def post(self, request, slug, review_id):
        selectors.listing_get_public(slug=slug, viewer=request.user)
        data = self.Input(data=request.data)
        data.is_valid(raise_exception=True)
        review = services.review_reply(
            owner=request.user, review_id=review_id, text=data.validated_data["text"]
        )
        return Response(ReviewOutput(review).data)


class ReportCreateApi(BaseApi):
    required_scopes = {"POST": "read"}

    class Input(serializers.Serializer):
        class Meta:
            ref_name = "ReportInput"

        # Only the shape here: services.report_create checks the reason and the length.
        reason = serializers.CharField(help_text=f"One of {', '.join(ReportReason.values)}.")
        text = serializers.CharField(required=False, allow_blank=True)

    @extend_schema(request=Input, responses={201: OpenApiTypes.OBJECT})
    def post(self, request, slug):
        listing = selectors.listing_get_public(slug=slug, viewer=request.user)
        data = self.Input(data=request.data)
        data.is_valid(raise_exception=True)
        report = services.report_create(
            reporter=request.user, listing=listing, **data.validated_data
        )
        return Response({"id": report.id, "object": "report", "status": report.status}, status=201)


# --- gardens (listings.gardens) -------------------------------------------------------------


class GardenCreateApi(BaseApi):
    """POST: an expert curates a garden, a draft listing over other experts' composable
    listings: `kind` "router" with `members` (slugs of one task), or "pipeline" with a
    classification `classifier` and `routes` ({its label: a generation listing}). The
    licence terms are the members' intersection; submit it for review, then price it
    (per call or a free trial)."""

    class Input(ListingContentInput):
        class Meta:
            ref_name = "GardenCreateInput"

        slug = serializers.SlugField(max_length=80, required=False, allow_blank=True)
        kind = serializers.ChoiceField(choices=GardenKind.values)
        members = serializers.ListField(child=serializers.CharField(), required=False)
        classifier = serializers.CharField(required=False)
        routes = serializers.DictField(child=serializers.CharField(), required=False)
        member_share_percent = serializers.IntegerField(
            required=False, min_value=0, max_value=100,
            help_text="Of each call's price after the platform fee, the members' part "
            "(default 70); the curator gets the rest.",
        )  # fmt: skip

    required_scopes = {"POST": "train"}

    @extend_schema(request=Input, responses={201: OwnerListingOutput})
    def post(self, request):
        data = self.Input(data=request.data)
        data.is_valid(raise_exception=True)
        values = dict(data.validated_data)
        listing = gardens.garden_create(curator=request.user, **values)
        return Response(_owner_view(listing), status=201)


class ListingComposableApi(_OwnerActionApi):
    """POST {"composable": true|false}: allow curators to compose this listing into
    gardens, or stop (it leaves every garden at once, and their curators are told)."""

    class Input(serializers.Serializer):
        class Meta:
            ref_name = "ListingComposableInput"

        composable = serializers.BooleanField()

    @extend_schema(request=Input, responses=OwnerListingOutput)
    def post(self, request, slug):
        data = self.Input(data=request.data)
        data.is_valid(raise_exception=True)
        listing = gardens.listing_set_composable(
            owner=request.user,
            listing_id=self._listing(request, slug).pk,
            composable=data.validated_data["composable"],
        )
        return Response(_owner_view(listing))


class GardenMemberRestoreApi(_OwnerActionApi):
    """POST {"listing": slug}: the curator brings back a member that left this garden, once
    it is published and composable again (its former place and label)."""

    class Input(serializers.Serializer):
        class Meta:
            ref_name = "GardenMemberRestoreInput"

        listing = serializers.CharField(max_length=80)

    @extend_schema(request=Input, responses=OwnerListingOutput)
    def post(self, request, slug):
        data = self.Input(data=request.data)
        data.is_valid(raise_exception=True)
        listing = gardens.garden_member_restore(
            curator=request.user,
            garden_id=self._listing(request, slug).pk,
            member_slug=data.validated_data["listing"],
        )
        return Response(_owner_view(listing))
