"""API of the studio: datasets, fine-tuning jobs, model versions.

No response ever carries a row of a dataset: reports hold counts and row numbers only,
so the sealed split cannot leak through any of these endpoints.
"""

from django.http import HttpResponse
from drf_spectacular.types import OpenApiTypes
from drf_spectacular.utils import extend_schema
from rest_framework import serializers
from rest_framework.parsers import FormParser, JSONParser, MultiPartParser
from rest_framework.response import Response

from marketplace.api import BaseApi, ObjectTypeField
from marketplace.errors import InvalidInputError
from marketplace.pagination import CursorIdPagination, list_body, list_schema
from training_worker import selectors, services


class BaseModelOutput(serializers.Serializer):
    slug = serializers.CharField()
    display_name = serializers.CharField()
    tasks = serializers.ListField(child=serializers.CharField())
    licence = serializers.CharField()
    parameter_count = serializers.IntegerField()
    revision = serializers.CharField()


class DatasetOutput(serializers.Serializer):
    id = serializers.UUIDField()
    object = ObjectTypeField("dataset")
    name = serializers.CharField()
    filename = serializers.CharField()
    task = serializers.CharField()
    format = serializers.CharField()
    status = serializers.CharField()
    size_bytes = serializers.IntegerField()
    sha256 = serializers.CharField()
    rows_usable = serializers.IntegerField()
    train_rows = serializers.IntegerField()
    sealed_rows = serializers.IntegerField()
    labels = serializers.ListField(child=serializers.CharField())
    report = serializers.JSONField()
    created_at = serializers.DateTimeField()
    validated_at = serializers.DateTimeField(allow_null=True)


class JobOutput(serializers.Serializer):
    id = serializers.UUIDField()
    object = ObjectTypeField("fine_tuning.job")
    status = serializers.CharField()
    base_model = serializers.CharField(source="base_model.slug")
    dataset = serializers.UUIDField(source="dataset_id")
    task = serializers.CharField()
    hyperparameters = serializers.JSONField()
    resolved_hyperparameters = serializers.JSONField()
    seed = serializers.IntegerField()
    suffix = serializers.CharField()
    progress = serializers.SerializerMethodField()
    trained_tokens = serializers.IntegerField()
    error = serializers.SerializerMethodField()
    fine_tuned_model = serializers.UUIDField(source="fine_tuned_model_id", allow_null=True)
    worker = serializers.CharField()
    attempts = serializers.IntegerField()
    heartbeat_at = serializers.DateTimeField(allow_null=True)
    cancel_requested_at = serializers.DateTimeField(allow_null=True)
    created_at = serializers.DateTimeField()
    started_at = serializers.DateTimeField(allow_null=True)
    finished_at = serializers.DateTimeField(allow_null=True)

    def get_progress(self, job) -> dict:
        return {
            "step": job.step,
            "total_steps": job.total_steps,
            "epoch": job.epoch,
            "loss": job.loss,
            "examples_per_s": job.examples_per_s,
            "eta_seconds": job.eta_seconds,
        }

    def get_error(self, job) -> dict | None:
        if not job.error_code:
            return None
        return {"code": job.error_code, "message": job.error_message}


class EventOutput(serializers.Serializer):
    id = serializers.IntegerField()
    object = ObjectTypeField("fine_tuning.job.event")
    created_at = serializers.DateTimeField()
    level = serializers.CharField()
    type = serializers.CharField()
    message = serializers.CharField()
    data = serializers.JSONField(allow_null=True)


class CheckpointOutput(serializers.Serializer):
    id = serializers.UUIDField()
    object = ObjectTypeField("fine_tuning.job.checkpoint")
    step = serializers.IntegerField()
    epoch = serializers.FloatField()
    metrics = serializers.JSONField()
    adapter_sha256 = serializers.CharField()
    created_at = serializers.DateTimeField()


class ModelVersionOutput(serializers.Serializer):
    id = serializers.UUIDField()
    object = ObjectTypeField("model_version")
    name = serializers.CharField()
    task = serializers.CharField()
    base_model = serializers.CharField(source="base_model.slug")
    job = serializers.UUIDField(source="job_id")
    labels = serializers.ListField(child=serializers.CharField())
    files = serializers.SerializerMethodField()
    dataset_sha256 = serializers.CharField()
    run_record = serializers.JSONField()
    created_at = serializers.DateTimeField()

    def get_files(self, version) -> list[dict]:
        return [{"name": f.name, "sha256": f.sha256, "size": f.size} for f in version.stored_files]


def _paged(request, queryset, serializer_class) -> Response:
    paginator = CursorIdPagination()
    page = paginator.paginate_queryset(queryset, request)
    return paginator.get_paginated_response(serializer_class(page, many=True).data)


class BaseModelListApi(BaseApi):
    required_scopes = {"GET": "read"}

    @extend_schema(responses=list_schema(BaseModelOutput, cursor=False))
    def get(self, request):
        models = selectors.base_model_list()
        return Response({"data": BaseModelOutput(models, many=True).data})


