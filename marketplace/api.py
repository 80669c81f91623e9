"""Shared pieces of every context's API: the base view and the catch-all 404."""

from django.http import JsonResponse
from drf_spectacular.types import OpenApiTypes
from drf_spectacular.utils import extend_schema_field
from rest_framework import serializers
from rest_framework.permissions import IsAuthenticated
from rest_framework.views import APIView

from marketplace.errors import error_body


@extend_schema_field(OpenApiTypes.STR)
class ObjectTypeField(serializers.Field):
    """The constant `object` member of every API resource, e.g. "fine_tuning.job"."""

    def __init__(self, name: str, **kwargs):
        self.name = name
        super().__init__(source="*", read_only=True, **kwargs)

    def to_representation(self, _value) -> str:
        return self.name


class BaseApi(APIView):
    """Signed-in callers only; API keys must carry `required_scope` when a view sets one."""

    required_scope: str | None = None

    def get_permissions(self):
        from accounts.permissions import HasScope  # accounts sits above marketplace

        return [IsAuthenticated(), HasScope()]


def api_not_found(request, *args, **kwargs):
    """Unknown API paths answer in the error contract, whatever DEBUG says."""
    return JsonResponse(error_body("not_found", f"No API endpoint at {request.path}."), status=404)
