"""Private evaluations over the API: try listings on your own rows before you buy.

Every method needs the `infer` scope (for a signed-in session: any user). Only the buyer
who asked sees an evaluation: anyone else, the listings' experts included, gets 404.
"""

from __future__ import annotations

import json

from drf_spectacular.utils import extend_schema, inline_serializer
from rest_framework import serializers
from rest_framework.parsers import FormParser, JSONParser, MultiPartParser
from rest_framework.response import Response

from evidence import selectors, services
from evidence.errors import InvalidEvaluation
from listings.selectors import listing_list_mine
from marketplace.api import BaseApi, ObjectTypeField
from marketplace.pagination import CursorIdPagination, list_schema

TAGS = ["Private evaluations"]


class CandidateOutput(serializers.Serializer):
    listing = serializers.CharField(source="listing.slug")
    title = serializers.CharField(source="listing.title")
    version_id = serializers.CharField()
    label_map = serializers.DictField(child=serializers.CharField())
    charge = serializers.CharField(help_text="free, or per_call: each row a call on your licence.")


class ThousandCallsOutput(serializers.Serializer):
    offer = serializers.CharField()
    kind = serializers.CharField()
    currency = serializers.CharField()
    amount = serializers.IntegerField(allow_null=True, help_text="Minor units for 1,000 calls.")
    basis = serializers.CharField()


class EvaluationOutput(serializers.Serializer):
    id = serializers.CharField()
    object = ObjectTypeField("private_evaluation")
    status = serializers.CharField(help_text="queued, running, succeeded or failed.")
    task = serializers.CharField()
    filename = serializers.CharField()
    rows = serializers.IntegerField(source="row_count")
    labels = serializers.ListField(child=serializers.CharField())
    keep_rows = serializers.BooleanField()
    rows_kept_until = serializers.DateTimeField(source="rows_expire_at", allow_null=True)
    rows_deleted = serializers.SerializerMethodField()
    progress = serializers.SerializerMethodField()
    candidates = CandidateOutput(many=True, source="candidates.all")
    result = serializers.JSONField(
        allow_null=True,
        help_text="When succeeded: the metric, each contender's score with its 95% interval, "
        "per-class figures, latency per row, and the paired difference of every pair.",
    )
    costs = serializers.SerializerMethodField()
    error = serializers.SerializerMethodField()
    rerun_of = serializers.CharField(source="rerun_of_id", allow_null=True)
    created_at = serializers.DateTimeField()
    started_at = serializers.DateTimeField(allow_null=True)
    finished_at = serializers.DateTimeField(allow_null=True)

    def get_rows_deleted(self, evaluation) -> bool:
        return not evaluation.rows_path

    def get_progress(self, evaluation) -> dict:
        return {"done": evaluation.progress_done, "total": evaluation.progress_total}

    def get_costs(self, evaluation) -> dict:
        """Each listing's cost of 1,000 calls at its offers today."""
        return {
            c.listing.slug: ThousandCallsOutput(
                selectors.thousand_calls_costs(listing=c.listing), many=True
            ).data
            for c in evaluation.candidates.all()
        }

    def get_error(self, evaluation) -> dict | None:
        if not evaluation.error_code:
            return None
        return {"code": evaluation.error_code, "message": evaluation.error_message}


COUNTS_OUTPUT = inline_serializer(
    "PrivateEvaluationCounts",
    {
        "listing": serializers.CharField(),
        "free": serializers.BooleanField(help_text="Free private evaluation is offered."),
        "data": inline_serializer(
            "PrivateEvaluationMonth",
            {"month": serializers.CharField(), "evaluations": serializers.IntegerField()},
            many=True,
        ),
    },
)


def _label_map(raw) -> dict | None:
    """label_map arrives as an object (JSON) or as a JSON string (a multipart field)."""
    if raw in (None, ""):
        return None
    if isinstance(raw, str):
        try:
            raw = json.loads(raw)
        except ValueError as exc:
            raise InvalidEvaluation(
                "label_map is not valid JSON.", fields={"label_map": ["A JSON object."]}
            ) from exc
    return raw


def _listing_slugs(raw) -> list[str]:
    """`listings` as a list, repeated form fields, or one comma-separated string."""
    if isinstance(raw, str):
        return [slug for slug in raw.split(",") if slug.strip()]
    return [str(slug) for slug in raw or []]


