"""Scope checks: deny by default; an API key may call only what its scopes allow."""

from rest_framework.permissions import BasePermission

from accounts.authentication import calling_api_key
from marketplace.api import PUBLIC


class HasScope(BasePermission):
    """Reads the view's per-method `required_scopes` (see `marketplace.api.BaseApi`).

    A method with no declaration is refused to everyone; a declared scope binds API
    keys only (a signed-in session may do all its user may do); `PUBLIC` admits anyone.
    """

    message = "This API key lacks the scope this operation needs."

    def has_permission(self, request, view) -> bool:
        if not hasattr(view, request.method.lower()):
            return True  # not served here: the view answers 405
        declared_scope = getattr(view, "declared_scope", None)
        scope = declared_scope(request.method) if declared_scope else None
        if scope is None:
            self.message = "This operation declares no scope, so no caller may use it."
            return False
        key = calling_api_key(request)
        if scope == PUBLIC or key is None:
            return True
        self.message = f"This API key lacks the '{scope}' scope."
        return scope in key.scopes
