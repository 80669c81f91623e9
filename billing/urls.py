"""API routes of commerce (under /api/v1/)."""

from django.urls import path

from billing import export_apis

urlpatterns = [
    path(
        "models/<uuid:version_id>/export",
        export_apis.ModelVersionExportApi.as_view(),
        name="api-model-export",
    ),
]
