"""OpenAI's Files and Batch API under /v1: the official client's `files.create`,
`files.retrieve`, `files.list`, `files.content`, `batches.create`, `batches.retrieve`,
`batches.list` and `batches.cancel` work unchanged.

Every method needs the `infer` scope; only the owner sees a file or batch (404 for anyone
else). Errors leave in OpenAI's shape, as on the rest of /v1, and keep the contract's
`fields` (a refused upload names each bad line there).
"""

from __future__ import annotations

from django.http import FileResponse
from drf_spectacular.types import OpenApiTypes
from drf_spectacular.utils import OpenApiParameter, extend_schema, extend_schema_field
from rest_framework import serializers
from rest_framework.parsers import FormParser, JSONParser, MultiPartParser
from rest_framework.response import Response

from marketplace.api import ObjectTypeField
from marketplace.errors import api_exception_handler
from marketplace.pagination import CursorIdPagination, list_body, list_schema
from serving import batches
from serving.openai_api import OpenAiApi, openai_error

JSONL = "application/jsonl"


def batch_exception_handler(exc, context):
    """OpenAI's error shape, plus the contract's `fields` when there are any."""
    response = api_exception_handler(exc, context)
    if response is not None and isinstance(response.data, dict) and "error" in response.data:
        error = response.data["error"]
        fields = error.get("fields") or {}
        response.data = openai_error(
            response.status_code, error.get("code"), error.get("message"), fields
        )
        if fields:
            response.data["error"]["fields"] = fields
    return response


class BatchesApi(OpenAiApi):
    def get_exception_handler(self):
        return batch_exception_handler


@extend_schema_field({"type": "integer", "nullable": True})
class UnixTimeField(serializers.Field):
    """A moment as OpenAI writes it: whole seconds since the epoch (null: not yet)."""

    def __init__(self, **kwargs):
        super().__init__(read_only=True, **kwargs)

    def to_representation(self, value):
        return None if value is None else int(value.timestamp())

    def get_attribute(self, instance):
        return getattr(instance, self.source)


class FileOutput(serializers.Serializer):
    id = serializers.CharField()
    object = ObjectTypeField("file")
    bytes = serializers.IntegerField(source="size_bytes")
    created_at = UnixTimeField()
    filename = serializers.CharField()
    purpose = serializers.CharField(help_text="batch (an input) or batch_output.")
    status = serializers.SerializerMethodField()

    def get_status(self, _file) -> str:
        return "processed"  # stored only once checked: never "uploaded" or "error"


class RequestCountsOutput(serializers.Serializer):
    total = serializers.IntegerField(source="request_total")
    completed = serializers.IntegerField(source="request_completed")
    failed = serializers.IntegerField(source="request_failed")


class BatchErrorOutput(serializers.Serializer):
    code = serializers.CharField()
    message = serializers.CharField()
    param = serializers.CharField(allow_null=True)
    line = serializers.IntegerField(allow_null=True)


class BatchErrorsOutput(serializers.Serializer):
    object = ObjectTypeField("list")
    data = BatchErrorOutput(many=True, source="errors")


class BatchOutput(serializers.Serializer):
    id = serializers.CharField()
    object = ObjectTypeField("batch")
    endpoint = serializers.CharField()
    errors = serializers.SerializerMethodField()
    input_file_id = serializers.CharField()
    completion_window = serializers.CharField()
    status = serializers.CharField(
        help_text="validating, in_progress, finalizing, completed, failed, expired, "
        "cancelling or cancelled."
    )
    output_file_id = serializers.CharField(allow_null=True)
    error_file_id = serializers.CharField(allow_null=True)
    created_at = UnixTimeField()
    in_progress_at = UnixTimeField()
    expires_at = UnixTimeField()
    finalizing_at = UnixTimeField()
    completed_at = UnixTimeField()
    failed_at = UnixTimeField()
    expired_at = UnixTimeField()
    cancelling_at = UnixTimeField()
    cancelled_at = UnixTimeField()
    request_counts = RequestCountsOutput(source="*")
    metadata = serializers.DictField(child=serializers.CharField())

    @extend_schema_field(BatchErrorsOutput(allow_null=True))
    def get_errors(self, batch) -> dict | None:
        return BatchErrorsOutput(batch).data if batch.errors else None


def _paged(request, queryset, serializer_class) -> Response:
    paginator = CursorIdPagination()
    page = paginator.paginate_queryset(queryset, request)
    data = serializer_class(page, many=True).data
    return Response(list_body(data, has_more=paginator.has_more, object="list"))


def _list_schema(item, name: str):
    return list_schema(item, name=name, object=serializers.CharField())


PAGE_PARAMETERS = [
    OpenApiParameter("after", OpenApiTypes.STR, description="The id the page starts after."),
    OpenApiParameter("limit", OpenApiTypes.INT, description="1 to 100 (default 20)."),
]


