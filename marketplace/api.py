"""Shared pieces of every context's API: the base view and the catch-all 404."""

from collections.abc import Mapping

from django.http import JsonResponse
from django.views.decorators.csrf import csrf_exempt
from drf_spectacular.types import OpenApiTypes
from drf_spectacular.utils import extend_schema_field
from rest_framework import serializers
from rest_framework.permissions import AllowAny, IsAuthenticated
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


PUBLIC = "public"
"""A `required_scopes` value: anyone, signed in or not, may call this method."""


class BaseApi(APIView):
    """Every API view declares, per HTTP method, what an API key needs to call it.

    `required_scopes = {"GET": "read", "POST": "train"}`; `PUBLIC` opens a method to
    anyone. A method the view serves without a declaration is refused to every caller,
    sessions included (deny by default): OPTIONS too, unless declared; HEAD follows GET.
    A declared scope binds API keys; a signed-in session may do what its user may.
    """

    required_scopes: Mapping[str, str] = {}

    @classmethod
    def declared_scope(cls, method: str) -> str | None:
        method = method.upper()
        return cls.required_scopes.get("GET" if method == "HEAD" else method)

    def get_permissions(self):
        from accounts.permissions import HasScope  # accounts sits above marketplace

        if self.declared_scope(self.request.method) == PUBLIC:
            return [AllowAny()]
        return [IsAuthenticated(), HasScope()]


@csrf_exempt  # changes nothing: an unknown POST gets its 404, not a CSRF page
def api_not_found(request, *args, **kwargs):
    """Unknown API paths answer in the error contract, whatever DEBUG says."""
    return JsonResponse(error_body("not_found", f"No API endpoint at {request.path}."), status=404)