class DatasetListCreateApi(BaseApi):
    parser_classes = [MultiPartParser, FormParser]

    class Input(serializers.Serializer):
        class Meta:
            ref_name = "DatasetUploadInput"

        file = serializers.FileField(allow_empty_file=True)  # reported as empty_file
        name = serializers.CharField(max_length=200, required=False, allow_blank=True)
        task = serializers.CharField(required=False, allow_blank=True)

    required_scopes = {"GET": "read", "POST": "train"}
    # Read by marketplace.middleware before anything parses the body.
    upload_size_check = staticmethod(services.dataset_upload_check_size)

    @extend_schema(responses=list_schema(DatasetOutput))
    def get(self, request):
        return _paged(request, selectors.dataset_list(owner=request.user), DatasetOutput)

    @extend_schema(request=Input, responses={202: DatasetOutput})
    def post(self, request):
        data = self.Input(data=request.data)
        data.is_valid(raise_exception=True)
        dataset = services.dataset_upload(owner=request.user, **data.validated_data)
        return Response(DatasetOutput(dataset).data, status=202)


class DatasetDetailApi(BaseApi):
    required_scopes = {"GET": "read", "DELETE": "train"}

    @extend_schema(responses=DatasetOutput)
    def get(self, request, dataset_id):
        dataset = selectors.dataset_get(owner=request.user, dataset_id=dataset_id)
        return Response(DatasetOutput(dataset).data)

    @extend_schema(responses={204: None})
    def delete(self, request, dataset_id):
        services.dataset_delete(owner=request.user, dataset_id=dataset_id)
        return Response(status=204)


class JobListCreateApi(BaseApi):
    parser_classes = [JSONParser]

    class Input(serializers.Serializer):
        class Meta:
            ref_name = "FineTuningJobCreateInput"

        base_model = serializers.CharField()
        dataset = serializers.UUIDField()
        hyperparameters = serializers.DictField(required=False, default=dict)
        seed = serializers.IntegerField(required=False, min_value=0, max_value=2**31 - 1)
        suffix = serializers.RegexField(
            r"^[a-z0-9-]{0,40}$", required=False, default="",
            error_messages={"invalid": "Lowercase letters, digits and dashes, at most 40."},
        )  # fmt: skip

    required_scopes = {"GET": "read", "POST": "train"}

    @extend_schema(responses=list_schema(JobOutput))
    def get(self, request):
        return _paged(request, selectors.job_list(owner=request.user), JobOutput)

    @extend_schema(request=Input, responses={201: JobOutput})
    def post(self, request):
        data = self.Input(data=request.data)
        data.is_valid(raise_exception=True)
        values = data.validated_data
        job = services.job_create(
            owner=request.user,
            base_model=values["base_model"],
            dataset_id=values["dataset"],
            hyperparameters=values["hyperparameters"],
            seed=values.get("seed"),
            suffix=values["suffix"],
        )
        return Response(JobOutput(job).data, status=201)


class JobDetailApi(BaseApi):
    required_scopes = {"GET": "read"}

    @extend_schema(responses=JobOutput)
    def get(self, request, job_id):
        return Response(JobOutput(selectors.job_get(owner=request.user, job_id=job_id)).data)


class JobCancelApi(BaseApi):
    required_scopes = {"POST": "train"}

    @extend_schema(request=None, responses=JobOutput)
    def post(self, request, job_id):
        job = services.job_cancel(owner=request.user, job_id=job_id)
        return Response(JobOutput(job).data)


class JobEventsApi(BaseApi):
    required_scopes = {"GET": "read"}

    @extend_schema(responses=list_schema(EventOutput))
    def get(self, request, job_id):
        job = selectors.job_get(owner=request.user, job_id=job_id)
        after, limit = request.query_params.get("after"), request.query_params.get("limit", "100")
        try:
            after_id = int(after) if after else None
            limit_n = int(limit)
            if not 1 <= limit_n <= 1000:
                raise ValueError
        except ValueError:
            raise InvalidInputError(
                "after must be an event id and limit 1 to 1000.",
                fields={"after": ["An event id."], "limit": ["1 to 1000."]},
            ) from None
        events, has_more = selectors.job_events(job=job, after=after_id, limit=limit_n)
        data = EventOutput(events, many=True).data
        return Response(list_body(data, has_more=has_more))


class JobCheckpointsApi(BaseApi):
    required_scopes = {"GET": "read"}

    @extend_schema(responses=list_schema(CheckpointOutput))
    def get(self, request, job_id):
        job = selectors.job_get(owner=request.user, job_id=job_id)
        data = CheckpointOutput(selectors.job_checkpoints(job=job), many=True).data
        return Response(list_body(data))


class ModelVersionListApi(BaseApi):
    required_scopes = {"GET": "read"}

    @extend_schema(responses=list_schema(ModelVersionOutput))
    def get(self, request):
        return _paged(request, selectors.model_version_list(owner=request.user), ModelVersionOutput)


class ModelVersionDetailApi(BaseApi):
    required_scopes = {"GET": "read"}

    @extend_schema(responses=ModelVersionOutput)
    def get(self, request, version_id):
        version = selectors.model_version_get(owner=request.user, version_id=version_id)
        return Response(ModelVersionOutput(version).data)


class ModelVersionEvaluationApi(BaseApi):
    required_scopes = {"GET": "read"}

    @extend_schema(responses=OpenApiTypes.OBJECT)
    def get(self, request, version_id):
        version = selectors.model_version_get(owner=request.user, version_id=version_id)
        return Response(version.evaluation)


class ModelVersionCardApi(BaseApi):
    required_scopes = {"GET": "read"}

    @extend_schema(responses={(200, "text/markdown"): OpenApiTypes.STR})
    def get(self, request, version_id):
        version = selectors.model_version_get(owner=request.user, version_id=version_id)
        return HttpResponse(version.card, content_type="text/markdown; charset=utf-8")