class FileListCreateApi(BatchesApi):
    """POST: upload a JSONL of batch requests (multipart: `file`, `purpose=batch`), checked
    line by line before it is stored. GET: your files, newest first."""

    parser_classes = [MultiPartParser, FormParser]
    required_scopes = {"GET": "infer", "POST": "infer"}
    # Read by marketplace.middleware before anything parses the body.
    upload_size_check = staticmethod(batches.batch_file_check_size)

    class Input(serializers.Serializer):
        class Meta:
            ref_name = "BatchFileUploadInput"

        file = serializers.FileField(allow_empty_file=True)  # reported as "no requests"
        purpose = serializers.CharField(help_text='"batch".')

    @extend_schema(
        operation_id="openai_files_list",
        parameters=[*PAGE_PARAMETERS, OpenApiParameter("purpose", OpenApiTypes.STR)],
        responses=_list_schema(FileOutput, "BatchFileList"),
        summary="Your batch files (inputs and outputs), newest first.",
    )
    def get(self, request):
        files = batches.batch_file_list(
            owner=request.user, purpose=request.query_params.get("purpose", "")
        )
        return _paged(request, files, FileOutput)

    @extend_schema(
        operation_id="openai_files_create",
        request=Input,
        responses=FileOutput,
        summary="Upload a JSONL of batch requests (purpose batch).",
    )
    def post(self, request):
        data = self.Input(data=request.data)
        data.is_valid(raise_exception=True)
        stored = batches.batch_file_upload(owner=request.user, **data.validated_data)
        return Response(FileOutput(stored).data)


class FileDetailApi(BatchesApi):
    required_scopes = {"GET": "infer"}

    @extend_schema(
        operation_id="openai_files_retrieve", responses=FileOutput, summary="One of your files."
    )
    def get(self, request, file_id: str):
        found = batches.batch_file_get(owner=request.user, file_id=file_id)
        return Response(FileOutput(found).data)


class FileContentApi(BatchesApi):
    """The file's bytes (a batch's output: one JSON answer a line, in input order)."""

    required_scopes = {"GET": "infer"}

    def perform_content_negotiation(self, request, force=False):
        # The official client asks for `application/binary`: whatever is asked, the bytes
        # leave as JSONL (and errors as JSON).
        return super().perform_content_negotiation(request, force=True)

    @extend_schema(
        operation_id="openai_files_content",
        responses={(200, JSONL): OpenApiTypes.BINARY},
        summary="The file's content (JSONL).",
    )
    def get(self, request, file_id: str):
        found, handle = batches.batch_file_open(owner=request.user, file_id=file_id)
        response = FileResponse(handle, content_type=JSONL)
        response["Content-Length"] = str(found.size_bytes)
        response["Content-Disposition"] = f'attachment; filename="{found.id}.jsonl"'
        return response


class BatchListCreateApi(BatchesApi):
    """POST: run an input file as a batch (low priority, billed at the batch price).
    GET: your batches, newest first."""

    parser_classes = [JSONParser]
    required_scopes = {"GET": "infer", "POST": "infer"}

    class Input(serializers.Serializer):
        class Meta:
            ref_name = "BatchCreateInput"

        input_file_id = serializers.CharField(max_length=64)
        endpoint = serializers.CharField(
            max_length=100, help_text=", ".join(batches.ENDPOINTS) + " (what every line calls)."
        )
        completion_window = serializers.CharField(max_length=10, help_text='"24h".')
        metadata = serializers.DictField(required=False, allow_null=True)

    @extend_schema(
        operation_id="openai_batches_list",
        parameters=PAGE_PARAMETERS,
        responses=_list_schema(BatchOutput, "BatchList"),
        summary="Your batches, newest first.",
    )
    def get(self, request):
        return _paged(request, batches.batch_list(owner=request.user), BatchOutput)

    @extend_schema(
        operation_id="openai_batches_create",
        request=Input,
        responses=BatchOutput,
        summary="Run a file of requests as a batch (at the offers' batch price).",
    )
    def post(self, request):
        data = self.Input(data=request.data)
        data.is_valid(raise_exception=True)
        batch = batches.batch_create(
            owner=request.user, api_key=self.api_key, **data.validated_data
        )
        return Response(BatchOutput(batch).data)


class BatchDetailApi(BatchesApi):
    required_scopes = {"GET": "infer"}

    @extend_schema(
        operation_id="openai_batches_retrieve",
        responses=BatchOutput,
        summary="One of your batches, with its progress (request_counts).",
    )
    def get(self, request, batch_id: str):
        batch = batches.batch_get(owner=request.user, batch_id=batch_id)
        return Response(BatchOutput(batch).data)


class BatchCancelApi(BatchesApi):
    required_scopes = {"POST": "infer"}

    @extend_schema(
        operation_id="openai_batches_cancel",
        request=None,
        responses=BatchOutput,
        summary="Cancel a batch: rows in flight stop, answers so far stay in its files.",
    )
    def post(self, request, batch_id: str):
        batch = batches.batch_cancel(owner=request.user, batch_id=batch_id)
        return Response(BatchOutput(batch).data)
