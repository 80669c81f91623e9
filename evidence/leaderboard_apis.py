"""Leaderboards over the API: the sealed benchmark sets and their ranked boards.

Public, as the catalogue is: a board holds only what listings publish (scores with their
intervals, the version scored and when), never a row of a set.
"""

from __future__ import annotations

from drf_spectacular.types import OpenApiTypes
from drf_spectacular.utils import OpenApiParameter, extend_schema
from rest_framework import serializers
from rest_framework.response import Response

from evidence import leaderboards
from marketplace.api import PUBLIC, BaseApi, ObjectTypeField
from marketplace.errors import InvalidInputError
from marketplace.pagination import _parse_limit, list_body, list_schema

TAGS = ["Leaderboards"]
RANKING = {
    True: "Ranked by the low end of each 95% interval (higher is better). A row's rank is 1 "
    "plus the number of rows whose whole interval lies above its own: rows whose intervals "
    "overlap share a rank.",
    False: "Ranked by the high end of each 95% interval, lowest first (lower is better). A "
    "row's rank is 1 plus the number of rows whose whole interval lies below its own: rows "
    "whose intervals overlap share a rank.",
}


class SourceOutput(serializers.Serializer):
    name = serializers.CharField()
    url = serializers.CharField(allow_blank=True)
    licence = serializers.CharField()
    attribution = serializers.CharField(allow_blank=True)


class MetricOutput(serializers.Serializer):
    name = serializers.CharField(
        help_text="accuracy, character_error_rate, token_error_rate, chrf."
    )
    label = serializers.CharField()
    higher_is_better = serializers.BooleanField()
    why = serializers.CharField(required=False)


class BenchmarkOutput(serializers.Serializer):
    id = serializers.CharField(source="slug")
    object = ObjectTypeField("leaderboard.benchmark")
    slug = serializers.CharField()
    title = serializers.CharField()
    description = serializers.CharField()
    task = serializers.CharField()
    labels = serializers.ListField(child=serializers.CharField())
    row_count = serializers.IntegerField(help_text="Rows in the set; the rows are never shown.")
    rows_sha256 = serializers.CharField()
    metric = MetricOutput()
    sources = SourceOutput(many=True)
    entries = serializers.IntegerField(source="entry_count", help_text="Listings on the board.")
    created_at = serializers.DateTimeField()


class IntervalOutput(serializers.Serializer):
    delta = serializers.FloatField()
    ci_low = serializers.FloatField(allow_null=True)
    ci_high = serializers.FloatField(allow_null=True)
    separated = serializers.BooleanField()


class BoardRowOutput(serializers.Serializer):
    id = serializers.SerializerMethodField()
    kind = serializers.CharField(
        help_text="listing, or generalist: a reference row (the base "
        "model alone), not a listing and never ranked."
    )
    rank = serializers.IntegerField(allow_null=True)
    tied = serializers.BooleanField(help_text="Another listing shares this rank.")
    listing = serializers.CharField(source="listing_slug", allow_blank=True)
    title = serializers.CharField(source="label")
    expert = serializers.CharField(allow_blank=True)
    model = serializers.SerializerMethodField(help_text="<listing>@<version number> scored.")
    version = serializers.IntegerField(source="version_number", allow_null=True)
    newer_version_live = serializers.BooleanField()
    scored_at = serializers.DateTimeField()
    value = serializers.FloatField()
    ci_low = serializers.FloatField()
    ci_high = serializers.FloatField()
    ranked_by = serializers.FloatField(source="bound", help_text="The interval's pessimistic end.")
    rows_scored = serializers.IntegerField()
    errors = serializers.IntegerField()
    base_model = serializers.CharField()
    vs_generalist = IntervalOutput(
        allow_null=True,
        help_text="The paired difference over the base model alone (positive: better).",
    )

    def get_id(self, row) -> str:
        return row.listing_slug or f"generalist:{row.base_model}"

    def get_model(self, row) -> str | None:
        if row.kind != "listing" or row.version_number is None:
            return None
        return f"{row.listing_slug}@{row.version_number}"


class BoardOutput(serializers.Serializer):
    object = ObjectTypeField("leaderboard")
    benchmark = BenchmarkOutput()
    metric = MetricOutput()
    ranking = serializers.CharField()
    data = BoardRowOutput(many=True)
    has_more = serializers.BooleanField()
    first_id = serializers.CharField(allow_null=True)
    last_id = serializers.CharField(allow_null=True)


PAGE_PARAMETERS = [
    OpenApiParameter("after", OpenApiTypes.STR, description="The last id of the page before."),
    OpenApiParameter("limit", OpenApiTypes.INT, description="1 to 100 (default 20)."),
]


def _page(items: list, request, id_of) -> tuple[list, bool]:
    """A page of ``items`` after the one whose id is ``?after=``, ``?limit=`` long."""
    limit = _parse_limit(request.query_params.get("limit"))
    after = request.query_params.get("after")
    if after:
        ids = [id_of(item) for item in items]
        if after not in ids:
            raise InvalidInputError(
                "after must be the id of an object in this list.",
                fields={"after": ["Unknown id."]},
            )
        items = items[ids.index(after) + 1 :]
    return items[:limit], len(items) > limit


class LeaderboardListApi(BaseApi):
    """GET: the active benchmark sets, each with its board's size. Anyone may call it."""

    required_scopes = {"GET": PUBLIC}

    @extend_schema(tags=TAGS, parameters=PAGE_PARAMETERS, responses=list_schema(BenchmarkOutput))
    def get(self, request):
        sets = list(leaderboards.leaderboard_list().order_by("task", "slug"))
        page, has_more = _page(sets, request, lambda benchmark: benchmark.slug)
        return Response(list_body(BenchmarkOutput(page, many=True).data, has_more=has_more))


class LeaderboardDetailApi(BaseApi):
    """GET: a set's board, ranked (see ``ranking``), with the generalist as a reference row.
    Anyone may call it."""

    required_scopes = {"GET": PUBLIC}

    @extend_schema(tags=TAGS, parameters=PAGE_PARAMETERS, responses=BoardOutput)
    def get(self, request, benchmark):
        board = leaderboards.leaderboard_get(slug=benchmark)
        counted = leaderboards.leaderboard_list().get(pk=board.benchmark.pk)
        serializer = BoardRowOutput()
        page, has_more = _page(board.rows, request, serializer.get_id)
        rows = BoardRowOutput(page, many=True).data
        body = list_body(rows, has_more=has_more)
        return Response(
            {
                "object": "leaderboard",
                "benchmark": BenchmarkOutput(counted).data,
                "metric": board.metric,
                "ranking": RANKING[board.higher_is_better],
                **body,
            }
        )