class EvaluationListCreateApi(BaseApi):
    """POST (multipart): `file` (rows in the dataset formats: CSV, JSON Lines or JSON with
    text/label or prompt/completion), `listings` (1-5 slugs of one task), optional
    `label_map` ({listing: {model label: your label}}) and `keep_rows` (keep the rows 30
    days for a re-run). Scored at low priority on the inference workers: 202, then poll.
    GET: your evaluations, newest first."""

    parser_classes = [MultiPartParser, FormParser, JSONParser]
    required_scopes = {"GET": "infer", "POST": "infer"}
    upload_size_check = staticmethod(services.private_evaluation_check_size)

    class Input(serializers.Serializer):
        class Meta:
            ref_name = "PrivateEvaluationInput"

        file = serializers.FileField(allow_empty_file=True)
        listings = serializers.ListField(child=serializers.CharField(), min_length=1)
        label_map = serializers.JSONField(required=False)
        keep_rows = serializers.BooleanField(required=False, default=False)

    @extend_schema(
        tags=TAGS, summary="List your private evaluations", responses=list_schema(EvaluationOutput)
    )
    def get(self, request):
        paginator = CursorIdPagination()
        page = paginator.paginate_queryset(
            selectors.private_evaluation_list(owner=request.user), request
        )
        return paginator.get_paginated_response(EvaluationOutput(page, many=True).data)

    @extend_schema(
        tags=TAGS,
        summary="Score listings on your own rows",
        request={"multipart/form-data": Input},
        responses={202: EvaluationOutput},
    )
    def post(self, request):
        data = request.data.copy() if hasattr(request.data, "copy") else dict(request.data)
        if hasattr(request.data, "getlist"):
            listings = request.data.getlist("listings")
            data.setlist(
                "listings", _listing_slugs(listings[0] if len(listings) == 1 else listings)
            )
        elif isinstance(data.get("listings"), str):
            data["listings"] = _listing_slugs(data["listings"])
        parsed = self.Input(data=data)
        parsed.is_valid(raise_exception=True)
        values = parsed.validated_data
        evaluation = services.private_evaluation_create(
            owner=request.user,
            file=values["file"],
            listings=values["listings"],
            label_map=_label_map(values.get("label_map")),
            keep_rows=values["keep_rows"],
        )
        return Response(EvaluationOutput(evaluation).data, status=202)


class EvaluationDetailApi(BaseApi):
    """GET: one of your evaluations, its progress and, once done, its figures. DELETE: it,
    its rows and its result, now."""

    required_scopes = {"GET": "infer", "DELETE": "infer"}

    @extend_schema(tags=TAGS, summary="Read a private evaluation", responses=EvaluationOutput)
    def get(self, request, evaluation_id):
        evaluation = selectors.private_evaluation_get(
            owner=request.user, evaluation_id=evaluation_id
        )
        return Response(EvaluationOutput(evaluation).data)

    @extend_schema(
        tags=TAGS,
        summary="Delete a private evaluation, its rows and its result",
        responses={204: None},
    )
    def delete(self, request, evaluation_id):
        services.private_evaluation_delete(owner=request.user, evaluation_id=evaluation_id)
        return Response(status=204)


class EvaluationRerunApi(BaseApi):
    """POST: score the kept rows again with the same listings at their live versions."""

    parser_classes = [JSONParser, FormParser]
    required_scopes = {"POST": "infer"}

    @extend_schema(
        tags=TAGS,
        summary="Run a private evaluation again on its kept rows",
        request=None,
        responses={202: EvaluationOutput},
    )
    def post(self, request, evaluation_id):
        again = services.private_evaluation_rerun(owner=request.user, evaluation_id=evaluation_id)
        return Response(EvaluationOutput(again).data, status=202)


class EvaluationRowsApi(BaseApi):
    """DELETE: delete the kept rows now; the result stays."""

    required_scopes = {"DELETE": "infer"}

    @extend_schema(
        tags=TAGS, summary="Delete a private evaluation's kept rows", responses={204: None}
    )
    def delete(self, request, evaluation_id):
        services.private_evaluation_rows_delete(owner=request.user, evaluation_id=evaluation_id)
        return Response(status=204)


class ListingEvaluationCountsApi(BaseApi):
    """For the listing's own expert. GET: how many private evaluations named it each month
    (the count only: never who asked, their rows or the figures), and whether free private
    evaluation is offered. POST {"free": false}: stop offering it free (buyers may still
    evaluate it paying each row as a call on their licence); {"free": true}: offer it."""

    parser_classes = [JSONParser, FormParser]
    required_scopes = {"GET": "read", "POST": "train"}

    class Input(serializers.Serializer):
        class Meta:
            ref_name = "PrivateEvaluationSettingInput"

        free = serializers.BooleanField()

    def _mine(self, request, slug):
        from listings.errors import ListingNotFound

        listing = listing_list_mine(owner=request.user).filter(slug=slug).first()
        if listing is None:
            raise ListingNotFound("No listing of yours here.")
        return listing

    def _body(self, listing) -> dict:
        return {
            "listing": listing.slug,
            "free": listing.free_private_evaluation,
            "data": selectors.private_evaluation_counts(listing=listing),
        }

    @extend_schema(
        tags=TAGS,
        summary="Offer free private evaluation of your listing, or not",
        request=Input,
        responses=COUNTS_OUTPUT,
    )
    def post(self, request, slug):
        from listings.services import listing_set_free_private_evaluation

        mine = self._mine(request, slug)  # 404 before anything is read of the body
        data = self.Input(data=request.data)
        data.is_valid(raise_exception=True)
        listing = listing_set_free_private_evaluation(
            owner=request.user, listing_id=mine.pk, free=data.validated_data["free"]
        )
        return Response(self._body(listing))

    @extend_schema(
        tags=TAGS,
        summary="Count the private evaluations of your listing, by month",
        responses=COUNTS_OUTPUT,
    )
    def get(self, request, slug):
        return Response(self._body(self._mine(request, slug)))
