"""`GET /api/v1/models/{version_id}/export`: the signed export bundle, streamed as a zip."""

from django.http import HttpResponse, StreamingHttpResponse
from drf_spectacular.types import OpenApiTypes
from drf_spectacular.utils import extend_schema

from billing.export_bundle import (
    export_bundle_check,
    export_bundle_download,
    export_bundle_stream,
)
from marketplace.api import BaseApi


class ModelVersionExportApi(BaseApi):
    required_scopes = {"GET": "read"}

    @extend_schema(responses={(200, "application/zip"): OpenApiTypes.BINARY})
    def get(self, request, version_id):
        bundle = export_bundle_download(user=request.user, version_id=version_id)
        response = StreamingHttpResponse(
            export_bundle_stream(bundle), content_type="application/zip"
        )
        response["Content-Disposition"] = f'attachment; filename="{bundle.filename}"'
        response["X-Niche-Manifest-SHA256"] = bundle.manifest_sha256
        response["Cache-Control"] = "no-store"
        return response

    def head(self, request, version_id):
        """Whether a download would be allowed: nothing is built or recorded, so a link
        checker does not count as a download."""
        export_bundle_check(user=request.user, version_id=version_id)
        response = HttpResponse(content_type="application/zip")
        response["Cache-Control"] = "no-store"
        return response
