"""Scope checks: an API key may call only what its scopes allow; sessions may call all."""

from rest_framework.permissions import BasePermission

from accounts.models import ApiKey


class HasScope(BasePermission):
    """Views set `required_scope`; a key without it gets 403 in the error contract."""

    message = "This API key lacks the scope this operation needs."

    def has_permission(self, request, view) -> bool:
        scope = getattr(view, "required_scope", None)
        if scope is None or not isinstance(request.auth, ApiKey):
            return True
        self.message = f"This API key lacks the '{scope}' scope."
        return scope in request.auth.scopes
