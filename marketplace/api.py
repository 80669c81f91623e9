"""Shared pieces of every context's API: the base view and the catch-all 404."""

from django.http import JsonResponse
from rest_framework.permissions import IsAuthenticated
from rest_framework.views import APIView

from marketplace.errors import error_body


class BaseApi(APIView):
    """Signed-in callers only; API keys must carry `required_scope` when a view sets one."""

    required_scope: str | None = None

    def get_permissions(self):
        from accounts.permissions import HasScope  # accounts sits above marketplace

        return [IsAuthenticated(), HasScope()]


def api_not_found(request, *args, **kwargs):
    """Unknown API paths answer in the error contract, whatever DEBUG says."""
    return JsonResponse(error_body("not_found", f"No API endpoint at {request.path}."), status=404)
