"""API of compare: `GET /api/v1/compare?listings=a,b` (evidence.compare builds the body)."""

from drf_spectacular.types import OpenApiTypes
from drf_spectacular.utils import OpenApiParameter, extend_schema
from rest_framework import serializers
from rest_framework.response import Response

from accounts.authentication import calling_api_key
from evidence import compare
from marketplace.api import PUBLIC, BaseApi


class VerifiedScoreOutput(serializers.Serializer):
    metric = serializers.CharField()
    metric_label = serializers.CharField()
    value = serializers.FloatField()
    ci_low = serializers.FloatField(allow_null=True)
    ci_high = serializers.FloatField(allow_null=True)
    sealed_rows = serializers.IntegerField(allow_null=True)
    lift = serializers.FloatField(
        allow_null=True, help_text="Over the strongest baseline, on the same sealed rows."
    )
    lift_ci_low = serializers.FloatField(allow_null=True)
    lift_ci_high = serializers.FloatField(allow_null=True)
    lift_baseline = serializers.CharField()
    lift_baseline_label = serializers.CharField()
    is_legacy = serializers.BooleanField()
    graded_metric = serializers.JSONField(allow_null=True)
    summary = serializers.CharField(help_text="The score and its interval, in words.")
    lift_summary = serializers.CharField()


class GardenMemberOutput(serializers.Serializer):
    slug = serializers.CharField()
    title = serializers.CharField()
    verified = VerifiedScoreOutput(allow_null=True)


class LicenceTermsOutput(serializers.Serializer):
    commercial_use = serializers.BooleanField()
    derivatives_allowed = serializers.BooleanField()
    on_prem_download = serializers.BooleanField()
    attribution_required = serializers.BooleanField()
    max_calls_per_month = serializers.IntegerField(allow_null=True)
    summary = serializers.CharField()
    plain = serializers.ListField(child=serializers.CharField())


class OfferCostOutput(serializers.Serializer):
    id = serializers.CharField()
    kind = serializers.CharField()
    kind_label = serializers.CharField()
    name = serializers.CharField()
    currency = serializers.CharField()
    unit_amount = serializers.IntegerField(
        help_text="Minor units: per 1,000 calls (per_call), per month (subscription), "
        "once (download), 0 (free_trial)."
    )
    included_calls = serializers.IntegerField(allow_null=True)
    overage = serializers.CharField()
    overage_unit_amount = serializers.IntegerField(allow_null=True)
    cost_of_1000_calls = serializers.IntegerField(
        allow_null=True,
        help_text="Minor units that 1,000 calls in a month cost at this offer; null when "
        "it cannot serve them (a download, a smaller quota or trial): see explained.",
    )
    explained = serializers.CharField()


class LatencyOutput(serializers.Serializer):
    calls = serializers.IntegerField()
    p50_ms = serializers.FloatField(allow_null=True, help_text="Null: not enough calls yet.")
    p95_ms = serializers.FloatField(allow_null=True)
    summary = serializers.CharField()


class PrivateScoreOutput(serializers.Serializer):
    evaluation_id = serializers.CharField()
    created_at = serializers.DateTimeField()
    rows = serializers.IntegerField()
    metric = serializers.CharField()
    metric_label = serializers.CharField()
    higher_is_better = serializers.BooleanField()
    value = serializers.FloatField(allow_null=True)
    ci_low = serializers.FloatField(allow_null=True)
    ci_high = serializers.FloatField(allow_null=True)
    rows_scored = serializers.IntegerField(allow_null=True)
    errors = serializers.IntegerField(allow_null=True)
    latency_ms_mean = serializers.FloatField(allow_null=True)
    latency_ms_p95 = serializers.FloatField(allow_null=True)
    summary = serializers.CharField()


class ComparedListingOutput(serializers.Serializer):
    slug = serializers.CharField()
    title = serializers.CharField()
    summary = serializers.CharField()
    kind = serializers.CharField(help_text="model, or garden (no sealed evaluation of its own).")
    task = serializers.CharField()
    domain = serializers.CharField()
    expert = serializers.CharField()
    same_task = serializers.BooleanField(help_text="Of the first listing's task.")
    verified = VerifiedScoreOutput(allow_null=True)
    verified_note = serializers.CharField()
    garden_members = GardenMemberOutput(many=True)
    licence = LicenceTermsOutput()
    offers = OfferCostOutput(many=True)
    latency = LatencyOutput()
    private_scores = PrivateScoreOutput(
        many=True, help_text="The caller's own private evaluations of it (read scope)."
    )


class PairVerdictOutput(serializers.Serializer):
    a = serializers.CharField()
    b = serializers.CharField()
    source = serializers.ChoiceField(
        choices=["sealed", "private"],
        help_text="sealed: each on its own expert's sealed rows (not like for like); "
        "private: the same rows of yours, paired.",
    )
    overlap = serializers.BooleanField(
        help_text="The evaluations cannot tell the two apart (no winner is named)."
    )
    evaluation_id = serializers.CharField(allow_null=True)
    delta = serializers.FloatField(allow_null=True)
    ci_low = serializers.FloatField(allow_null=True)
    ci_high = serializers.FloatField(allow_null=True)
    summary = serializers.CharField()


class ComparisonOutput(serializers.Serializer):
    object = serializers.SerializerMethodField()
    task = serializers.CharField()
    listings = ComparedListingOutput(many=True)
    tasks_differ = serializers.BooleanField()
    task_notes = serializers.ListField(child=serializers.CharField())
    verdicts = PairVerdictOutput(many=True)
    notes = serializers.ListField(child=serializers.CharField())
    private_evaluations_included = serializers.BooleanField()
    private_evaluations_note = serializers.CharField()
    like_for_like = serializers.DictField(child=serializers.CharField())

    def get_object(self, _comparison) -> str:
        return "comparison"


def may_read_private_evaluations(request) -> bool:
    """A signed-in caller, through a session or an API key with the read scope."""
    if not request.user.is_authenticated:
        return False
    key = calling_api_key(request)
    return key is None or "read" in key.scopes


class CompareApi(BaseApi):
    """GET: 2-4 published listings side by side. Public: anyone reads the catalogue's
    parts; the caller's own private evaluations are added for a signed-in session or an
    API key with the read scope (a key without it gets the catalogue's parts only)."""

    required_scopes = {"GET": PUBLIC}

    @extend_schema(
        summary="Compare 2-4 listings side by side",
        tags=["Compare"],
        parameters=[
            OpenApiParameter(
                "listings",
                OpenApiTypes.STR,
                required=True,
                description="2-4 published listing slugs, comma-separated (or repeated).",
            )
        ],
        responses=ComparisonOutput,
    )
    def get(self, request):
        slugs = compare.compare_slugs_from_params(request.query_params)
        comparison = compare.comparison_build(
            slugs=slugs,
            viewer=request.user,
            include_private=may_read_private_evaluations(request),
        )
        return Response(ComparisonOutput(comparison).data)
